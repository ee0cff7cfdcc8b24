//! A state restore on a thread of its own.
//!
//! The loop hands each newly assigned partition to a [`RestoreJob`] of its own and goes
//! on with the partitions it already holds, so a partition whose restore is held up (its
//! leader away, or a previous owner's transaction not yet timed out) stalls only its own
//! work, and the loop keeps polling its consumer however long a restore takes
//! (a restore inside the loop could outlast `max.poll.interval.ms` and cost the member its
//! place in the group). The partitions stay paused until their store is handed back.
//!
//! A job is cancelled by any rebalance (the loop starts a new one for what is still
//! unrestored), and dropping a job cancels it: a result read before a rebalance is never
//! used after it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tracing::info;

use super::inputs::Wake;
use super::restore::{self, RestoreError, Restored};
use super::{Context, TxnConsumer};
use crate::topics::Topics;

type Outcome = Result<Restored, RestoreError>;

/// The restores of one assignment, summed for one log line when the last one ends.
#[derive(Default)]
pub struct RestoreRound {
    /// The assignment, or the first restore if the loop has just started.
    started: Option<Instant>,
    partitions: BTreeSet<i32>,
    from_order_status: BTreeSet<i32>,
    records: u64,
    orders: usize,
    held: usize,
    finished: usize,
}

impl RestoreRound {
    pub fn add(&mut self, r: &restore::Restored) {
        let started = Instant::now()
            .checked_sub(r.took)
            .unwrap_or_else(Instant::now);
        self.started = Some(self.started.map_or(started, |s| s.min(started)));
        self.partitions.extend(r.stores.keys().copied());
        self.from_order_status
            .extend(r.from_order_status.iter().copied());
        self.records += r.records;
        self.orders += r.orders;
        self.held += r.held;
        self.finished += r.finished;
    }

    pub fn log(&mut self) {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        info!(
            partitions = ?self.partitions,
            from_order_status = ?self.from_order_status,
            records = self.records,
            orders = self.orders,
            held = self.held,
            finished = self.finished,
            seconds = secs,
            records_per_s = if secs > 0.0 { self.records as f64 / secs } else { 0.0 },
            "state restored"
        );
        *self = RestoreRound::default();
    }
}

/// How long the coordinator may take to say which offsets are committed.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RestoreJob {
    cancel: Arc<AtomicBool>,
    done: Receiver<Outcome>,
}

impl RestoreJob {
    /// Starts restoring `partition` on a new thread; `wake` is notified when it ends.
    pub fn start(
        ctx: Arc<Context>,
        topics: Topics,
        consumer: Arc<TxnConsumer>,
        partition: i32,
        stop: Arc<AtomicBool>,
        wake: Arc<Wake>,
    ) -> std::io::Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let job_cancel = cancel.clone();
        std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                let partitions = BTreeSet::from([partition]);
                let cancelled = || stop.load(Ordering::SeqCst) || job_cancel.load(Ordering::SeqCst);
                let outcome = stable_offsets(&consumer, &topics, &partitions)
                    .and_then(|()| restore::restore(&ctx, &topics, &partitions, &cancelled));
                // A cancelled job's receiver is gone; its result is not wanted.
                let _ = tx.send(outcome);
                wake.notify();
            })?;
        Ok(RestoreJob { cancel, done })
    }

    /// The job's result, once it has one.
    pub fn poll(&self) -> Option<Outcome> {
        match self.done.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(RestoreError::Thread)),
        }
    }
}

impl Drop for RestoreJob {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// KIP-447: a previous owner's transaction may still be open on these partitions. Asking
/// for the committed offsets with read_committed makes the coordinator answer only once no
/// offsets are pending (require-stable), so the changelogs read next already hold
/// everything those offsets cover.
fn stable_offsets(
    consumer: &TxnConsumer,
    topics: &Topics,
    partitions: &BTreeSet<i32>,
) -> Result<(), RestoreError> {
    let mut inputs = TopicPartitionList::new();
    for topic in topics.inputs() {
        for p in partitions {
            inputs.add_partition(&topic, *p);
        }
    }
    consumer.committed_offsets(inputs, COMMITTED_TIMEOUT)?;
    Ok(())
}
