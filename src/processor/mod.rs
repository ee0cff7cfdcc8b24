//! The exactly-once transaction loop around the saga core.
//!
//! One dedicated thread runs the loop, because every rdkafka transaction call blocks:
//!
//! ```text
//! running:  serve rebalances → restore new partitions → hand out input records in
//!           event-time order per partition group (inputs) → decode → decide → produce
//!           commands, order-status, held events and dead letters (step) → fire due
//!           deadlines → send offsets with the group metadata → commit (txn)
//! draining: commit (or abort) the open transaction, leave the group
//! stopped
//! ```
//!
//! A transaction is committed as soon as the input is drained, or when it has gathered
//! for as long as the previous commit took, or reaches the commit interval or
//! [`MAX_BATCH`] records, whichever comes first, so a quiet system answers in one
//! commit's time and a busy one batches. No transaction is opened while there is nothing
//! to do.
//!
//! State changes go to an overlay per partition ([`store::PartitionStore`]) and become
//! permanent only when their transaction commits. An abort drops the overlay and seeks
//! every input partition back to the first record it had not committed, so state always
//! equals the committed changelogs, from which it is restored when a partition is
//! assigned.
//!
//! Files: [`inputs`] (which record is next), [`step`] (one record or tick: decide and
//! produce), [`dlq`] (dead letters), [`txn`] (begin, commit, abort and rewind),
//! [`rebalance`] (assignment events), [`restore`] and [`store`] (state; a restore runs on
//! a thread of its own, [`restoring`]), [`memory`] (the bound on orders in memory),
//! [`wire`] (the
//! processor's private records; public ones are converted in [`crate::contracts::convert`]),
//! [`metrics`] (counters).

pub mod dlq;
pub mod freeze;
pub mod housekeeping;
pub mod inputs;
pub mod memory;
pub mod metrics;
pub mod rebalance;
pub mod recovery;
pub mod restore;
pub mod restoring;
pub mod step;
pub mod store;
pub mod txn;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::contracts::Codec;
use crate::kafka::{classify, clients, ErrorClass};
use crate::retry::Backoff;
use crate::saga::{Millis, Policy, Status};
use crate::topics::{self, Topics};

use inputs::{Inputs, Next};
use metrics::Metrics;
use rebalance::{RebalanceEvent, RebalanceTracker};
use restoring::{RestoreJob, RestoreRound};
use store::PartitionStore;
use txn::Txn;

/// Records one transaction decides at most before it commits.
pub const MAX_BATCH: usize = 5_000;

/// The shortest time a batch gathers records before it commits.
const MIN_LINGER: Duration = Duration::from_millis(2);

/// How many partitions are restored at once, each on a thread of its own.
const RESTORE_THREADS: usize = 6;

/// How often settled orders past their retention are evicted from memory.
const EVICT_EVERY: Duration = Duration::from_secs(1);

/// Why the processor stopped other than by a requested shutdown. [`recovery::plan`] says
/// which of them the instance starts over from in-process.
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
    #[error(
        "the broker timed out this instance's transaction, open for {open_ms} ms (the \
         process or its loop stood still), and fenced its producer ({source})"
    )]
    TimedOut { open_ms: u64, source: KafkaError },
    #[error(
        "the outcome of a transaction commit is unknown after {waited_ms} ms ({reason}); \
         the broker completes or aborts the transaction, and a new producer resumes from \
         what committed"
    )]
    Indeterminate { waited_ms: u64, reason: String },
    #[error(
        "this instance was out of its group: its session or poll interval ran out (for \
         example while the process was stopped) or the coordinator forgot it, and another \
         member may own its partitions now"
    )]
    OutOfGroup,
    #[error(
        "the process stood still for longer than its session timeout while it started, so \
         another instance with the same transactional id may have started meanwhile"
    )]
    FrozenAtStart,
    #[error(
        "another process is in the group with this instance's id (member {member}); this \
         one exits so that only one writes. It had stopped because {after}"
    )]
    Twin {
        member: String,
        after: Box<ProcessorError>,
    },
    #[error(
        "gave up after {restarts} in-process restarts within {window_s} s; the last loop \
         ended because {last}"
    )]
    GaveUp {
        restarts: usize,
        window_s: u64,
        last: Box<ProcessorError>,
    },
    #[error("kafka error the clients cannot go on from: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topics are not usable: {0}")]
    Topics(#[from] crate::kafka::admin::AdminError),
    #[error("state restore of partition {partition} failed: {reason}")]
    Restore { partition: i32, reason: String },
    #[error("processor thread failed: {0}")]
    Thread(String),
}

