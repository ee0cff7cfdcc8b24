//! Following `order-status` while orders run, cheaply, and decoding what matters after.
//!
//! While the processor works, the bench must not steal its CPU: the live reader decodes
//! nothing. On the happy path every order gets exactly five committed status records
//! (CREATED, RESERVED, PAID, SHIPPING_SCHEDULED, COMPLETED), so the fifth record of a key
//! marks its completion. After a phase, only those records are decoded, to check they
//! are COMPLETED and to take `updated_at − created_at` as the order's latency.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use order_saga::config::Config;
use order_saga::contracts::{Codec, OrderStatusRecord};
use order_saga::kafka::clients;
use order_saga::saga::Millis;
use order_saga::topics;

/// Status records per order on the happy path.
pub const RECORDS_PER_ORDER: u8 = 5;

/// What the live reader has seen.
#[derive(Default)]
pub struct Track {
    /// Order id → phase, registered before the order is produced.
    pub phase_of: HashMap<String, usize>,
    /// Per order: status records seen, and the timestamps of the first five.
    per_key: HashMap<String, (u8, [Millis; RECORDS_PER_ORDER as usize])>,
    /// Orders completed, per phase.
    pub completed: Vec<u64>,
    /// (phase, record timestamp ms) of every completion, in the order seen.
    pub completions: Vec<(usize, Millis)>,
    /// (partition, offset) → phase of every fifth record.
    pub fifth: HashMap<(i32, i64), usize>,
    /// (partition, offset) of every fifth record → the timestamps of the order's five
    /// status records: the time of each decision, so their differences are the hops.
    pub stamps: HashMap<(i32, i64), [Millis; RECORDS_PER_ORDER as usize]>,
    pub records: u64,
    /// Per partition, the offset after the last record seen.
    pub next_offsets: BTreeMap<i32, i64>,
    /// The latest record timestamp seen, ms.
    pub last_ts_ms: Millis,
}

impl Track {
    pub fn completed(&self, phase: usize) -> u64 {
        self.completed.get(phase).copied().unwrap_or(0)
    }

    pub fn next_offset_sum(&self) -> i64 {
        self.next_offsets.values().sum()
    }
}

/// A thread reading every partition of a run's `order-status` from the beginning.
pub struct Tracker {
    track: Arc<Mutex<Track>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    pub fn start(config: &Config, partitions: i32, phases: usize) -> anyhow::Result<Tracker> {
        let topic = config.topics().name(topics::ORDER_STATUS);
        let consumer: BaseConsumer =
            clients::assigned_reader(config, &format!("{}-bench-tracker", config.application_id))
                .create()
                .context("tracker consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl).context("tracker assign")?;
        let track = Arc::new(Mutex::new(Track {
            completed: vec![0; phases],
            ..Track::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (track.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let mut g = t.lock().unwrap_or_else(PoisonError::into_inner);
                g.records += 1;
                g.next_offsets.insert(msg.partition(), msg.offset() + 1);
                if let Some(ts) = msg.timestamp().to_millis() {
                    g.last_ts_ms = g.last_ts_ms.max(ts);
                }
                let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let ts = msg.timestamp().to_millis().unwrap_or(0);
                let (n, stamps) = {
                    let (n, stamps) = g.per_key.entry(key.to_string()).or_default();
                    if let Some(slot) = stamps.get_mut(usize::from(*n)) {
                        *slot = ts;
                    }
                    *n = n.saturating_add(1);
                    (*n, *stamps)
                };
                if n == RECORDS_PER_ORDER {
                    if let Some(phase) = g.phase_of.get(key).copied() {
                        if let Some(c) = g.completed.get_mut(phase) {
                            *c += 1;
                        }
                        g.completions.push((phase, ts));
                        g.fifth.insert((msg.partition(), msg.offset()), phase);
                        g.stamps.insert((msg.partition(), msg.offset()), stamps);
                    }
                }
            }
        });
        Ok(Tracker {
            track,
            stop,
            thread: Some(thread),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared state, for another task to read.
    pub fn shared(&self) -> Arc<Mutex<Track>> {
        self.track.clone()
    }

    /// Registers orders of `phase` before they are produced.
    pub fn register(&self, ids: impl IntoIterator<Item = String>, phase: usize) {
        let mut g = self.lock();
        for id in ids {
            g.phase_of.insert(id, phase);
        }
    }

    /// Waits until `expected` orders of `phase` completed, or nothing progressed for
    /// `stall`. Returns the orders completed. Calls `tick` about every second.
    pub async fn wait_completed(
        &self,
        phase: usize,
        expected: u64,
        stall: Duration,
        mut tick: impl FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut last = 0;
        let mut last_change = Instant::now();
        let mut last_tick = Instant::now();
        loop {
            let done = self.lock().completed(phase);
            if done >= expected {
                return Ok(done);
            }
            if done != last {
                last = done;
                last_change = Instant::now();
            }
            if last_change.elapsed() > stall {
                println!("  ! no progress for {stall:?}: {done} of {expected} orders completed; going on");
                return Ok(done);
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                tick(done)?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One decoded completion.
#[derive(Debug, Clone)]
pub struct Completed {
    pub phase: usize,
    /// Where the fifth status record is: the key of `Track::stamps`.
    pub at: (i32, i64),
    pub status: String,
    pub created_at: Option<Millis>,
    pub updated_at: Millis,
}

/// Reads the records at `wanted` (partition, offset) of `order-status` and decodes them.
/// Blocking: run it off the async workers.
pub fn decode_at(
    config: &Config,
    codec: &Codec,
    runtime: &tokio::runtime::Handle,
    partitions: i32,
    wanted: &HashMap<(i32, i64), usize>,
) -> anyhow::Result<Vec<Completed>> {
    let topic = config.topics().name(topics::ORDER_STATUS);
    let mut cfg =
        clients::assigned_reader(config, &format!("{}-bench-decoder", config.application_id));
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<clients::EofAwareContext> = cfg
        .create_with_context(clients::EofAwareContext)
        .context("decoder consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = BTreeSet::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        pending.insert(p);
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::with_capacity(wanted.len());
    let until = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() && out.len() < wanted.len() && Instant::now() < until {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(_)) => {}
            Some(Ok(msg)) => {
                let Some(phase) = wanted.get(&(msg.partition(), msg.offset())).copied() else {
                    continue;
                };
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let rec: OrderStatusRecord = runtime
                    .block_on(codec.decode(topics::ORDER_STATUS, payload))
                    .context("decoding an order-status record")?;
                let status = rec
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| "UNKNOWN".into());
                out.push(Completed {
                    phase,
                    at: (msg.partition(), msg.offset()),
                    status,
                    created_at: rec.created_at,
                    updated_at: rec.updated_at,
                });
            }
        }
    }
    Ok(out)
}
