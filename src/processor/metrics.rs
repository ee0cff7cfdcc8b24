//! Counters of the processor, logged at an interval and at shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing::info;

use crate::saga::Status;

/// Monotonic counters. Relaxed ordering: they are read only for logging.
#[derive(Debug, Default)]
pub struct Metrics {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub transactions_committed: AtomicU64,
    pub transactions_aborted: AtomicU64,
    pub dlq_records: AtomicU64,
    pub ignored_events: AtomicU64,
    pub compensations: AtomicU64,
    pub state_changes: AtomicU64,
    pub restored_orders: AtomicU64,
    pub evicted_orders: AtomicU64,
    /// Cancels and results held because their order's create had not been read.
    pub held_events: AtomicU64,
    /// Held events applied (or ignored by the saga rules) once the create came.
    pub released_events: AtomicU64,
    /// Held events dead-lettered because no create came within the grace.
    pub expired_events: AtomicU64,
    /// Times a partition group went on without an input partition that might still have
    /// held an earlier record.
    pub idle_timeouts: AtomicU64,
    /// Records moved to the partition of their key (written with another partitioner).
    pub rerouted: AtomicU64,
    /// Creates of orders that had already finished, ignored (no second saga).
    pub finished_creates: AtomicU64,
    /// Finished-order records forgotten at the end of the dedup window.
    pub expired_finished: AtomicU64,
    /// Times creates and cancels were held back because memory was full.
    pub intake_pauses: AtomicU64,
    /// Times the loop was started over in-process (see `processor::recovery`).
    pub restarts: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }

    /// Logs the counters, the orders in memory per status and the ids holding events.
    pub fn log(&self, what: &str, in_memory: &BTreeMap<Status, u64>, holding: usize) {
        let per_status: String = in_memory
            .iter()
            .map(|(s, n)| format!("{}={n}", s.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        info!(
            records_in = self.records_in.load(Relaxed),
            records_out = self.records_out.load(Relaxed),
            txn_committed = self.transactions_committed.load(Relaxed),
            txn_aborted = self.transactions_aborted.load(Relaxed),
            dlq = self.dlq_records.load(Relaxed),
            ignored = self.ignored_events.load(Relaxed),
            compensations = self.compensations.load(Relaxed),
            state_changes = self.state_changes.load(Relaxed),
            restored = self.restored_orders.load(Relaxed),
            evicted = self.evicted_orders.load(Relaxed),
            held = self.held_events.load(Relaxed),
            released = self.released_events.load(Relaxed),
            expired = self.expired_events.load(Relaxed),
            idle_timeouts = self.idle_timeouts.load(Relaxed),
            rerouted = self.rerouted.load(Relaxed),
            finished_creates = self.finished_creates.load(Relaxed),
            expired_finished = self.expired_finished.load(Relaxed),
            intake_pauses = self.intake_pauses.load(Relaxed),
            restarts = self.restarts.load(Relaxed),
            in_memory = %per_status,
            holding,
            "{what}"
        );
    }
}
