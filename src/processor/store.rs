//! Per-partition saga state with transactional overlays.
//!
//! Changes made while a Kafka transaction is open go to an overlay; they reach the
//! committed map only when the transaction commits, and vanish when it aborts. That keeps
//! the in-memory state equal to what the changelogs hold (`order-status` for orders,
//! `order-early-events` for events held before their create).
//!
//! Deadlines and evictions are found through time-ordered indexes, so neither costs a
//! scan of every order.

use std::collections::{BTreeSet, HashMap};

use crate::saga::{Early, Millis, OrderState};

/// What the processor knows about one order id.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// The order's saga state (boxed: it is large, and most map slots hold one).
    Order(Box<OrderState>),
    /// Events that arrived before the order's create.
    Early(Early),
}

impl Entry {
    /// When a `Tick` would change this entry: an order's next deadline, or the end of the
    /// grace of held events.
    fn due_at(&self, grace_ms: Millis) -> Option<Millis> {
        match self {
            Entry::Order(s) => s.next_deadline(),
            Entry::Early(e) => Some(e.expires_at(grace_ms)),
        }
    }

    /// When a settled order may be evicted (its last change), if it is settled.
    fn settled_at(&self) -> Option<Millis> {
        match self {
            Entry::Order(s) if s.is_settled() => Some(s.updated_at),
            Entry::Order(_) | Entry::Early(_) => None,
        }
    }
}

/// The saga state of one partition number of the co-partitioned input topics.
#[derive(Debug, Default)]
pub struct PartitionStore {
    committed: HashMap<String, Entry>,
    /// Changes of the open transaction; `None` removes the entry.
    overlay: HashMap<String, Option<Entry>>,
    /// (due time, id) of committed entries. Entries may be stale; they are checked
    /// against the state when they fall due.
    deadlines: BTreeSet<(Millis, String)>,
    /// (last change, id) of committed settled orders, oldest first; may be stale too.
    settled: BTreeSet<(Millis, String)>,
    grace_ms: Millis,
}

impl PartitionStore {
    /// An empty store whose held events expire `grace_ms` after they were held.
    pub fn new(grace_ms: Millis) -> Self {
        PartitionStore {
            grace_ms,
            ..PartitionStore::default()
        }
    }

    /// The current entry of an order id, including changes of the open transaction.
    pub fn get(&self, order_id: &str) -> Option<&Entry> {
        match self.overlay.get(order_id) {
            Some(change) => change.as_ref(),
            None => self.committed.get(order_id),
        }
    }

    /// The current state of an order, if it has one.
    pub fn order(&self, order_id: &str) -> Option<&OrderState> {
        match self.get(order_id) {
            Some(Entry::Order(s)) => Some(s.as_ref()),
            Some(Entry::Early(_)) | None => None,
        }
    }

    /// Records a change made in the open transaction.
    pub fn put(&mut self, order_id: &str, entry: Entry) {
        self.overlay.insert(order_id.to_string(), Some(entry));
    }

    /// Records, in the open transaction, that an id has no entry any more.
    pub fn remove(&mut self, order_id: &str) {
        self.overlay.insert(order_id.to_string(), None);
    }

    /// Loads an entry read from a changelog, bypassing the overlay.
    pub fn restore(&mut self, order_id: String, entry: Entry) {
        self.index(&order_id, &entry);
        self.committed.insert(order_id, entry);
    }

    fn index(&mut self, id: &str, entry: &Entry) {
        if let Some(d) = entry.due_at(self.grace_ms) {
            self.deadlines.insert((d, id.to_string()));
        }
        if let Some(at) = entry.settled_at() {
            self.settled.insert((at, id.to_string()));
        }
    }

    /// The earliest time at which some committed entry falls due.
    pub fn next_due(&self) -> Option<Millis> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Ids whose deadline is at or before `now`, as of committed state. The caller feeds
    /// each a `Tick`; stale entries simply produce no change.
    pub fn due(&self, now: Millis) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Makes the overlay permanent, after its transaction committed.
    pub fn commit(&mut self, now: Millis) {
        // Index entries that have fallen due are dropped; those still waiting (a tick
        // that changed nothing) are put back with their current deadline below, or stay
        // due so the next transaction tries again.
        let due: Vec<(Millis, String)> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .cloned()
            .collect();
        for entry in &due {
            self.deadlines.remove(entry);
            if self.overlay.contains_key(&entry.1) {
                continue;
            }
            if let Some(d) = self
                .committed
                .get(&entry.1)
                .and_then(|e| e.due_at(self.grace_ms))
            {
                self.deadlines.insert((d, entry.1.clone()));
            }
        }
        let changes: Vec<(String, Option<Entry>)> = self.overlay.drain().collect();
        for (id, change) in changes {
            if let Some(old) = self.committed.remove(&id) {
                if let Some(d) = old.due_at(self.grace_ms) {
                    self.deadlines.remove(&(d, id.clone()));
                }
                if let Some(at) = old.settled_at() {
                    self.settled.remove(&(at, id.clone()));
                }
            }
            if let Some(entry) = change {
                self.index(&id, &entry);
                self.committed.insert(id, entry);
            }
        }
    }

