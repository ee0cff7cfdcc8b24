//! The processor with instant simulated services, and the PostgreSQL sink behind it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;

use order_saga::config::Config;
use order_saga::contracts::Codec;
use order_saga::saga::Millis;
use order_saga::topics;
use order_saga_tools::load::{now_millis, OrderPublisher, Rng};

use crate::args::BenchArgs;
use crate::child::{self, Proc};
use crate::fixtures;
use crate::procfs::{self, Sampler};
use crate::status::{self, Tracker};

pub const WARMUP: usize = 0;
pub const SATURATED: usize = 1;
pub const PACED: usize = 2;
pub const SINK: usize = 3;
const PHASES: usize = 4;
const WARMUP_ORDERS: u64 = 50;

/// Records the processor reads per order on the happy path (create + 4 results).
pub const IN_PER_ORDER: u64 = 5;
/// Records it writes per order (4 commands + 5 statuses).
pub const OUT_PER_ORDER: u64 = 9;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: values[values.len() - 1],
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// One hop of an order's way, between two of its status records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hop {
    pub hop: &'static str,
    pub ms: Percentiles,
}

/// The hops of the happy path, in order.
pub const HOPS: [&str; 5] = [
    "create → CREATED",
    "CREATED → RESERVED",
    "RESERVED → PAID",
    "PAID → SHIPPING_SCHEDULED",
    "SHIPPING_SCHEDULED → COMPLETED",
];

/// One load of orders through the processor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadPhase {
    pub orders: u64,
    /// Orders whose fifth status record was seen.
    pub completed: u64,
    /// Of those, how many were really COMPLETED when decoded.
    pub completed_decoded: u64,
    /// Orders/s asked of the producer; `None`: as fast as it goes.
    pub target_rate: Option<f64>,
    /// Orders/s the bench managed to produce.
    pub produced_per_s: f64,
    /// From the first order's `created_at` to the last `updated_at` of COMPLETED.
    pub window_s: f64,
    pub orders_per_s: f64,
    /// Orders/s between the 10th and the 90th percentile of completion times: the rate
    /// without ramp-up and drain.
    pub steady_orders_per_s: f64,
    /// create → COMPLETED (`updated_at − created_at`), ms.
    pub latency_ms: Percentiles,
    /// The same, hop by hop: from the create to the first decision, then from each
    /// decision to the next (the commit, the simulated service, the next read), ms.
    pub hops_ms: Vec<Hop>,
    #[serde(skip)]
    pub latencies: Vec<f64>,
    #[serde(skip)]
    first_created_ms: Millis,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkResult {
    /// order-status records behind the sink when it started (fresh group).
    pub backlog_records: u64,
    pub catch_up_s: f64,
    /// order-status records applied per second while catching up; each is one upsert of
    /// `orders` and one `order_status_history` row.
    pub catch_up_records_per_s: f64,
    /// Orders produced at top rate while the sink followed.
    pub live_orders: u64,
    /// Time from the last order-status record (its timestamp) to the sink having
    /// committed everything up to it.
    pub lag_after_last_record_ms: f64,
    /// Largest number of offsets the sink was behind while orders ran.
    pub max_lag_offsets: i64,
    /// Rows of the run's orders in the table at the end, and how many are COMPLETED.
    pub rows: i64,
    pub rows_completed: i64,
    pub rows_expected: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaResult {
    pub saturated: LoadPhase,
    /// Processor records in + out during the saturated phase.
    pub records: u64,
    /// Where `records` comes from: the processor's counters, or orders × 14.
    pub records_source: String,
    pub records_per_s: f64,
    pub cpu_s_per_1000_orders: f64,
    /// Processor CPU seconds (user + system) during the saturated phase.
    pub cpu_s: f64,
    /// Transactions the processor committed during the saturated phase.
    pub transactions: u64,
    /// The simulated services' CPU per 1,000 orders (they share the machine).
    pub simulator_cpu_s_per_1000_orders: f64,
    /// The brokers' CPU per 1,000 orders, when their pids were given.
    pub broker_cpu_s_per_1000_orders: Option<f64>,
    /// Share of the saturated window spent before the 10th percentile of completions:
    /// the pipeline filling up rather than running at its steady rate.
    pub pipeline_fill_share: f64,
    /// Share of the machine's CPU (all cores) busy during the saturated phase.
    pub machine_busy_share: Option<f64>,
    pub peak_rss_mib: f64,
    pub rss_end_mib: f64,
    pub paced: Option<LoadPhase>,
    pub sink: Option<SinkResult>,
    pub sink_error: Option<String>,
    pub processor_exit: Option<i32>,
    /// (seconds since the saturated phase started, processor records/s), from its 1-s
    /// progress counters.
    pub timeline: Vec<(f64, f64)>,
}

pub struct Ctx<'a> {
    pub config: Config,
    pub args: &'a BenchArgs,
    pub codec: Arc<Codec>,
    pub run_id: &'a str,
    pub log_dir: &'a Path,
}

