//! The bench's flags: the processor's configuration (flags and `ORDER_SAGA_*`) plus its own.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, ValueEnum};

use order_saga::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Throughput, latency, memory and restore speed of order-saga, against a raw \
             transactional copier on the same broker"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// One part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// Bare transactions back to back: the floor of one hop.
    Txn,
    /// The raw transactional copier: the limit.
    Copier,
    /// The processor with instant simulated services: throughput and latency.
    Saga,
    /// The PostgreSQL sink: catch-up rows/s and lag (runs with `saga`).
    Sink,
    /// Restore speed from a large changelog, and memory before and after.
    Restore,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Process ids of the brokers, comma-separated, for their CPU per 1,000 orders
    /// (`scripts/bench` passes the local stack's); none: not reported.
    #[arg(long, env = "BENCH_BROKER_PIDS", value_delimiter = ',')]
    pub broker_pids: Vec<u32>,

    /// Orders of the saturated run (the copier copies the records of as many orders).
    #[arg(long, env = "BENCH_ORDERS", default_value_t = 2_000)]
    pub orders: u64,

    /// Orders whose records the copier copies; default 5 × --orders, so that its run
    /// (about five times faster) lasts about as long as the processor's.
    #[arg(long, env = "BENCH_COPIER_ORDERS")]
    pub copier_orders: Option<u64>,

    /// Orders of the paced latency run; default half of --orders.
    #[arg(long, env = "BENCH_PACED_ORDERS")]
    pub paced_orders: Option<u64>,

    /// Orders per second of the paced run; default half the saturated orders/s.
    #[arg(long, env = "BENCH_PACED_RATE")]
    pub paced_rate: Option<f64>,

    /// Orders produced at top rate while the sink follows; default half of --orders.
    #[arg(long, env = "BENCH_SINK_ORDERS")]
    pub sink_orders: Option<u64>,

    /// order-status records written for the restore measurement.
    #[arg(long, env = "BENCH_RESTORE_RECORDS", default_value_t = 200_000)]
    pub restore_records: u64,

    /// Share of the restore records that are orders in flight (kept in memory); the
    /// rest are COMPLETED long ago (evicted on restore).
    #[arg(long, env = "BENCH_RESTORE_IN_FLIGHT_SHARE", default_value_t = 0.02)]
    pub restore_in_flight_share: f64,

    /// Transactions of the commit floor measurement.
    #[arg(long, env = "BENCH_TXN_COUNT", default_value_t = 200)]
    pub txn_count: u64,

    /// Partitions of every topic of a run.
    #[arg(long, env = "BENCH_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,

    /// Phases to run, comma-separated; default all.
    #[arg(long, env = "BENCH_PHASES", value_enum, value_delimiter = ',',
          default_values_t = [Phase::Txn, Phase::Copier, Phase::Saga, Phase::Sink, Phase::Restore])]
    pub phases: Vec<Phase>,

    /// Where results go (`latest.json`, `latest.md`, `latest.png`, logs).
    #[arg(long, env = "BENCH_OUT_DIR", default_value = "bench-out")]
    pub out_dir: PathBuf,

    /// The order-saga binary to run as child processes.
    #[arg(long, env = "BENCH_BIN", default_value = "target/release/order-saga")]
    pub bin: PathBuf,

    /// The order-saga-tools binary whose `simulate` answers the processor's commands.
    #[arg(
        long,
        env = "BENCH_TOOLS_BIN",
        default_value = "target/release/order-saga-tools"
    )]
    pub tools_bin: PathBuf,

    /// Also copy `latest.md` and `latest.png` into this directory (committed results).
    #[arg(long, env = "BENCH_PUBLISH_DIR")]
    pub publish_dir: Option<PathBuf>,

    /// Keep the run's topics instead of deleting them at the end.
    #[arg(long, env = "BENCH_KEEP_TOPICS")]
    pub keep_topics: bool,

    /// Give up on a phase when nothing has progressed for this many seconds.
    #[arg(long, env = "BENCH_STALL_TIMEOUT_S", default_value_t = 60)]
    pub stall_timeout_s: u64,
}

impl BenchArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.orders == 0 {
            bail!("--orders must be at least 1");
        }
        if !(1..=1000).contains(&self.partitions) {
            bail!(
                "--partitions must be from 1 to 1000, got {}",
                self.partitions
            );
        }
        if !(0.0..=1.0).contains(&self.restore_in_flight_share) {
            bail!("--restore-in-flight-share must be from 0 to 1");
        }
        if let Some(rate) = self.paced_rate {
            if !rate.is_finite() || rate <= 0.0 {
                bail!("--paced-rate must be a positive number, got {rate}");
            }
        }
        if self.stall_timeout_s == 0 {
            bail!("--stall-timeout-s must be at least 1");
        }
        Ok(())
    }

    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    pub fn paced_orders(&self) -> u64 {
        self.paced_orders.unwrap_or((self.orders / 2).max(1))
    }

    pub fn copier_orders(&self) -> u64 {
        self.copier_orders.unwrap_or(self.orders * 5).max(1)
    }

    pub fn sink_orders(&self) -> u64 {
        self.sink_orders.unwrap_or((self.orders / 2).max(1))
    }
}