impl ProcessorError {
    /// A short name of the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessorError::Fenced { .. } => "fenced",
            ProcessorError::TimedOut { .. } => "timed_out",
            ProcessorError::Indeterminate { .. } => "indeterminate",
            ProcessorError::OutOfGroup => "out_of_group",
            ProcessorError::FrozenAtStart => "frozen_at_start",
            ProcessorError::Twin { .. } => "twin",
            ProcessorError::GaveUp { .. } => "gave_up",
            ProcessorError::Kafka(_) => "kafka",
            ProcessorError::Topics(_) => "topics",
            ProcessorError::Restore { .. } => "restore",
            ProcessorError::Thread(_) => "thread",
        }
    }
}

/// The lifecycle of the loop, logged on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Draining,
    Stopped,
}

impl Lifecycle {
    fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopped => "stopped",
        }
    }
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
    pub telemetry: crate::telemetry::Telemetry,
    /// Written on every loop iteration, for `order-saga health`.
    pub heartbeat: Arc<crate::health::Heartbeat>,
}

/// Runs the processor until `shutdown` completes, then drains and returns.
///
/// A loop that ends with an error the instance can get past is started again in-process
/// ([`recovery`]); an error is returned only when it cannot go on: fenced by another
/// process with its id, refused by the brokers, or restarted too often.
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
    let ctx = Arc::new(ctx);
    let members = recovery::Members::default();
    let result = tokio::task::spawn_blocking(move || {
        recovery::supervise(
            &stop,
            || Loop::start(ctx.clone(), stop.clone(), members.clone())?.run(),
            || recovery::look_for_twin(&ctx.config, &members.ids()),
            |e| recovery::count_restart(&ctx, e),
        )
    })
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