/// Produces `n` orders of `phase`, paced at `rate` orders/s if given.
/// Returns (first created_at ms, orders/s produced).
async fn produce(
    publisher: &OrderPublisher,
    tracker: &Tracker,
    phase: usize,
    n: u64,
    rate: Option<f64>,
    rng: &mut Rng,
    run_id: &str,
) -> anyhow::Result<(Millis, f64)> {
    let start = Instant::now();
    let first = now_millis();
    let mut in_flight = FuturesUnordered::new();
    let mut failed = 0u64;
    let step = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    for i in 0..n {
        if let Some(step) = step {
            let due = start + step.mul_f64(i as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let order = fixtures::order(rng, run_id, now_millis());
        tracker.register([order.order_id.clone()], phase);
        in_flight.push(publisher.enqueue_create(&order).await?);
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            if !matches!(result, Ok(Ok(_))) {
                failed += 1;
            }
        }
        if i % 1024 == 1023 {
            tokio::task::yield_now().await;
        }
    }
    let produced_s = start.elapsed().as_secs_f64();
    while let Some(result) = in_flight.next().await {
        if !matches!(result, Ok(Ok(_))) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} orders were not delivered");
    }
    Ok((
        first,
        if produced_s > 0.0 {
            n as f64 / produced_s
        } else {
            0.0
        },
    ))
}

