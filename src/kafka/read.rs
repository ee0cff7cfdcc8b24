//! Reading partitions of one topic from their beginning to their end, with
//! read_committed: what a state restore and `explain` both do.
//!
//! One consumer per call and topic, because an end-of-partition event names only the
//! partition; the end is the last stable offset, so exactly the committed transactions
//! are seen.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::clients;
use crate::config::Config;

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
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
        if high > low {
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
