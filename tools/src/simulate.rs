//! `order-saga-tools simulate`: a test double of the four downstream services.
//!
//! It consumes the command topics (`inventory-reserve-request`, `payment-process-request`,
//! `shipping-schedule-request`, `notification-send-request`) as consumer group
//! `<application-id>-simulator` (read_committed, offsets committed by auto-commit after a
//! command was handled: at-least-once, like a real service) and answers every command on
//! its service's result topic, keyed by order id, echoing `command_id` and `action`.
//!
//! # Behaviour
//!
//! Every decision about a command (fail or succeed, retriable, drop, duplicate, jitter)
//! is a hash of its `command_id` and `--seed`, not a draw from a shared generator: a
//! redelivered command gets the same answer, like an idempotent real service, and a retry
//! (a new attempt has a new command id) gets a fresh one. See [`Behaviour::answer`].
//!
//! - `--fail-rate` is the failure probability of every forward action (RESERVE, CHARGE,
//!   SCHEDULE, SEND); `--fail-reserve`, `--fail-charge`, `--fail-schedule`, `--fail-send`
//!   override it per action. Compensations (RELEASE, REFUND) succeed unless
//!   `--fail-release` / `--fail-refund` say otherwise.
//! - `--retriable-rate`: the share of failures flagged `retriable`.
//! - `--drop-rate`: forward commands never answered (the saga's timeouts take over);
//!   `--drop-compensations` drops compensations at the same rate too.
//! - `--duplicate-rate`: answers sent twice (the copy with its own jitter).
//! - `--latency-ms` plus a uniform `0..=--jitter-ms`: how long an answer takes.
//! - `--reorder`: answers are held in a window of `--reorder-window` and released in a
//!   shuffled order (at the latest [`REORDER_MAX_HOLD`] after the first entered it).
//!
//! Results are sent without awaiting each delivery: many are in flight at once.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tracing::{debug, info, warn};

use crate::load::{hash_str, now_millis, parse_share, unit_from_bits, Rng};
use order_saga::config::Config;
use order_saga::contracts::records::{
    ActionSymbol, InventoryCommand, NotificationCommand, OutcomeSymbol, PaymentCommand,
    ShippingCommand, StepResultRecord,
};
use order_saga::contracts::{Codec, CodecError};
use order_saga::kafka::clients::{plain_producer, read_committed_consumer};
use order_saga::retry::Backoff;
use order_saga::saga::{Action, Millis, Outcome, Step};
use order_saga::topics::{self, Topics};

/// The longest a result waits in the reorder window.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(50);

/// How long shutdown waits for the producer to deliver what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to wait before retrying when the producer's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Commands handled per turn of the main loop at most.
const RECV_BATCH: usize = 512;

