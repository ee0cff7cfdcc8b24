//! Restore speed from a large changelog, and memory before and after.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use order_saga::config::Config;
use order_saga::contracts::convert;
use order_saga::contracts::records::OrderCreate;
use order_saga::contracts::Codec;
use order_saga::kafka::clients;
use order_saga::kafka::partitioner::partition_for;
use order_saga::saga::{Millis, Policy};
use order_saga::topics;
use order_saga_tools::load::{now_millis, Rng};

use crate::args::BenchArgs;
use crate::child::{self, Proc};
use crate::fixtures;
use crate::procfs::{self, Sampler};

/// Slack allowed above the RSS before the restore for RSS to count as flat.
pub const FLAT_SLACK_MIB: f64 = 64.0;
/// Memory allowed per order kept in memory for RSS to count as flat.
pub const FLAT_PER_ORDER_KIB: f64 = 8.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreResult {
    pub records_written: u64,
    pub in_flight_written: u64,
    pub write_seconds: f64,
    pub avg_record_bytes: f64,
    /// From the processor's `state restored` log line.
    pub records_restored: u64,
    pub orders_kept: u64,
    pub restore_seconds: f64,
    pub records_per_s: f64,
    /// From starting the process to its `state restored` line.
    pub wall_to_restored_s: f64,
    /// RSS when the processor logged `processor started` (clients up, nothing restored).
    pub rss_before_mib: f64,
    /// Highest RSS (VmHWM): during the restore.
    pub rss_peak_mib: f64,
    /// RSS 3 s after the restore, expired orders dropped.
    pub rss_after_mib: f64,
    /// `rss_after ≤ rss_before + FLAT_SLACK_MIB + orders_kept × FLAT_PER_ORDER_KIB`.
    pub rss_flat: bool,
    /// The first start found no `order-state` marker and restored from `order-status`
    /// (the upgrade path, which reads the whole history as earlier versions did); the
    /// second start, after the first had written `order-state`, restores from it.
    pub second_records_restored: u64,
    pub second_orders_kept: u64,
    pub second_finished_kept: u64,
    pub second_restore_seconds: f64,
    pub second_wall_to_restored_s: f64,
    /// Failover: the second processor (a static member) killed with SIGKILL and a new
    /// one started at once with the same instance id, as a supervisor does; from the
    /// kill to the first `order-status` record of a probe order on each partition, the
    /// slowest partition. Static membership spares the group's reaction (no rebalance
    /// within the session timeout), so this is restart, restore and the first commit.
    pub failover_s: f64,
    /// The same per partition, fastest first.
    pub failover_per_partition_s: Vec<f64>,
}

