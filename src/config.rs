//! The one configuration type, filled from flags and environment variables.
//!
//! Every key can be given as a flag (`--commit-interval-ms 100`) or as an environment
//! variable (`ORDER_SAGA_COMMIT_INTERVAL_MS=100`); the flag wins. Defaults fit the local
//! stack of `scripts/stack`. [`Config::validate`] runs before anything connects, so a bad
//! value stops start-up with a message that names the key and what is allowed.

use std::time::Duration;

use clap::Args;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the commands of `order-saga` may need to know. Its `Debug` (in
/// `security.rs`) hides the database URL's password.
#[derive(Clone, Args)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long,
        env = "ORDER_SAGA_BOOTSTRAP",
        default_value = "localhost:9092",
        global = true
    )]
    pub bootstrap: String,

    /// Application id: the processor's consumer group and the prefix of its transactional id.
    #[arg(
        long,
        env = "ORDER_SAGA_APPLICATION_ID",
        default_value = "order",
        global = true
    )]
    pub application_id: String,

    /// This instance's stable id; the transactional id is `<application-id>-<instance-id>`.
    /// Two live instances must never share it: the newer fences the older.
    #[arg(
        long,
        env = "ORDER_SAGA_INSTANCE_ID",
        default_value = "0",
        global = true
    )]
    pub instance_id: String,

    /// Base URL of the Confluent-compatible schema registry API.
    #[arg(
        long,
        env = "ORDER_SAGA_REGISTRY_URL",
        default_value = "http://localhost:8080/apis/ccompat/v7",
        global = true
    )]
    pub registry_url: String,

    /// PostgreSQL connection URL of the order-status table; `sslmode` (disable, prefer,
    /// require, verify-ca, verify-full) and `sslrootcert` are honoured.
    /// [default: postgres://order:***@localhost:55432/order]
    #[arg(
        long,
        env = "ORDER_SAGA_DATABASE_URL",
        default_value = "postgres://order:order@localhost:55432/order",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// How often the processor commits its transaction, in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_COMMIT_INTERVAL_MS",
        default_value_t = 100,
        global = true
    )]
    pub commit_interval_ms: u64,

    /// Kafka `transaction.timeout.ms`; kept short so a dead instance's transaction is
    /// aborted by the broker quickly.
    #[arg(
        long,
        env = "ORDER_SAGA_TRANSACTION_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub transaction_timeout_ms: u64,

    /// How long a terminal order stays in memory before it is evicted, in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_STATE_RETENTION_MS",
        default_value_t = 600_000,
        global = true
    )]
    pub state_retention_ms: u64,

    /// How long a finished order is remembered after it settled, in milliseconds, so that
    /// a repeated create starts no second saga (a few bytes per order; see the README).
    #[arg(
        long,
        env = "ORDER_SAGA_DEDUP_WINDOW_MS",
        default_value_t = 604_800_000,
        global = true
    )]
    pub dedup_window_ms: u64,

    /// Deadline of one downstream command, in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_STEP_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub step_timeout_ms: u64,

    /// Attempts of one command before the step fails for good.
    #[arg(
        long,
        env = "ORDER_SAGA_MAX_ATTEMPTS",
        default_value_t = 3,
        global = true
    )]
    pub max_attempts: u32,

    /// First retry delay after a retriable failure, in milliseconds; doubles per attempt.
    #[arg(
        long,
        env = "ORDER_SAGA_RETRY_BACKOFF_MS",
        default_value_t = 200,
        global = true
    )]
    pub retry_backoff_ms: u64,

    /// How long a partition group waits for an input partition that may still hold an
    /// earlier record before it goes on without it (like Kafka Streams'
    /// `max.task.idle.ms`), in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_MAX_TASK_IDLE_MS",
        default_value_t = 300,
        global = true
    )]
    pub max_task_idle_ms: u64,

    /// How long a cancel or result that arrived before its order's create is held for
    /// the create, in milliseconds, before it is dead-lettered.
    #[arg(
        long,
        env = "ORDER_SAGA_EARLY_GRACE_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub early_grace_ms: u64,

    /// Consumer group of the PostgreSQL sink.
    #[arg(
        long,
        env = "ORDER_SAGA_SINK_GROUP",
        default_value = "order-pg-sink",
        global = true
    )]
    pub sink_group: String,

    /// Seconds between the periodic progress and counter log lines.
    #[arg(
        long,
        env = "ORDER_SAGA_STATS_INTERVAL_S",
        default_value_t = 10,
        global = true
    )]
    pub stats_interval_s: u64,

    /// Prefix put before every topic name, so that several saga deployments (or tests)
    /// can share one cluster. Empty in production.
    #[arg(
        long,
        env = "ORDER_SAGA_TOPIC_PREFIX",
        default_value = "",
        global = true
    )]
    pub topic_prefix: String,

    /// OTLP/HTTP endpoint metrics are pushed to, as OTEL_EXPORTER_OTLP_ENDPOINT
    /// (`/v1/metrics` is appended), e.g. http://127.0.0.1:9090/api/v1/otlp for
    /// Prometheus. Empty: no metrics export.
    #[arg(
        long,
        env = "ORDER_SAGA_OTLP_ENDPOINT",
        default_value = "",
        global = true
    )]
    pub otlp_endpoint: String,

    /// How often metrics are pushed to --otlp-endpoint, in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_METRICS_INTERVAL_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub metrics_interval_ms: u64,

    /// An order in flight whose state has not changed for this long, in milliseconds,
    /// counts as stuck in the order_saga.orders.stuck metric.
    #[arg(
        long,
        env = "ORDER_SAGA_STUCK_AFTER_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub stuck_after_ms: u64,

    /// Log format.
    #[arg(long, env = "ORDER_SAGA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// TLS, SASL and credentials of every connection.
    #[command(flatten)]
    pub security: crate::security::Security,
    /// Base path of the heartbeat files read by `order-saga health`: each component
    /// writes `<path>.<component>` (processor, sink). Empty: no heartbeat.
    #[arg(
        long,
        env = "ORDER_SAGA_HEARTBEAT_FILE",
        default_value = "",
        global = true
    )]
    pub heartbeat_file: String,

    /// Static group membership: the processor's consumer sets `group.instance.id` to the
    /// transactional id, so a restart that is back within the session timeout keeps its
    /// partitions without a rebalance.
    #[arg(
        long,
        env = "ORDER_SAGA_STATIC_MEMBERSHIP",
        default_value_t = false,
        global = true
    )]
    pub static_membership: bool,
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
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let log_format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        vec![
            ("ORDER_SAGA_BOOTSTRAP", self.bootstrap.clone()),
            ("ORDER_SAGA_APPLICATION_ID", self.application_id.clone()),
            ("ORDER_SAGA_INSTANCE_ID", self.instance_id.clone()),
            ("ORDER_SAGA_REGISTRY_URL", self.registry_url.clone()),
            ("ORDER_SAGA_DATABASE_URL", self.database_url.clone()),
            (
                "ORDER_SAGA_COMMIT_INTERVAL_MS",
                self.commit_interval_ms.to_string(),
            ),
            (
                "ORDER_SAGA_TRANSACTION_TIMEOUT_MS",
                self.transaction_timeout_ms.to_string(),
            ),
            (
                "ORDER_SAGA_STATE_RETENTION_MS",
                self.state_retention_ms.to_string(),
            ),
            (
                "ORDER_SAGA_DEDUP_WINDOW_MS",
                self.dedup_window_ms.to_string(),
            ),
            (
                "ORDER_SAGA_STEP_TIMEOUT_MS",
                self.step_timeout_ms.to_string(),
            ),
            ("ORDER_SAGA_MAX_ATTEMPTS", self.max_attempts.to_string()),
            (
                "ORDER_SAGA_RETRY_BACKOFF_MS",
                self.retry_backoff_ms.to_string(),
            ),
            (
                "ORDER_SAGA_MAX_TASK_IDLE_MS",
                self.max_task_idle_ms.to_string(),
            ),
            ("ORDER_SAGA_EARLY_GRACE_MS", self.early_grace_ms.to_string()),
            ("ORDER_SAGA_SINK_GROUP", self.sink_group.clone()),
            (
                "ORDER_SAGA_STATS_INTERVAL_S",
                self.stats_interval_s.to_string(),
            ),
            ("ORDER_SAGA_TOPIC_PREFIX", self.topic_prefix.clone()),
            ("ORDER_SAGA_LOG_FORMAT", log_format.to_string()),
            ("ORDER_SAGA_OTLP_ENDPOINT", self.otlp_endpoint.clone()),
            (
                "ORDER_SAGA_METRICS_INTERVAL_MS",
                self.metrics_interval_ms.to_string(),
            ),
            ("ORDER_SAGA_STUCK_AFTER_MS", self.stuck_after_ms.to_string()),
            ("ORDER_SAGA_HEARTBEAT_FILE", self.heartbeat_file.clone()),
            (
                "ORDER_SAGA_STATIC_MEMBERSHIP",
                self.static_membership.to_string(),
            ),
        ]
        .into_iter()
        .chain(self.security.env_vars())
        .collect()
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["order-saga"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(cli) => cli.config,
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
    fn env_vars_name_every_setting_by_its_own_variable() {
        use clap::CommandFactory;
        let declared: std::collections::BTreeSet<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let c = parse(&["--commit-interval-ms", "250", "--log-format", "json"]);
        let given: std::collections::BTreeSet<String> =
            c.env_vars().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(given, declared);
        let vars: std::collections::BTreeMap<_, _> = c.env_vars().into_iter().collect();
        assert_eq!(vars["ORDER_SAGA_COMMIT_INTERVAL_MS"], "250");
        assert_eq!(vars["ORDER_SAGA_LOG_FORMAT"], "json");
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
    fn a_dedup_window_under_a_second_is_refused_naming_the_key() {
        assert_eq!(parse(&[]).dedup_window_ms, 7 * 86_400_000);
        let e = parse(&["--dedup-window-ms", "10"]).validate().unwrap_err();
        assert_eq!(e.key, "--dedup-window-ms");
        assert!(e.to_string().contains("ORDER_SAGA_DEDUP_WINDOW_MS"), "{e}");
    }
}
