//! `bench`: the benchmark suite of order-saga, one invocation measuring everything
//! against the limit of the same broker. See the README section "Benchmarks" and
//! `scripts/bench`.
//!
//! Phases, each on topics of its own random prefix:
//!
//! 0. **txn**: bare transactions (one small record to each of 2 × partitions partitions,
//!    offsets, commit) back to back: the floor of one hop on this broker.
//! 1. **copier**: a raw transactional copier (rdkafka only, no decoding) that consumes and
//!    produces as many records per order as the saga, with the same client settings and
//!    commit interval: the limit of this broker for this workload.
//! 2. **saga**: `order-saga run --no-sink` and `order-saga-tools simulate` (instant services) as
//!    child processes; N orders as fast as possible (throughput, latency under saturation,
//!    RSS, CPU), then orders at a paced rate (latency below saturation).
//! 3. **sink**: `order-saga sink` with a fresh group on the saga's topics: catch-up rows/s,
//!    then its lag behind the processor while orders arrive at top rate.
//! 4. **restore**: a changelog of many order-status records, then the processor's restore
//!    speed and its memory before and after.
//!
//! Results go to `bench-out/latest.{json,md,png}`.

use std::process::ExitCode;

use clap::Parser;

#[path = "bench/args.rs"]
mod args;
#[path = "bench/chart.rs"]
mod chart;
#[path = "bench/child.rs"]
mod child;
#[path = "bench/copier.rs"]
mod copier;
#[path = "bench/fixtures.rs"]
mod fixtures;
#[path = "bench/procfs.rs"]
mod procfs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/restore.rs"]
mod restore;
#[path = "bench/run.rs"]
mod run;
#[path = "bench/saga.rs"]
mod saga;
#[path = "bench/status.rs"]
mod status;
#[path = "bench/txn.rs"]
mod txn;

#[tokio::main]
async fn main() -> ExitCode {
    // Off unless RUST_LOG asks: the bench's own output is its progress lines on stdout.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = args::Cli::parse();
    let config = cli.config.into_config();
    if let Err(e) = config.validate() {
        eprintln!("bench: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cli.bench.validate() {
        eprintln!("bench: {e:#}");
        return ExitCode::from(2);
    }
    match run::run(config, cli.bench).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