pub async fn run(
    config: &Config,
    args: &BenchArgs,
    codec: &Codec,
    run_id: &str,
    log_dir: &Path,
) -> anyhow::Result<RestoreResult> {
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    order_saga::kafka::admin::create_topics(config, &refs, args.partitions)
        .await
        .context("creating topics")?;
    let mut result = write_changelog(config, args, codec, run_id).await?;

    println!("[restore] starting the processor on it");
    let log = log_dir.join(format!("{}processor.log", config.topic_prefix));
    let started = Instant::now();
    let mut processor = Proc::spawn(
        &args.bin,
        "processor",
        config,
        &["run", "--no-sink"],
        &[],
        log,
    )?;
    let mut sampler = Sampler::start(processor.pid(), Duration::from_millis(100));
    processor
        .wait_for_log("processor started", Duration::from_secs(120), |v| {
            child::message(v) == "processor started"
        })
        .await?;
    let before = sampler.now().map(|s| s.rss_kib).unwrap_or(0);
    let timeout = Duration::from_secs(120 + args.restore_records / 10_000);
    let line = processor
        .wait_for_log("state restored", timeout, |v| {
            child::message(v) == "state restored" && child::field_u64(v, "records").unwrap_or(0) > 0
        })
        .await?;
    result.wall_to_restored_s = started.elapsed().as_secs_f64();
    result.records_restored = child::field_u64(&line, "records").unwrap_or(0);
    result.orders_kept = child::field_u64(&line, "orders").unwrap_or(0);
    result.restore_seconds = child::field_f64(&line, "seconds").unwrap_or(0.0);
    result.records_per_s = child::field_f64(&line, "records_per_s").unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    processor.check_alive()?;
    let after = sampler.now().map(|s| s.rss_kib).unwrap_or(0);
    result.rss_before_mib = procfs::mib(before);
    result.rss_after_mib = procfs::mib(after);
    result.rss_peak_mib = procfs::mib(sampler.peak_kib());
    result.rss_flat = result.rss_after_mib
        <= result.rss_before_mib
            + FLAT_SLACK_MIB
            + result.orders_kept as f64 * FLAT_PER_ORDER_KIB / 1024.0;
    // The first start writes what it restored to order-state, then a marker per
    // partition; once all are there, a restart restores from order-state alone. A
    // partition's marker may be logged before the restore of the last partition ends.
    processor
        .wait_for_count(
            "order-state partition complete",
            timeout,
            args.partitions as usize,
            |v| child::message(v) == "order-state partition complete",
        )
        .await?;
    // The marker's transaction commits within a commit interval of its log line.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = processor.terminate(Duration::from_secs(30)).await;
    sampler.stop();
    let restarted = Instant::now();
    let mut second = static_processor(config, args, log_dir, 2)?;
    let line = second
        .wait_for_log("state restored", timeout, |v| {
            child::message(v) == "state restored"
        })
        .await?;
    result.second_wall_to_restored_s = restarted.elapsed().as_secs_f64();
    result.second_records_restored = child::field_u64(&line, "records").unwrap_or(0);
    result.second_orders_kept = child::field_u64(&line, "orders").unwrap_or(0);
    result.second_finished_kept = child::field_u64(&line, "finished").unwrap_or(0);
    result.second_restore_seconds = child::field_f64(&line, "seconds").unwrap_or(0.0);
    // Let the first transactions after the restore go through before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_partition = failover(config, args, codec, run_id, log_dir, &mut second).await?;
    result.failover_s = per_partition.last().copied().unwrap_or(0.0);
    result.failover_per_partition_s = per_partition;
    println!(
        "[restore]   restart from order-state: {} records in {:.2} s ({:.2} s from start); kept {} orders and {} finished records",
        result.second_records_restored,
        result.second_restore_seconds,
        result.second_wall_to_restored_s,
        result.second_orders_kept,
        result.second_finished_kept
    );
    println!(
        "[restore]   failover after kill -9 (static member restarted at once): first order-status on every partition after {:.2} s (per partition {:?})",
        result.failover_s,
        result.failover_per_partition_s
    );
    println!(
        "[restore]   {} records in {:.2} s = {:.0} records/s; kept {} orders; RSS {:.0} MiB before, {:.0} peak, {:.0} after",
        result.records_restored,
        result.restore_seconds,
        result.records_per_s,
        result.orders_kept,
        result.rss_before_mib,
        result.rss_peak_mib,
        result.rss_after_mib
    );
    Ok(result)
}

/// Starts the `n`th processor of the phase as a static member (`processor-<n>.log`): a
/// restart with the same instance id takes the partitions back without a rebalance.
fn static_processor(
    config: &Config,
    args: &BenchArgs,
    log_dir: &Path,
    n: u32,
) -> anyhow::Result<Proc> {
    let log = log_dir.join(format!("{}processor-{n}.log", config.topic_prefix));
    Proc::spawn(
        &args.bin,
        "processor",
        config,
        &["run", "--no-sink", "--static-membership"],
        &[],
        log,
    )
}

