//! Restoring a partition's saga state from its changelog partitions.
//!
//! Both changelogs are compacted and keyed by order id; the last record of a key is the
//! order's state (`order-status`) or the events held for it (`order-early-events`).
//! Reading with read_committed up to the end (librdkafka reports the end at the last
//! stable offset) sees exactly the committed transactions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use thiserror::Error;
use tracing::{info, warn};

use super::store::{Entry, PartitionStore};
use super::{now_millis, wire, Context};
use crate::contracts::convert;
use crate::kafka::read;
use crate::saga::Millis;
use crate::topics::{self, Topics};

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("registry unreachable while decoding the changelog: {0}")]
    Registry(String),
    #[error("shutdown requested during restore")]
    Interrupted,
}

/// Reads `partitions` of `order-status` and `order-early-events` to their end and returns
/// a store per partition.
///
/// Terminal orders older than the retention are skipped, so memory after a restore is
/// bounded like memory after eviction. A changelog record that cannot be decoded is
/// logged and skipped: it was written by us, and refusing to start would stop every
/// order of the partition for the sake of one.
pub fn restore(
    ctx: &Context,
    topics: &Topics,
    partitions: &BTreeSet<i32>,
    stop: &AtomicBool,
) -> Result<BTreeMap<i32, PartitionStore>, RestoreError> {
    let started = Instant::now();
    let older_than: Millis = now_millis() - ctx.config.state_retention_ms as Millis;
    let mut latest: BTreeMap<i32, HashMap<String, Entry>> =
        partitions.iter().map(|p| (*p, HashMap::new())).collect();

    let status_topic = topics.name(topics::ORDER_STATUS);
    let mut records = read_to_end(ctx, &status_topic, partitions, stop, |p, msg| {
        let Some(payload) = msg.payload() else {
            return Ok(());
        };
        match ctx
            .runtime
            .block_on(convert::decode_status(&ctx.codec, payload))
        {
            Ok(Some(state)) => {
                if let Some(map) = latest.get_mut(&p) {
                    // Dropping expired orders as they are read, not after the whole
                    // changelog is in memory, bounds the restore's peak memory by the
                    // orders kept rather than by the changelog's length.
                    if state.is_settled() && state.updated_at < older_than {
                        map.remove(&state.order_id);
                    } else {
                        map.insert(state.order_id.clone(), Entry::Order(Box::new(state)));
                    }
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.is_transient() => Err(RestoreError::Registry(e.to_string())),
            Err(e) => {
                warn!(partition = p, offset = msg.offset(), error = %e, "changelog record skipped");
                Ok(())
            }
        }
    })?;

    // Held events: the last record of a key is what is held; a tombstone means they were
    // released or expired. An order restored above wins over held events of its id.
    let early_topic = topics.name(topics::ORDER_EARLY_EVENTS);
    let mut held = 0usize;
    records += read_to_end(ctx, &early_topic, partitions, stop, |p, msg| {
        let Some(map) = latest.get_mut(&p) else {
            return Ok(());
        };
        let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
        match (key, msg.payload()) {
            (Some(key), None) => {
                if matches!(map.get(&key), Some(Entry::Early(_))) {
                    map.remove(&key);
                }
            }
            (Some(key), Some(payload)) => match wire::decode_early(payload) {
                Ok(early) => {
                    if !matches!(map.get(&key), Some(Entry::Order(_))) {
                        map.insert(key, Entry::Early(early));
                    }
                }
                Err(e) => {
                    warn!(partition = p, offset = msg.offset(), error = %e, "held-events record skipped");
                }
            },
            (None, _) => {}
        }
        Ok(())
    })?;

    let grace = ctx.policy.early_grace_ms;
    let mut stores = BTreeMap::new();
    let mut orders = 0usize;
    for (p, map) in latest {
        let mut store = PartitionStore::new(grace);
        for (id, entry) in map {
            if matches!(entry, Entry::Early(_)) {
                held += 1;
            }
            store.restore(id, entry);
        }
        orders += store.len();
        stores.insert(p, store);
    }
    release_freed_memory();
    ctx.telemetry.on_restore(records, started.elapsed());
    let secs = started.elapsed().as_secs_f64();
    info!(
        partitions = ?partitions,
        records,
        orders,
        held,
        seconds = secs,
        records_per_s = if secs > 0.0 { records as f64 / secs } else { 0.0 },
        "state restored"
    );
    Ok(stores)
}

/// Reads `partitions` of `topic` to their end, stopping early on shutdown.
fn read_to_end(
    ctx: &Context,
    topic: &str,
    partitions: &BTreeSet<i32>,
    stop: &AtomicBool,
    mut each: impl FnMut(i32, &BorrowedMessage<'_>) -> Result<(), RestoreError>,
) -> Result<u64, RestoreError> {
    read::read_to_end(
        &ctx.config,
        &format!("{}-restore", ctx.config.transactional_id()),
        topic,
        partitions.iter().copied(),
        || {
            if stop.load(Ordering::SeqCst) {
                Err(RestoreError::Interrupted)
            } else {
                Ok(())
            }
        },
        |msg| each(msg.partition(), msg),
    )
}

/// Gives memory freed by the restore back to the operating system.
///
/// A restore streams the whole changelog through librdkafka's and our allocations, but
/// keeps only the orders in flight. glibc keeps the freed pages in its arenas, so without
/// this the process would stay as large as the changelog's peak for its whole life.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers
    // and is safe to call at any time from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}