/// How one step of the loop went wrong, and what to do about it.
#[derive(Debug, Error)]
enum StepError {
    /// The transaction must be aborted and its input read again, after a pause.
    #[error("{reason}")]
    Abort {
        reason: String,
        /// The error behind it, if one was: logged with the reason.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The producer is done for.
    #[error("fatal Kafka error")]
    Fatal(#[source] KafkaError),
    /// A commit whose outcome could not be learned within the transaction timeout.
    #[error("commit outcome unknown after {waited_ms} ms: {reason}")]
    Indeterminate { waited_ms: u64, reason: String },
    /// A decision would write a record larger than the brokers accept; nothing of it was
    /// sent. The input that caused it is dead-lettered.
    #[error("{0}")]
    OutputTooLarge(String),
    /// The consumer learned it had been out of the group: see [`ProcessorError::OutOfGroup`].
    #[error("out of the group")]
    OutOfGroup,
}

impl StepError {
    /// An abort with no error behind it.
    fn abort(reason: impl Into<String>) -> Self {
        StepError::Abort {
            reason: reason.into(),
            source: None,
        }
    }

    /// An abort caused by `source`.
    fn abort_by(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StepError::Abort {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The error and every cause behind it, for a log line.
    fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }
}

impl From<KafkaError> for StepError {
    fn from(e: KafkaError) -> Self {
        match classify(&e) {
            ErrorClass::Retry | ErrorClass::Abort => StepError::abort_by("Kafka call failed", e),
            ErrorClass::Fatal => StepError::Fatal(e),
        }
    }
}

struct Loop {
    ctx: Arc<Context>,
    topics: Topics,
    consumer: Arc<TxnConsumer>,
    producer: TxnProducer,
    stop: Arc<AtomicBool>,
    /// Stores of the partitions this instance owns and has restored.
    stores: BTreeMap<i32, PartitionStore>,
    /// Stores of revoked partitions, kept in case the same rebalance gives them back.
    parked: BTreeMap<i32, PartitionStore>,
    /// Whether the group has assigned this member partitions (possibly none) yet.
    assigned: bool,
    /// Assigned partitions whose state is not restored yet; they stay paused until it is.
    unrestored: BTreeSet<i32>,
    /// The restores under way, by partition.
    restoring: BTreeMap<i32, RestoreJob>,
    /// When a partition whose restore failed is tried again.
    restore_retry: BTreeMap<i32, Instant>,
    restore_backoff: Backoff,
    /// Totals of the restores since the last assignment, logged when the last one ends.
    restore_round: RestoreRound,
    inputs: Inputs,
    txn: Txn,
    lifecycle: Lifecycle,
    last_evict: Instant,
    /// Set by the freeze watch when the whole process stood still past its session.
    frozen: Option<freeze::Frozen>,
    /// Partitions of every input topic (they are checked to share one count).
    partitions: i32,
    /// How long the last commit took: how long the next batch may gather.
    last_commit: Duration,
    /// Steps in a row that found nothing to do.
    idle_rounds: u32,
    /// Topics on which a record was re-routed to its key's partition (logged once each).
    rerouted_topics: HashSet<String>,
    /// Orders in memory reached `--max-orders-in-memory`: settled orders are evicted
    /// before their retention until they are back under nine tenths of it.
    pressure: bool,
    /// Where this loop's member id is noted each time the group assigns it partitions.
    members: recovery::Members,
    /// Since when creates and cancels are held back because memory is full.
    intake_paused: Option<Instant>,
    /// When a pause of the intake was last logged, and whether the current one was: a
    /// loop that hovers at the limit would otherwise log a pause and a resumption per
    /// transaction; a logged pause always gets its resumption logged.
    intake_logged: Option<Instant>,
    pause_logged: bool,
}

impl Loop {
    /// Creates the clients and initialises transactions, retrying while Kafka is
    /// unreachable.
    fn start(
        ctx: Arc<Context>,
        stop: Arc<AtomicBool>,
        members: recovery::Members,
    ) -> Result<Self, ProcessorError> {
        let topics = ctx.config.topics();
        let txn_id = ctx.config.transactional_id();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Watched from the first moment: a process frozen while it starts, and replaced
        // meanwhile, must not go on to join the group with the transactional id.
        let frozen = freeze::watch(
            clients::processor_session_timeout(&ctx.config),
            stop.clone(),
        );
        let frozen_at_start = || frozen.as_ref().is_some_and(freeze::Frozen::seen);
        // Co-partitioning is a precondition of the join: refuse to start on topics that
        // break it, rather than silently mis-joining.
        let inputs = topics.inputs();
        let mut names: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let status_topic = topics.name(topics::ORDER_STATUS);
        let early_topic = topics.name(topics::ORDER_EARLY_EVENTS);
        let state_topic = topics.name(topics::ORDER_STATE);
        names.push(&status_topic);
        names.push(&early_topic);
        names.push(&state_topic);
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
        if frozen_at_start() {
            return Err(ProcessorError::FrozenAtStart);
        }
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
                Err(e) => match crate::kafka::admin::access_error(&ctx.config, &e) {
                    Some(access) => return Err(access.into()),
                    None => return Err(txn::fatal(&txn_id, e)),
                },
            }
        }
        // librdkafka finishes an InitProducerId begun before a freeze on its own threads
        // as soon as the process wakes, so a replacement that started meanwhile may be
        // fenced already: this one must at least not join the group as well.
        if frozen_at_start() {
            return Err(ProcessorError::FrozenAtStart);
        }
        let mut consumer_cfg = clients::read_committed_consumer(
            &ctx.config,
            &ctx.config.application_id,
            &clients::processor_client_id(&ctx.config),
        );
        // The end of a partition tells the event-time order that an empty input
        // partition holds nothing earlier (see `inputs`).
        consumer_cfg.set("enable.partition.eof", "true");
        let consumer: Arc<TxnConsumer> =
            Arc::new(consumer_cfg.create_with_context(RebalanceTracker::default())?);
        if frozen_at_start() {
            return Err(ProcessorError::FrozenAtStart);
        }
        consumer.subscribe(&names[..inputs.len()])?;
        info!(transactional_id = %txn_id, partitions, inputs = ?&names[..inputs.len()], "processor started");
        let input_topics = topics.inputs();
        Ok(Loop {
            inputs: Inputs::new(consumer.clone(), input_topics, ctx.config.max_task_idle()),
            frozen,
            ctx,
            topics,
            consumer,
            producer,
            stop,
            stores: BTreeMap::new(),
            parked: BTreeMap::new(),
            unrestored: BTreeSet::new(),
            assigned: false,
            restoring: BTreeMap::new(),
            restore_retry: BTreeMap::new(),
            restore_round: RestoreRound::default(),
            restore_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            txn: Txn::default(),
            lifecycle: Lifecycle::Running,
            last_evict: Instant::now(),
            partitions,
            last_commit: Duration::ZERO,
            idle_rounds: 0,
            rerouted_topics: HashSet::new(),
            pressure: false,
            members,
            intake_paused: None,
            intake_logged: None,
            pause_logged: false,
        })
    }

    /// A process frozen past its session is out of its group, whatever librdkafka has
    /// noticed yet: see [`freeze`].
    fn check_frozen(&self) -> Result<(), StepError> {
        match &self.frozen {
            Some(f) if f.seen() => Err(StepError::OutOfGroup),
            _ => Ok(()),
        }
    }

    fn set_lifecycle(&mut self, next: Lifecycle) {
        if self.lifecycle != next {
            info!(from = ?self.lifecycle, to = ?next, "processor lifecycle");
            self.lifecycle = next;
        }
    }

    /// Runs the loop until it stops or fails. A failure of a process that stood still past
    /// its session timeout is reported as [`ProcessorError::OutOfGroup`], whichever call
    /// noticed first (a commit whose time ran out during the freeze, a fence): another
    /// process with its id may have started meanwhile, which is what must be asked before
    /// it starts over ([`recovery`]).
    fn run(mut self) -> Result<(), ProcessorError> {
        let result = self.serve();
        let frozen = self.frozen.as_ref().is_some_and(freeze::Frozen::seen);
        match result {
            Err(e)
                if matches!(e, ProcessorError::OutOfGroup)
                    || (frozen && recovery::a_freeze_explains(&e)) =>
            {
                // Whether a transaction was left to the broker's time-out, and for how
                // long it had been open: what a stall did.
                warn!(
                    error = %e,
                    frozen,
                    transaction_open = self.txn.open,
                    transaction_open_ms = self.txn.opened.map_or(0, |t| t.elapsed().as_millis() as u64),
                    transaction_timeout_ms = self.ctx.config.transaction_timeout_ms,
                    "out of the group; this loop ends without writing more"
                );
                Err(ProcessorError::OutOfGroup)
            }
            other => other,
        }
    }

    fn serve(&mut self) -> Result<(), ProcessorError> {
        let stats_every = Duration::from_secs(self.ctx.config.stats_interval_s);
        let mut last_stats = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            if self.lifecycle == Lifecycle::Running && self.stop.load(Ordering::SeqCst) {
                self.set_lifecycle(Lifecycle::Draining);
            }
            // Not before the group has assigned this member its partitions (even none):
            // until then nothing is known to be restored.
            let ready =
                self.lifecycle == Lifecycle::Running && self.assigned && self.unrestored.is_empty();
            self.ctx.heartbeat.beat(self.lifecycle.as_str(), ready);
            let outcome = match self.lifecycle {
                Lifecycle::Running => self.step(),
                Lifecycle::Draining => {
                    self.drain();
                    self.set_lifecycle(Lifecycle::Stopped);
                    Ok(())
                }
                Lifecycle::Stopped => break,
            };
            match outcome {
                Ok(()) => backoff.reset(),
                Err(e @ StepError::Abort { .. }) => {
                    let delay = backoff.next_delay();
                    warn!(reason = %e.chain(), retry_in_ms = delay.as_millis() as u64, "aborting transaction");
                    self.abort_and_rewind()?;
                    std::thread::sleep(delay);
                }
                Err(StepError::Fatal(e)) => {
                    self.log_counters("processor counters at failure");
                    return Err(self.fatal(e));
                }
                Err(StepError::Indeterminate { waited_ms, reason }) => {
                    self.log_counters("processor counters at failure");
                    return Err(ProcessorError::Indeterminate { waited_ms, reason });
                }
                Err(StepError::OutOfGroup) => {
                    self.log_counters("processor counters at failure");
                    return Err(ProcessorError::OutOfGroup);
                }
                // Only a record's own step produces it, and that step dead-letters it.
                Err(StepError::OutputTooLarge(reason)) => {
                    warn!(reason = %reason, "aborting transaction");
                    self.abort_and_rewind()?;
                }
            }
            if last_stats.elapsed() >= stats_every {
                last_stats = Instant::now();
                self.log_counters("processor progress");
            }
        }
        self.log_counters("processor stopped");
        Ok(())
    }