/// Attempts to decode a command while the registry is unreachable, before skipping it.
const DECODE_ATTEMPTS: u32 = 8;

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A flag is out of range.
    #[error("invalid simulate arguments: {0}")]
    InvalidArgs(String),
    /// A Kafka client could not be created or subscribed.
    #[error("cannot set up the Kafka {what}: {source}")]
    Kafka {
        /// Which client or call.
        what: &'static str,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// The result schemas could not be looked up or registered.
    #[error("cannot prepare the result schemas: {0}")]
    Registry(#[source] CodecError),
    /// Flushing the producer at shutdown did not finish in time.
    #[error("flushing the producer at shutdown failed: {0}")]
    Flush(#[source] KafkaError),
}

/// The flags of `order-saga-tools simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Consumer group of the simulator; default `<application-id>-simulator`.
    #[arg(long, env = "ORDER_SAGA_SIM_GROUP")]
    pub group: Option<String>,

    /// Base latency of every answer, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Extra latency, uniform from 0 to this many milliseconds, per answer.
    #[arg(long, env = "ORDER_SAGA_SIM_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Failure probability of every forward action (RESERVE, CHARGE, SCHEDULE, SEND)
    /// that has no --fail-<action> of its own.
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub fail_rate: f64,

    /// Failure probability of inventory RESERVE (default: --fail-rate).
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_RESERVE", value_parser = parse_share)]
    pub fail_reserve: Option<f64>,

    /// Failure probability of payment CHARGE (default: --fail-rate).
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_CHARGE", value_parser = parse_share)]
    pub fail_charge: Option<f64>,

    /// Failure probability of shipping SCHEDULE (default: --fail-rate).
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_SCHEDULE", value_parser = parse_share)]
    pub fail_schedule: Option<f64>,

    /// Failure probability of notification SEND (default: --fail-rate).
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_SEND", value_parser = parse_share)]
    pub fail_send: Option<f64>,

    /// Failure probability of the inventory RELEASE compensation.
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_RELEASE", default_value_t = 0.0, value_parser = parse_share)]
    pub fail_release: f64,

    /// Failure probability of the payment REFUND compensation.
    #[arg(long, env = "ORDER_SAGA_SIM_FAIL_REFUND", default_value_t = 0.0, value_parser = parse_share)]
    pub fail_refund: f64,

    /// Share of failures flagged retriable (the saga retries them with backoff).
    #[arg(long, env = "ORDER_SAGA_SIM_RETRIABLE_RATE", default_value_t = 0.5, value_parser = parse_share)]
    pub retriable_rate: f64,

    /// Share of answers sent twice.
    #[arg(long, env = "ORDER_SAGA_SIM_DUPLICATE_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub duplicate_rate: f64,

    /// Share of forward commands never answered, to exercise the saga's timeouts.
    #[arg(long, env = "ORDER_SAGA_SIM_DROP_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub drop_rate: f64,

    /// Drop compensation commands (RELEASE, REFUND) at --drop-rate too.
    #[arg(long, env = "ORDER_SAGA_SIM_DROP_COMPENSATIONS")]
    pub drop_compensations: bool,

    /// Hold answers and release them shuffled, in windows of --reorder-window.
    #[arg(long, env = "ORDER_SAGA_SIM_REORDER")]
    pub reorder: bool,

    /// Answers per reorder window.
    #[arg(long, env = "ORDER_SAGA_SIM_REORDER_WINDOW", default_value_t = 8)]
    pub reorder_window: usize,

    /// Seed of every decision; the same seed answers the same command the same way.
    #[arg(long, env = "ORDER_SAGA_SIM_SEED", default_value_t = 0)]
    pub seed: u64,
}

impl Default for SimulateArgs {
    /// Instant services that always succeed.
    fn default() -> Self {
        SimulateArgs {
            group: None,
            latency_ms: 0,
            jitter_ms: 0,
            fail_rate: 0.0,
            fail_reserve: None,
            fail_charge: None,
            fail_schedule: None,
            fail_send: None,
            fail_release: 0.0,
            fail_refund: 0.0,
            retriable_rate: 0.5,
            duplicate_rate: 0.0,
            drop_rate: 0.0,
            drop_compensations: false,
            reorder: false,
            reorder_window: 8,
            seed: 0,
        }
    }
}

impl SimulateArgs {
    /// Checks the arguments and turns them into a [`Behaviour`].
    pub fn behaviour(&self) -> Result<Behaviour, SimulateError> {
        let share = |flag: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(SimulateError::InvalidArgs(format!(
                    "{flag} must be between 0 and 1, got {v}"
                )))
            }
        };
        let forward = share("--fail-rate", self.fail_rate)?;
        let mut fail = [0.0; 6];
        for (action, flag, value) in [
            (
                Action::Reserve,
                "--fail-reserve",
                self.fail_reserve.unwrap_or(forward),
            ),
            (
                Action::Charge,
                "--fail-charge",
                self.fail_charge.unwrap_or(forward),
            ),
            (
                Action::Schedule,
                "--fail-schedule",
                self.fail_schedule.unwrap_or(forward),
            ),
            (
                Action::Send,
                "--fail-send",
                self.fail_send.unwrap_or(forward),
            ),
            (Action::Release, "--fail-release", self.fail_release),
            (Action::Refund, "--fail-refund", self.fail_refund),
        ] {
            fail[action_index(action)] = share(flag, value)?;
        }
        for (flag, value) in [
            ("--latency-ms", self.latency_ms),
            ("--jitter-ms", self.jitter_ms),
        ] {
            if value > 3_600_000 {
                return Err(SimulateError::InvalidArgs(format!(
                    "{flag} must be at most 3600000, got {value}"
                )));
            }
        }
        if self.reorder && !(2..=100_000).contains(&self.reorder_window) {
            return Err(SimulateError::InvalidArgs(format!(
                "--reorder-window must be from 2 to 100000, got {}",
                self.reorder_window
            )));
        }
        Ok(Behaviour {
            fail,
            retriable_rate: share("--retriable-rate", self.retriable_rate)?,
            duplicate_rate: share("--duplicate-rate", self.duplicate_rate)?,
            drop_rate: share("--drop-rate", self.drop_rate)?,
            drop_compensations: self.drop_compensations,
            latency: Duration::from_millis(self.latency_ms),
            jitter_ms: self.jitter_ms,
            seed: self.seed,
        })
    }
}

fn action_index(action: Action) -> usize {
    match action {
        Action::Reserve => 0,
        Action::Release => 1,
        Action::Charge => 2,
        Action::Refund => 3,
        Action::Schedule => 4,
        Action::Send => 5,
    }
}

