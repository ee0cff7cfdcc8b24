//! The floor of one hop: how long a bare transaction takes on this broker.
//!
//! A transactional producer with the processor's client settings writes one small record
//! to each of `2 × partitions` partitions (as a step writes a command and a status to
//! two topics), sends offsets for one input partition, and commits, back to back. Nothing
//! is decoded or decided, so the time of one such transaction is the least one hop of an
//! order (fetch, decide, commit) can cost, whatever the processor does.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use order_saga::config::Config;
use order_saga::kafka::clients;
use order_saga::kafka::flush::flush;
use order_saga::topics;

use crate::saga::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct TxnResult {
    pub transactions: u64,
    /// Partitions each transaction writes to.
    pub partitions_touched: i32,
    /// begin → records handed over → offsets sent → commit returned, per transaction.
    pub hop_ms: Percentiles,
    /// `commit_transaction` alone (it also flushes the records).
    pub commit_ms: Percentiles,
    /// `send_offsets_to_transaction` alone.
    pub send_offsets_ms: Percentiles,
}

/// The two topics written: a command topic and the status topic, as a step does.
pub fn topics(config: &Config) -> [String; 2] {
    let names = config.topics();
    [
        names.name(topics::INVENTORY_RESERVE_REQUEST),
        names.name(topics::ORDER_STATUS),
    ]
}

/// Runs `transactions` transactions on two fresh topics of `partitions` partitions.
pub fn run(config: &Config, partitions: i32, transactions: u64) -> anyhow::Result<TxnResult> {
    let topics = topics(config);
    let producer: ThreadedProducer<DefaultProducerContext> =
        clients::transactional_producer(config)
            .create()
            .context("transactional producer")?;
    let timeout = Duration::from_millis(config.transaction_timeout_ms);
    producer
        .init_transactions(timeout)
        .context("init_transactions")?;
    // Offsets are sent on behalf of a group, as the processor does; the group need not
    // have members for the coordinator to take them.
    let consumer: BaseConsumer = clients::read_committed_consumer(
        config,
        &format!("{}-txn-floor", config.application_id),
        "order-saga-bench-txn",
    )
    .create()
    .context("consumer for group metadata")?;
    let group = consumer
        .group_metadata()
        .context("the consumer has no group metadata")?;

    let payload = [0u8; 64];
    let (mut hop, mut commit, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..transactions {
        let started = Instant::now();
        producer.begin_transaction().context("begin_transaction")?;
        for topic in &topics {
            for p in 0..partitions {
                let key = format!("{i}-{p}");
                let record = BaseRecord::to(topic)
                    .partition(p)
                    .key(&key)
                    .payload(&payload[..]);
                producer.send(record).map_err(|(e, _)| e).context("send")?;
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topics[0], 0, Offset::Offset(i as i64 + 1))
            .context("offsets")?;
        let t = Instant::now();
        producer
            .send_offsets_to_transaction(&tpl, &group, timeout)
            .context("send_offsets_to_transaction")?;
        offsets.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        flush(&producer, timeout).context("flush")?;
        producer
            .commit_transaction(timeout)
            .context("commit_transaction")?;
        commit.push(t.elapsed().as_secs_f64() * 1000.0);
        hop.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(TxnResult {
        transactions,
        partitions_touched: partitions * 2,
        hop_ms: Percentiles::of(&mut hop),
        commit_ms: Percentiles::of(&mut commit),
        send_offsets_ms: Percentiles::of(&mut offsets),
    })
}
