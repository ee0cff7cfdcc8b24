//! The exactly-once transaction loop around the saga core.
//!
//! One dedicated thread runs the loop, because every rdkafka transaction call blocks:
//!
//! ```text
//! running:  begin → poll inputs for one commit interval → decode → decide → produce
//!           commands, order-status and dead letters → fire due deadlines →
//!           send offsets (with the group metadata) → commit
//! draining: finish (or abort) the open transaction, leave the group
//! stopped
//! ```
//!
//! State changes go to an overlay per partition ([`store::PartitionStore`]) and become
//! permanent only when their transaction commits. An abort drops the overlay and rewinds
//! the consumer to where the transaction started, so state always equals the committed
//! `order-status` changelog, from which it is restored when a partition is assigned.

pub mod metrics;
pub mod rebalance;
pub mod restore;
pub mod store;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::contracts::Codec;
use crate::kafka::{classify, clients, ErrorClass};
use crate::retry::Backoff;
use crate::saga::{Decision, Event, Millis, OrderState, Policy, Status};
use crate::topics::{self, Topics};

use metrics::Metrics;
use rebalance::{RebalanceEvent, RebalanceTracker};
use store::PartitionStore;
use wire::WireError;

/// Why the processor stopped other than by a requested shutdown.
#[derive(Debug, Error)]
pub enum ProcessorError {
    #[error(
        "fenced: another instance started with transactional.id {transactional_id}; this one \
         stops so that only one writes ({source})"
    )]
    Fenced {
        transactional_id: String,
        source: KafkaError,
    },
    #[error("kafka error that cannot be recovered from: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topics are not usable: {0}")]
    Topics(#[from] crate::kafka::admin::AdminError),
    #[error("state restore of partition {partition} failed: {reason}")]
    Restore { partition: i32, reason: String },
    #[error("processor thread failed: {0}")]
    Thread(String),
}

/// The lifecycle of the loop, logged on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Draining,
    Stopped,
}

type TxnConsumer = BaseConsumer<RebalanceTracker>;
type TxnProducer = ThreadedProducer<DefaultProducerContext>;

/// What the loop needs besides the clients.
pub struct Context {
    pub config: Config,
    pub policy: Policy,
    pub codec: Arc<Codec>,
    pub metrics: Arc<Metrics>,
    /// Runtime on which the codec's registry look-ups run.
    pub runtime: tokio::runtime::Handle,
    /// Written on every loop iteration, for `order-saga health`.
    pub heartbeat: Arc<crate::health::Heartbeat>,
}

/// Runs the processor until `shutdown` completes, then drains and returns.
///
/// Returns an error only when it cannot go on: fenced, or a fatal Kafka error.
pub async fn run(
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProcessorError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::SeqCst);
    });
    let result = tokio::task::spawn_blocking(move || Loop::start(ctx, stop)?.run())
        .await
        .map_err(|e| ProcessorError::Thread(e.to_string()))?;
    watcher.abort();
    result
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One input record's place, for offsets and rewinds.
type TopicPartition = (String, i32);

/// The state of the open transaction.
#[derive(Default)]
struct Txn {
    open: bool,
    /// Offset of the first record consumed per partition: where an abort rewinds to.
    first_offsets: HashMap<TopicPartition, i64>,
    /// Offset after the last record consumed per partition: what the commit stores.
    next_offsets: HashMap<TopicPartition, i64>,
    records_out: u64,
}

/// How one step of the loop went wrong, and what to do about it.
enum StepError {
    /// The transaction must be aborted and its input read again, after a pause.
    Abort(String),
    /// The producer is done for.
    Fatal(KafkaError),
}

impl From<KafkaError> for StepError {
    fn from(e: KafkaError) -> Self {
        match classify(&e) {
            ErrorClass::Retry | ErrorClass::Abort => StepError::Abort(e.to_string()),
            ErrorClass::Fatal => StepError::Fatal(e),
        }
    }
}

struct Loop {
    ctx: Context,
    topics: Topics,
    consumer: TxnConsumer,
    producer: TxnProducer,
    stop: Arc<AtomicBool>,
    /// Stores of the partitions this instance owns and has restored.
    stores: BTreeMap<i32, PartitionStore>,
    /// Stores of revoked partitions, kept in case the same rebalance gives them back.
    parked: BTreeMap<i32, PartitionStore>,
    /// Assigned partitions whose state is not restored yet; they stay paused until it is.
    unrestored: BTreeSet<i32>,
    txn: Txn,
    lifecycle: Lifecycle,
}