/// (time, records in + out, transactions committed) of a processor counter line.
fn progress_line(v: &serde_json::Value) -> Option<(f64, u64, u64)> {
    if child::message(v) != "processor progress" && child::message(v) != "processor stopped" {
        return None;
    }
    let t = child::timestamp_s(v)?;
    Some((
        t,
        child::field_u64(v, "records_in")? + child::field_u64(v, "records_out")?,
        child::field_u64(v, "txn_committed")?,
    ))
}

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<SagaResult> {
    let config = &ctx.config;
    let args = ctx.args;
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    order_saga::kafka::admin::create_topics(config, &refs, args.partitions)
        .await
        .context("creating topics")?;

    let log = |name: &str| {
        ctx.log_dir
            .join(format!("{}{name}.log", config.topic_prefix))
    };
    let mut processor = Proc::spawn(
        &args.bin,
        "processor",
        config,
        &["run", "--no-sink"],
        &[],
        log("processor"),
    )?;
    let mut simulator = Proc::spawn(
        &args.tools_bin,
        "simulator",
        config,
        &[
            "simulate",
            "--latency-ms",
            "0",
            "--jitter-ms",
            "0",
            "--fail-rate",
            "0",
        ],
        &[],
        log("simulator"),
    )?;
    let mut sampler = Sampler::start(processor.pid(), Duration::from_millis(200));
    let mut sim_sampler = Sampler::start(simulator.pid(), Duration::from_millis(500));
    let tracker = Tracker::start(config, args.partitions, PHASES)?;
    processor
        .wait_for_log("state restored", Duration::from_secs(120), |v| {
            child::message(v) == "state restored"
        })
        .await?;
    simulator
        .wait_for_log("simulator started", Duration::from_secs(60), |v| {
            child::message(v) == "simulator started"
        })
        .await?;

    let publisher = OrderPublisher::new(config, ctx.codec.clone())?;
    publisher.prepare().await?;
    let mut rng = Rng::new(now_millis() as u64);
    let stall = Duration::from_secs(args.stall_timeout_s);

    println!("[saga] warm-up: {WARMUP_ORDERS} orders");
    produce(
        &publisher,
        &tracker,
        WARMUP,
        WARMUP_ORDERS,
        None,
        &mut rng,
        ctx.run_id,
    )
    .await?;
    let warm = tracker
        .wait_completed(WARMUP, WARMUP_ORDERS, stall, |_| processor.check_alive())
        .await?;
    if warm < WARMUP_ORDERS {
        bail!(
            "warm-up: only {warm} of {WARMUP_ORDERS} orders completed; see {}",
            processor.log.path.display()
        );
    }

    // Let a progress line of the processor show the warm-up's counters settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Saturated: as fast as the producer goes.
    let n = args.orders;
    println!("[saga] saturated: {n} orders as fast as possible");
    let cpu0 = sampler.now();
    let sim0 = sim_sampler.now();
    let broker0 = procfs::cpu_s_of(&args.broker_pids);
    let machine0 = procfs::machine_cpu();
    let t0_s = now_millis() as f64 / 1000.0;
    let (first_ms, produced_rate) = produce(
        &publisher, &tracker, SATURATED, n, None, &mut rng, ctx.run_id,
    )
    .await?;
    println!("[saga]   produced at {produced_rate:.0} orders/s");
    let done = tracker
        .wait_completed(SATURATED, n, stall, |d| {
            println!("[saga]   {d} of {n} completed");
            processor.check_alive()
        })
        .await?;
    let cpu1 = sampler.now();
    let sim1 = sim_sampler.now();
    let broker1 = procfs::cpu_s_of(&args.broker_pids);
    let machine1 = procfs::machine_cpu();
    let end_s = now_millis() as f64 / 1000.0;
    let mut result = SagaResult {
        saturated: LoadPhase {
            orders: n,
            completed: done,
            produced_per_s: produced_rate,
            first_created_ms: first_ms,
            ..LoadPhase::default()
        },
        machine_busy_share: procfs::busy_share(machine0, machine1),
        ..SagaResult::default()
    };
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        result.cpu_s_per_1000_orders = (b.cpu_s - a.cpu_s) / done.max(1) as f64 * 1000.0;
        result.cpu_s = b.cpu_s - a.cpu_s;
    }
    if let (Some(a), Some(b)) = (sim0, sim1) {
        result.simulator_cpu_s_per_1000_orders = (b.cpu_s - a.cpu_s) / done.max(1) as f64 * 1000.0;
    }
    if let (Some(a), Some(b)) = (broker0, broker1) {
        result.broker_cpu_s_per_1000_orders = Some((b - a) / done.max(1) as f64 * 1000.0);
    }
    // The processor's counters: the last progress line before the phase, and one that
    // shows the phase's input records all read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    processor.log.poll();
    let points: Vec<(f64, u64, u64)> = processor
        .log
        .lines
        .iter()
        .filter_map(progress_line)
        .collect();
    let base = points.iter().rev().find(|p| p.0 <= t0_s);
    let after = points.iter().find(|p| p.0 >= end_s);
    match (base, after) {
        (Some(b), Some(a)) if a.1 > b.1 => {
            result.records = a.1 - b.1;
            result.transactions = a.2.saturating_sub(b.2);
            result.records_source = "processor counters (records_in + records_out)".into();
        }
        _ => {
            result.records = done * (IN_PER_ORDER + OUT_PER_ORDER);
            result.records_source = "completed orders × 14".into();
        }
    }
    result.timeline = crate::chart::rates(
        &points
            .iter()
            .filter(|p| p.0 >= t0_s - 1.0 && p.0 <= end_s + 1.0)
            .map(|p| (p.0 - t0_s, p.1 as f64))
            .collect::<Vec<_>>(),
        1.0,
    );
    let completed_at = completion_times(&tracker, SATURATED);
    result.saturated.steady_orders_per_s = steady_rate(&completed_at);
    result.pipeline_fill_share = fill_share(&completed_at, first_ms);
    let sat_seconds = completed_at
        .last()
        .map(|l| (l - first_ms) as f64 / 1000.0)
        .unwrap_or(0.0);
    println!(
        "[saga]   {done} completed in {sat_seconds:.1} s (by record timestamps), processor CPU {:.2} s per 1000 orders",
        result.cpu_s_per_1000_orders
    );

    // Paced: below saturation, for latency.
    let paced_n = args.paced_orders();
    let estimated = if sat_seconds > 0.0 {
        done as f64 / sat_seconds
    } else {
        100.0
    };
    let rate = args.paced_rate.unwrap_or((estimated * 0.5).max(1.0));
    println!("[saga] paced: {paced_n} orders at {rate:.0} orders/s");
    let (paced_first, paced_produced) = produce(
        &publisher,
        &tracker,
        PACED,
        paced_n,
        Some(rate),
        &mut rng,
        ctx.run_id,
    )
    .await?;
    let paced_done = tracker
        .wait_completed(PACED, paced_n, stall, |_| processor.check_alive())
        .await?;
    result.paced = Some(LoadPhase {
        orders: paced_n,
        completed: paced_done,
        target_rate: Some(rate),
        produced_per_s: paced_produced,
        first_created_ms: paced_first,
        ..LoadPhase::default()
    });

    // The sink: a fresh group catches up, then follows a load at top rate.
    if args.runs(crate::args::Phase::Sink) {
        match sink_phase(ctx, &tracker, &publisher, &mut rng, &mut processor).await {
            Ok(s) => result.sink = Some(s),
            Err(e) => {
                println!("[sink] failed: {e:#}");
                result.sink_error = Some(format!("{e:#}"));
            }
        }
    }

    result.peak_rss_mib = procfs::mib(sampler.peak_kib());
    result.rss_end_mib = sampler.now().map(|s| procfs::mib(s.rss_kib)).unwrap_or(0.0);
    sim_sampler.stop();
    let _ = simulator.terminate(Duration::from_secs(20)).await;
    result.processor_exit = processor.terminate(Duration::from_secs(30)).await;
    sampler.stop();

    // Decode the completions, now that nothing else runs.
    let (wanted, stamps) = {
        let g = tracker.lock();
        (g.fifth.clone(), g.stamps.clone())
    };
    drop(tracker);
    let (cfg, codec, parts) = (config.clone(), ctx.codec.clone(), args.partitions);
    let handle = tokio::runtime::Handle::current();
    println!("[saga] decoding {} completions", wanted.len());
    let decoded = tokio::task::spawn_blocking(move || {
        status::decode_at(&cfg, &codec, &handle, parts, &wanted)
    })
    .await
    .context("decoder thread")??;
    fill(&mut result.saturated, &decoded, &stamps, SATURATED);
    if let Some(p) = result.paced.as_mut() {
        fill(p, &decoded, &stamps, PACED);
    }
    let window = result.saturated.window_s;
    result.records_per_s = if window > 0.0 {
        result.records as f64 / window
    } else {
        0.0
    };
    Ok(result)
}