    /// Forgets the overlay, after its transaction aborted.
    pub fn rollback(&mut self) {
        self.overlay.clear();
    }

    /// Removes settled orders that last changed before `older_than`. Returns how many
    /// were evicted.
    pub fn evict(&mut self, older_than: Millis) -> usize {
        let mut evicted = 0;
        while let Some((at, id)) = self.settled.first().cloned() {
            if at >= older_than {
                break;
            }
            self.settled.remove(&(at, id.clone()));
            let still = matches!(
                self.committed.get(&id),
                Some(e) if e.settled_at() == Some(at)
            );
            if still && !self.overlay.contains_key(&id) {
                self.committed.remove(&id);
                evicted += 1;
            }
        }
        evicted
    }

    /// Entries held in committed state.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Committed order states, for counting by status.
    pub fn states(&self) -> impl Iterator<Item = &OrderState> {
        self.committed.values().filter_map(|e| match e {
            Entry::Order(s) => Some(s.as_ref()),
            Entry::Early(_) => None,
        })
    }

    /// How many ids hold early events.
    pub fn early_count(&self) -> usize {
        self.committed
            .values()
            .filter(|e| matches!(e, Entry::Early(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{decide, Event, OrderRequest, Policy};

    fn order(id: &str, now: Millis) -> OrderState {
        let request: OrderRequest = serde_json::from_value(serde_json::json!({
            "order_id": id, "customer_id": "c", "currency": "EUR", "total_minor": 100,
            "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 100}],
            "shipping_address": {"recipient": "r", "street": "s", "city": "c",
                                 "postal_code": "p", "country": "GB"},
            "created_at": now
        }))
        .expect("a request");
        match decide(None, &Event::Create(request), now) {
            crate::saga::Decision::Apply { state, .. } => state,
            other => panic!("{other:?}"),
        }
    }

    fn early(id: &str, now: Millis) -> Entry {
        let cancel = Event::Cancel(crate::saga::CancelRequest {
            order_id: id.into(),
            reason: "r".into(),
            requested_at: now,
        });
        match Policy::default().decide_early(None, &cancel, now, None, now) {
            crate::saga::EarlyDecision::Hold(e) => Entry::Early(e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changes_are_invisible_to_the_committed_state_until_commit() {
        let mut s = PartitionStore::new(1_000);
        s.put("a", Entry::Order(Box::new(order("a", 10))));
        assert!(s.order("a").is_some());
        assert_eq!(s.len(), 0);
        s.commit(10);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_rollback_drops_puts_and_removes() {
        let mut s = PartitionStore::new(1_000);
        s.restore("a".into(), Entry::Order(Box::new(order("a", 10))));
        s.remove("a");
        s.put("b", Entry::Order(Box::new(order("b", 10))));
        assert!(s.get("a").is_none());
        s.rollback();
        assert!(s.get("a").is_some());
        assert!(s.get("b").is_none());
    }

    #[test]
    fn a_committed_remove_deletes_the_entry_and_its_deadline() {
        let mut s = PartitionStore::new(1_000);
        s.restore("e".into(), early("e", 10));
        assert_eq!(s.next_due(), Some(1_010));
        s.remove("e");
        s.commit(20);
        assert!(s.get("e").is_none());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn held_events_fall_due_at_the_end_of_their_grace() {
        let mut s = PartitionStore::new(500);
        s.restore("e".into(), early("e", 100));
        assert!(s.due(599).is_empty());
        assert_eq!(s.due(600), vec!["e".to_string()]);
    }

    #[test]
    fn an_order_deadline_is_reindexed_when_its_state_changes() {
        let mut s = PartitionStore::new(1_000);
        let st = order("a", 10);
        let first = st.next_deadline().expect("awaits RESERVE");
        s.restore("a".into(), Entry::Order(Box::new(st.clone())));
        let mut later = st;
        later.forward = None;
        later.status = crate::saga::Status::Failed;
        s.put("a", Entry::Order(Box::new(later)));
        s.commit(11);
        assert!(s.due(first).is_empty(), "the old deadline must be gone");
    }

    #[test]
    fn eviction_takes_only_settled_orders_older_than_the_cut() {
        let mut s = PartitionStore::new(1_000);
        let mut done = order("done", 10);
        done.forward = None;
        done.status = crate::saga::Status::Completed;
        s.restore("done".into(), Entry::Order(Box::new(done)));
        s.restore("open".into(), Entry::Order(Box::new(order("open", 10))));
        s.restore("early".into(), early("early", 10));
        assert_eq!(s.evict(10), 0, "not older than the cut yet");
        assert_eq!(s.evict(11), 1);
        assert!(s.get("done").is_none());
        assert!(s.get("open").is_some());
        assert!(s.get("early").is_some());
        assert_eq!(s.early_count(), 1);
    }
}