impl Loop {
    /// Creates the clients and initialises transactions, retrying while Kafka is
    /// unreachable.
    fn start(ctx: Context, stop: Arc<AtomicBool>) -> Result<Self, ProcessorError> {
        let topics = ctx.config.topics();
        let txn_id = ctx.config.transactional_id();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Co-partitioning is a precondition of the join: refuse to start on topics that
        // break it, rather than silently mis-joining.
        let inputs = topics.inputs();
        let mut names: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let status_topic = topics.name(topics::ORDER_STATUS);
        names.push(&status_topic);
        let partitions = loop {
            use crate::kafka::admin::AdminError;
            match crate::kafka::admin::check_co_partitioned(&ctx.config, &names) {
                Ok(n) => break n,
                // Unreachable brokers and topics still being created are waited for;
                // topics that exist but break co-partitioning are not.
                Err(e @ (AdminError::Kafka(_) | AdminError::Missing(_)))
                    if !stop.load(Ordering::SeqCst) =>
                {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "input topics not usable yet; waiting");
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let producer: TxnProducer = clients::transactional_producer(&ctx.config).create()?;
        backoff.reset();
        loop {
            match producer.init_transactions(Duration::from_secs(30)) {
                Ok(()) => break,
                Err(e) if classify(&e) == ErrorClass::Retry && !stop.load(Ordering::SeqCst) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "init_transactions failed; retrying");
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(fatal(&txn_id, e)),
            }
        }
        let consumer: TxnConsumer = clients::read_committed_consumer(
            &ctx.config,
            &ctx.config.application_id,
            &format!("{txn_id}-consumer"),
        )
        .create_with_context(RebalanceTracker::default())?;
        consumer.subscribe(&names[..inputs.len()])?;
        info!(transactional_id = %txn_id, partitions, inputs = ?&names[..inputs.len()], "processor started");
        Ok(Loop {
            ctx,
            topics,
            consumer,
            producer,
            stop,
            stores: BTreeMap::new(),
            parked: BTreeMap::new(),
            unrestored: BTreeSet::new(),
            txn: Txn::default(),
            lifecycle: Lifecycle::Running,
        })
    }

    fn set_lifecycle(&mut self, next: Lifecycle) {
        if self.lifecycle != next {
            info!(from = ?self.lifecycle, to = ?next, "processor lifecycle");
            self.lifecycle = next;
        }
    }

    fn run(mut self) -> Result<(), ProcessorError> {
        let interval = self.ctx.config.commit_interval();
        let stats_every = Duration::from_secs(self.ctx.config.stats_interval_s);
        let mut last_stats = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            if self.lifecycle == Lifecycle::Running && self.stop.load(Ordering::SeqCst) {
                self.set_lifecycle(Lifecycle::Draining);
            }
            let ready = self.lifecycle == Lifecycle::Running && self.unrestored.is_empty();
            let lifecycle = format!("{:?}", self.lifecycle).to_lowercase();
            self.ctx.heartbeat.beat(&lifecycle, ready);
            let outcome = match self.lifecycle {
                Lifecycle::Running => self.cycle(interval),
                Lifecycle::Draining => {
                    let result = self.commit();
                    self.consumer.unsubscribe();
                    self.set_lifecycle(Lifecycle::Stopped);
                    result
                }
                Lifecycle::Stopped => break,
            };
            match outcome {
                Ok(()) => backoff.reset(),
                Err(StepError::Abort(reason)) => {
                    let delay = backoff.next_delay();
                    warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "aborting transaction");
                    self.abort(true)
                        .map_err(|e| fatal(&self.ctx.config.transactional_id(), e))?;
                    std::thread::sleep(delay);
                }
                Err(StepError::Fatal(e)) => {
                    self.ctx
                        .metrics
                        .log("processor counters at failure", &self.status_counts());
                    return Err(fatal(&self.ctx.config.transactional_id(), e));
                }
            }
            if last_stats.elapsed() >= stats_every {
                last_stats = Instant::now();
                self.ctx
                    .metrics
                    .log("processor progress", &self.status_counts());
            }
        }
        self.ctx
            .metrics
            .log("processor stopped", &self.status_counts());
        Ok(())
    }

    /// One transaction's worth of work: poll for an interval, fire deadlines, commit.
    fn cycle(&mut self, interval: Duration) -> Result<(), StepError> {
        if !self.unrestored.is_empty() {
            self.restore_pending()?;
        }
        let deadline = Instant::now() + interval;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.load(Ordering::SeqCst) {
                break;
            }
            let polled = self.consumer.poll(left);
            let events = self.consumer.context().take();
            if !events.is_empty() {
                // The group generation changed under the open transaction: its offsets
                // can no longer be committed, so abort it and redo the work from the
                // committed offsets, as the new owner of each partition would.
                if self.txn.open {
                    // No rewind: an eager (range) assignment starts every assigned
                    // partition again from its committed offset.
                    self.abort(false).map_err(StepError::from)?;
                }
                self.apply_rebalance(events)?;
                return Ok(());
            }
            match polled {
                None => {}
                // Detached, so the record outlives the consumer borrow while the loop mutates
                // itself; a copy of a few hundred bytes is small beside the Avro decode.
                Some(Ok(msg)) => {
                    let msg = msg.detach();
                    self.handle(&msg)?
                }
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Retry => debug!(error = %e, "transient consumer error"),
                    ErrorClass::Abort => return Err(StepError::Abort(e.to_string())),
                    ErrorClass::Fatal => return Err(StepError::Fatal(e)),
                },
            }
        }
        self.fire_deadlines()?;
        self.commit()?;
        self.evict();
        Ok(())
    }

    fn begin(&mut self) -> Result<(), StepError> {
        if !self.txn.open {
            self.producer.begin_transaction()?;
            self.txn.open = true;
        }
        Ok(())
    }

    /// Handles one input record inside the open transaction.
    fn handle(&mut self, msg: &OwnedMessage) -> Result<(), StepError> {
        self.begin()?;
        let tp = (msg.topic().to_string(), msg.partition());
        self.txn
            .first_offsets
            .entry(tp.clone())
            .or_insert(msg.offset());
        self.txn.next_offsets.insert(tp, msg.offset() + 1);
        Metrics::add(&self.ctx.metrics.records_in, 1);

        let partition = msg.partition();
        let Some(base) = self.topics.base(msg.topic()) else {
            return self.dead_letter(
                msg,
                "unknown_topic",
                "record from a topic the processor does not read",
            );
        };
        let Some(key) = msg.key() else {
            return self.dead_letter(
                msg,
                "missing_key",
                "record has no key; the key must be the order id",
            );
        };
        let Ok(key) = std::str::from_utf8(key) else {
            return self.dead_letter(msg, "invalid_key", "key is not UTF-8");
        };
        let Some(payload) = msg.payload() else {
            return self.dead_letter(msg, "missing_value", "record has no value");
        };
        let event =
            match self
                .ctx
                .runtime
                .block_on(wire::decode_event(&self.ctx.codec, base, payload))
            {
                Ok(event) => event,
                Err(e) if e.is_transient() => return Err(StepError::Abort(e.to_string())),
                Err(e) => return self.dead_letter(msg, e.kind(), &e.to_string()),
            };
        if wire::event_order_id(&event) != Some(key) {
            return self.dead_letter(
                msg,
                "key_mismatch",
                "the record's order_id differs from its key",
            );
        }
        let Some(store) = self.stores.get(&partition) else {
            // Not restored yet, or no longer ours: the record will be read again by
            // whoever owns the partition, so abandon this transaction's work.
            return Err(StepError::Abort(format!(
                "record of partition {partition} before its state was restored"
            )));
        };
        let now = now_millis();
        let decision = self.ctx.policy.decide(store.get(key), &event, now);
        match decision {
            Decision::Apply { state, commands } => self.apply(partition, state, commands),
            Decision::Ignore(reason) => {
                debug!(order_id = key, reason = %reason, "event ignored");
                Metrics::add(&self.ctx.metrics.ignored_events, 1);
                Ok(())
            }
            Decision::Reject(reason) => self.dead_letter(msg, reason.kind(), &reason.to_string()),
        }
    }

    /// Writes a new state and its commands into the open transaction.
    fn apply(
        &mut self,
        partition: i32,
        state: OrderState,
        commands: Vec<crate::saga::Command>,
    ) -> Result<(), StepError> {
        self.begin()?;
        let status_topic = self.topics.name(topics::ORDER_STATUS);
        let bytes = self.encode(wire::encode_status(&self.ctx.codec, &state))?;
        // The status record goes to the input's partition number, which is the partition
        // its state is restored from, whatever partitioner a producer upstream used.
        self.send(
            &status_topic,
            Some(partition),
            &state.order_id,
            &bytes,
            None,
        )?;
        for command in &commands {
            let topic = self.topics.name(topics::command_topic(command.action));
            let bytes = self.encode(wire::encode_command(&self.ctx.codec, command, &state))?;
            self.send(&topic, None, &command.order_id, &bytes, None)?;
            if wire::is_compensation(command.action) {
                Metrics::add(&self.ctx.metrics.compensations, 1);
            }
        }
        debug!(order_id = %state.order_id, status = state.status.as_str(), version = state.version, commands = commands.len(), "order changed");
        Metrics::add(&self.ctx.metrics.state_changes, 1);
        if let Some(store) = self.stores.get_mut(&partition) {
            store.put(state);
        }
        Ok(())
    }

    fn encode(
        &self,
        fut: impl std::future::Future<Output = Result<Vec<u8>, WireError>>,
    ) -> Result<Vec<u8>, StepError> {
        self.ctx
            .runtime
            .block_on(fut)
            .map_err(|e| StepError::Abort(format!("encoding failed: {e}")))
    }

    /// Produces one record into the open transaction, waiting while the local queue is full.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), StepError> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(key.as_bytes()).payload(payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.enqueue(record)
    }

    /// Hands a record to the producer inside the open transaction, waiting while its
    /// local queue is full.
    fn enqueue(&mut self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), StepError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => match classify(&e) {
                    ErrorClass::Retry => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => return Err(StepError::from(e)),
                },
            }
        }
        self.txn.records_out += 1;
        Ok(())
    }

    /// Sends an input record that cannot be processed to the dead-letter topic, in the
    /// same transaction as its offset, so it is neither lost nor processed twice.
    fn dead_letter(
        &mut self,
        msg: &OwnedMessage,
        kind: &str,
        message: &str,
    ) -> Result<(), StepError> {
        warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            kind,
            message,
            "record dead-lettered"
        );
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.source.topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "dlq.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "dlq.source.offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "dlq.error.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "dlq.error.message",
                value: Some(message),
            });
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let dlq = self.topics.name(topics::ORDER_DLQ);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&dlq).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        self.enqueue(record)?;
        Metrics::add(&self.ctx.metrics.dlq_records, 1);
        Ok(())
    }

    /// Feeds a `Tick` to every order whose deadline has passed, in the open transaction,
    /// so a timeout and its compensations commit atomically.
    fn fire_deadlines(&mut self) -> Result<(), StepError> {
        let now = now_millis();
        let due: Vec<(i32, String)> = self
            .stores
            .iter()
            .flat_map(|(p, s)| s.due(now).into_iter().map(move |id| (*p, id)))
            .collect();
        for (partition, order_id) in due {
            let decision = match self.stores.get(&partition) {
                Some(store) => self
                    .ctx
                    .policy
                    .decide(store.get(&order_id), &Event::Tick, now),
                None => continue,
            };
            match decision {
                Decision::Apply { state, commands } => self.apply(partition, state, commands)?,
                Decision::Ignore(_) => {}
                Decision::Reject(reason) => {
                    warn!(order_id = %order_id, reason = %reason, "tick rejected");
                }
            }
        }
        Ok(())
    }

    /// Commits the open transaction with the consumed offsets.
    fn commit(&mut self) -> Result<(), StepError> {
        if !self.txn.open {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &self.txn.next_offsets {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if offsets.count() > 0 {
            let Some(group) = self.consumer.group_metadata() else {
                return Err(StepError::Abort("consumer has no group metadata".into()));
            };
            retrying(|| {
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, Duration::from_secs(10))
            })?;
        }
        retrying(|| self.producer.commit_transaction(Duration::from_secs(30)))?;
        let now = now_millis();
        for store in self.stores.values_mut() {
            store.commit(now);
        }
        Metrics::add(&self.ctx.metrics.transactions_committed, 1);
        Metrics::add(&self.ctx.metrics.records_out, self.txn.records_out);
        self.txn = Txn::default();
        Ok(())
    }

    /// Aborts the open transaction and forgets its state changes; with `rewind`, seeks
    /// the consumer back to where the transaction started reading.
    fn abort(&mut self, rewind: bool) -> Result<(), KafkaError> {
        if self.txn.open {
            match self.producer.abort_transaction(Duration::from_secs(30)) {
                Ok(()) => {}
                Err(e) if classify(&e) == ErrorClass::Retry => {
                    self.producer.abort_transaction(Duration::from_secs(30))?;
                }
                Err(e) => return Err(e),
            }
            Metrics::add(&self.ctx.metrics.transactions_aborted, 1);
        }
        for store in self.stores.values_mut() {
            store.rollback();
        }
        let first_offsets = std::mem::take(&mut self.txn.first_offsets);
        self.txn = Txn::default();
        if !rewind {
            return Ok(());
        }
        let assignment = self.consumer.assignment()?;
        for ((topic, partition), first) in first_offsets {
            let owned = assignment.find_partition(&topic, partition).is_some();
            if owned {
                if let Err(e) = self.consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(first),
                    Duration::from_secs(10),
                ) {
                    // A seek that fails leaves the consumer past records whose output was
                    // just aborted: they would be skipped. Treat it as a fatal loss of
                    // position rather than risk that.
                    error!(topic = %topic, partition, error = %e, "rewind failed");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Acts on assignment changes: parks revoked stores, restores new ones, resumes.
    fn apply_rebalance(&mut self, events: Vec<RebalanceEvent>) -> Result<(), StepError> {
        for event in events {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    self.unrestored.retain(|p| !parts.contains(p));
                    for p in parts {
                        if let Some(store) = self.stores.remove(&p) {
                            self.parked.insert(p, store);
                        }
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    // Parked stores not given back were taken over by another instance:
                    // they are stale from now on.
                    self.parked.retain(|p, _| parts.contains(p));
                    let mut to_restore = BTreeSet::new();
                    for p in parts.iter().copied() {
                        if self.stores.contains_key(&p) {
                            continue;
                        }
                        match self.parked.remove(&p) {
                            Some(store) => {
                                self.stores.insert(p, store);
                            }
                            None => {
                                to_restore.insert(p);
                            }
                        }
                    }
                    self.unrestored = to_restore;
                    self.restore_pending()?;
                }
                RebalanceEvent::Failed(reason) => {
                    warn!(reason = %reason, "rebalance failed; waiting for the next one");
                }
            }
        }
        Ok(())
    }

    /// Restores the partitions waiting for it, then resumes every assigned partition
    /// that has its state. On failure the partitions stay paused and the next cycle
    /// tries again.
    fn restore_pending(&mut self) -> Result<(), StepError> {
        if !self.unrestored.is_empty() {
            let restored = restore::restore(&self.ctx, &self.topics, &self.unrestored, &self.stop)
                .map_err(|e| StepError::Abort(format!("state restore failed: {e}")))?;
            for (p, store) in restored {
                Metrics::add(&self.ctx.metrics.restored_orders, store.len() as u64);
                self.unrestored.remove(&p);
                self.stores.insert(p, store);
            }
        }
        let assignment = self.consumer.assignment()?;
        let mut ready = TopicPartitionList::new();
        for e in assignment.elements() {
            if self.stores.contains_key(&e.partition()) {
                ready.add_partition(e.topic(), e.partition());
            }
        }
        self.consumer.resume(&ready)?;
        Ok(())
    }

    fn evict(&mut self) {
        let retention = self.ctx.config.state_retention_ms as Millis;
        let older_than = now_millis() - retention;
        let evicted: usize = self.stores.values_mut().map(|s| s.evict(older_than)).sum();
        if evicted > 0 {
            Metrics::add(&self.ctx.metrics.evicted_orders, evicted as u64);
        }
    }

    fn status_counts(&self) -> BTreeMap<Status, u64> {
        let mut counts = BTreeMap::new();
        for store in self.stores.values() {
            for s in store.states() {
                *counts.entry(s.status).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Retries a transaction call while its error is classified retriable.
fn retrying(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), StepError> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for _ in 0..20 {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == ErrorClass::Retry => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "transaction call failed; retrying");
                std::thread::sleep(delay);
            }
            Err(e) => return Err(StepError::from(e)),
        }
    }
    Err(StepError::Abort("transaction call kept failing".into()))
}

fn fatal(transactional_id: &str, e: KafkaError) -> ProcessorError {
    let fenced = match &e {
        KafkaError::Transaction(t) => matches!(
            t.code(),
            rdkafka::types::RDKafkaErrorCode::ProducerFenced
                | rdkafka::types::RDKafkaErrorCode::Fenced
        ),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::ProducerFenced
                    | rdkafka::types::RDKafkaErrorCode::Fenced
            )
        ),
    };
    if fenced {
        ProcessorError::Fenced {
            transactional_id: transactional_id.to_string(),
            source: e,
        }
    } else {
        ProcessorError::Kafka(e)
    }
}
