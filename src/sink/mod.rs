//! The exactly-once PostgreSQL sink of `order-status`.
//!
//! A consumer in its own group (`--sink-group`, default `order-pg-sink`) reads
//! `order-status` with `isolation.level=read_committed` and commits nothing to Kafka:
//! its position lives in PostgreSQL, in `sink_offsets`, and moves in the same
//! transaction as the rows it accounts for. The table is therefore exactly-once with
//! respect to the changelog: a crash, a rebalance or a PostgreSQL restart either loses a
//! whole uncommitted batch, which is read again from the stored offsets, or nothing.
//!
//! # One batch, one transaction
//!
//! Records gather for up to 50 ms or 1000 records, then one transaction runs four
//! statements:
//!
//! 1. `sink_offsets`: the next offset of every partition in the batch, as a
//!    compare-and-set against the offset the batch continues from. If another writer
//!    moved it (a zombie sink that lost its partitions without noticing, or an operator
//!    resetting offsets) nothing is written: the batch is dropped and every partition is
//!    re-read from what PostgreSQL now holds.
//! 2. `orders`: the batch folded to the latest version per order, one
//!    `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE … WHERE orders.version <
//!    EXCLUDED.version`, so an older version never overwrites a newer one and a replay
//!    changes nothing. The time each status was reached (`reserved_at` … `canceled_at`)
//!    comes from the record's `saga_state`, else from the record's own status and
//!    `updated_at`; a time already stored is kept when a newer record lacks it.
//! 3. `order_status_history`: every record of the batch, `ON CONFLICT DO NOTHING`.
//! 4. `pg_notify('order_status_changed', payload)`, when the batch changed anything.
//!
//! # Where a partition starts
//!
//! On every assignment the context pauses the new partitions inside the rebalance
//! callback, before librdkafka can hand out a record of them. The loop then reads their
//! stored offsets from PostgreSQL, seeks each partition there (to the beginning if none
//! is stored), and only then resumes it. librdkafka rejects a seek until the assignment
//! has started fetching; the loop retries it every 100 ms. A record at an offset below
//! where the sink positioned its partition is dropped, so a stale fetch can never
//! re-apply anything. Revoked partitions drop their uncommitted records: their next owner
//! reads them again from the stored offsets. To replay the topic, stop the sinks of the
//! group, delete the group's rows of `sink_offsets`, and start them again (a running
//! sink notices a reset only when its next batch fails the compare-and-set).
//!
//! # Outages
//!
//! When PostgreSQL cannot be reached (or a statement fails) the sink pauses every
//! partition, keeps polling (so the group keeps it, and `max.poll.interval.ms` is never
//! exceeded), retries the same batch with exponential backoff up to 10 s, and resumes on
//! its own; memory stays bounded by one batch. A schema registry that cannot be reached
//! is handled the same way. A record that cannot be decoded or turned into a row is
//! logged with its topic, partition and offset and skipped (the processor wrote it, so it
//! is a bug to fix, not a reason to stop); a tombstone is skipped too.
//!
//! # Rows PostgreSQL refuses
//!
//! A batch PostgreSQL refuses for its *data* (SQLSTATE class 22 or 23, see
//! [`crate::db::classify`]: a timestamp out of range, a violated constraint) would fail
//! every retry. Instead, a second transaction claims the same offsets and writes the
//! batch in slices, each in a savepoint, halving the slices that fail until single
//! records remain (about `log2(n)` tries per bad record). Every record whose row fails
//! alone goes to `order_status_rejects` with its partition, offset, SQLSTATE and
//! PostgreSQL's message; everything else is written, and the offsets move past it all,
//! in that one transaction. So the rejects are exactly-once too: a restart does not read
//! them again, and a replay finds them in the table and adds nothing. Each one is logged
//! (WARN, without the row's values) and counted (`order_saga.sink.rejected`). A batch
//! that fails for any other reason (connection, shutdown, deadlock, a missing table) is
//! retried whole, as above.
//!
//! # Change feed
//!
//! After each committed batch that inserted or updated at least one row (or set a record
//! aside), listeners of channel `order_status_changed` receive (only on commit, as
//! `pg_notify` is transactional) a JSON payload well under PostgreSQL's 8000-byte limit:
//!
//! ```json
//! {"topic":"order-status","orders":12,"history":30,
//!  "max_updated_at":"2026-11-25T10:15:00.123Z","partitions":{"0":1043,"3":998}}
//! ```
//!
//! - `topic`: the changelog topic the offsets belong to (it carries the deployment's
//!   topic prefix, so deployments sharing a database can tell their batches apart);
//! - `orders`: `orders` rows inserted or updated by the batch;
//! - `history`: `order_status_history` rows added;
//! - `rejected`: records set aside in `order_status_rejects` (only when there are some);
//! - `max_updated_at`: the latest `updated_at` among the rows written (UTC, RFC 3339
//!   with milliseconds); re-reading `orders WHERE updated_at >= …` of an earlier
//!   notification is a safe way to catch up;
//! - `partitions`: for each `order-status` partition in the batch, the offset of the next
//!   record to read, as stored in `sink_offsets` (left out above 256 partitions).
//!
//! Fields may be added; consumers should ignore the ones they do not know.

