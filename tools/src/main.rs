//! The `order-saga-tools` command line: the simulated downstream services and the load
//! generator, for the demo, tests and benchmarks. Results go to stdout, logs to stderr.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use order_saga::config::{
    Config, ConfigArgs, InstanceArgs, KafkaArgs, LogArgs, RegistryArgs, StatsArgs,
};
use order_saga::{cli, kafka, signals};
use order_saga_tools::load::{self, LoadArgs};
use order_saga_tools::simulate::{self, SimulateArgs};

#[derive(Parser)]
#[command(
    name = "order-saga-tools",
    version,
    about = "Simulated downstream services and a load generator for order-saga"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play the four downstream services: consume commands, produce results.
    Simulate {
        #[command(flatten)]
        simulate: SimulateArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Produce a load of sample orders.
    Load {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        connection: Connection,
    },
}

/// What both tools read: Kafka and the registry, their ids, progress and logs.
#[derive(Args)]
struct Connection {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    instance: InstanceArgs,
    #[command(flatten)]
    stats: StatsArgs,
    #[command(flatten)]
    log: LogArgs,
}

impl Connection {
    fn config(&self) -> Result<Config, clap::Error> {
        Ok(ConfigArgs {
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            instance: self.instance.clone(),
            stats: self.stats.clone(),
            log: self.log.clone(),
            ..ConfigArgs::defaults()?
        }
        .into_config())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let connection = match &cli.command {
        Command::Simulate { connection, .. } | Command::Load { connection, .. } => connection,
    };
    let config = match connection.config() {
        Ok(config) => config,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("order-saga-tools: {e}");
        return ExitCode::from(2);
    }
    order_saga::cli::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("order-saga-tools: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "order-saga-tools failed");
            eprintln!("order-saga-tools: {e:#}");
            ExitCode::FAILURE
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    cli::registry_preflight(&config).await?;
    let codec = cli::codec(&config)?;
    kafka::admin::preflight(&config, &config.topics().all()).await?;
    match command {
        Command::Simulate { simulate, .. } => {
            simulate::run(config, simulate, codec, signals::shutdown_signal())
                .await
                .context("simulator")?;
        }
        Command::Load { load, .. } => {
            load::run(config, load, codec).await.context("load")?;
        }
    }
    Ok(())
}
