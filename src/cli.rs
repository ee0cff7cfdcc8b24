//! The commands of the `order-saga` binary: each one's flags, and the work it does with
//! them. A command flattens only the configuration groups it reads (see
//! [`crate::config`]), so its `--help` is its own; the groups it does not take keep their
//! defaults in the [`Config`] it builds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use thiserror::Error;
use tracing::info;

use crate::config::{
    Config, ConfigArgs, DatabaseArgs, HeartbeatArgs, InstanceArgs, KafkaArgs, LogArgs,
    RegistryArgs, SinkArgs, StatsArgs, TelemetryArgs,
};
use crate::contracts::registry::{self, RegistryClient, RegistryError};
use crate::contracts::{Codec, CodecError};
use crate::db::DbError;
use crate::health::{HealthArgs, Heartbeat};
use crate::kafka::admin::AdminError;
use crate::processor::{self, metrics::Metrics, ProcessorError};
use crate::report::ReportError;
use crate::sink::SinkError;
use crate::telemetry::{Telemetry, TelemetryError};
use crate::{db, kafka, report, sink};

pub use crate::explain::{ExplainArgs, ExplainError};
pub use crate::report::ReportArgs;

/// Why a command failed; `main` adds which command it was. A variant with a source names
/// only its own part: `main` prints the chain.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("reading the registry's CA, password or token file")]
    RegistryFiles(#[source] std::io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry refused us (credentials, certificate): the reason in plain words.
    #[error("{0}")]
    RegistryAccess(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error("the sink stopped")]
    Sink(#[from] SinkError),
    #[error("the sink task failed")]
    SinkTask(#[source] tokio::task::JoinError),
    /// Nothing asked it to stop: the table would fall behind without anyone noticing.
    #[error("the sink stopped on its own")]
    SinkStoppedOnItsOwn,
    #[error("metrics shutdown")]
    MetricsShutdown(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("reading the order table")]
    Report(#[from] ReportError),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    #[error("--partitions must be from 1 to 10000, got {0}")]
    Partitions(i32),
}

/// `order-saga run`: every setting is read.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// Do not run the PostgreSQL sink in this process.
    #[arg(long)]
    pub no_sink: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `order-saga sink`: Kafka, the registry, PostgreSQL; not the processor's settings.
#[derive(Debug, Args)]
pub struct SinkCommand {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub instance: InstanceArgs,
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

/// `order-saga schemas register|check`: the registry only.
#[derive(Debug, Args)]
pub struct RegistryCommand {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga migrate`: PostgreSQL only.
#[derive(Debug, Args)]
pub struct DatabaseCommand {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga create-topics`: Kafka only.
#[derive(Debug, Args)]
pub struct CreateTopicsCommand {
    /// Partitions of every topic; all inputs must share one count.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga status <order-id>`: PostgreSQL only.
#[derive(Debug, Args)]
pub struct StatusCommand {
    /// The order id.
    pub order_id: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga report`: PostgreSQL only.
#[derive(Debug, Args)]
pub struct ReportCommand {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga explain <order-id>`: Kafka and the registry, no PostgreSQL.
#[derive(Debug, Args)]
pub struct ExplainCommand {
    #[command(flatten)]
    pub explain: ExplainArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `order-saga health`: the heartbeat files only; it logs nothing.
#[derive(Debug, Args)]
pub struct HealthCommand {
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    #[command(flatten)]
    pub health: HealthArgs,
}

impl RunCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        Ok(self.config.clone().into_config())
    }
}

impl SinkCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        Ok(ConfigArgs {
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            database: self.database.clone(),
            instance: self.instance.clone(),
            sink: self.sink.clone(),
            telemetry: self.telemetry.clone(),
            stats: self.stats.clone(),
            heartbeat: self.heartbeat.clone(),
            log: self.log.clone(),
            ..ConfigArgs::defaults()?
        }
        .into_config())
    }
}

impl RegistryCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        Ok(ConfigArgs {
            registry: self.registry.clone(),
            log: self.log.clone(),
            ..ConfigArgs::defaults()?
        }
        .into_config())
    }
}

impl DatabaseCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        database_config(&self.database, &self.log)
    }
}

impl CreateTopicsCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        Ok(ConfigArgs {
            kafka: self.kafka.clone(),
            log: self.log.clone(),
            ..ConfigArgs::defaults()?
        }
        .into_config())
    }
}