mod batch;
mod consumer;
mod isolate;
mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::contracts::{convert, Codec, CodecError};
use crate::health::Heartbeat;
use crate::kafka::{self, clients, ErrorClass};
use crate::retry::Backoff;
use crate::telemetry::Telemetry;
use crate::topics;

pub use batch::rfc3339_millis;
use batch::{Batch, OrderRow};
use consumer::{Change, SinkContext};
pub use store::NOTIFY_CHANNEL;
use store::{Commit, Rejected, Store};

/// A batch is written once it holds this many records…
const MAX_BATCH_RECORDS: usize = 1000;
/// …or once its first record has waited this long.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(50);
/// How soon a seek that librdkafka refused (assignment not started yet) is tried again.
const SEEK_RETRY: Duration = Duration::from_millis(100);
/// How long shutdown may spend writing the last batch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the sink stopped. Outages of PostgreSQL, the broker or the registry are not
/// errors: the sink waits them out.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `--database-url` does not parse.
    #[error("invalid database URL: {0}")]
    DatabaseUrl(String),
    /// PostgreSQL refused the login or the TLS certificate check failed.
    #[error("PostgreSQL refused the sink's connection: {0}")]
    DatabaseAccess(String),
    /// The connection pool could not be set up.
    #[error("cannot set up the PostgreSQL pool: {0}")]
    Pool(String),
    /// The consumer could not be created or subscribed, or failed for good.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be decoded for a reason no retry fixes and that is not the
    /// record's fault (the registry refused us, a schema is missing locally).
    #[error("cannot decode {topic} [{partition}] at offset {offset}: {source}")]
    Codec {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: CodecError,
    },
}

