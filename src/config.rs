//! The configuration: clap argument groups, one per concern, and the validated [`Config`]
//! the library reads.
//!
//! Every key can be given as a flag (`--commit-interval-ms 100`) or as an environment
//! variable (`ORDER_SAGA_COMMIT_INTERVAL_MS=100`); the flag wins. Defaults fit the local
//! stack of `scripts/stack`. [`Config::validate`] runs before anything connects, so a bad
//! value stops start-up with a message that names the key and what is allowed.
//!
//! A command flattens only the groups it reads ([`KafkaArgs`], [`RegistryArgs`],
//! [`DatabaseArgs`], [`InstanceArgs`], [`ProcessorArgs`], [`SinkArgs`], [`TelemetryArgs`],
//! [`StatsArgs`], [`HeartbeatArgs`], [`LogArgs`]), so its `--help` lists only what it
//! uses; [`ConfigArgs`] has them all. The groups' field names are those of [`Config`]:
//! the processor, sink and tools read one flat `config.xxx`, and a group the command does
//! not take keeps its defaults there.

use std::time::Duration;

use clap::{Args, FromArgMatches};
use serde::Serialize;
use thiserror::Error;

use crate::saga::Policy;
use crate::topics::Topics;

/// A configuration value outside what the program accepts.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid configuration: {key} (env {env}) = {value:?}: {allowed}")]
pub struct ConfigError {
    /// The flag name, e.g. `--commit-interval-ms`.
    pub key: &'static str,
    /// The environment variable of the same key.
    pub env: &'static str,
    pub value: String,
    /// What would have been accepted, in plain words.
    pub allowed: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where Kafka is and how to talk to it: every command that opens a Kafka client.
#[derive(Clone, Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "ORDER_SAGA_BOOTSTRAP", default_value = "localhost:9092")]
    pub bootstrap: String,

    /// Prefix put before every topic name, so that several saga deployments (or tests)
    /// can share one cluster. Empty in production.
    #[arg(long, env = "ORDER_SAGA_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    #[command(flatten)]
    pub security: crate::security::KafkaSecurity,
}

/// The schema registry: every command that encodes or decodes a record.
#[derive(Clone, Debug, Args)]
pub struct RegistryArgs {
    /// Base URL of the Confluent-compatible schema registry API.
    #[arg(
        long,
        env = "ORDER_SAGA_REGISTRY_URL",
        default_value = "http://localhost:8080/apis/ccompat/v7"
    )]
    pub registry_url: String,

    #[command(flatten)]
    pub security: crate::security::RegistrySecurity,
}

/// PostgreSQL: the sink, migrations and the commands that read the table.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL of the order-status table; `sslmode` (disable, prefer,
    /// require, verify-ca, verify-full) and `sslrootcert` are honoured.
    /// [default: postgres://order:***@localhost:55432/order]
    #[arg(
        long,
        env = "ORDER_SAGA_DATABASE_URL",
        default_value = "postgres://order:order@localhost:55432/order",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,

    #[command(flatten)]
    pub security: crate::security::DatabaseSecurity,
}

/// Who this process is: group and client ids, and the processor's transactional id.
#[derive(Clone, Debug, Args)]
pub struct InstanceArgs {
    /// Application id: the processor's consumer group and the prefix of its transactional id.
    #[arg(long, env = "ORDER_SAGA_APPLICATION_ID", default_value = "order")]
    pub application_id: String,

    /// This instance's stable id; the transactional id is `<application-id>-<instance-id>`.
    /// Two live instances must never share it: the newer fences the older.
    #[arg(long, env = "ORDER_SAGA_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,
}

/// The processor's transactions, deadlines, retries and state.
#[derive(Clone, Debug, Args)]
pub struct ProcessorArgs {
    /// How often the processor commits its transaction, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_COMMIT_INTERVAL_MS", default_value_t = 100)]
    pub commit_interval_ms: u64,

    /// Kafka `transaction.timeout.ms`; kept short so a dead instance's transaction is
    /// aborted by the broker quickly.
    #[arg(
        long,
        env = "ORDER_SAGA_TRANSACTION_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub transaction_timeout_ms: u64,

