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
use tracing::debug;

use super::inputs::Wake;
use super::restore::{self, RestoreError, Restored};
use super::{Context, TxnConsumer};
use crate::topics::Topics;

type Outcome = Result<Restored, RestoreError>;

/// How long the coordinator may take to say which offsets are committed.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RestoreJob {
    partitions: BTreeSet<i32>,
    cancel: Arc<AtomicBool>,
    done: Receiver<Outcome>,
    started: Instant,
}

impl RestoreJob {
    /// Starts restoring `partitions` on a new thread; `wake` is notified when it ends.
    pub fn start(
        ctx: Arc<Context>,
        topics: Topics,
        consumer: Arc<TxnConsumer>,
        partitions: BTreeSet<i32>,
        stop: Arc<AtomicBool>,
        wake: Arc<Wake>,
    ) -> std::io::Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let job_cancel = cancel.clone();
        let job_partitions = partitions.clone();
        std::thread::Builder::new()
            .name("restore".into())
            .spawn(move || {
                let cancelled = || stop.load(Ordering::SeqCst) || job_cancel.load(Ordering::SeqCst);
                let outcome = stable_offsets(&consumer, &topics, &job_partitions)
                    .and_then(|()| restore::restore(&ctx, &topics, &job_partitions, &cancelled));
                // A cancelled job's receiver is gone; its result is not wanted.
                let _ = tx.send(outcome);
                wake.notify();
            })?;
        Ok(RestoreJob {
            partitions,
            cancel,
            done,
            started: Instant::now(),
        })
    }

    pub fn partitions(&self) -> &BTreeSet<i32> {
        &self.partitions
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
        if !self.cancel.swap(true, Ordering::SeqCst) {
            debug!(
                partitions = ?self.partitions,
                ran_ms = self.started.elapsed().as_millis() as u64,
                "restore job ended"
            );
        }
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