    /// One transaction's worth of work: serve rebalances, hand out records in event-time
    /// order until the input is drained, the batch is full or the interval is up, fire
    /// due deadlines, commit. Waits for input when there was nothing to do.
    fn step(&mut self) -> Result<(), StepError> {
        self.check_frozen()?;
        self.serve_events()?;
        if !self.unrestored.is_empty() {
            self.restore_pending()?;
        }
        let in_memory: usize = self.stores.values().map(PartitionStore::len).sum();
        self.watch_memory(in_memory)?;
        self.inputs.fill()?;
        // Gather for about as long as the last commit took, within the commit interval:
        // a quiet system commits within milliseconds of a record's arrival, and a busy
        // one, whose commits take longer, batches more and spends at most about half its
        // time committing.
        let interval = self
            .ctx
            .config
            .commit_interval()
            .min(self.last_commit.max(MIN_LINGER));
        let started = Instant::now();
        let mut handled = 0usize;
        let mut created = 0usize;
        let mut wait_until: Option<Instant> = None;
        loop {
            match self.inputs.next(Instant::now())? {
                Next::Record(msg, rank) => {
                    self.handle(&msg)?;
                    handled += 1;
                    // Counted per create, so the limit holds within a batch too.
                    if rank == inputs::CREATE_RANK {
                        created += 1;
                        if self.intake_paused.is_none()
                            && in_memory + created >= self.max_in_memory()
                        {
                            self.pause_intake(in_memory + created)?;
                        }
                    }
                    if handled >= MAX_BATCH || started.elapsed() >= interval {
                        break;
                    }
                    // Lanes that were empty may have received records meanwhile; an
                    // occasional look keeps the event-time order close to exact.
                    if handled % 64 == 0 {
                        self.inputs.fill()?;
                    }
                }
                // Some group waits for a lane that has not reported its end: usually a
                // fetch away. Ending the batch here would pay a whole commit for it, so
                // the batch keeps gathering while its time lasts.
                Next::WaitUntil(at) => {
                    let now = Instant::now();
                    let left = interval.saturating_sub(started.elapsed());
                    if left.is_zero() || self.stop.load(Ordering::SeqCst) {
                        wait_until = Some(at);
                        break;
                    }
                    let pause = left
                        .min(at.saturating_duration_since(now))
                        .min(Duration::from_millis(1));
                    self.inputs.wake().wait(pause);
                    self.inputs.fill()?;
                }
                Next::Idle => break,
            }
        }
        self.fire_deadlines()?;
        // Evictions write to the changelog, so they go in this transaction.
        // Entries left to write after an upgrade's restore go out in every transaction.
        let tick = self.last_evict.elapsed() >= EVICT_EVERY;
        if tick || self.pressure || self.stores.values().any(PartitionStore::has_unwritten) {
            self.housekeeping()?;
        }
        self.commit()?;
        if tick {
            self.last_evict = Instant::now();
            // A walk over every order: once a second, not once a transaction.
            self.ctx
                .telemetry
                .observe_states(self.stores.values().flat_map(|s| s.states()), now_millis());
        }
        if handled == 0 {
            self.idle_wait(wait_until);
        } else {
            self.idle_rounds = 0;
        }
        Ok(())
    }