/// Runs the sink until `shutdown` completes, then writes the batch in hand (if it can
/// within 10 s) and leaves the group.
///
/// Applies the migrations first, waiting for PostgreSQL as long as it takes.
pub async fn run(
    config: Config,
    codec: Arc<Codec>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SinkError> {
    run_with(config, codec, Telemetry::disabled(), shutdown).await
}

/// [`run`], reporting rows, batch latency, lag and outages to `telemetry`.
pub async fn run_with(
    config: Config,
    codec: Arc<Codec>,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SinkError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let topic = config.topics().name(topics::ORDER_STATUS);
    let store = Store::new(
        &config.database_url,
        &config.security,
        &config.sink_group,
        &topic,
    )?;
    let heartbeat = Heartbeat::new(config.heartbeat_path(), "sink");

    let mut backoff = db_backoff();
    loop {
        // Waiting for PostgreSQL is progress of a kind: a restart would not bring it back.
        heartbeat.beat("starting", false);
        match store.migrate().await {
            Ok(_) => break,
            Err(e) if e.access_failure().is_some() => {
                return Err(SinkError::DatabaseAccess(
                    e.access_failure().unwrap_or_default(),
                ))
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e.detail(), retry_in_ms = delay.as_millis() as u64,
                    "sink waiting for PostgreSQL to apply migrations");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    let client_id = format!("{}-sink-{}", config.application_id, config.instance_id);
    let mut settings = clients::read_committed_consumer(&config, &config.sink_group, &client_id);
    settings.set(
        "statistics.interval.ms",
        (config.stats_interval_s * 1000).to_string(),
    );
    let consumer: StreamConsumer<SinkContext> =
        settings.create_with_context(SinkContext::new(&topic))?;
    consumer.subscribe(&[&topic])?;
    info!(topic = %topic, group = %config.sink_group, "sink started");

    let mut sink = Sink {
        consumer: &consumer,
        codec,
        store,
        topic,
        parts: BTreeMap::new(),
        batch: Batch::default(),
        batch_started: None,
        retry_at: None,
        seek_at: None,
        db_backoff: db_backoff(),
        registry_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        db_down: false,
        counters: Counters::default(),
        logged: Counters::default(),
        stats_every: Duration::from_secs(config.stats_interval_s),
        next_stats: Instant::now() + Duration::from_secs(config.stats_interval_s),
        telemetry,
        heartbeat,
    };
    let result = sink.run(shutdown).await;
    sink.log_progress(true);
    consumer.unsubscribe();
    result
}

fn db_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

/// How far the sink is with one assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Paused; its stored offset has to be read from PostgreSQL.
    NeedsOffsets,
    /// Paused; it has to be sought to `next`.
    NeedsSeek,
    /// Positioned and resumed: its records are taken.
    Active,
}

#[derive(Debug, Clone, Copy)]
struct Part {
    phase: Phase,
    /// The offset `sink_offsets` holds, as far as this sink knows: what the next batch's
    /// compare-and-set expects. `None`: no row (start from the beginning).
    stored: Option<i64>,
    /// The offset of the next record to take.
    next: i64,
}

/// Totals since start, for the progress log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    records: u64,
    batches: u64,
    orders: u64,
    history: u64,
    skipped: u64,
    tombstones: u64,
    conflicts: u64,
    write_failures: u64,
    /// Records PostgreSQL refused, set aside in `order_status_rejects`.
    rejected: u64,
    saga_state_unreadable: u64,
}

/// A record, copied out of librdkafka's buffer so nothing borrowed lives across an await.
struct Received {
    topic_matches: bool,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
}

struct Sink<'c> {
    consumer: &'c StreamConsumer<SinkContext>,
    codec: Arc<Codec>,
    store: Store,
    topic: String,
    parts: BTreeMap<i32, Part>,
    batch: Batch,
    batch_started: Option<Instant>,
    /// While set and in the future, PostgreSQL is left alone and nothing is resumed.
    retry_at: Option<Instant>,
    /// When to retry seeks librdkafka refused.
    seek_at: Option<Instant>,
    db_backoff: Backoff,
    registry_backoff: Backoff,
    db_down: bool,
    counters: Counters,
    logged: Counters,
    stats_every: Duration,
    next_stats: Instant,
    telemetry: Telemetry,
    /// Beaten every loop iteration; the loop wakes at least once a second.
    heartbeat: Heartbeat,
}

