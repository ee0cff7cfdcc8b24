//! Per-partition saga state with transactional overlays.
//!
//! Changes made while a Kafka transaction is open go to an overlay; they reach the
//! committed map only when the transaction commits, and vanish when it aborts. That keeps
//! the in-memory state equal to what the `order-status` changelog holds.

use std::collections::{BTreeSet, HashMap};

use crate::saga::{Millis, OrderState};

/// The saga state of one partition number of the co-partitioned input topics.
#[derive(Debug, Default)]
pub struct PartitionStore {
    committed: HashMap<String, OrderState>,
    overlay: HashMap<String, OrderState>,
    /// (deadline, order id) of committed states that wait for a deadline. Entries may be
    /// stale; they are checked against the state when they fall due.
    deadlines: BTreeSet<(Millis, String)>,
}

impl PartitionStore {
    /// The current state of an order, including changes of the open transaction.
    pub fn get(&self, order_id: &str) -> Option<&OrderState> {
        self.overlay
            .get(order_id)
            .or_else(|| self.committed.get(order_id))
    }

    /// Records a change made in the open transaction.
    pub fn put(&mut self, state: OrderState) {
        self.overlay.insert(state.order_id.clone(), state);
    }

    /// Loads a state read from the changelog, bypassing the overlay.
    pub fn restore(&mut self, state: OrderState) {
        if let Some(d) = state.next_deadline() {
            self.deadlines.insert((d, state.order_id.clone()));
        }
        self.committed.insert(state.order_id.clone(), state);
    }

    /// Orders whose deadline is at or before `now`, as of committed state. The caller
    /// feeds each a `Tick`; stale entries simply produce no change.
    pub fn due(&self, now: Millis) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Makes the overlay permanent, after its transaction committed.
    pub fn commit(&mut self, now: Millis) {
        // Drop index entries that have fallen due; the states that still wait are
        // re-indexed below with their new deadline.
        let due: Vec<(Millis, String)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .cloned()
            .collect();
        for entry in &due {
            self.deadlines.remove(entry);
            if let Some(state) = self.committed.get(&entry.1) {
                if !self.overlay.contains_key(&entry.1) {
                    if let Some(d) = state.next_deadline() {
                        // Still waiting and untouched by this transaction: keep it due,
                        // so the next transaction tries again.
                        self.deadlines.insert((d, entry.1.clone()));
                    }
                }
            }
        }
        for (id, state) in self.overlay.drain() {
            if let Some(old) = self.committed.get(&id).and_then(OrderState::next_deadline) {
                self.deadlines.remove(&(old, id.clone()));
            }
            if let Some(d) = state.next_deadline() {
                self.deadlines.insert((d, id.clone()));
            }
            self.committed.insert(id, state);
        }
    }

    /// Forgets the overlay, after its transaction aborted.
    pub fn rollback(&mut self) {
        self.overlay.clear();
    }

    /// Removes terminal orders with nothing outstanding that last changed before
    /// `older_than`. Returns how many were evicted.
    pub fn evict(&mut self, older_than: Millis) -> usize {
        let before = self.committed.len();
        self.committed
            .retain(|_, s| !(s.is_settled() && s.updated_at < older_than));
        before - self.committed.len()
    }

    /// Orders held in committed state.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Committed states, for counting by status.
    pub fn states(&self) -> impl Iterator<Item = &OrderState> {
        self.committed.values()
    }
}