impl StatusCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        database_config(&self.database, &self.log)
    }
}

impl ReportCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        database_config(&self.database, &self.log)
    }
}

impl ExplainCommand {
    pub fn config(&self) -> Result<Config, clap::Error> {
        Ok(ConfigArgs {
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            log: self.log.clone(),
            ..ConfigArgs::defaults()?
        }
        .into_config())
    }
}

fn registry_auth(config: &Config) -> Result<crate::security::RegistryAuth, CommandError> {
    config
        .security
        .registry_auth()
        .map_err(CommandError::RegistryFiles)
}

fn database_config(database: &DatabaseArgs, log: &LogArgs) -> Result<Config, clap::Error> {
    Ok(ConfigArgs {
        database: database.clone(),
        log: log.clone(),
        ..ConfigArgs::defaults()?
    }
    .into_config())
}

/// How long start-up waits for PostgreSQL before it gives up.
const DB_START_WAIT: Duration = Duration::from_secs(300);

/// The registry-backed codec every command shares.
pub fn codec(config: &Config) -> Result<Arc<Codec>, CommandError> {
    let auth = config
        .security
        .registry_auth()
        .map_err(CommandError::RegistryFiles)?;
    let registry = RegistryClient::secured(&config.registry_url, &auth)?;
    Ok(Arc::new(Codec::new(registry)?))
}

/// Asks the registry for its subjects once: wrong credentials or an untrusted certificate
/// stop start-up here, in plain words, instead of failing every record later. An
/// unreachable registry is left to the commands, which wait for it.
pub async fn registry_preflight(config: &Config) -> Result<(), CommandError> {
    let auth = config
        .security
        .registry_auth()
        .map_err(CommandError::RegistryFiles)?;
    let client = RegistryClient::secured(&config.registry_url, &auth)?;
    match client.subjects().await {
        Err(e) => match e.access_failure() {
            Some(reason) => Err(CommandError::RegistryAccess(reason)),
            None => Ok(()),
        },
        Ok(_) => Ok(()),
    }
}

/// `order-saga run`: the processor, and the sink beside it unless `with_sink` is false.
pub async fn run(
    config: Config,
    with_sink: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CommandError> {
    registry_preflight(&config).await?;
    let codec = codec(&config)?;
    let telemetry = Telemetry::from_config(&config, "run")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = Arc::new(tx);
    let on_signal = tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = on_signal.send(true);
    });
    let sink_task = if with_sink {
        let config = config.clone();
        let codec = codec.clone();
        let telemetry = telemetry.clone();
        let mut rx = rx.clone();
        Some(tokio::spawn(async move {
            sink::run_with(config, codec, telemetry, async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
        }))
    } else {
        None
    };
    let heartbeat = Arc::new(Heartbeat::new(config.heartbeat_path(), "processor"));
    // Beats resume once the loop runs; until then a startup probe gives it time.
    heartbeat.beat("starting", false);
    let ctx = processor::Context {
        policy: config.policy(),
        config,
        codec,
        metrics: Arc::new(Metrics::default()),
        telemetry: telemetry.clone(),
        runtime: tokio::runtime::Handle::current(),
        heartbeat,
    };
    let mut rx2 = rx.clone();
    let processor = processor::run(ctx, async move {
        let _ = rx2.wait_for(|v| *v).await;
    });
    tokio::pin!(processor);
    let outcome: Result<(), CommandError> = match sink_task {
        None => processor.await.map_err(CommandError::from),
        Some(mut sink_task) => tokio::select! {
            result = &mut processor => {
                count_failure(&telemetry, &result);
                if result.is_err() {
                    // The processor is gone; the sink would only idle, so stop it too.
                    sink_task.abort();
                    result.map_err(CommandError::from)
                } else {
                    match sink_task.await {
                        Err(e) => Err(CommandError::SinkTask(e)),
                        Ok(r) => r.map_err(CommandError::from),
                    }
                }
            }
            ended = &mut sink_task => {
                // Whatever ends the sink ends the process: a process that only processes
                // would leave the table behind without anyone noticing.
                let requested = *rx.borrow();
                let _ = tx.send(true);
                let result = processor.await;
                count_failure(&telemetry, &result);
                match ended {
                    Err(e) => Err(CommandError::SinkTask(e)),
                    Ok(Err(e)) => Err(CommandError::from(e)),
                    Ok(Ok(())) if !requested => Err(CommandError::SinkStoppedOnItsOwn),
                    Ok(Ok(())) => result.map_err(CommandError::from),
                }
            }
        },
    };
    // Blocking: the exporter's last push uses a blocking HTTP client.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .map_err(CommandError::MetricsShutdown)?;
    outcome
}