/// The completion times of `phase`, earliest first.
fn completion_times(tracker: &Tracker, phase: usize) -> Vec<Millis> {
    let mut ts: Vec<Millis> = tracker
        .lock()
        .completions
        .iter()
        .filter(|(p, _)| *p == phase)
        .map(|(_, t)| *t)
        .collect();
    ts.sort_unstable();
    ts
}

/// Completions per second between the 10th and 90th percentile of completion times
/// (`ts` earliest first).
fn steady_rate(ts: &[Millis]) -> f64 {
    let n = ts.len();
    if n < 10 {
        return 0.0;
    }
    let (a, b) = (n / 10, n * 9 / 10);
    let span = (ts[b] - ts[a]) as f64 / 1000.0;
    if span > 0.0 {
        (b - a) as f64 / span
    } else {
        0.0
    }
}

/// Share of the window from the first create to the last completion that passed before
/// the 10th percentile of completions (`ts` earliest first).
fn fill_share(ts: &[Millis], first_ms: Millis) -> f64 {
    match (ts.get(ts.len() / 10), ts.last()) {
        (Some(p10), Some(last)) if *last > first_ms => {
            (p10 - first_ms) as f64 / (last - first_ms) as f64
        }
        _ => 0.0,
    }
}

/// Fills a phase's window, orders/s and latencies from the decoded completions.
fn fill(
    phase: &mut LoadPhase,
    decoded: &[status::Completed],
    stamps: &HashMap<(i32, i64), [Millis; 5]>,
    which: usize,
) {
    let mine: Vec<&status::Completed> = decoded
        .iter()
        .filter(|c| c.phase == which && c.status == "COMPLETED")
        .collect();
    phase.completed_decoded = mine.len() as u64;
    let last = mine
        .iter()
        .map(|c| c.updated_at)
        .max()
        .unwrap_or(phase.first_created_ms);
    let first = mine
        .iter()
        .filter_map(|c| c.created_at)
        .min()
        .unwrap_or(phase.first_created_ms);
    phase.window_s = (last - first) as f64 / 1000.0;
    phase.orders_per_s = if phase.window_s > 0.0 {
        mine.len() as f64 / phase.window_s
    } else {
        0.0
    };
    phase.latencies = mine
        .iter()
        .map(|c| (c.updated_at - c.created_at.unwrap_or(phase.first_created_ms)) as f64)
        .collect();
    let mut l = phase.latencies.clone();
    phase.latency_ms = Percentiles::of(&mut l);
    let mut hops: Vec<Vec<f64>> = vec![Vec::with_capacity(mine.len()); HOPS.len()];
    for c in &mine {
        let (Some(ts), Some(created)) = (stamps.get(&c.at), c.created_at) else {
            continue;
        };
        hops[0].push((ts[0] - created) as f64);
        for (k, pair) in ts.windows(2).enumerate() {
            hops[k + 1].push((pair[1] - pair[0]) as f64);
        }
    }
    phase.hops_ms = HOPS
        .iter()
        .zip(hops.iter_mut())
        .map(|(hop, values)| Hop {
            hop,
            ms: Percentiles::of(values),
        })
        .collect();
}