    /// How long a terminal order stays in memory before it is evicted, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_STATE_RETENTION_MS", default_value_t = 600_000)]
    pub state_retention_ms: u64,

    /// How long a finished order is remembered after it settled, in milliseconds, so that
    /// a repeated create starts no second saga (a few bytes per order; see the README).
    #[arg(
        long,
        env = "ORDER_SAGA_DEDUP_WINDOW_MS",
        default_value_t = 604_800_000
    )]
    pub dedup_window_ms: u64,

    /// How many orders one instance keeps in memory at most (in flight, or settled and
    /// within their retention). At the limit, settled orders are evicted before their
    /// retention; if orders in flight alone reach it, new creates and cancels wait in
    /// Kafka until some finish (see the README, "Memory").
    #[arg(
        long,
        env = "ORDER_SAGA_MAX_ORDERS_IN_MEMORY",
        default_value_t = 500_000
    )]
    pub max_orders_in_memory: u64,

    /// Deadline of one downstream command, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_STEP_TIMEOUT_MS", default_value_t = 30_000)]
    pub step_timeout_ms: u64,

    /// Attempts of one command before the step fails for good.
    #[arg(long, env = "ORDER_SAGA_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// First retry delay after a retriable failure, in milliseconds; doubles per attempt.
    #[arg(long, env = "ORDER_SAGA_RETRY_BACKOFF_MS", default_value_t = 200)]
    pub retry_backoff_ms: u64,

    /// How long a partition group waits for an input partition that may still hold an
    /// earlier record before it goes on without it (like Kafka Streams'
    /// `max.task.idle.ms`), in milliseconds.
    #[arg(long, env = "ORDER_SAGA_MAX_TASK_IDLE_MS", default_value_t = 300)]
    pub max_task_idle_ms: u64,

    /// How long a cancel or result that arrived before its order's create is held for
    /// the create, in milliseconds, before it is dead-lettered.
    #[arg(long, env = "ORDER_SAGA_EARLY_GRACE_MS", default_value_t = 300_000)]
    pub early_grace_ms: u64,

    /// An order in flight whose state has not changed for this long, in milliseconds,
    /// counts as stuck in the order_saga.orders.stuck metric.
    #[arg(long, env = "ORDER_SAGA_STUCK_AFTER_MS", default_value_t = 300_000)]
    pub stuck_after_ms: u64,

    /// Static group membership: the processor's consumer sets `group.instance.id` to the
    /// transactional id, so a restart that is back within the session timeout keeps its
    /// partitions without a rebalance.
    #[arg(long, env = "ORDER_SAGA_STATIC_MEMBERSHIP", default_value_t = false)]
    pub static_membership: bool,
}

/// The PostgreSQL sink's consumer group.
#[derive(Clone, Debug, Args)]
pub struct SinkArgs {
    /// Consumer group of the PostgreSQL sink.
    #[arg(long, env = "ORDER_SAGA_SINK_GROUP", default_value = "order-pg-sink")]
    pub sink_group: String,
}

/// Metrics export over OTLP.
#[derive(Clone, Debug, Args)]
pub struct TelemetryArgs {
    /// OTLP/HTTP endpoint metrics are pushed to, as OTEL_EXPORTER_OTLP_ENDPOINT
    /// (`/v1/metrics` is appended), e.g. http://127.0.0.1:9090/api/v1/otlp for
    /// Prometheus. Empty: no metrics export.
    #[arg(long, env = "ORDER_SAGA_OTLP_ENDPOINT", default_value = "")]
    pub otlp_endpoint: String,

    /// How often metrics are pushed to --otlp-endpoint, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_METRICS_INTERVAL_MS", default_value_t = 10_000)]
    pub metrics_interval_ms: u64,
}

/// The periodic progress lines of a long-running command.
#[derive(Clone, Debug, Args)]
pub struct StatsArgs {
    /// Seconds between the periodic progress and counter log lines.
    #[arg(long, env = "ORDER_SAGA_STATS_INTERVAL_S", default_value_t = 10)]
    pub stats_interval_s: u64,
}