/// Kills `victim` with SIGKILL, starts a processor with the same instance id at once, and
/// sends one probe order to each partition; returns, per partition, the seconds from the
/// kill to the probe's first `order-status` record, sorted.
async fn failover(
    config: &Config,
    args: &BenchArgs,
    codec: &Codec,
    run_id: &str,
    log_dir: &Path,
    victim: &mut Proc,
) -> anyhow::Result<Vec<f64>> {
    let status_topic = config.topics().name(topics::ORDER_STATUS);
    let create_topic = config.topics().name(topics::ORDER_CREATE_REQUEST);
    // One probe per partition, each keyed to land on its own.
    let mut rng = Rng::new(now_millis() as u64 ^ 0xfa11);
    let mut probes: BTreeMap<i32, (String, Vec<u8>)> = BTreeMap::new();
    while probes.len() < args.partitions as usize {
        let order = fixtures::order(&mut rng, run_id, now_millis());
        let p = partition_for(order.order_id.as_bytes(), args.partitions);
        if probes.contains_key(&p) {
            continue;
        }
        let value = codec
            .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(&order))
            .await
            .context("encoding a probe")?;
        probes.insert(p, (order.order_id, value));
    }
    let reader: BaseConsumer = clients::assigned_reader(config, &format!("{run_id}-failover"))
        .create()
        .context("failover reader")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        let (_, high) = reader
            .fetch_watermarks(&status_topic, p, Duration::from_secs(30))
            .context("order-status watermarks")?;
        tpl.add_partition_offset(&status_topic, p, Offset::Offset(high))?;
    }
    reader.assign(&tpl).context("assigning order-status")?;
    let producer: BaseProducer = clients::plain_producer(config, &format!("{run_id}-probes"))
        .create()
        .context("probe producer")?;

    println!("[restore] failover: kill -9 of the processor, a new one started at once");
    let killed = Instant::now();
    victim.kill9();
    let mut third = static_processor(config, args, log_dir, 3)?;
    for (p, (key, value)) in &probes {
        producer
            .send(
                BaseRecord::to(&create_topic)
                    .partition(*p)
                    .key(key.as_str())
                    .payload(value.as_slice()),
            )
            .map_err(|(e, _)| e)
            .context("sending a probe")?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the probes")?;
    let mut seen: BTreeMap<i32, f64> = BTreeMap::new();
    let deadline = killed + Duration::from_secs(180);
    while seen.len() < probes.len() {
        if Instant::now() > deadline {
            bail!(
                "failover: probes of partitions {:?} got no status within 180 s",
                probes
                    .keys()
                    .filter(|p| !seen.contains_key(p))
                    .collect::<Vec<_>>()
            );
        }
        third.check_alive()?;
        match reader.poll(Duration::from_millis(20)) {
            Some(Ok(msg)) => {
                let p = msg.partition();
                if probes
                    .get(&p)
                    .is_some_and(|(key, _)| msg.key() == Some(key.as_bytes()))
                {
                    seen.entry(p)
                        .or_insert_with(|| killed.elapsed().as_secs_f64());
                }
            }
            Some(Err(e)) => println!("[restore]   failover reader: {e}"),
            None => {}
        }
    }
    let _ = third.terminate(Duration::from_secs(30)).await;
    let mut times: Vec<f64> = seen.into_values().collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Writes `--restore-records` order-status records with the real encoding: mostly
/// COMPLETED long ago (expired: dropped on restore), some in flight (kept).
async fn write_changelog(
    config: &Config,
    args: &BenchArgs,
    codec: &Codec,
    run_id: &str,
) -> anyhow::Result<RestoreResult> {
    let total = args.restore_records;
    println!("[restore] writing {total} order-status records");
    // Long deadlines, so the orders in flight do not time out while the bench looks.
    let policy = Policy::from_settings(7 * 86_400_000, 3, 200);
    let now = now_millis();
    let mut rng = Rng::new(now as u64 ^ 0x5eed);
    let sample = fixtures::order(&mut rng, run_id, now);
    let steps = fixtures::happy_path(&policy, &sample, now)?;
    let (Some(in_flight), Some(completed)) = (steps.first(), steps.last()) else {
        bail!("empty happy path");
    };
    let old: Millis = now - config.state_retention_ms as Millis - 3_600_000;

    let producer: ThreadedProducer<DefaultProducerContext> =
        clients::plain_producer(config, &format!("{}-changelog", config.application_id))
            .set("linger.ms", "50")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()
            .context("changelog producer")?;
    let topic = config.topics().name(topics::ORDER_STATUS);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut bytes, mut kept) = (0u64, 0u64);
    for i in 0..total {
        let live = rng.chance(args.restore_in_flight_share);
        let mut state = if live {
            in_flight.state.clone()
        } else {
            completed.state.clone()
        };
        state.order_id = rng.uuid_v4().hyphenated().to_string();
        state.customer_id = format!("bench-{run_id}-customer-{:05}", i % 50_000);
        if live {
            kept += 1;
        } else {
            state.created_at = old - 2_000;
            state.updated_at = old;
        }
        let value = convert::encode_status(codec, &state)
            .await
            .context("encoding a status")?;
        bytes += value.len() as u64;
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&topic)
            .key(state.order_id.as_str())
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => bail!("changelog: cannot produce: {e}"),
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            println!("[restore]   {} of {total} written", i + 1);
        }
    }
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(300)))
        .await
        .context("flush thread")?;
    flushed.context("flushing the changelog")?;
    let write_seconds = started.elapsed().as_secs_f64();
    println!("[restore]   written in {write_seconds:.1} s ({kept} in flight)");
    Ok(RestoreResult {
        records_written: total,
        in_flight_written: kept,
        write_seconds,
        avg_record_bytes: bytes as f64 / total.max(1) as f64,
        ..RestoreResult::default()
    })
}