const SINK_OFFSETS: &str = "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets \
                            WHERE consumer_group = $1 AND topic = $2";

async fn sink_offsets(
    pg: &tokio_postgres::Client,
    group: &str,
    topic: &str,
) -> anyhow::Result<i64> {
    let row = pg
        .query_one(SINK_OFFSETS, &[&group, &topic])
        .await
        .context("reading sink_offsets")?;
    Ok(row.try_get(0)?)
}

async fn sink_phase(
    ctx: &Ctx<'_>,
    tracker: &Tracker,
    publisher: &OrderPublisher,
    rng: &mut Rng,
    processor: &mut Proc,
) -> anyhow::Result<SinkResult> {
    let mut config = ctx.config.clone();
    config.sink_group = format!("{}pg-sink", config.topic_prefix);
    config.instance_id = "sink".into();
    let topic = config.topics().name(topics::ORDER_STATUS);
    let mut pg = order_saga::db::connect_secured(
        &config.database_url,
        &config.security,
        Duration::from_secs(30),
    )
    .await?;
    // The sink applies them too, but the bench reads sink_offsets before it has.
    order_saga::db::migrate(&mut pg)
        .await
        .context("applying migrations")?;
    let stall = Duration::from_secs(ctx.args.stall_timeout_s);

    let (backlog_records, backlog_offsets) = {
        let g = tracker.lock();
        (g.records, g.next_offset_sum())
    };
    println!(
        "[sink] fresh group {} catching up {backlog_records} order-status records",
        config.sink_group
    );
    let log = ctx.log_dir.join(format!("{}sink.log", config.topic_prefix));
    let mut sink = Proc::spawn(&ctx.args.bin, "sink", &config, &["sink"], &[], log)?;
    let spawned = Instant::now();
    let mut first: Option<(Instant, i64)> = None;
    let mut last_change = Instant::now();
    let mut last = 0;
    let caught = loop {
        let at = sink_offsets(&pg, &config.sink_group, &topic).await?;
        if at > 0 && first.is_none() {
            first = Some((Instant::now(), at));
        }
        if at >= backlog_offsets {
            break Instant::now();
        }
        if at != last {
            last = at;
            last_change = Instant::now();
        }
        if last_change.elapsed() > stall.max(Duration::from_secs(30)) {
            bail!("sink stalled at offset sum {at} of {backlog_offsets}");
        }
        sink.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (catch_up_s, rate) = match first {
        // Progress in offsets from the first commit seen, scaled to records.
        Some((t, at)) if caught > t && backlog_offsets > 0 => {
            let s = (caught - t).as_secs_f64();
            let share = (backlog_offsets - at) as f64 / backlog_offsets as f64;
            (s, backlog_records as f64 * share / s)
        }
        _ => {
            let s = (caught - spawned).as_secs_f64();
            (s, backlog_records as f64 / s.max(1e-9))
        }
    };
    println!("[sink]   caught up: {rate:.0} records/s ({catch_up_s:.2} s after its first commit)");

    let live = ctx.args.sink_orders();
    println!("[sink] live: {live} orders at top rate while the sink follows");
    // Probe how far behind the sink is while the orders run.
    let pg = Arc::new(pg);
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (pg, stop, track) = (pg.clone(), stop.clone(), tracker.shared());
        let (group, topic) = (config.sink_group.clone(), topic.clone());
        tokio::spawn(async move {
            let mut max_lag = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let target = track
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .next_offset_sum();
                if let Ok(at) = sink_offsets(&pg, &group, &topic).await {
                    max_lag = max_lag.max(target - at);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max_lag
        })
    };
    produce(publisher, tracker, SINK, live, None, rng, ctx.run_id).await?;
    let done = tracker
        .wait_completed(SINK, live, stall, |_| {
            processor.check_alive()?;
            sink.check_alive()
        })
        .await?;
    if done < live {
        println!("[sink]   only {done} of {live} orders completed");
    }
    // Every status record of the run is seen now; wait until the sink has them all.
    let (target, last_ts_ms, ids) = {
        let g = tracker.lock();
        let ids: Vec<String> = g.phase_of.keys().cloned().collect();
        (g.next_offset_sum(), g.last_ts_ms, ids)
    };
    let mut last_change = Instant::now();
    let mut last = 0;
    let caught_ms = loop {
        let at = sink_offsets(&pg, &config.sink_group, &topic).await?;
        if at >= target {
            break now_millis();
        }
        if at != last {
            last = at;
            last_change = Instant::now();
        }
        if last_change.elapsed() > stall {
            bail!("sink stalled at offset sum {at} of {target}");
        }
        sink.check_alive()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let max_lag = probe.await.unwrap_or(0);
    let lag_ms = (caught_ms - last_ts_ms) as f64;
    println!("[sink]   table complete {lag_ms:.0} ms after the last order-status record");
    let row = pg
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'COMPLETED') FROM orders WHERE order_id = ANY($1)",
            &[&ids],
        )
        .await
        .context("counting the run's rows")?;
    let _ = sink.terminate(Duration::from_secs(20)).await;
    let rows: i64 = row.try_get(0)?;
    let rows_completed: i64 = row.try_get(1)?;
    println!(
        "[sink]   {rows} rows for {} orders ({rows_completed} COMPLETED)",
        ids.len()
    );
    Ok(SinkResult {
        backlog_records,
        catch_up_s,
        catch_up_records_per_s: rate,
        live_orders: live,
        lag_after_last_record_ms: lag_ms,
        max_lag_offsets: max_lag,
        rows,
        rows_completed,
        rows_expected: ids.len() as u64,
    })
}
