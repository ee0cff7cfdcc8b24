//! The `order-saga` command line. Thin: parse, validate, set up logging, call the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{error, info};

use order_saga::config::{Config, LogFormat};
use order_saga::{cli, signals};

#[derive(Parser)]
#[command(
    name = "order-saga",
    version,
    about = "Exactly-once order saga processor for Kafka"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the saga processor (and, unless --no-sink, the PostgreSQL sink beside it).
    Run {
        /// Do not run the PostgreSQL sink in this process.
        #[arg(long)]
        no_sink: bool,
    },
    /// Run only the PostgreSQL sink of order-status.
    Sink,
    /// Play the four downstream services: consume commands, produce results.
    Simulate(cli::SimulateArgs),
    /// Produce a load of sample orders.
    Load(cli::LoadArgs),
    /// Register or check the Avro schemas of schemas/ in the registry.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Apply the PostgreSQL migrations (idempotent, safe to run concurrently).
    Migrate,
    /// Create the saga's topics (idempotent).
    CreateTopics {
        /// Partitions of every topic; all inputs must share one count.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
    /// Print one order and its history from PostgreSQL.
    Status {
        /// The order id.
        order_id: String,
    },
    /// Print counts per status, latency percentiles and stuck orders from PostgreSQL.
    Report(cli::ReportArgs),
    /// Tell one order's story from Kafka alone: statuses, commands, results, dead letters.
    Explain(cli::ExplainArgs),
    /// Exit 0 if the heartbeat files of --heartbeat-file are fresh (and, with --readiness,
    /// ready), else 1; one line on stdout says why. For Kubernetes exec probes.
    Health(order_saga::health::HealthArgs),
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Set BACKWARD_TRANSITIVE and register every local schema under `<topic>-value`.
    Register,
    /// Exit non-zero if a local schema cannot evolve from the registered one.
    Check,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `order-saga health`: the verdict on stdout, and 0 or 1.
fn health(config: &Config, args: &order_saga::health::HealthArgs) -> ExitCode {
    let (healthy, line) = order_saga::health::check(config.heartbeat_path().as_deref(), args);
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
    if let Command::Health(args) = &cli.command {
        return health(&cli.config, args);
    }
    if let Err(e) = cli.config.validate() {
        eprintln!("order-saga: {e}");
        return ExitCode::from(2);
    }
    init_logging(cli.config.log_format);
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
    let code = match runtime.block_on(dispatch(cli)) {
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

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config;
    match cli.command {
        Command::Run { no_sink } => {
            cli::run(config, !no_sink, signals::shutdown_signal())
                .await
                .context("processor")?;
        }
        Command::Sink => cli::sink(config, signals::shutdown_signal())
            .await
            .context("sink")?,
        Command::Simulate(args) => cli::simulate(config, args, signals::shutdown_signal())
            .await
            .context("simulator")?,
        Command::Load(args) => cli::load(config, args).await.context("load")?,
        Command::Schemas {
            action: SchemasAction::Register,
        } => cli::schemas_register(&config)
            .await
            .context("schemas register")?,
        Command::Schemas {
            action: SchemasAction::Check,
        } => {
            if !cli::schemas_check(&config).await.context("schemas check")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Migrate => cli::migrate(&config).await.context("migrate")?,
        Command::CreateTopics { partitions } => cli::create_topics(&config, partitions)
            .await
            .context("create topics")?,
        Command::Status { order_id } => {
            if !cli::status(&config, &order_id).await.context("status")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Report(args) => cli::report(&config, args).await.context("report")?,
        Command::Explain(args) => {
            if !cli::explain(&config, &args).await.context("explain")? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Health(args) => return Ok(health(&config, &args)),
    }
    info!("done");
    Ok(ExitCode::SUCCESS)
}
