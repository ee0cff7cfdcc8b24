//! The `order-saga` command line. Thin: parse, validate, set up logging, call the library.
//! Results go to stdout and logs to stderr, so `$(order-saga report)` captures the report
//! alone.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{error, info};

use order_saga::cli::{
    self, CreateTopicsCommand, DatabaseCommand, ExplainCommand, HealthCommand, RegistryCommand,
    ReportCommand, RunCommand, SinkCommand, StatusCommand,
};
use order_saga::config::{Config, ConfigArgs};
use order_saga::signals;

#[derive(Parser)]
#[command(
    name = "order-saga",
    version,
    about = "Exactly-once order saga processor for Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the saga processor (and, unless --no-sink, the PostgreSQL sink beside it).
    Run(RunCommand),
    /// Run only the PostgreSQL sink of order-status.
    Sink(SinkCommand),
    /// Register or check the Avro schemas of schemas/ in the registry.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Apply the PostgreSQL migrations (idempotent, safe to run concurrently).
    Migrate(DatabaseCommand),
    /// Create the saga's topics (idempotent).
    CreateTopics(CreateTopicsCommand),
    /// Print one order and its history from PostgreSQL.
    Status(StatusCommand),
    /// Print counts per status, latency percentiles and stuck orders from PostgreSQL.
    Report(ReportCommand),
    /// Tell one order's story from Kafka alone: statuses, commands, results, dead letters.
    Explain(ExplainCommand),
    /// Exit 0 if the heartbeat files of --heartbeat-file are fresh (and, with --readiness,
    /// ready), else 1; one line on stdout says why. For Kubernetes exec probes.
    Health(HealthCommand),
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Set BACKWARD_TRANSITIVE and register every local schema under `<topic>-value`.
    Register(RegistryCommand),
    /// Exit non-zero if a local schema cannot evolve from the registered one.
    Check(RegistryCommand),
}

impl Command {
    /// The configuration this command reads; what it does not read keeps its defaults.
    fn config(&self) -> Result<Config, clap::Error> {
        match self {
            Command::Run(c) => c.config(),
            Command::Sink(c) => c.config(),
            Command::Schemas {
                action: SchemasAction::Register(c) | SchemasAction::Check(c),
            } => c.config(),
            Command::Migrate(c) => c.config(),
            Command::CreateTopics(c) => c.config(),
            Command::Status(c) => c.config(),
            Command::Report(c) => c.config(),
            Command::Explain(c) => c.config(),
            Command::Health(_) => ConfigArgs::defaults().map(ConfigArgs::into_config),
        }
    }
}

/// `order-saga health`: the verdict on stdout, and 0 or 1.
fn health(command: &HealthCommand) -> ExitCode {
    let (healthy, line) =
        order_saga::health::check(command.heartbeat.path().as_deref(), &command.health);
    println!("{line}");
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A probe depends only on the heartbeat files, not on the rest of the settings, and
    // prints nothing but its verdict.
    if let Command::Health(command) = &cli.command {
        return health(command);
    }
    let config = match cli.command.config() {
        Ok(config) => config,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("order-saga: {e}");
        return ExitCode::from(2);
    }
    order_saga::cli::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("order-saga: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "order-saga failed");
            eprintln!("order-saga: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A client thread still blocked in librdkafka (a sink or restore consumer) must not
    // keep a process alive whose work has ended: its supervisor has to see it exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(c) => {
            cli::run(config, !c.no_sink, signals::shutdown_signal())
                .await
                .context("run")?;
        }
        Command::Sink(_) => cli::sink(config, signals::shutdown_signal())
            .await
            .context("sink")?,
        Command::Schemas {
            action: SchemasAction::Register(_),
        } => cli::schemas_register(&config)
            .await
            .context("schemas register")?,
        Command::Schemas {
            action: SchemasAction::Check(_),
        } => {
            if !cli::schemas_check(&config).await.context("schemas check")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Migrate(_) => cli::migrate(&config).await.context("migrate")?,
        Command::CreateTopics(c) => cli::create_topics(&config, c.partitions)
            .await
            .context("create topics")?,
        Command::Status(c) => {
            if !cli::status(&config, &c.order_id).await.context("status")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Report(c) => cli::report(&config, c.report).await.context("report")?,
        Command::Explain(c) => {
            if !cli::explain(&config, &c.explain).await.context("explain")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Health(c) => return Ok(health(&c)),
    }
    info!("done");
    Ok(ExitCode::SUCCESS)
}
