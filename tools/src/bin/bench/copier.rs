//! The limit: a raw transactional copier on the same broker.
//!
//! It reads what the saga reads for N orders (one create and four results per order,
//! pre-filled with the real encodings) and writes what the saga writes (four commands and
//! five order-status records per order, the real encodings of a sample order), with the
//! processor's client settings, `send_offsets_to_transaction` and one commit per commit
//! interval, but no decoding, no decisions and no state. Whatever the saga does beyond
//! that costs the difference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer as _,
    ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use order_saga::config::Config;
use order_saga::contracts::Codec;
use order_saga::kafka::flush::flush;
use order_saga::kafka::{classify, clients, ErrorClass};
use order_saga::saga::Policy;
use order_saga::topics;
use order_saga_tools::load::{now_millis, Rng};

use crate::fixtures::{self, OutputTemplates};

#[derive(Debug, Clone, Serialize)]
pub struct CopierResult {
    pub orders: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub transactions: u64,
    pub seconds: f64,
    /// (records in + out) / seconds, from the first record read to the last commit.
    pub records_per_s: f64,
    pub prefill_seconds: f64,
    /// Average value bytes read per order (create + 4 results).
    pub bytes_in_per_order: f64,
    /// Value bytes written per order (4 commands + 5 statuses).
    pub bytes_out_per_order: usize,
    /// CPU of the bench process while copying, per 1,000 orders.
    pub cpu_s_per_1000_orders: f64,
    /// (seconds since the first record, records in + out committed so far), per commit.
    pub timeline: Vec<(f64, u64)>,
}

/// Most deliveries awaited at once while pre-filling.
const MAX_IN_FLIGHT: usize = 50_000;

/// Writes the input records of `orders` orders to the copier's input topics.
/// Returns the average value bytes per order.
pub async fn prefill(
    config: &Config,
    codec: &Codec,
    orders: u64,
    run_id: &str,
) -> anyhow::Result<f64> {
    let policy = Policy::default();
    let producer: FutureProducer =
        clients::plain_producer(config, &format!("{}-prefill", config.application_id))
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "500000")
            .create()
            .context("prefill producer")?;
    let names = config.topics();
    let mut rng = Rng::new(now_millis() as u64);
    let mut in_flight = FuturesUnordered::new();
    let mut bytes = 0usize;
    let mut failed = 0u64;
    for _ in 0..orders {
        let now = now_millis();
        let order = fixtures::order(&mut rng, run_id, now);
        for (base, value) in fixtures::input_records(codec, &policy, &order, now).await? {
            bytes += value.len();
            let topic = names.name(base);
            let mut record = FutureRecord::to(&topic)
                .key(order.order_id.as_str())
                .payload(&value);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => break in_flight.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => bail!("prefill: cannot enqueue: {e}"),
                }
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            match in_flight.next().await {
                Some(Ok(Ok(_))) => {}
                Some(_) => failed += 1,
                None => break,
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        if !matches!(result, Ok(Ok(_))) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("prefill: {failed} records were not delivered");
    }
    Ok(bytes as f64 / orders.max(1) as f64)
}

/// Copies everything the prefill wrote, in transactions, until `orders × 5` records are
/// consumed and committed. Blocking: run it off the async workers.
pub fn copy(
    config: &Config,
    templates: Arc<OutputTemplates>,
    orders: u64,
    stall_timeout: Duration,
    progress: impl Fn(u64, u64),
) -> anyhow::Result<CopierResult> {
    let expected_in = orders * 5;
    let names = config.topics();
    let producer: ThreadedProducer<DefaultProducerContext> =
        clients::transactional_producer(config)
            .create()
            .context("copier producer")?;
    producer
        .init_transactions(Duration::from_secs(30))
        .context("init_transactions")?;
    let consumer: BaseConsumer = clients::read_committed_consumer(
        config,
        &config.application_id,
        &format!("{}-consumer", config.transactional_id()),
    )
    .create()
    .context("copier consumer")?;
    let inputs = names.inputs();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).context("subscribe")?;
    let status_topic = names.name(topics::ORDER_STATUS);
    let command_topics: Vec<String> = templates
        .command
        .iter()
        .map(|(t, _)| names.name(t))
        .collect();

    let interval = config.commit_interval();
    let (mut consumed, mut produced, mut transactions) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut last_record = Instant::now();
    let mut timeline = Vec::new();
    while consumed < expected_in {
        let cycle_end = Instant::now() + interval;
        let mut open = false;
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        let (mut n_in, mut n_out) = (0u64, 0u64);
        loop {
            let left = cycle_end.saturating_duration_since(Instant::now());
            if left.is_zero() || consumed + n_in >= expected_in {
                break;
            }
            let msg = match consumer.poll(left) {
                None => continue,
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Retry => continue,
                    _ => bail!("copier consumer: {e}"),
                },
                Some(Ok(msg)) => msg,
            };
            if !open {
                producer.begin_transaction().context("begin_transaction")?;
                open = true;
            }
            first.get_or_insert_with(Instant::now);
            last_record = Instant::now();
            let stage = names.base(msg.topic()).and_then(fixtures::stage_of);
            let Some(stage) = stage else {
                bail!("copier: record from unexpected topic {}", msg.topic())
            };
            offsets.insert((msg.topic().to_string(), msg.partition()), msg.offset() + 1);
            let key = msg.key().unwrap_or_default();
            let Some(status) = templates.status.get(stage) else {
                bail!("no status template {stage}")
            };
            send(
                &producer,
                BaseRecord::to(&status_topic)
                    .partition(msg.partition())
                    .key(key)
                    .payload(&status[..]),
            )?;
            n_out += 1;
            if let (Some(topic), Some((_, command))) =
                (command_topics.get(stage), templates.command.get(stage))
            {
                send(
                    &producer,
                    BaseRecord::to(topic).key(key).payload(&command[..]),
                )?;
                n_out += 1;
            }
            n_in += 1;
        }
        if open {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in &offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            let Some(group) = consumer.group_metadata() else {
                bail!("copier: no group metadata")
            };
            producer
                .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(10))
                .context("send_offsets_to_transaction")?;
            // As the processor does: see `kafka::flush`.
            flush(&producer, Duration::from_secs(30)).context("flush")?;
            producer
                .commit_transaction(Duration::from_secs(30))
                .context("commit_transaction")?;
            consumed += n_in;
            produced += n_out;
            transactions += 1;
            if let Some(f) = first {
                timeline.push((f.elapsed().as_secs_f64(), consumed + produced));
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            progress(consumed, produced);
        }
        if last_record.elapsed() > stall_timeout {
            bail!("copier: no record for {stall_timeout:?} after {consumed} of {expected_in}");
        }
    }
    let seconds = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    consumer.unsubscribe();
    Ok(CopierResult {
        orders,
        records_in: consumed,
        records_out: produced,
        transactions,
        seconds,
        records_per_s: if seconds > 0.0 {
            (consumed + produced) as f64 / seconds
        } else {
            0.0
        },
        prefill_seconds: 0.0,
        bytes_in_per_order: 0.0,
        bytes_out_per_order: templates.bytes_per_order(),
        cpu_s_per_1000_orders: 0.0,
        timeline,
    })
}

/// Sends into the open transaction, waiting while librdkafka's queue is full.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("copier: cannot produce: {e}"),
        }
    }
}