impl Sink<'_> {
    async fn run(
        &mut self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), SinkError> {
        let consumer = self.consumer;
        loop {
            self.apply_changes();
            self.service().await;
            let ready = !self.db_down && self.parts.values().all(|p| p.phase == Phase::Active);
            self.heartbeat.beat("running", ready);
            if Instant::now() >= self.next_stats {
                self.log_progress(false);
            }
            let wake = self.next_wake();
            let received = tokio::select! {
                biased;
                () = &mut shutdown => break,
                received = consumer.recv() => match received {
                    Ok(m) => Some(Received {
                        topic_matches: m.topic() == self.topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().map(<[u8]>::to_vec),
                    }),
                    Err(e) => {
                        self.on_kafka_error(e)?;
                        None
                    }
                },
                () = consumer.context().changed() => None,
                () = tokio::time::sleep_until(wake) => None,
            };
            if let Some(r) = received {
                self.on_record(r).await?;
            }
        }
        self.heartbeat.beat("draining", false);
        self.drain().await;
        self.heartbeat.beat("stopped", false);
        Ok(())
    }

    /// Acts on the assignment changes the rebalance callbacks queued.
    fn apply_changes(&mut self) {
        for change in self.consumer.context().take_changes() {
            match change {
                Change::Revoked(partitions) => {
                    for p in partitions {
                        self.parts.remove(&p);
                        let dropped = self.batch.drop_partition(p);
                        if dropped > 0 {
                            info!(
                                partition = p,
                                dropped, "dropped the uncommitted records of a revoked partition"
                            );
                        }
                    }
                    if self.batch.is_empty() {
                        self.batch_started = None;
                    }
                }
                Change::Assigned(partitions) => {
                    for p in &partitions {
                        self.parts.insert(
                            *p,
                            Part {
                                phase: Phase::NeedsOffsets,
                                stored: None,
                                next: 0,
                            },
                        );
                    }
                    // The callback paused them already; again in case that failed, since
                    // a record taken before the seek would be discarded and fetched twice.
                    self.pause(partitions.iter().copied());
                }
            }
        }
    }

    /// Writes the batch when due, then positions and resumes waiting partitions, unless
    /// an outage asked to wait.
    async fn service(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        if !self.batch.is_empty() && self.batch_due(now) && !self.commit_batch().await {
            return;
        }
        // A partition is re-positioned only once none of its records wait in the batch;
        // the commit above made sure of that.
        if self.batch.is_empty() && !self.load_offsets().await {
            return;
        }
        self.seek_waiting(now);
    }

    fn batch_due(&self, now: Instant) -> bool {
        self.batch.len() >= MAX_BATCH_RECORDS
            || self
                .batch_started
                .is_some_and(|t| now.duration_since(t) >= MAX_BATCH_WAIT)
            || self.parts.values().any(|p| p.phase != Phase::Active)
    }

    /// Commits the batch; false if it could not be written (the sink is then paused).
    async fn commit_batch(&mut self) -> bool {
        let expected: BTreeMap<i32, Option<i64>> = self
            .batch
            .next_offsets()
            .map(|(p, _)| (p, self.parts.get(&p).and_then(|part| part.stored)))
            .collect();
        let started = Instant::now();
        match self.store.commit(&self.batch, &expected).await {
            Ok(Commit::Done {
                orders,
                history,
                newest,
                rejected,
                isolation,
                notified,
            }) => {
                for (p, next) in self.batch.next_offsets() {
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.stored = Some(next);
                    }
                }
                debug!(
                    records = self.batch.len(),
                    orders,
                    history,
                    notified,
                    took_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                if let Some(iso) = isolation {
                    info!(records = self.batch.len(), sqlstate = %iso.sqlstate, tries = iso.tries,
                        rejected = rejected.len(), already_rejected = iso.known, orders, history,
                        "PostgreSQL refused the batch for its data; wrote it slice by slice, \
                         the records it refuses set aside");
                }
                for r in &rejected {
                    self.on_rejected(r);
                }
                self.counters.batches += 1;
                self.counters.orders += orders;
                self.counters.history += history;
                self.counters.rejected += rejected.len() as u64;
                self.telemetry
                    .on_sink_batch(orders, history, started.elapsed(), newest);
                self.clear_batch();
                self.db_backoff.reset();
                if self.db_down {
                    self.db_down = false;
                    info!("PostgreSQL writable again; resuming");
                }
                true
            }
            Ok(Commit::Conflict) => {
                self.counters.conflicts += 1;
                warn!(records = self.batch.len(), expected = ?expected,
                    "stored offsets moved under this sink (another member wrote them, or they \
                     were reset); dropping the batch and re-reading from the stored offsets");
                self.clear_batch();
                for part in self.parts.values_mut() {
                    part.phase = Phase::NeedsOffsets;
                }
                self.pause_all();
                true
            }
            Err(e) => {
                self.counters.write_failures += 1;
                let delay = self.db_backoff.next_delay();
                if !self.db_down {
                    error!(error = %e.detail(), sqlstate = e.code(), records = self.batch.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot write the batch to PostgreSQL; consumption paused, retrying");
                } else {
                    warn!(error = %e.detail(), sqlstate = e.code(), retry_in_ms = delay.as_millis() as u64,
                        "still cannot write the batch to PostgreSQL");
                }
                self.db_down = true;
                self.telemetry.on_sink_outage(true);
                self.stall(delay);
                false
            }
        }
    }

    /// Reports a record set aside: its place, order and PostgreSQL's verdict. The row's
    /// values stay out of the log (the table has them).
    fn on_rejected(&self, r: &Rejected) {
        warn!(topic = %self.topic, partition = r.partition, offset = r.offset,
            order_id = %r.order_id, version = r.version, sqlstate = %r.sqlstate,
            reason = %r.reason, constraint = r.constraint.as_deref(),
            "PostgreSQL refused an order-status record; set aside in order_status_rejects, \
             moving on");
        self.telemetry.on_sink_rejected(&r.sqlstate);
    }

    fn clear_batch(&mut self) {
        self.batch.clear();
        self.batch_started = None;
    }

    /// Reads the stored offsets of partitions waiting for them; false on failure.
    async fn load_offsets(&mut self) -> bool {
        let waiting: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, part)| part.phase == Phase::NeedsOffsets)
            .map(|(p, _)| *p)
            .collect();
        if waiting.is_empty() {
            return true;
        }
        match self.store.load_offsets(&waiting).await {
            Ok(stored) => {
                for p in &waiting {
                    if let Some(part) = self.parts.get_mut(p) {
                        part.stored = stored.get(p).copied();
                        part.next = part.stored.unwrap_or(0);
                        part.phase = Phase::NeedsSeek;
                    }
                }
                info!(partitions = ?waiting, stored = ?stored,
                    "resuming from the offsets stored in PostgreSQL (absent: from the beginning)");
                self.db_backoff.reset();
                if self.db_down {
                    self.db_down = false;
                    info!("PostgreSQL reachable again; resuming");
                    self.telemetry.on_sink_outage(false);
                }
                true
            }
            Err(e) => {
                let delay = self.db_backoff.next_delay();
                warn!(error = %e.detail(), retry_in_ms = delay.as_millis() as u64,
                    "cannot read the stored offsets; partitions stay paused");
                self.db_down = true;
                self.telemetry.on_sink_outage(true);
                self.stall(delay);
                false
            }
        }
    }

    /// Seeks partitions to their stored offsets and resumes those librdkafka accepted.
    fn seek_waiting(&mut self, now: Instant) {
        if self.seek_at.is_some_and(|t| t > now) {
            return;
        }
        self.seek_at = None;
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            if part.phase == Phase::NeedsSeek {
                let offset = part.stored.map_or(Offset::Beginning, Offset::Offset);
                if let Err(e) = tpl.add_partition_offset(&self.topic, *p, offset) {
                    warn!(partition = *p, error = %e, "cannot express the seek offset");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let mut retry = false;
        let mut ready = TopicPartitionList::new();
        // Blocks only until librdkafka's own thread has taken the seek: microseconds.
        match self.consumer.seek_partitions(tpl, Duration::from_secs(5)) {
            Ok(result) => {
                for elem in result.elements() {
                    match elem.error() {
                        Ok(()) => {
                            ready.add_partition(&self.topic, elem.partition());
                        }
                        Err(e) => {
                            debug!(partition = elem.partition(), error = %e,
                                "seek not accepted yet; retrying");
                            retry = true;
                        }
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "seek not accepted yet; retrying");
                retry = true;
            }
        }
        if ready.count() > 0 {
            match self.consumer.resume(&ready) {
                Ok(()) => {
                    for elem in ready.elements() {
                        if let Some(part) = self.parts.get_mut(&elem.partition()) {
                            part.phase = Phase::Active;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot resume partitions; retrying");
                    retry = true;
                }
            }
        }
        if retry {
            self.seek_at = Some(now + SEEK_RETRY);
        }
    }

    /// Pauses everything and re-positions every partition after `delay`, keeping the
    /// batch: the next service writes it before anything is resumed.
    fn stall(&mut self, delay: Duration) {
        self.retry_at = Some(Instant::now() + delay);
        for part in self.parts.values_mut() {
            part.phase = Phase::NeedsOffsets;
        }
        self.pause_all();
    }

    fn pause_all(&self) {
        let all: Vec<i32> = self.parts.keys().copied().collect();
        self.pause(all.into_iter());
    }

    fn pause(&self, partitions: impl Iterator<Item = i32>) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.pause(&tpl) {
                // Records that still arrive are discarded (not Active) and fetched again
                // after the seek, so this costs only bandwidth.
                warn!(error = %e, "cannot pause partitions");
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.next_stats.min(now + Duration::from_secs(1));
        if let Some(t) = self.retry_at {
            wake = wake.min(t);
        } else {
            if let Some(started) = self.batch_started {
                wake = wake.min(started + MAX_BATCH_WAIT);
            }
            if let Some(t) = self.seek_at {
                wake = wake.min(t);
            }
        }
        wake
    }

    fn on_kafka_error(&mut self, error: KafkaError) -> Result<(), SinkError> {
        if kafka::classify(&error) == ErrorClass::Fatal {
            error!(error = %error, "sink consumer failed for good");
            return Err(error.into());
        }
        // Broker outages and the like: librdkafka reconnects by itself.
        warn!(error = %error, "sink consumer error");
        Ok(())
    }

    async fn on_record(&mut self, r: Received) -> Result<(), SinkError> {
        if !r.topic_matches {
            return Ok(());
        }
        let Some(part) = self.parts.get(&r.partition) else {
            return Ok(());
        };
        // Paused but already fetched, or before the seek: it is read again after the seek.
        if part.phase != Phase::Active || r.offset < part.next {
            return Ok(());
        }
        let row = match r.payload.as_deref() {
            None => {
                self.counters.tombstones += 1;
                None
            }
            Some(bytes) => match self.decode(&r, bytes).await? {
                Decoded::Row(row) => Some(row),
                Decoded::Skip => None,
                Decoded::RetryLater => return Ok(()),
            },
        };
        if self.batch.is_empty() {
            self.batch_started = Some(Instant::now());
        }
        self.batch.push(r.partition, r.offset, row);
        if let Some(part) = self.parts.get_mut(&r.partition) {
            part.next = r.offset + 1;
        }
        self.counters.records += 1;
        Ok(())
    }

    async fn decode(&mut self, r: &Received, bytes: &[u8]) -> Result<Decoded, SinkError> {
        match convert::decode_status_record(&self.codec, bytes).await {
            Ok(record) => {
                self.registry_backoff.reset();
                match OrderRow::from_record(record) {
                    Ok(converted) => {
                        if let Some(e) = converted.saga_state_error {
                            self.counters.saga_state_unreadable += 1;
                            if self.counters.saga_state_unreadable == 1 {
                                warn!(topic = %self.topic, partition = r.partition,
                                    offset = r.offset, error = %e,
                                    "saga_state unreadable; status times taken from the \
                                     record alone (counted, logged once)");
                            }
                        }
                        Ok(Decoded::Row(converted.row))
                    }
                    Err(e) => {
                        self.counters.skipped += 1;
                        warn!(topic = %self.topic, partition = r.partition, offset = r.offset,
                            error = %e, "skipping an order-status record that is not a valid row");
                        Ok(Decoded::Skip)
                    }
                }
            }
            Err(e) if e.is_transient() => {
                let delay = self.registry_backoff.next_delay();
                warn!(topic = %self.topic, partition = r.partition, offset = r.offset,
                    error = %e, retry_in_ms = delay.as_millis() as u64,
                    "schema registry unreachable; consumption paused");
                self.stall(delay);
                Ok(Decoded::RetryLater)
            }
            Err(e) if e.is_poison() => {
                self.counters.skipped += 1;
                warn!(topic = %self.topic, partition = r.partition, offset = r.offset,
                    error = %e, "skipping an undecodable order-status record");
                Ok(Decoded::Skip)
            }
            Err(e) => Err(SinkError::Codec {
                topic: self.topic.clone(),
                partition: r.partition,
                offset: r.offset,
                source: e,
            }),
        }
    }

    /// On shutdown: one attempt at writing what is in hand; it is read again otherwise.
    async fn drain(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let records = self.batch.len();
        match tokio::time::timeout(DRAIN_TIMEOUT, self.commit_batch()).await {
            Ok(true) if self.batch.is_empty() => info!(records, "last batch written"),
            _ => warn!(
                records,
                "last batch not written; the next start reads it again"
            ),
        }
    }

    /// Logs the totals, when anything moved since the last line (or `force`).
    ///
    /// The lag is the last stable offset minus the next offset to take, summed over the
    /// active partitions: approximate, as transaction markers and aborted records occupy
    /// offsets too (a caught-up sink of a transactional topic shows about one per
    /// partition).
    fn log_progress(&mut self, force: bool) {
        self.next_stats = Instant::now() + self.stats_every;
        let lag: i64 = self
            .parts
            .iter()
            .filter(|(_, part)| part.phase == Phase::Active)
            .filter_map(|(p, part)| {
                self.consumer
                    .context()
                    .log_end(*p)
                    .map(|end| (end - part.next).max(0))
            })
            .sum();
        let c = self.counters;
        if force || c != self.logged || lag > 0 {
            info!(
                records = c.records,
                batches = c.batches,
                orders_written = c.orders,
                history_written = c.history,
                skipped = c.skipped,
                tombstones = c.tombstones,
                conflicts = c.conflicts,
                write_failures = c.write_failures,
                rejected = c.rejected,
                saga_state_unreadable = c.saga_state_unreadable,
                lag_offsets = lag,
                partitions = self.parts.len(),
                paused = self
                    .parts
                    .values()
                    .filter(|p| p.phase != Phase::Active)
                    .count(),
                "sink progress"
            );
            self.logged = c;
        }
    }
}

// Lives only between decoding and the batch; boxing the row would cost an allocation
// per record to save a move.
#[allow(clippy::large_enum_variant)]
enum Decoded {
    Row(OrderRow),
    Skip,
    /// Not taken: the sink stalled and reads the record again later.
    RetryLater,
}
