//! The commands of the `order-saga` binary, each taking its dependencies as arguments.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tracing::info;

use crate::config::Config;
use crate::contracts::registry::{self, RegistryClient};
use crate::contracts::Codec;
use crate::health::Heartbeat;
use crate::processor::{self, metrics::Metrics};
use crate::telemetry::Telemetry;
use crate::{db, kafka, load, report, simulate, sink};

pub use crate::explain::ExplainArgs;
pub use crate::load::LoadArgs;
pub use crate::report::ReportArgs;
pub use crate::simulate::SimulateArgs;

/// How long start-up waits for PostgreSQL before it gives up.
const DB_START_WAIT: Duration = Duration::from_secs(300);

/// The registry-backed codec every command shares.
pub fn codec(config: &Config) -> anyhow::Result<Arc<Codec>> {
    let auth = config
        .security
        .registry_auth()
        .context("reading the registry's CA, password or token file")?;
    let registry = RegistryClient::secured(&config.registry_url, &auth)?;
    Ok(Arc::new(Codec::new(registry)?))
}

/// Asks the registry for its subjects once: wrong credentials or an untrusted certificate
/// stop start-up here, in plain words, instead of failing every record later. An
/// unreachable registry is left to the commands, which wait for it.
pub async fn registry_preflight(config: &Config) -> anyhow::Result<()> {
    let auth = config
        .security
        .registry_auth()
        .context("reading the registry's CA, password or token file")?;
    let client = RegistryClient::secured(&config.registry_url, &auth)?;
    match client.subjects().await {
        Err(e) => match e.access_failure() {
            Some(reason) => bail!("{reason}"),
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
) -> anyhow::Result<()> {
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
    let outcome: anyhow::Result<()> = match sink_task {
        None => processor.await.map_err(anyhow::Error::new),
        Some(mut sink_task) => tokio::select! {
            result = &mut processor => {
                count_failure(&telemetry, &result);
                if result.is_err() {
                    // The processor is gone; the sink would only idle, so stop it too.
                    sink_task.abort();
                    result.map_err(anyhow::Error::new)
                } else {
                    match sink_task.await {
                        Err(e) => Err(anyhow::anyhow!("the sink task failed: {e}")),
                        Ok(r) => r.map_err(|e| anyhow::Error::new(e).context("the sink stopped")),
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
                    Err(e) => Err(anyhow::anyhow!("the sink task failed: {e}")),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("the sink stopped")),
                    Ok(Ok(())) if !requested => Err(anyhow::anyhow!("the sink stopped on its own")),
                    Ok(Ok(())) => result.map_err(anyhow::Error::new),
                }
            }
        },
    };
    // Blocking: the exporter's last push uses a blocking HTTP client.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .context("metrics shutdown")?;
    outcome
}

/// Counts how the processor ended, for the metrics.
fn count_failure(telemetry: &Telemetry, result: &Result<(), processor::ProcessorError>) {
    match result {
        Err(processor::ProcessorError::Fenced { .. }) => telemetry.on_failure("fenced"),
        Err(_) => telemetry.on_failure("fatal"),
        Ok(()) => {}
    }
}

/// `order-saga sink`.
pub async fn sink(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
        .context("metrics shutdown")?;
    result?;
    Ok(())
}

/// `order-saga simulate`.
pub async fn simulate(
    config: Config,
    args: SimulateArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    registry_preflight(&config).await?;
    let codec = codec(&config)?;
    kafka::admin::preflight(&config, &config.topics().all()).await?;
    simulate::run(config, args, codec, shutdown).await?;
    Ok(())
}

/// `order-saga load`.
pub async fn load(config: Config, args: LoadArgs) -> anyhow::Result<()> {
    registry_preflight(&config).await?;
    let codec = codec(&config)?;
    kafka::admin::preflight(&config, &config.topics().all()).await?;
    load::run(config, args, codec).await?;
    Ok(())
}

/// `order-saga schemas register`.
pub async fn schemas_register(config: &Config) -> anyhow::Result<()> {
    for (subject, id) in
        registry::register_all_secured(&config.registry_url, &config.security.registry_auth()?)
            .await?
    {
        println!("{subject}\tid {id}\tBACKWARD_TRANSITIVE");
    }
    Ok(())
}

/// `order-saga schemas check`: prints each subject's verdict; false if any is incompatible.
pub async fn schemas_check(config: &Config) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for outcome in
        registry::check_all_secured(&config.registry_url, &config.security.registry_auth()?).await?
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
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
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
pub async fn create_topics(config: &Config, partitions: i32) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&partitions) {
        bail!("--partitions must be from 1 to 10000, got {partitions}");
    }
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    kafka::admin::create_topics(config, &refs, partitions).await?;
    info!(topics = refs.len(), partitions, "topics ready");
    Ok(())
}

/// `order-saga status <id>`: false if the order is unknown.
pub async fn status(config: &Config, order_id: &str) -> anyhow::Result<bool> {
    let client = db::connect_secured(
        &config.database_url,
        &config.security,
        Duration::from_secs(30),
    )
    .await?;
    report::print_order(&client, order_id)
        .await
        .context("reading the order")
}

/// `order-saga report`.
pub async fn report(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
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
pub async fn explain(config: &Config, args: &ExplainArgs) -> anyhow::Result<bool> {
    let codec = codec(config)?;
    Ok(crate::explain::run(config, codec, args).await?)
}
