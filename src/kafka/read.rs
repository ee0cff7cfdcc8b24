//! Reading partitions of one topic from their beginning to their end, with
//! read_committed: what a state restore and `explain` both do.
//!
//! One consumer per call and topic, because an end-of-partition event names only the
//! partition; the end is the last stable offset, so exactly the committed transactions
//! are seen.
//!
//! The last stable offset alone is not enough for a restore. A transaction's commit
//! returns to its producer once the coordinator has decided it, but the markers that end
//! it on each partition are written afterwards; until a marker is written and replicated,
//! the partition's last stable offset stays before the transaction's first record. A new
//! owner that read to that offset just after the previous owner committed would miss
//! state the previous owner's committed outputs rely on, and decide again what it had
//! decided (a deadline fired twice: a command written twice). So the read waits until the
//! last stable offset has reached the high watermark taken when it began: every
//! transaction open then has been committed or aborted. A previous owner that died with
//! a transaction open holds this up until the broker aborts it at its transaction timeout.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::clients;
use crate::config::Config;

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the last stable offset of `partition` (what `consumer`, a read_committed
/// reader, is told its high watermark is) has reached `high`; returns the low watermark
/// and the last stable offset.
fn settled<E: From<KafkaError>>(
    consumer: &BaseConsumer<clients::EofAwareContext>,
    topic: &str,
    partition: i32,
    high: i64,
    go_on: &mut impl FnMut() -> Result<(), E>,
) -> Result<(i64, i64), E> {
    let mut logged = false;
    loop {
        let (low, stable) = consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
        if stable >= high {
            return Ok((low, stable));
        }
        if !logged {
            info!(
                topic,
                partition,
                stable,
                high,
                "waiting for transactions open on the partition to end before reading it"
            );
            logged = true;
        }
        go_on()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `partitions` of `topic` to their end as `client_id`, handing every record to
/// `each`. `go_on` is asked between polls and may end the read with its error (a
/// shutdown, a deadline). Returns how many records were read.
pub fn read_to_end<E: From<KafkaError>>(
    config: &Config,
    client_id: &str,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    mut go_on: impl FnMut() -> Result<(), E>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<u64, E> {
    let mut cfg = clients::assigned_reader(config, client_id);
    cfg.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<clients::EofAwareContext> =
        cfg.create_with_context(clients::EofAwareContext)?;
    let mut uncommitted = clients::assigned_reader(config, &format!("{client_id}-hw"));
    uncommitted.set("isolation.level", "read_uncommitted");
    let uncommitted: BaseConsumer = uncommitted.create()?;
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = uncommitted.fetch_watermarks(topic, p, WATERMARK_TIMEOUT)?;
        let (low, stable) = settled(&consumer, topic, p, high, &mut go_on)?;
        if stable > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            pending.insert(p);
        }
    }
    if !pending.is_empty() {
        consumer.assign(&tpl)?;
    }
    let mut records = 0u64;
    while !pending.is_empty() {
        go_on()?;
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => warn!(topic, error = %e, "error while reading to the end; continuing"),
            Some(Ok(msg)) => {
                records += 1;
                each(&msg)?;
            }
        }
    }
    Ok(records)
}