/// The heartbeat files the service writes and `order-saga health` reads.
#[derive(Clone, Debug, Args)]
pub struct HeartbeatArgs {
    /// Base path of the heartbeat files read by `order-saga health`: each component
    /// writes `<path>.<component>` (processor, sink). Empty: no heartbeat.
    #[arg(long, env = "ORDER_SAGA_HEARTBEAT_FILE", default_value = "")]
    pub heartbeat_file: String,
}

/// How log lines are written (to stderr).
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "ORDER_SAGA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Every group: what `order-saga run` reads, and what a child process is handed.
#[derive(Clone, Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub processor: ProcessorArgs,
    #[command(flatten)]
    pub sink: SinkArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl ConfigArgs {
    /// Every group at its flags' defaults, with the environment ignored: the settings a
    /// command does not take must not change with variables meant for other commands.
    pub fn defaults() -> Result<ConfigArgs, clap::Error> {
        let command = Self::augment_args(clap::Command::new("defaults"))
            .mut_args(|a| a.env(None::<&'static str>));
        Self::from_arg_matches(&command.try_get_matches_from(["defaults"])?)
    }

    /// The flat configuration of these groups.
    pub fn into_config(self) -> Config {
        let ConfigArgs {
            kafka,
            registry,
            database,
            instance,
            processor,
            sink,
            telemetry,
            stats,
            heartbeat,
            log,
        } = self;
        Config {
            bootstrap: kafka.bootstrap,
            topic_prefix: kafka.topic_prefix,
            registry_url: registry.registry_url,
            database_url: database.database_url,
            application_id: instance.application_id,
            instance_id: instance.instance_id,
            commit_interval_ms: processor.commit_interval_ms,
            transaction_timeout_ms: processor.transaction_timeout_ms,
            state_retention_ms: processor.state_retention_ms,
            dedup_window_ms: processor.dedup_window_ms,
            max_orders_in_memory: processor.max_orders_in_memory,
            step_timeout_ms: processor.step_timeout_ms,
            max_attempts: processor.max_attempts,
            retry_backoff_ms: processor.retry_backoff_ms,
            max_task_idle_ms: processor.max_task_idle_ms,
            early_grace_ms: processor.early_grace_ms,
            stuck_after_ms: processor.stuck_after_ms,
            static_membership: processor.static_membership,
            sink_group: sink.sink_group,
            otlp_endpoint: telemetry.otlp_endpoint,
            metrics_interval_ms: telemetry.metrics_interval_ms,
            stats_interval_s: stats.stats_interval_s,
            heartbeat_file: heartbeat.heartbeat_file,
            log_format: log.log_format,
            security: crate::security::Security {
                kafka: kafka.security,
                database: database.security,
                registry: registry.security,
            },
        }
    }
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field(
                "database_url",
                &crate::security::redact_url(&self.database_url),
            )
            .field("security", &self.security)
            .finish()
    }
}

impl HeartbeatArgs {
    /// The heartbeat base path, if heartbeats are on.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        (!self.heartbeat_file.is_empty()).then(|| std::path::PathBuf::from(&self.heartbeat_file))
    }
}

/// The validated settings the library reads, one flat struct: each field is the flag of
/// the same name in the groups above (see their docs). Its `Debug` (in `security.rs`)
/// hides the database URL's password; it is serialized only to hand it to a child
/// process as environment variables ([`Config::env_vars`]).
#[derive(Clone, Serialize)]
pub struct Config {
    pub bootstrap: String,
    pub topic_prefix: String,
    pub registry_url: String,
    pub database_url: String,
    pub application_id: String,
    pub instance_id: String,
    pub commit_interval_ms: u64,
    pub transaction_timeout_ms: u64,
    pub state_retention_ms: u64,
    pub dedup_window_ms: u64,
    pub max_orders_in_memory: u64,
    pub step_timeout_ms: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub max_task_idle_ms: u64,
    pub early_grace_ms: u64,
    pub stuck_after_ms: u64,
    pub static_membership: bool,
    pub sink_group: String,
    pub otlp_endpoint: String,
    pub metrics_interval_ms: u64,
    pub stats_interval_s: u64,
    pub heartbeat_file: String,
    pub log_format: LogFormat,
    #[serde(flatten)]
    pub security: crate::security::Security,
}