/// Counts how the processor ended, for the metrics.
fn count_failure(telemetry: &Telemetry, result: &Result<(), processor::ProcessorError>) {
    if let Err(e) = result {
        telemetry.on_failure(e.kind());
    }
}

/// `order-saga sink`.
pub async fn sink(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CommandError> {
    registry_preflight(&config).await?;
    let codec = codec(&config)?;
    kafka::admin::preflight(
        &config,
        &[config.topics().name(crate::topics::ORDER_STATUS)],
    )
    .await?;
    let telemetry = Telemetry::from_config(&config, "sink")?;
    let result = sink::run_with(config, codec, telemetry.clone(), shutdown).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .map_err(CommandError::MetricsShutdown)?;
    result?;
    Ok(())
}

/// `order-saga schemas register`.
pub async fn schemas_register(config: &Config) -> Result<(), CommandError> {
    for (subject, id) in
        registry::register_all_secured(&config.registry_url, &registry_auth(config)?).await?
    {
        println!("{subject}\tid {id}\tBACKWARD_TRANSITIVE");
    }
    Ok(())
}

/// `order-saga schemas check`: prints each subject's verdict; false if any is incompatible.
pub async fn schemas_check(config: &Config) -> Result<bool, CommandError> {
    let mut all_ok = true;
    for outcome in
        registry::check_all_secured(&config.registry_url, &registry_auth(config)?).await?
    {
        let verdict = match (outcome.compatible, outcome.new_subject) {
            (false, _) => "INCOMPATIBLE",
            (true, true) => "new",
            (true, false) => "ok",
        };
        all_ok &= outcome.compatible;
        println!("{verdict:<13}{}", outcome.subject);
        for m in &outcome.messages {
            println!("    {m}");
        }
    }
    Ok(all_ok)
}

/// `order-saga migrate`.
pub async fn migrate(config: &Config) -> Result<(), CommandError> {
    let mut client =
        db::connect_secured(&config.database_url, &config.security, DB_START_WAIT).await?;
    let applied = db::migrate(&mut client).await?;
    for m in &applied {
        println!("applied {m}");
    }
    if applied.is_empty() {
        println!("database schema up to date");
    }
    Ok(())
}

/// `order-saga create-topics`.
pub async fn create_topics(config: &Config, partitions: i32) -> Result<(), CommandError> {
    if !(1..=10_000).contains(&partitions) {
        return Err(CommandError::Partitions(partitions));
    }
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    kafka::admin::create_topics(config, &refs, partitions).await?;
    info!(topics = refs.len(), partitions, "topics ready");
    println!("{} topics ready, {partitions} partitions each", refs.len());
    Ok(())
}

/// `order-saga status <id>`: false if the order is unknown.
pub async fn status(config: &Config, order_id: &str) -> Result<bool, CommandError> {
    let client = db::connect_secured(
        &config.database_url,
        &config.security,
        Duration::from_secs(30),
    )
    .await?;
    Ok(report::print_order(&client, order_id).await?)
}

/// `order-saga report`.
pub async fn report(config: &Config, args: ReportArgs) -> Result<(), CommandError> {
    let client = db::connect_secured(
        &config.database_url,
        &config.security,
        Duration::from_secs(30),
    )
    .await?;
    report::print_report(&client, &args).await?;
    Ok(())
}

/// `order-saga explain <id>`: false if Kafka holds nothing about the order.
pub async fn explain(config: &Config, args: &ExplainArgs) -> Result<bool, CommandError> {
    let codec = codec(config)?;
    Ok(crate::explain::run(config, codec, args).await?)
}

/// Logs to stderr (results go to stdout), as text or JSON lines, filtered by `RUST_LOG`
/// (default: info, and rdkafka's own warnings). Every binary of the workspace calls this.
pub fn init_logging(format: crate::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        crate::config::LogFormat::Text => builder.init(),
        crate::config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