fn step_index(step: Step) -> usize {
    match step {
        Step::Inventory => 0,
        Step::Payment => 1,
        Step::Shipping => 2,
        Step::Notification => 3,
    }
}

fn is_compensation(action: Action) -> bool {
    matches!(action, Action::Release | Action::Refund)
}

/// Salts of the independent decisions made about one command.
mod salt {
    pub const FAIL: u64 = 1;
    pub const RETRIABLE: u64 = 2;
    pub const DROP: u64 = 3;
    pub const DUPLICATE: u64 = 4;
    pub const JITTER: u64 = 5;
    pub const JITTER_COPY: u64 = 6;
}

/// How the simulated services behave: the validated form of [`SimulateArgs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Failure probability per action, indexed by `action_index`.
    fail: [f64; 6],
    retriable_rate: f64,
    duplicate_rate: f64,
    drop_rate: f64,
    drop_compensations: bool,
    latency: Duration,
    jitter_ms: u64,
    seed: u64,
}

/// What a simulated service does with one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Never answer.
    Drop,
    /// Answer after `delay`, and if `duplicate_delay` is set, send the same answer again
    /// after that delay.
    Reply {
        /// Whether the action was carried out.
        outcome: Outcome,
        /// For a failure: may asking again succeed?
        retriable: bool,
        /// For a failure: why, in plain words.
        reason: Option<String>,
        /// Latency of the answer.
        delay: Duration,
        /// Latency of the duplicate, if one is sent.
        duplicate_delay: Option<Duration>,
    },
}

impl Behaviour {
    /// The failure probability of `action`.
    pub fn fail_rate(&self, action: Action) -> f64 {
        self.fail[action_index(action)]
    }

    fn draw(&self, salt: u64, command_id: &str) -> f64 {
        unit_from_bits(hash_str(self.seed, salt, command_id))
    }

    fn delay(&self, salt: u64, command_id: &str) -> Duration {
        if self.jitter_ms == 0 {
            return self.latency;
        }
        let jitter = hash_str(self.seed, salt, command_id) % (self.jitter_ms + 1);
        self.latency + Duration::from_millis(jitter)
    }

    /// The answer to the command `command_id` of `action`: a pure function of both and
    /// the seed, so a redelivered command is answered the same way.
    pub fn answer(&self, command_id: &str, action: Action) -> Answer {
        if (self.drop_compensations || !is_compensation(action))
            && self.draw(salt::DROP, command_id) < self.drop_rate
        {
            return Answer::Drop;
        }
        let failed = self.draw(salt::FAIL, command_id) < self.fail_rate(action);
        let retriable = failed && self.draw(salt::RETRIABLE, command_id) < self.retriable_rate;
        let duplicate_delay = (self.draw(salt::DUPLICATE, command_id) < self.duplicate_rate)
            .then(|| self.delay(salt::JITTER_COPY, command_id));
        Answer::Reply {
            outcome: if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            retriable,
            reason: failed.then(|| failure_reason(action, retriable).to_owned()),
            delay: self.delay(salt::JITTER, command_id),
            duplicate_delay,
        }
    }
}

/// A plausible reason for a simulated failure.
pub fn failure_reason(action: Action, retriable: bool) -> &'static str {
    match (action, retriable) {
        (Action::Reserve, false) => "simulated: out of stock",
        (Action::Reserve, true) => "simulated: inventory service busy, try again",
        (Action::Release, false) => "simulated: reservation not found",
        (Action::Release, true) => "simulated: inventory ledger locked, try again",
        (Action::Charge, false) => "simulated: card declined",
        (Action::Charge, true) => "simulated: payment gateway timeout",
        (Action::Refund, false) => "simulated: refund rejected by the payment provider",
        (Action::Refund, true) => "simulated: payment gateway timeout",
        (Action::Schedule, false) => "simulated: address not deliverable",
        (Action::Schedule, true) => "simulated: no carrier slot available, try again",
        (Action::Send, false) => "simulated: mailbox rejected the message",
        (Action::Send, true) => "simulated: mail server busy, try again",
    }
}

/// The common head of the four command records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommandHead {
    order_id: String,
    command_id: String,
    action: ActionSymbol,
}

