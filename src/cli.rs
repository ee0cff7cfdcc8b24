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
use crate::{db, kafka, load, report, simulate, sink};

pub use crate::load::LoadArgs;
pub use crate::report::ReportArgs;
pub use crate::simulate::SimulateArgs;

/// How long start-up waits for PostgreSQL before it gives up.
const DB_START_WAIT: Duration = Duration::from_secs(300);

/// The registry-backed codec every command shares.
pub fn codec(config: &Config) -> anyhow::Result<Arc<Codec>> {
    let registry = RegistryClient::new(&config.registry_url)?;
    Ok(Arc::new(Codec::new(registry)?))
}

/// `order-saga run`: the processor, and the sink beside it unless `with_sink` is false.
pub async fn run(
    config: Config,
    with_sink: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let codec = codec(&config)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let sink_task = if with_sink {
        let config = config.clone();
        let codec = codec.clone();
        let mut rx = rx.clone();
        Some(tokio::spawn(async move {
            sink::run(config, codec, async move {
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
        runtime: tokio::runtime::Handle::current(),
        heartbeat,
    };
    let mut rx2 = rx.clone();
    let result = processor::run(ctx, async move {
        let _ = rx2.wait_for(|v| *v).await;
    })
    .await;
    if let Some(task) = sink_task {
        if result.is_err() {
            // The processor is gone; the sink would only idle, so stop it too.
            task.abort();
        } else {
            task.await.context("sink task")??;
        }
    }
    result?;
    Ok(())
}

/// `order-saga sink`.
pub async fn sink(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let codec = codec(&config)?;
    sink::run(config, codec, shutdown).await?;
    Ok(())
}

/// `order-saga simulate`.
pub async fn simulate(
    config: Config,
    args: SimulateArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let codec = codec(&config)?;
    simulate::run(config, args, codec, shutdown).await?;
    Ok(())
}

/// `order-saga load`.
pub async fn load(config: Config, args: LoadArgs) -> anyhow::Result<()> {
    let codec = codec(&config)?;
    load::run(config, args, codec).await?;
    Ok(())
}

/// `order-saga schemas register`.
pub async fn schemas_register(config: &Config) -> anyhow::Result<()> {
    for (subject, id) in registry::register_all(&config.registry_url).await? {
        println!("{subject}\tid {id}\tBACKWARD_TRANSITIVE");
    }
    Ok(())
}

/// `order-saga schemas check`: prints each subject's verdict; false if any is incompatible.
pub async fn schemas_check(config: &Config) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for outcome in registry::check_all(&config.registry_url).await? {
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
    let mut client = db::connect(&config.database_url, DB_START_WAIT).await?;
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
    let client = db::connect(&config.database_url, Duration::from_secs(30)).await?;
    report::print_order(&client, order_id)
        .await
        .context("reading the order")
}

/// `order-saga report`.
pub async fn report(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    let client = db::connect(&config.database_url, Duration::from_secs(30)).await?;
    report::print_report(&client, &args).await?;
    Ok(())
}