fn err(key: &'static str, env: &'static str, value: impl ToString, allowed: &str) -> ConfigError {
    ConfigError {
        key,
        env,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn in_range(
    key: &'static str,
    env: &'static str,
    value: u64,
    lo: u64,
    hi: u64,
) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(err(
            key,
            env,
            value,
            &format!("an integer from {lo} to {hi}"),
        ))
    }
}

/// A Kafka client id, group id or transactional id fragment: no spaces, no control chars.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    /// Checks every value and returns the first that is out of bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap.split(',').any(|hp| {
            let hp = hp.trim();
            match hp.rsplit_once(':') {
                Some((host, port)) => host.is_empty() || port.parse::<u16>().is_err(),
                None => true,
            }
        }) {
            return Err(err(
                "--bootstrap",
                "ORDER_SAGA_BOOTSTRAP",
                &self.bootstrap,
                "a comma-separated list of host:port",
            ));
        }
        for (key, env, value) in [
            (
                "--application-id",
                "ORDER_SAGA_APPLICATION_ID",
                &self.application_id,
            ),
            ("--instance-id", "ORDER_SAGA_INSTANCE_ID", &self.instance_id),
            ("--sink-group", "ORDER_SAGA_SINK_GROUP", &self.sink_group),
        ] {
            if !valid_id(value) {
                return Err(err(
                    key,
                    env,
                    value,
                    "1 to 200 characters of A-Z a-z 0-9 - _ .",
                ));
            }
        }
        if !self.topic_prefix.is_empty() && !valid_id(&self.topic_prefix) {
            return Err(err(
                "--topic-prefix",
                "ORDER_SAGA_TOPIC_PREFIX",
                &self.topic_prefix,
                "empty, or up to 200 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            return Err(err(
                "--registry-url",
                "ORDER_SAGA_REGISTRY_URL",
                &self.registry_url,
                "an http:// or https:// URL",
            ));
        }
        if crate::db::tls::check_url(&self.database_url).is_err() {
            return Err(err(
                "--database-url",
                "ORDER_SAGA_DATABASE_URL",
                "(hidden)",
                "a PostgreSQL URL such as postgres://user:password@host:5432/db",
            ));
        }
        in_range(
            "--commit-interval-ms",
            "ORDER_SAGA_COMMIT_INTERVAL_MS",
            self.commit_interval_ms,
            1,
            60_000,
        )?;
        in_range(
            "--transaction-timeout-ms",
            "ORDER_SAGA_TRANSACTION_TIMEOUT_MS",
            self.transaction_timeout_ms,
            1_000,
            900_000,
        )?;
        if self.transaction_timeout_ms <= self.commit_interval_ms * 2 {
            return Err(err(
                "--transaction-timeout-ms",
                "ORDER_SAGA_TRANSACTION_TIMEOUT_MS",
                self.transaction_timeout_ms,
                "more than twice --commit-interval-ms",
            ));
        }
        in_range(
            "--state-retention-ms",
            "ORDER_SAGA_STATE_RETENTION_MS",
            self.state_retention_ms,
            0,
            30 * 86_400_000,
        )?;
        in_range(
            "--dedup-window-ms",
            "ORDER_SAGA_DEDUP_WINDOW_MS",
            self.dedup_window_ms,
            1_000,
            365 * 86_400_000,
        )?;
        in_range(
            "--max-orders-in-memory",
            "ORDER_SAGA_MAX_ORDERS_IN_MEMORY",
            self.max_orders_in_memory,
            1,
            100_000_000,
        )?;
        in_range(
            "--step-timeout-ms",
            "ORDER_SAGA_STEP_TIMEOUT_MS",
            self.step_timeout_ms,
            10,
            7 * 86_400_000,
        )?;
        in_range(
            "--max-attempts",
            "ORDER_SAGA_MAX_ATTEMPTS",
            u64::from(self.max_attempts),
            1,
            100,
        )?;
        in_range(
            "--retry-backoff-ms",
            "ORDER_SAGA_RETRY_BACKOFF_MS",
            self.retry_backoff_ms,
            1,
            3_600_000,
        )?;
        in_range(
            "--max-task-idle-ms",
            "ORDER_SAGA_MAX_TASK_IDLE_MS",
            self.max_task_idle_ms,
            0,
            60_000,
        )?;
        in_range(
            "--early-grace-ms",
            "ORDER_SAGA_EARLY_GRACE_MS",
            self.early_grace_ms,
            1,
            7 * 86_400_000,
        )?;
        in_range(
            "--stats-interval-s",
            "ORDER_SAGA_STATS_INTERVAL_S",
            self.stats_interval_s,
            1,
            3_600,
        )?;
        crate::telemetry::validate_config(self)?;
        self.security.validate()?;
        Ok(())
    }

    /// The processor's stable `transactional.id`.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application_id, self.instance_id)
    }

    /// Every setting as the environment variable that sets it, for handing this
    /// configuration to a child process (`order-saga` started by tests or benchmarks).
    /// The names come from the flags' own declarations, matched to the fields by name, so
    /// a new setting is handed on without a second list to keep in step.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        use serde_json::Value;
        // Serializing a struct of strings, numbers and flags to a map cannot fail; the
        // unit test below checks every variable comes out.
        let Ok(Value::Object(values)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        ConfigArgs::augment_args(clap::Command::new("order-saga"))
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_str()?.to_string();
                let value = match values.get(arg.get_id().as_str())? {
                    Value::String(s) => s.clone(),
                    // Repeatable flags: the variable holds the values ';'-separated.
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(";"),
                    other => other.to_string(),
                };
                Some((env, value))
            })
            .collect()
    }

    /// A configuration from flags and the environment as `order-saga run` reads them;
    /// `args[0]` is the program name. For tests and tools that build their own.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = ConfigArgs::augment_args(clap::Command::new("order-saga"));
        let matches = command.try_get_matches_from(args)?;
        Ok(ConfigArgs::from_arg_matches(&matches)?.into_config())
    }

    /// The heartbeat base path, if heartbeats are on.
    pub fn heartbeat_path(&self) -> Option<std::path::PathBuf> {
        (!self.heartbeat_file.is_empty()).then(|| std::path::PathBuf::from(&self.heartbeat_file))
    }

    /// The topic names of this deployment.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// The saga policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            early_grace_ms: self.early_grace_ms as i64,
            ..Policy::from_settings(
                self.step_timeout_ms as i64,
                self.max_attempts,
                self.retry_backoff_ms as i64,
            )
        }
    }

    /// How long a partition group waits for a silent input partition.
    pub fn max_task_idle(&self) -> Duration {
        Duration::from_millis(self.max_task_idle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["order-saga"];
        all.extend_from_slice(args);
        match Config::try_parse_from(all) {
            Ok(config) => config,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    #[test]
    fn defaults_fit_the_local_stack_and_validate() {
        let c = parse(&[]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.application_id, "order");
        assert_eq!(c.transactional_id(), "order-0");
    }

    #[test]
    fn env_vars_hand_on_every_setting_by_its_own_variable() {
        let command = ConfigArgs::augment_args(clap::Command::new("order-saga"));
        let declared: std::collections::BTreeSet<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let c = parse(&[
            "--commit-interval-ms",
            "250",
            "--log-format",
            "json",
            "--kafka-property",
            "socket.timeout.ms=30000",
            "--kafka-property",
            "client.rack=a",
        ]);
        let vars: std::collections::BTreeMap<_, _> = c.env_vars().into_iter().collect();
        let given: std::collections::BTreeSet<String> = vars.keys().cloned().collect();
        assert_eq!(given, declared);
        // Every field of the configuration has a variable: none is silently left behind.
        let fields = match serde_json::to_value(&c) {
            Ok(serde_json::Value::Object(map)) => map.len(),
            other => panic!("not a map: {other:?}"),
        };
        assert_eq!(vars.len(), fields);
        assert_eq!(vars["ORDER_SAGA_COMMIT_INTERVAL_MS"], "250");
        assert_eq!(vars["ORDER_SAGA_LOG_FORMAT"], "json");
        assert_eq!(vars["ORDER_SAGA_STATIC_MEMBERSHIP"], "false");
        assert_eq!(
            vars["ORDER_SAGA_KAFKA_PROPERTIES"],
            "socket.timeout.ms=30000;client.rack=a"
        );
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // Only a variable no other test reads is set, so parallel tests are unaffected.
        std::env::set_var("ORDER_SAGA_SINK_GROUP", "from-the-environment");
        let defaults = ConfigArgs::defaults().map(ConfigArgs::into_config);
        let parsed = parse(&[]).sink_group;
        std::env::remove_var("ORDER_SAGA_SINK_GROUP");
        assert_eq!(parsed, "from-the-environment");
        match defaults {
            Ok(c) => assert_eq!(c.sink_group, "order-pg-sink"),
            Err(e) => panic!("defaults do not parse: {e}"),
        }
    }

    #[test]
    fn zero_commit_interval_is_refused_naming_the_key() {
        let e = parse(&["--commit-interval-ms", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--commit-interval-ms");
        assert!(
            e.to_string().contains("ORDER_SAGA_COMMIT_INTERVAL_MS"),
            "{e}"
        );
        assert!(e.to_string().contains("from 1 to 60000"), "{e}");
    }

    #[test]
    fn bootstrap_without_port_is_refused() {
        let e = parse(&["--bootstrap", "localhost"]).validate().unwrap_err();
        assert_eq!(e.key, "--bootstrap");
    }

    #[test]
    fn instance_id_with_spaces_is_refused() {
        let e = parse(&["--instance-id", "a b"]).validate().unwrap_err();
        assert_eq!(e.key, "--instance-id");
    }

    #[test]
    fn registry_url_must_be_http() {
        let e = parse(&["--registry-url", "localhost:8080"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--registry-url");
    }

    #[test]
    fn database_url_that_does_not_parse_is_refused_without_echoing_it() {
        let e = parse(&["--database-url", "postgres://u:secret@host:notaport/db"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--database-url");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn static_membership_is_off_by_default_and_set_by_flag() {
        assert!(!parse(&[]).static_membership);
        assert!(parse(&["--static-membership"]).static_membership);
        // Child processes get every setting as a variable, "false" included; it must
        // parse as false. Only "false" is set: it is the default other tests expect.
        std::env::set_var("ORDER_SAGA_STATIC_MEMBERSHIP", "false");
        let from_env = parse(&[]).static_membership;
        std::env::remove_var("ORDER_SAGA_STATIC_MEMBERSHIP");
        assert!(!from_env);
    }

    #[test]
    fn transaction_timeout_must_exceed_twice_the_commit_interval() {
        let e = parse(&[
            "--commit-interval-ms",
            "5000",
            "--transaction-timeout-ms",
            "9000",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "--transaction-timeout-ms");
    }

    #[test]
    fn a_memory_limit_of_no_orders_is_refused_naming_the_key() {
        assert_eq!(parse(&[]).max_orders_in_memory, 500_000);
        let e = parse(&["--max-orders-in-memory", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--max-orders-in-memory");
        assert!(
            e.to_string().contains("ORDER_SAGA_MAX_ORDERS_IN_MEMORY"),
            "{e}"
        );
    }

    #[test]
    fn a_dedup_window_under_a_second_is_refused_naming_the_key() {
        assert_eq!(parse(&[]).dedup_window_ms, 7 * 86_400_000);
        let e = parse(&["--dedup-window-ms", "10"]).validate().unwrap_err();
        assert_eq!(e.key, "--dedup-window-ms");
        assert!(e.to_string().contains("ORDER_SAGA_DEDUP_WINDOW_MS"), "{e}");
    }
}