/// Decodes a command of `step`'s request topic, keeping what the answer needs.
async fn decode_command(
    codec: &Codec,
    step: Step,
    bytes: &[u8],
) -> Result<CommandHead, CodecError> {
    let topic = topics::request_topic(step);
    let head = match step {
        Step::Inventory => {
            let c: InventoryCommand = codec.decode(topic, bytes).await?;
            CommandHead {
                order_id: c.order_id,
                command_id: c.command_id,
                action: c.action,
            }
        }
        Step::Payment => {
            let c: PaymentCommand = codec.decode(topic, bytes).await?;
            CommandHead {
                order_id: c.order_id,
                command_id: c.command_id,
                action: c.action,
            }
        }
        Step::Shipping => {
            let c: ShippingCommand = codec.decode(topic, bytes).await?;
            CommandHead {
                order_id: c.order_id,
                command_id: c.command_id,
                action: c.action,
            }
        }
        Step::Notification => {
            let c: NotificationCommand = codec.decode(topic, bytes).await?;
            CommandHead {
                order_id: c.order_id,
                command_id: c.command_id,
                action: c.action,
            }
        }
    };
    Ok(head)
}

/// An encoded result waiting to be sent.
#[derive(Debug, Clone)]
struct Outgoing {
    step: Step,
    key: String,
    value: Arc<[u8]>,
}

/// An [`Outgoing`] result held until `due`. Ordered so that a max-heap pops the earliest.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    result: Outgoing,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.seq == other.seq
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Counters per service, indexed by `step_index`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counters {
    commands: [u64; 4],
    results: [u64; 4],
    failures: [u64; 4],
    dropped: [u64; 4],
    duplicates: [u64; 4],
    undecodable: u64,
    delivered: u64,
    delivery_errors: u64,
}

/// The running simulator: its clients and what it holds.
struct Simulator {
    behaviour: Behaviour,
    codec: Arc<Codec>,
    topics: Topics,
    /// Deployed result topic names, indexed by `step_index`.
    result_topics: [Arc<str>; 4],
    producer: FutureProducer,
    in_flight: FuturesUnordered<DeliveryFuture>,
    delayed: BinaryHeap<Delayed>,
    seq: u64,
    reorder: Option<usize>,
    window: Vec<Outgoing>,
    window_deadline: Option<Instant>,
    rng: Rng,
    counters: Counters,
}

impl Simulator {
    /// The step whose commands arrive on the deployed topic `topic`.
    fn step_of(&self, topic: &str) -> Option<Step> {
        let base = self.topics.base(topic)?;
        Step::ALL
            .into_iter()
            .find(|s| topics::request_topic(*s) == base)
    }

    /// Handles one command record: decode, decide, schedule the answer.
    async fn handle(&mut self, topic: &str, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(step) = self.step_of(topic) else {
            warn!(topic, "record from an unexpected topic; skipped");
            return;
        };
        let s = step_index(step);
        self.counters.commands[s] += 1;
        let Some(bytes) = payload else {
            self.counters.undecodable += 1;
            if worth_logging(self.counters.undecodable) {
                warn!(
                    topic,
                    skipped = self.counters.undecodable,
                    "command without a value; skipped"
                );
            }
            return;
        };
        let head = match self.decode_with_retry(step, bytes).await {
            Ok(head) => head,
            Err(e) => {
                self.counters.undecodable += 1;
                if worth_logging(self.counters.undecodable) {
                    warn!(topic, error = %e, kind = e.kind(), skipped = self.counters.undecodable, "undecodable command; skipped");
                }
                return;
            }
        };
        let action = match head.action.to_action() {
            Ok(a) if a.step() == step => a,
            _ => {
                self.counters.undecodable += 1;
                if worth_logging(self.counters.undecodable) {
                    warn!(topic, order_id = %head.order_id, action = ?head.action, skipped = self.counters.undecodable, "command with an action this service does not perform; skipped");
                }
                return;
            }
        };
        if key.is_some_and(|k| k != head.order_id.as_bytes()) {
            debug!(topic, order_id = %head.order_id, "command key differs from its order id; answering under the order id");
        }
        let (outcome, retriable, reason, delay, duplicate_delay) = match self
            .behaviour
            .answer(&head.command_id, action)
        {
            Answer::Drop => {
                self.counters.dropped[s] += 1;
                debug!(order_id = %head.order_id, command_id = %head.command_id, action = action.as_str(), "command dropped");
                return;
            }
            Answer::Reply {
                outcome,
                retriable,
                reason,
                delay,
                duplicate_delay,
            } => (outcome, retriable, reason, delay, duplicate_delay),
        };
        if outcome == Outcome::Failure {
            self.counters.failures[s] += 1;
        }
        let record = StepResultRecord {
            order_id: head.order_id.clone(),
            command_id: head.command_id,
            action: head.action,
            outcome: OutcomeSymbol::from(outcome),
            reason,
            retriable,
            produced_at: now_millis() + delay.as_millis() as Millis,
        };
        let value: Arc<[u8]> = match self.codec.encode(topics::result_topic(step), &record).await {
            Ok(v) => v.into(),
            Err(e) => {
                warn!(order_id = %record.order_id, error = %e, "cannot encode a result; command left unanswered");
                return;
            }
        };
        let result = Outgoing {
            step,
            key: head.order_id,
            value,
        };
        if let Some(copy_delay) = duplicate_delay {
            self.counters.duplicates[s] += 1;
            self.schedule(result.clone(), copy_delay).await;
        }
        self.schedule(result, delay).await;
    }

