//! Per-partition saga state with transactional overlays.
//!
//! Changes made while a Kafka transaction is open go to an overlay; they reach the
//! committed map only when the transaction commits, and vanish when it aborts. That keeps
//! the in-memory state equal to what the changelogs hold (`order-state` for orders and
//! finished-order records, `order-early-events` for events held before their create).
//!
//! Deadlines and evictions are found through time-ordered indexes, so neither costs a
//! scan of every order. Finished-order records have no index: they are the bulk of the
//! store (a week of orders), and an index would double their size; they are scanned for
//! expiry now and then instead (see [`PartitionStore::expired_finished`]).

use std::collections::{BTreeSet, HashMap};

use crate::saga::{finished_key, Early, Finished, Millis, OrderState};

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
    /// Records of finished orders whose state was evicted, by [`finished_key`] of the id:
    /// 24 bytes a slot.
    finished: HashMap<u64, Finished>,
    /// Changes of the open transaction to `finished`; `None` removes the record.
    finished_overlay: HashMap<u64, Option<Finished>>,
    /// Entries that the private changelog does not hold yet (restored from `order-status`
    /// on an upgrade), to be written by the next transactions.
    unwritten: Vec<Unwritten>,
    /// Taken from `unwritten` by the open transaction; put back if it aborts.
    writing: Vec<Unwritten>,
    /// Whether the changelog partition is known to hold the marker that says it is
    /// complete (every entry of the partition is in it).
    complete: bool,
    /// The open transaction writes the marker.
    marking: bool,
    /// When finished records are next scanned for the end of their dedup window.
    pub next_expiry_scan: Millis,
}