    /// Sleeps until input arrives, a group may go on, a deadline falls due, or a short
    /// time passes (rebalance events do not wake the loop).
    fn idle_wait(&mut self, until: Option<Instant>) {
        let now = Instant::now();
        // librdkafka wakes the loop only when a partition queue goes from empty to
        // non-empty, which a queue left holding an end-of-partition event never does; so
        // the lanes are also looked at again soon: every 2 ms at first, every 20 ms once
        // the input has been quiet for a while, which bounds both the added latency and
        // the cost of looking.
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        let mut timeout = if self.idle_rounds < 100 {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(20)
        };
        if let Some(at) = until {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(due) = self
            .stores
            .values()
            .filter_map(PartitionStore::next_due)
            .min()
        {
            let ms = (due - now_millis()).max(0) as u64;
            timeout = timeout.min(Duration::from_millis(ms));
        }
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        self.inputs.wake().wait(timeout);
    }

    /// Serves the consumer's main queue: group events, errors, and any record that
    /// arrived there rather than on its partition's own queue.
    fn serve_events(&mut self) -> Result<(), StepError> {
        loop {
            let polled = self
                .consumer
                .poll(Duration::ZERO)
                .map(|r| r.map(|m| m.detach()));
            let events = self.consumer.context().take();
            if !events.is_empty() {
                // A zombie wakes here: it must write nothing more, and exit within
                // moments rather than rejoin and contend for its transactional id. It
                // does not even abort: an abort after the broker timed its transaction
                // out bumps the producer epoch, which would fence its replacement.
                if events
                    .iter()
                    .any(|e| matches!(e, RebalanceEvent::Revoked { lost: true, .. }))
                {
                    return Err(StepError::OutOfGroup);
                }
                // The group generation changed under the open transaction: its offsets
                // can no longer be committed, so abort it; every partition assigned
                // again starts from its committed offset (range assignment is eager).
                if self.txn.open {
                    self.abort_only()?;
                }
                self.inputs.close_all();
                self.apply_rebalance(events)?;
            }
            match polled {
                None => return Ok(()),
                // Not dropped even when it came with a rebalance: buffered, or sought
                // back to when its partition opens.
                Some(Ok(msg)) => self.inputs.stray(msg),
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Retry => debug!(error = %e, "transient consumer error"),
                    ErrorClass::Abort => return Err(StepError::abort_by("consumer error", e)),
                    ErrorClass::Fatal => return Err(StepError::Fatal(e)),
                },
            }
        }
    }