    async fn decode_with_retry(&self, step: Step, bytes: &[u8]) -> Result<CommandHead, CodecError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 1;
        loop {
            match decode_command(&self.codec, step, bytes).await {
                Err(e) if e.is_transient() && attempt < DECODE_ATTEMPTS => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "registry unavailable; retrying the decode");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Sends `result` after `delay` (through the reorder window if enabled).
    async fn schedule(&mut self, result: Outgoing, delay: Duration) {
        if delay.is_zero() {
            self.release(result).await;
        } else {
            self.seq += 1;
            self.delayed.push(Delayed {
                due: Instant::now() + delay,
                seq: self.seq,
                result,
            });
        }
    }

    /// A result whose latency has passed: into the reorder window, or out.
    async fn release(&mut self, result: Outgoing) {
        match self.reorder {
            Some(size) => {
                if self.window.is_empty() {
                    self.window_deadline = Some(Instant::now() + REORDER_MAX_HOLD);
                }
                self.window.push(result);
                if self.window.len() >= size {
                    self.flush_window().await;
                }
            }
            None => self.send(result).await,
        }
    }

    async fn flush_window(&mut self) {
        let mut window = std::mem::take(&mut self.window);
        self.window_deadline = None;
        self.rng.shuffle(&mut window);
        for result in window {
            self.send(result).await;
        }
    }

    /// Releases every delayed result that is due, and the reorder window if it is.
    async fn release_due(&mut self) {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = self.delayed.pop() {
                self.release(d.result).await;
            }
        }
        if self.window_deadline.is_some_and(|t| t <= now) {
            self.flush_window().await;
        }
    }

    /// When something held falls due next.
    fn next_wake(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|d| d.due);
        match (delayed, self.window_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands `result` to the producer without waiting for its delivery.
    async fn send(&mut self, result: Outgoing) {
        let s = step_index(result.step);
        let topic = Arc::clone(&self.result_topics[s]);
        let mut record = FutureRecord::to(&topic)
            .key(result.key.as_str())
            .payload(&*result.value);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    self.counters.results[s] += 1;
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    // Let deliveries complete; the queue drains as they do.
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    } else if let Ok(Some(done)) =
                        tokio::time::timeout(QUEUE_FULL_BACKOFF, self.in_flight.next()).await
                    {
                        self.account(done);
                    }
                }
                Err((e, _)) => {
                    self.counters.delivery_errors += 1;
                    if worth_logging(self.counters.delivery_errors) {
                        warn!(topic = %topic, order_id = %result.key, error = %e, errors = self.counters.delivery_errors, "cannot enqueue a result; dropped");
                    }
                    return;
                }
            }
        }
    }

    /// Accounts for every delivery that has already finished, without waiting.
    fn reap(&mut self) {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.account(done);
        }
    }

    fn account(&mut self, done: <DeliveryFuture as Future>::Output) {
        match done {
            Ok(Ok(_)) => self.counters.delivered += 1,
            Ok(Err((e, message))) => {
                self.counters.delivery_errors += 1;
                if worth_logging(self.counters.delivery_errors) {
                    warn!(topic = message.topic(), error = %e, errors = self.counters.delivery_errors, "a result was not delivered");
                }
            }
            Err(_) => {
                self.counters.delivery_errors += 1;
                if worth_logging(self.counters.delivery_errors) {
                    warn!(
                        errors = self.counters.delivery_errors,
                        "a result's delivery was cancelled"
                    );
                }
            }
        }
    }

    fn log_progress(&self, message: &'static str) {
        let c = &self.counters;
        info!(
            inventory_in = c.commands[0],
            inventory_out = c.results[0],
            payment_in = c.commands[1],
            payment_out = c.results[1],
            shipping_in = c.commands[2],
            shipping_out = c.results[2],
            notification_in = c.commands[3],
            notification_out = c.results[3],
            failures = c.failures.iter().sum::<u64>(),
            dropped = c.dropped.iter().sum::<u64>(),
            duplicates = c.duplicates.iter().sum::<u64>(),
            undecodable = c.undecodable,
            held = self.delayed.len() + self.window.len(),
            in_flight = self.in_flight.len(),
            delivered = c.delivered,
            delivery_errors = c.delivery_errors,
            "{message}"
        );
    }

    /// Sends everything still held, ignoring the remaining latency, and waits for the
    /// deliveries.
    async fn drain(&mut self) -> Result<(), SimulateError> {
        while let Some(d) = self.delayed.pop() {
            self.release(d.result).await;
        }
        self.flush_window().await;
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(FLUSH_TIMEOUT)))
                .await;
        while let Ok(Some(done)) =
            tokio::time::timeout(Duration::from_millis(100), self.in_flight.next()).await
        {
            self.account(done);
        }
        match flushed {
            Ok(result) => result.map_err(SimulateError::Flush),
            Err(join) => {
                warn!(error = %join, "flush task failed");
                Ok(())
            }
        }
    }
}