/// An entry of the store that its changelog partition does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwritten {
    /// The entry (order state) of an order id.
    Order(String),
    /// The finished record of a key.
    Finished(u64),
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

    /// The finished record of an order id, including changes of the open transaction.
    pub fn finished(&self, order_id: &str) -> Option<Finished> {
        self.finished_by_key(finished_key(order_id))
    }

    /// The finished record of a key, including changes of the open transaction.
    pub fn finished_by_key(&self, key: u64) -> Option<Finished> {
        match self.finished_overlay.get(&key) {
            Some(change) => *change,
            None => self.finished.get(&key).copied(),
        }
    }

    /// Records, in the open transaction, that an order finished (its state is removed
    /// separately, with [`PartitionStore::remove`]).
    pub fn put_finished(&mut self, key: u64, record: Finished) {
        self.finished_overlay.insert(key, Some(record));
    }

    /// Records, in the open transaction, that a finished record is forgotten.
    pub fn remove_finished(&mut self, key: u64) {
        self.finished_overlay.insert(key, None);
    }

    /// Loads a finished record read from a changelog, bypassing the overlay.
    pub fn restore_finished(&mut self, key: u64, record: Finished) {
        self.finished.insert(key, record);
    }

    /// Committed finished records.
    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// Notes entries that the changelog lacks; [`PartitionStore::take_unwritten`] hands
    /// them out.
    pub fn mark_unwritten(&mut self, entries: impl IntoIterator<Item = Unwritten>) {
        self.unwritten.extend(entries);
    }

    /// Up to `limit` entries still to be written, for the open transaction.
    pub fn take_unwritten(&mut self, limit: usize) -> Vec<Unwritten> {
        let from = self.unwritten.len().saturating_sub(limit);
        let taken: Vec<Unwritten> = self.unwritten.drain(from..).collect();
        self.writing.extend(taken.iter().cloned());
        taken
    }

    /// Whether entries are still to be written.
    pub fn has_unwritten(&self) -> bool {
        !self.unwritten.is_empty()
    }

    /// Notes that the changelog partition holds the complete marker (read on restore).
    pub fn set_complete(&mut self) {
        self.complete = true;
    }

    /// Whether the open transaction should write the complete marker: the partition
    /// lacks it and nothing is left to write. The marker counts once its transaction
    /// commits.
    pub fn take_marker(&mut self) -> bool {
        if self.complete || self.marking || !self.unwritten.is_empty() || !self.writing.is_empty() {
            return false;
        }
        self.marking = true;
        true
    }

    /// Whether the changelog partition holds the complete marker.
    pub fn is_complete(&self) -> bool {
        self.complete
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
        self.writing.clear();
        if std::mem::take(&mut self.marking) {
            self.complete = true;
        }
        for (key, change) in self.finished_overlay.drain() {
            match change {
                Some(record) => self.finished.insert(key, record),
                None => self.finished.remove(&key),
            };
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
        self.finished_overlay.clear();
        self.unwritten.append(&mut self.writing);
        self.marking = false;
    }

    /// Up to `limit` committed settled orders that last changed before `older_than`,
    /// oldest first, and not changed in the open transaction: the caller replaces each
    /// by its finished record in the open transaction. Drops stale index entries.
    pub fn evictable(&mut self, older_than: Millis, limit: usize) -> Vec<(String, Finished)> {
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (at, id) in self.settled.iter() {
            if *at >= older_than || out.len() >= limit {
                break;
            }
            match self.committed.get(id) {
                Some(Entry::Order(s)) if s.is_settled() && s.updated_at == *at => {
                    if !self.overlay.contains_key(id) {
                        out.push((id.clone(), Finished::of(s)));
                    }
                }
                _ => stale.push((*at, id.clone())),
            }
        }
        for entry in stale {
            self.settled.remove(&entry);
        }
        out
    }

    /// Up to `limit` keys of committed finished records past the dedup window at `now`
    /// and not changed in the open transaction. A scan of every record: call it seldom.
    pub fn expired_finished(&self, window_ms: Millis, now: Millis, limit: usize) -> Vec<u64> {
        self.finished
            .iter()
            .filter(|(k, f)| f.expired(window_ms, now) && !self.finished_overlay.contains_key(k))
            .map(|(k, _)| *k)
            .take(limit)
            .collect()
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

    fn completed(id: &str, at: Millis) -> OrderState {
        let mut done = order(id, at);
        done.forward = None;
        done.status = crate::saga::Status::Completed;
        done.version = 5;
        done
    }

    #[test]
    fn eviction_offers_only_settled_orders_older_than_the_cut() {
        let mut s = PartitionStore::new(1_000);
        s.restore("done".into(), Entry::Order(Box::new(completed("done", 10))));
        s.restore("open".into(), Entry::Order(Box::new(order("open", 10))));
        s.restore("early".into(), early("early", 10));
        assert!(
            s.evictable(10, 100).is_empty(),
            "not older than the cut yet"
        );
        let offered = s.evictable(11, 100);
        assert_eq!(offered.len(), 1);
        assert_eq!(offered[0].0, "done");
        assert_eq!(offered[0].1.version, 5);
        assert_eq!(s.early_count(), 1);
    }

    #[test]
    fn an_eviction_replaces_the_state_by_its_record_only_when_committed() {
        let mut s = PartitionStore::new(1_000);
        s.restore("done".into(), Entry::Order(Box::new(completed("done", 10))));
        let (id, record) = s.evictable(11, 100).remove(0);
        s.remove(&id);
        s.put_finished(finished_key(&id), record);
        assert!(s.get("done").is_none());
        assert_eq!(
            s.finished("done"),
            Some(record),
            "visible in the transaction"
        );
        s.rollback();
        assert!(s.get("done").is_some(), "an abort keeps the state");
        assert_eq!(s.finished("done"), None);
        assert_eq!(s.evictable(11, 100).len(), 1, "and offers it again");

        s.remove("done");
        s.put_finished(finished_key("done"), record);
        s.commit(12);
        assert!(s.get("done").is_none());
        assert_eq!(s.finished_len(), 1);
        assert_eq!(s.finished("done"), Some(record));
        assert!(
            s.evictable(i64::MAX, 100).is_empty(),
            "its index entry is gone"
        );
    }

    #[test]
    fn eviction_offers_at_most_the_limit_oldest_first() {
        let mut s = PartitionStore::new(1_000);
        for i in 0..5 {
            let id = format!("o{i}");
            s.restore(id.clone(), Entry::Order(Box::new(completed(&id, 10 + i))));
        }
        let offered: Vec<String> = s.evictable(100, 2).into_iter().map(|(id, _)| id).collect();
        assert_eq!(offered, vec!["o0".to_string(), "o1".to_string()]);
    }

    #[test]
    fn finished_records_past_the_window_are_found_and_forgotten_on_commit() {
        let mut s = PartitionStore::new(1_000);
        let old = Finished {
            status: crate::saga::Status::Failed,
            version: 2,
            finished_at: 100,
        };
        let young = Finished {
            finished_at: 900,
            ..old
        };
        s.restore_finished(1, old);
        s.restore_finished(2, young);
        assert_eq!(s.expired_finished(500, 599, 10), Vec::<u64>::new());
        assert_eq!(s.expired_finished(500, 600, 10), vec![1]);
        s.remove_finished(1);
        assert!(
            s.expired_finished(500, 600, 10).is_empty(),
            "a record changed in the open transaction is left alone"
        );
        s.commit(600);
        assert_eq!(s.finished_len(), 1);
        assert_eq!(s.finished_by_key(2), Some(young));
    }

    #[test]
    fn unwritten_entries_return_after_an_abort_and_the_marker_follows_the_last() {
        let mut s = PartitionStore::new(1_000);
        s.mark_unwritten([Unwritten::Order("a".into()), Unwritten::Finished(7)]);
        assert!(!s.take_marker(), "no marker while entries are unwritten");
        assert_eq!(s.take_unwritten(10).len(), 2);
        assert!(!s.take_marker(), "nor while they are being written");
        s.rollback();
        assert!(s.has_unwritten());
        assert_eq!(s.take_unwritten(1).len(), 1);
        s.commit(1);
        assert_eq!(s.take_unwritten(10).len(), 1);
        s.commit(2);
        assert!(!s.is_complete());
        assert!(s.take_marker());
        s.rollback();
        assert!(!s.is_complete(), "an aborted marker does not count");
        assert!(s.take_marker());
        s.commit(3);
        assert!(s.is_complete());
        assert!(!s.take_marker(), "written once");
    }

    #[test]
    fn a_deadline_falls_due_again_after_a_tick_that_changed_nothing() {
        let mut s = PartitionStore::new(1_000);
        let st = order("a", 10);
        let due = st.next_deadline().expect("awaits RESERVE");
        s.restore("a".into(), Entry::Order(Box::new(st)));
        assert_eq!(s.next_due(), Some(due));
        // The transaction that saw it due did not change the order: it stays due.
        s.commit(due);
        assert_eq!(s.due(due), vec!["a".to_string()]);
    }

    #[test]
    fn finished_records_take_at_most_64_bytes_each_in_memory() {
        // The map's own footprint: its table of 24-byte slots and control bytes, at the
        // load factor a map of this size ends up with.
        let n: usize = 1_000_000;
        let mut m: HashMap<u64, Finished> = HashMap::new();
        for i in 0..n as u64 {
            m.insert(
                finished_key(&i.to_string()),
                Finished {
                    status: crate::saga::Status::Completed,
                    version: 5,
                    finished_at: i as Millis,
                },
            );
        }
        assert_eq!(m.len(), n, "no two of a million ids share a key");
        let slot = std::mem::size_of::<(u64, Finished)>();
        // hashbrown keeps a power-of-two number of buckets, at most 7/8 of them full, each
        // a slot plus one control byte.
        let buckets = (m.capacity() * 8 / 7).next_power_of_two();
        let bytes = buckets * (slot + 1);
        let per_entry = bytes / n;
        eprintln!("finished records: {per_entry} bytes each at a million ({slot}-byte slots)");
        assert_eq!(slot, 24);
        assert!(per_entry <= 64, "{per_entry} bytes per finished order");
    }
}