    /// Acts on assignment changes: parks revoked stores, restores new ones, resumes.
    fn apply_rebalance(&mut self, events: Vec<RebalanceEvent>) -> Result<(), StepError> {
        // A restore read before the assignment changed may miss what another member
        // committed meanwhile: start again from what is unrestored now.
        self.restoring.clear();
        self.restore_retry.clear();
        for event in events {
            match event {
                // A lost assignment never gets here: `serve_events` ends the loop on it,
                // so a parked store is one nobody else can have owned meanwhile.
                RebalanceEvent::Revoked { parts, .. } => {
                    self.unrestored.retain(|p| !parts.contains(p));
                    for p in parts {
                        if let Some(store) = self.stores.remove(&p) {
                            self.parked.insert(p, store);
                        }
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    self.assigned = true;
                    if let Some(id) = clients::member_id(&self.consumer) {
                        self.members.note(id);
                    }
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
                    self.restore_round = RestoreRound::default();
                    self.resume_restored()?;
                    self.restore_pending()?;
                }
                RebalanceEvent::Failed(reason) => {
                    warn!(reason = %reason, "rebalance failed; waiting for the next one");
                }
            }
        }
        Ok(())
    }

    /// Takes in the stores of finished restores, starts restores of the partitions
    /// waiting for one (each on a thread of its own, [`RESTORE_THREADS`] at a time), then
    /// opens and resumes every assigned partition that has its state. A failed restore is
    /// logged and tried again after a backoff; its partition stays paused meanwhile, and
    /// the others go on.
    fn restore_pending(&mut self) -> Result<(), StepError> {
        let ended: Vec<(i32, _)> = self
            .restoring
            .iter()
            .filter_map(|(p, job)| job.poll().map(|outcome| (*p, outcome)))
            .collect();
        let mut changed = false;
        for (p, outcome) in ended {
            self.restoring.remove(&p);
            match outcome {
                Ok(restored) => {
                    self.restore_backoff.reset();
                    self.restore_round.add(&restored);
                    for (p, store) in restored.stores {
                        if self.unrestored.remove(&p) {
                            Metrics::add(&self.ctx.metrics.restored_orders, store.len() as u64);
                            self.stores.insert(p, store);
                            changed = true;
                        }
                    }
                }
                Err(e) => {
                    let delay = self.restore_backoff.next_delay();
                    warn!(partition = p, error = %e, retry_in_ms = delay.as_millis() as u64, "state restore failed; the other partitions go on");
                    self.restore_retry.insert(p, Instant::now() + delay);
                }
            }
        }
        let now = Instant::now();
        let waiting: Vec<i32> = self
            .unrestored
            .iter()
            .copied()
            .filter(|p| !self.restoring.contains_key(p))
            .filter(|p| self.restore_retry.get(p).is_none_or(|at| now >= *at))
            .collect();
        for p in waiting {
            if self.restoring.len() >= RESTORE_THREADS {
                break;
            }
            self.restore_retry.remove(&p);
            let job = RestoreJob::start(
                self.ctx.clone(),
                self.topics.clone(),
                self.consumer.clone(),
                p,
                self.stop.clone(),
                self.inputs.waker(),
            )
            .map_err(|e| StepError::abort_by("could not start a restore thread", e))?;
            self.restoring.insert(p, job);
        }
        if changed {
            self.resume_restored()?;
            if self.unrestored.is_empty() {
                self.restore_round.log();
            }
        }
        Ok(())
    }

    /// Opens and resumes every assigned partition that has its state.
    fn resume_restored(&mut self) -> Result<(), StepError> {
        let assignment = self.consumer.assignment()?;
        let mut ready = TopicPartitionList::new();
        for e in assignment.elements() {
            let p = e.partition();
            if !self.stores.contains_key(&p) {
                continue;
            }
            if !self.inputs.is_open(p) {
                self.inputs.open(p)?;
            }
            // Held back intake stays paused (see `watch_memory`).
            if self.intake_paused.is_some() && self.inputs.is_intake(e.topic()) {
                continue;
            }
            ready.add_partition(e.topic(), p);
        }
        self.consumer.resume(&ready)?;
        Ok(())
    }

    fn log_counters(&self, what: &str) {
        let mut counts: BTreeMap<Status, u64> = BTreeMap::new();
        let mut held = 0usize;
        for store in self.stores.values() {
            for s in store.states() {
                *counts.entry(s.status).or_insert(0) += 1;
            }
            held += store.early_count();
        }
        Metrics::set(&self.ctx.metrics.idle_timeouts, self.inputs.idle_timeouts);
        self.ctx.metrics.log(what, &counts, held);
    }
}