/// Whether the `count`th skipped command is logged: the first ten, then every thousandth,
/// so a topic full of poison does not flood the log.
fn worth_logging(count: u64) -> bool {
    count <= 10 || count % 1_000 == 0
}

/// Waits until `at`, or forever if there is nothing to wait for.
async fn wake_at(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `order-saga-tools simulate`: answers commands until `shutdown` completes, then sends what it
/// still holds, flushes the producer and commits its offsets.
pub async fn run(
    config: Config,
    args: SimulateArgs,
    codec: Arc<Codec>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulateError> {
    let behaviour = args.behaviour()?;
    let topics = config.topics();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("{}-simulator", config.application_id));
    let client_id = format!("{group}-{}", config.instance_id);

    let mut shutdown = std::pin::pin!(shutdown);
    // Like a real service, wait for the registry instead of failing while it starts.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match codec.prepare(Step::ALL.map(topics::result_topic)).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                let wait = backoff.next_delay();
                warn!(error = %e, wait_ms = wait.as_millis() as u64, "schema registry unavailable; waiting");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(SimulateError::Registry(e)),
        }
    }

    let producer: FutureProducer = plain_producer(&config, &format!("{client_id}-producer"))
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(|source| SimulateError::Kafka {
            what: "producer",
            source,
        })?;
    let consumer: StreamConsumer = read_committed_consumer(&config, &group, &client_id)
        // A test double of a real service: at-least-once with periodic commits of the
        // offsets stored after each command is handled.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .create()
        .map_err(|source| SimulateError::Kafka {
            what: "consumer",
            source,
        })?;
    let request_topics: Vec<String> = Step::ALL
        .iter()
        .map(|s| topics.name(topics::request_topic(*s)))
        .collect();
    let refs: Vec<&str> = request_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&refs)
        .map_err(|source| SimulateError::Kafka {
            what: "subscription",
            source,
        })?;

    let reorder = args.reorder.then_some(args.reorder_window);
    info!(
        group = %group,
        topics = ?request_topics,
        latency_ms = args.latency_ms,
        jitter_ms = args.jitter_ms,
        fail = ?Action::ALL.map(|a| (a.as_str(), behaviour.fail_rate(a))),
        retriable_rate = args.retriable_rate,
        duplicate_rate = args.duplicate_rate,
        drop_rate = args.drop_rate,
        reorder = ?reorder,
        seed = args.seed,
        "simulator started"
    );

    let mut sim = Simulator {
        result_topics: Step::ALL.map(|s| Arc::from(topics.name(topics::result_topic(s)))),
        behaviour,
        codec,
        topics,
        producer,
        in_flight: FuturesUnordered::new(),
        delayed: BinaryHeap::new(),
        seq: 0,
        reorder,
        window: Vec::new(),
        window_deadline: None,
        rng: Rng::new(args.seed ^ 0x5eed_5eed),
        counters: Counters::default(),
    };

    let mut stats = tokio::time::interval(Duration::from_secs(config.stats_interval_s.max(1)));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stats.tick().await;
    let mut last_logged = sim.counters.clone();
    let mut recv_errors: u64 = 0;

    loop {
        let wake = sim.next_wake();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = stats.tick() => {
                if sim.counters != last_logged {
                    sim.log_progress("simulator progress");
                    last_logged = sim.counters.clone();
                }
            }
            Some(done) = sim.in_flight.next(), if !sim.in_flight.is_empty() => {
                sim.account(done);
                sim.reap();
            }
            () = wake_at(wake) => sim.release_due().await,
            received = consumer.recv() => {
                let mut received = Some(received);
                let mut batch = 0;
                // Take what is already fetched in one go, up to a bound, so the other
                // branches still get their turn under a constant stream of commands.
                while let Some(next) = received.take() {
                    match next {
                        Ok(message) => {
                            handle_message(&mut sim, &message).await;
                            if let Err(e) = consumer.store_offset_from_message(&message) {
                                warn!(error = %e, topic = message.topic(), partition = message.partition(), "cannot store the offset");
                            }
                        }
                        Err(e) => {
                            recv_errors += 1;
                            warn!(error = %e, errors = recv_errors, "consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    batch += 1;
                    if batch < RECV_BATCH {
                        received = consumer.recv().now_or_never();
                    }
                }
                sim.reap();
            }
        }
    }

    info!("simulator stopping: sending held results and flushing");
    let drained = sim.drain().await;
    let consumer = Arc::new(consumer);
    let committer = Arc::clone(&consumer);
    match tokio::task::spawn_blocking(move || committer.commit_consumer_state(CommitMode::Sync))
        .await
    {
        Ok(Ok(())) => {}
        // Nothing stored since the last commit, or the group is gone: nothing to lose.
        Ok(Err(e)) => debug!(error = %e, "final offset commit"),
        Err(e) => warn!(error = %e, "final offset commit task failed"),
    }
    sim.log_progress("simulator stopped");
    drained
}

async fn handle_message(sim: &mut Simulator, message: &BorrowedMessage<'_>) {
    sim.handle(message.topic(), message.key(), message.payload())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use order_saga::saga::command_id;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(args: &[&str]) -> SimulateArgs {
        let mut all = vec!["simulate"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(cli) => cli.args,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn behaviour(args: &[&str]) -> Behaviour {
        match parse(args).behaviour() {
            Ok(b) => b,
            Err(e) => panic!("invalid: {e}"),
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| command_id(&format!("order-{i}"), Action::Reserve, 1))
            .collect()
    }

    fn reply(answer: &Answer) -> (Outcome, bool, Option<String>, Duration, Option<Duration>) {
        match answer {
            Answer::Reply {
                outcome,
                retriable,
                reason,
                delay,
                duplicate_delay,
            } => (
                *outcome,
                *retriable,
                reason.clone(),
                *delay,
                *duplicate_delay,
            ),
            Answer::Drop => panic!("unexpected drop"),
        }
    }

    #[test]
    fn default_services_answer_everything_instantly_and_successfully() {
        let b = behaviour(&[]);
        for id in ids(1_000) {
            for action in Action::ALL {
                let (outcome, retriable, reason, delay, dup) = reply(&b.answer(&id, action));
                assert_eq!(outcome, Outcome::Success);
                assert!(!retriable);
                assert_eq!(reason, None);
                assert_eq!(delay, Duration::ZERO);
                assert_eq!(dup, None);
            }
        }
    }

    #[test]
    fn the_same_command_always_gets_the_same_answer() {
        let b = behaviour(&[
            "--fail-rate",
            "0.5",
            "--drop-rate",
            "0.2",
            "--duplicate-rate",
            "0.3",
            "--jitter-ms",
            "100",
        ]);
        for id in ids(500) {
            assert_eq!(b.answer(&id, Action::Charge), b.answer(&id, Action::Charge));
        }
        // Another simulator process with the same seed agrees.
        let again = behaviour(&[
            "--fail-rate",
            "0.5",
            "--drop-rate",
            "0.2",
            "--duplicate-rate",
            "0.3",
            "--jitter-ms",
            "100",
        ]);
        for id in ids(500) {
            assert_eq!(
                b.answer(&id, Action::Charge),
                again.answer(&id, Action::Charge)
            );
        }
    }

    #[test]
    fn another_seed_gives_other_answers() {
        let a = behaviour(&["--fail-rate", "0.5"]);
        let b = behaviour(&["--fail-rate", "0.5", "--seed", "1"]);
        let differing = ids(1_000)
            .iter()
            .filter(|id| a.answer(id, Action::Reserve) != b.answer(id, Action::Reserve))
            .count();
        assert!(differing > 300, "{differing}");
    }

    #[test]
    fn failure_rates_are_roughly_honoured_over_ten_thousand_commands() {
        let b = behaviour(&[
            "--fail-rate",
            "0.1",
            "--fail-charge",
            "0.3",
            "--retriable-rate",
            "0.25",
        ]);
        let all = ids(10_000);
        let count = |action: Action| {
            let mut failures = 0;
            let mut retriable = 0;
            for id in &all {
                let (outcome, r, reason, _, _) = reply(&b.answer(id, action));
                if outcome == Outcome::Failure {
                    failures += 1;
                    assert!(reason.is_some());
                    if r {
                        retriable += 1;
                    }
                } else {
                    assert!(!r);
                }
            }
            (failures, retriable)
        };
        let (reserve, reserve_retriable) = count(Action::Reserve);
        assert!((850..1_150).contains(&reserve), "{reserve}");
        assert!(
            (150..350).contains(&reserve_retriable),
            "{reserve_retriable}"
        );
        let (charge, _) = count(Action::Charge);
        assert!((2_800..3_200).contains(&charge), "{charge}");
        // Compensations are not covered by --fail-rate.
        assert_eq!(count(Action::Release).0, 0);
        assert_eq!(count(Action::Refund).0, 0);
    }

    #[test]
    fn drop_and_duplicate_rates_are_roughly_honoured() {
        let b = behaviour(&["--drop-rate", "0.2", "--duplicate-rate", "0.1"]);
        let all = ids(10_000);
        let answers: Vec<Answer> = all
            .iter()
            .map(|id| b.answer(id, Action::Schedule))
            .collect();
        let dropped = answers.iter().filter(|a| **a == Answer::Drop).count();
        assert!((1_800..2_200).contains(&dropped), "{dropped}");
        let duplicated = answers
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Answer::Reply {
                        duplicate_delay: Some(_),
                        ..
                    }
                )
            })
            .count();
        // A tenth of the answered 80 %.
        assert!((650..950).contains(&duplicated), "{duplicated}");
    }

    #[test]
    fn compensations_are_dropped_only_when_asked() {
        let all = ids(1_000);
        let b = behaviour(&["--drop-rate", "1"]);
        assert!(all
            .iter()
            .all(|id| b.answer(id, Action::Reserve) == Answer::Drop));
        assert!(all
            .iter()
            .all(|id| b.answer(id, Action::Refund) != Answer::Drop));
        let b = behaviour(&["--drop-rate", "1", "--drop-compensations"]);
        assert!(all
            .iter()
            .all(|id| b.answer(id, Action::Release) == Answer::Drop));
    }

    #[test]
    fn compensations_fail_only_with_their_own_flags() {
        let b = behaviour(&["--fail-rate", "1", "--fail-refund", "1"]);
        let id = &ids(1)[0];
        assert_eq!(reply(&b.answer(id, Action::Release)).0, Outcome::Success);
        assert_eq!(reply(&b.answer(id, Action::Refund)).0, Outcome::Failure);
        assert_eq!(reply(&b.answer(id, Action::Send)).0, Outcome::Failure);
    }

    #[test]
    fn latency_stays_within_base_plus_jitter_and_varies() {
        let b = behaviour(&["--latency-ms", "20", "--jitter-ms", "30"]);
        let mut seen = std::collections::HashSet::new();
        for id in ids(2_000) {
            let (_, _, _, delay, _) = reply(&b.answer(&id, Action::Send));
            assert!(
                delay >= Duration::from_millis(20) && delay <= Duration::from_millis(50),
                "{delay:?}"
            );
            seen.insert(delay);
        }
        assert!(seen.len() > 20, "{}", seen.len());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused_by_the_parser() {
        let mut all = vec!["simulate", "--fail-rate", "1.5"];
        assert!(Cli::try_parse_from(&all).is_err());
        all[1] = "--drop-rate";
        all[2] = "-0.1";
        assert!(Cli::try_parse_from(&all).is_err());
    }

    #[test]
    fn a_reorder_window_of_one_is_refused() {
        let args = parse(&["--reorder", "--reorder-window", "1"]);
        assert!(matches!(
            args.behaviour(),
            Err(SimulateError::InvalidArgs(_))
        ));
    }

    #[test]
    fn default_args_equal_the_parsed_defaults() {
        assert_eq!(
            SimulateArgs::default().behaviour().ok(),
            parse(&[]).behaviour().ok()
        );
    }

    #[test]
    fn delayed_results_pop_earliest_first() {
        let now = Instant::now();
        let out = |k: &str| Outgoing {
            step: Step::Inventory,
            key: k.to_owned(),
            value: Arc::from(vec![]),
        };
        let mut heap = BinaryHeap::new();
        heap.push(Delayed {
            due: now + Duration::from_millis(30),
            seq: 1,
            result: out("c"),
        });
        heap.push(Delayed {
            due: now + Duration::from_millis(10),
            seq: 2,
            result: out("a"),
        });
        heap.push(Delayed {
            due: now + Duration::from_millis(10),
            seq: 3,
            result: out("b"),
        });
        let order: Vec<String> = std::iter::from_fn(|| heap.pop().map(|d| d.result.key)).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn every_action_has_two_failure_reasons() {
        for action in Action::ALL {
            assert!(failure_reason(action, false).starts_with("simulated: "));
            assert!(failure_reason(action, true).starts_with("simulated: "));
        }
    }
}
