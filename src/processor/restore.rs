//! Restoring a partition's saga state from its changelog partitions.
//!
//! The processor's own `order-state` changelog is compacted and holds, per partition, the
//! state of every order not yet evicted (under its id), the finished record of every
//! evicted order within the dedup window (under a hash of its id), and a marker that
//! says the partition is complete. Compaction keeps it near that set, so a restore reads
//! about as many records as there are live keys, however long the history.
//! `order-early-events` holds the events held before their create. Reading with
//! read_committed up to the end (librdkafka reports the end at the last stable offset)
//! sees exactly the committed transactions.
//!
//! A partition of `order-state` without the marker (a deployment that ran an earlier
//! version, which kept its state in `order-status` only) is restored once from
//! `order-status` instead: settled orders past their retention become finished records,
//! and everything restored is written to `order-state` by the next transactions,
//! followed by the marker. See [`Fold`].

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use thiserror::Error;
use tracing::{info, warn};

use super::store::{Entry, PartitionStore, Unwritten};
use super::wire::{self, StateKey, StateValue, WireError};
use super::{now_millis, Context};
use crate::contracts::convert;
use crate::contracts::CodecError;
use crate::kafka::read;
use crate::saga::{finished_key, Finished, Millis, OrderState};
use crate::topics::{self, Topics};

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("registry unreachable while decoding the changelog: {0}")]
    Registry(String),
    #[error("shutdown requested during restore")]
    Interrupted,
    #[error(
        "no record of {topic} arrived for {waited_ms} ms while partitions {partitions:?} \
         had not reached their end (a leader away, or the last stable offset held by a \
         transaction the broker has not timed out)"
    )]
    Stalled {
        topic: String,
        partitions: Vec<i32>,
        waited_ms: u64,
    },
    #[error("the restore thread ended without a result")]
    Thread,
}

/// Reads `partitions` of `order-state` (or, for a partition without its complete
/// marker, of `order-status`) and of `order-early-events` to their end and returns a
/// store per partition.
///
/// A changelog record that cannot be decoded is logged and skipped: it was written by
/// us, and refusing to start would stop every order of the partition for the sake of
/// one. `cancel` is asked between polls and ends the restore with
/// [`RestoreError::Interrupted`]; a read that makes no progress for longer than a
/// transaction could hold it up ends with [`RestoreError::Stalled`], so that a restore can
/// never wait forever on a partition that does not answer.
pub fn restore(
    ctx: &Context,
    topics: &Topics,
    partitions: &BTreeSet<i32>,
    cancel: &dyn Fn() -> bool,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let mut fold = Fold::new(
        partitions.iter().copied(),
        now_millis(),
        ctx.config.state_retention_ms as Millis,
        ctx.config.dedup_window_ms as Millis,
    );

    let state_topic = topics.name(topics::ORDER_STATE);
    let mut records = read_to_end(ctx, &state_topic, partitions, cancel, |p, msg| {
        if let Err(e) = fold.state_record(p, msg.key(), msg.payload()) {
            warn!(partition = p, offset = msg.offset(), error = %e, "order-state record skipped");
        }
        Ok(())
    })?;

    let fallback = fold.incomplete();
    if !fallback.is_empty() {
        info!(
            partitions = ?fallback,
            "order-state has no complete marker for these partitions (first start of this \
             version, or a new deployment): restoring them from order-status once; the \
             next transactions write their state to order-state"
        );
        let status_topic = topics.name(topics::ORDER_STATUS);
        records += read_to_end(ctx, &status_topic, &fallback, cancel, |p, msg| {
            let Some(payload) = msg.payload() else {
                return Ok(());
            };
            match ctx
                .runtime
                .block_on(convert::decode_status(&ctx.codec, payload))
            {
                Ok(Some(state)) => {
                    fold.status_state(p, state);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) if e.is_transient() => Err(RestoreError::Registry(e.to_string())),
                Err(e) => {
                    warn!(partition = p, offset = msg.offset(), error = %e, "changelog record skipped");
                    Ok(())
                }
            }
        })?;
    }

    let early_topic = topics.name(topics::ORDER_EARLY_EVENTS);
    records += read_to_end(ctx, &early_topic, partitions, cancel, |p, msg| {
        if let Err(e) = fold.early_record(p, msg.key(), msg.payload()) {
            warn!(partition = p, offset = msg.offset(), error = %e, "held-events record skipped");
        }
        Ok(())
    })?;

    let stores = fold.finish(ctx.policy.early_grace_ms);
    release_freed_memory();
    ctx.telemetry.on_restore(records, started.elapsed());
    let restored = Restored {
        orders: stores.values().map(|s| s.states().count()).sum(),
        held: stores.values().map(PartitionStore::early_count).sum(),
        finished: stores.values().map(PartitionStore::finished_len).sum(),
        stores,
        records,
        from_order_status: fallback,
        took: started.elapsed(),
    };
    info!(
        partitions = ?partitions,
        from_order_status = ?restored.from_order_status,
        records,
        orders = restored.orders,
        seconds = restored.took.as_secs_f64(),
        "partitions restored"
    );
    Ok(restored)
}

/// What a restore read and built.
pub struct Restored {
    pub stores: BTreeMap<i32, PartitionStore>,
    /// Changelog records read.
    pub records: u64,
    /// Partitions restored from `order-status` (no complete marker in `order-state`).
    pub from_order_status: BTreeSet<i32>,
    pub took: Duration,
    /// Orders, ids holding early events, and finished records in `stores`.
    pub orders: usize,
    pub held: usize,
    pub finished: usize,
}

/// The entries of one partition while its changelogs are read.
#[derive(Default)]
struct PartitionFold {
    entries: HashMap<String, Entry>,
    finished: HashMap<u64, Finished>,
    complete: bool,
}

/// Folds changelog records, in offset order per partition, into partition stores: the
/// last record of a key wins and a tombstone removes it.
pub struct Fold {
    now: Millis,
    retention_ms: Millis,
    window_ms: Millis,
    parts: BTreeMap<i32, PartitionFold>,
}

fn invalid(reason: String) -> WireError {
    CodecError::InvalidField {
        field: "key".to_string(),
        reason,
    }
}

impl Fold {
    /// An empty fold of `partitions` at time `now`.
    pub fn new(
        partitions: impl IntoIterator<Item = i32>,
        now: Millis,
        retention_ms: Millis,
        window_ms: Millis,
    ) -> Self {
        Fold {
            now,
            retention_ms,
            window_ms,
            parts: partitions
                .into_iter()
                .map(|p| (p, PartitionFold::default()))
                .collect(),
        }
    }

    /// An `order-state` record.
    pub fn state_record(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), WireError> {
        let Some(part) = self.parts.get_mut(&partition) else {
            return Ok(());
        };
        let key = key.ok_or_else(|| invalid("record without a key".into()))?;
        let key = wire::parse_state_key(key).ok_or_else(|| invalid("unknown key".into()))?;
        let value = value.map(wire::decode_state).transpose()?;
        match (key, value) {
            (StateKey::Order(id), Some(StateValue::Order(state))) => {
                if state.order_id != id {
                    return Err(invalid(format!(
                        "key {id:?} holds order {:?}",
                        state.order_id
                    )));
                }
                part.entries.insert(id.to_string(), Entry::Order(state));
            }
            (StateKey::Order(id), None) => {
                part.entries.remove(id);
            }
            (StateKey::Finished(k), Some(StateValue::Finished(f))) => {
                part.finished.insert(k, f);
            }
            (StateKey::Finished(k), None) => {
                part.finished.remove(&k);
            }
            (StateKey::Complete, Some(StateValue::Complete { .. })) => part.complete = true,
            (StateKey::Complete, None) => part.complete = false,
            (_, Some(_)) => return Err(invalid("value of another kind than its key".into())),
        }
        Ok(())
    }

    /// Partitions whose `order-state` has no complete marker.
    pub fn incomplete(&self) -> BTreeSet<i32> {
        self.parts
            .iter()
            .filter(|(_, f)| !f.complete)
            .map(|(p, _)| *p)
            .collect()
    }

    /// A state read from `order-status`, for a partition without its complete marker.
    /// Settled orders past the retention become finished records at once, which bounds
    /// the memory of this one-time restore by the orders kept, not by the history.
    pub fn status_state(&mut self, partition: i32, state: OrderState) {
        let older_than = self.now - self.retention_ms;
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let k = finished_key(&state.order_id);
        let newer = |version: i64| state.version >= version;
        if part
            .finished
            .get(&k)
            .is_some_and(|f| !newer(i64::from(f.version)))
        {
            return;
        }
        if let Some(Entry::Order(s)) = part.entries.get(&state.order_id) {
            if !newer(s.version) {
                return;
            }
        }
        if state.is_settled() && state.updated_at < older_than {
            part.entries.remove(&state.order_id);
            let f = Finished::of(&state);
            if f.expired(self.window_ms, self.now) {
                part.finished.remove(&k);
            } else {
                part.finished.insert(k, f);
            }
        } else {
            part.finished.remove(&k);
            part.entries
                .insert(state.order_id.clone(), Entry::Order(Box::new(state)));
        }
    }

    /// An `order-early-events` record: the events held for a key, or a tombstone once
    /// they were released or expired. An order's state wins over held events of its id.
    pub fn early_record(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), WireError> {
        let Some(part) = self.parts.get_mut(&partition) else {
            return Ok(());
        };
        let Some(key) = key.map(|k| String::from_utf8_lossy(k).into_owned()) else {
            return Ok(());
        };
        match value {
            None => {
                if matches!(part.entries.get(&key), Some(Entry::Early(_))) {
                    part.entries.remove(&key);
                }
            }
            Some(payload) => {
                let early = wire::decode_early(payload)?;
                if !matches!(part.entries.get(&key), Some(Entry::Order(_))) {
                    part.entries.insert(key, Entry::Early(early));
                }
            }
        }
        Ok(())
    }

    /// The stores. A partition restored from `order-status`, or whose `order-state` lacks
    /// the marker, has every entry marked to be written to `order-state`.
    pub fn finish(self, grace_ms: Millis) -> BTreeMap<i32, PartitionStore> {
        let mut stores = BTreeMap::new();
        for (p, part) in self.parts {
            let mut store = PartitionStore::new(grace_ms);
            let mut unwritten = Vec::new();
            for (id, entry) in part.entries {
                if matches!(entry, Entry::Order(_)) {
                    unwritten.push(Unwritten::Order(id.clone()));
                }
                store.restore(id, entry);
            }
            for (k, f) in part.finished {
                unwritten.push(Unwritten::Finished(k));
                store.restore_finished(k, f);
            }
            if part.complete {
                store.set_complete();
            } else {
                store.mark_unwritten(unwritten);
            }
            stores.insert(p, store);
        }
        stores
    }
}

/// How long a restore may go without a record before it gives up and is tried again: a
/// previous owner's open transaction holds the last stable offset until the broker aborts
/// it at the transaction timeout, so that long plus a margin for a leader election.
pub fn stall_limit(transaction_timeout_ms: u64) -> Duration {
    Duration::from_millis(transaction_timeout_ms) + Duration::from_secs(30)
}

/// Reads `partitions` of `topic` to their end, stopping early when cancelled or stalled.
fn read_to_end(
    ctx: &Context,
    topic: &str,
    partitions: &BTreeSet<i32>,
    cancel: &dyn Fn() -> bool,
    mut each: impl FnMut(i32, &BorrowedMessage<'_>) -> Result<(), RestoreError>,
) -> Result<u64, RestoreError> {
    let stall = stall_limit(ctx.config.transaction_timeout_ms);
    let last_record = Cell::new(Instant::now());
    read::read_to_end(
        &ctx.config,
        &format!("{}-restore", ctx.config.transactional_id()),
        topic,
        partitions.iter().copied(),
        || {
            if cancel() {
                return Err(RestoreError::Interrupted);
            }
            let quiet = last_record.get().elapsed();
            if quiet >= stall {
                return Err(RestoreError::Stalled {
                    topic: topic.to_string(),
                    partitions: partitions.iter().copied().collect(),
                    waited_ms: quiet.as_millis() as u64,
                });
            }
            Ok(())
        },
        |msg| {
            last_record.set(Instant::now());
            each(msg.partition(), msg)
        },
    )
}

/// Gives memory freed by the restore back to the operating system.
///
/// A restore streams the whole changelog through librdkafka's and our allocations, but
/// keeps only the orders in flight. glibc keeps the freed pages in its arenas, so without
/// this the process would stay as large as the changelog's peak for its whole life.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers
    // and is safe to call at any time from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{decide, Decision, Event, OrderRequest, Status};

    const NOW: Millis = 1_000_000;
    const RETENTION: Millis = 1_000;
    const WINDOW: Millis = 10_000;

    fn order(id: &str, at: Millis) -> OrderState {
        let request: OrderRequest = serde_json::from_value(serde_json::json!({
            "order_id": id, "customer_id": "c", "currency": "EUR", "total_minor": 100,
            "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 100}],
            "shipping_address": {"recipient": "r", "street": "s", "city": "c",
                                 "postal_code": "p", "country": "GB"},
            "created_at": at
        }))
        .expect("a request");
        match decide(None, &Event::Create(request), at) {
            Decision::Apply { state, .. } => state,
            other => panic!("{other:?}"),
        }
    }

    fn completed(id: &str, at: Millis) -> OrderState {
        let mut s = order(id, at);
        s.forward = None;
        s.status = Status::Completed;
        s.version = 5;
        s
    }

    fn fold() -> Fold {
        Fold::new([0], NOW, RETENTION, WINDOW)
    }

    fn put_state(f: &mut Fold, s: &OrderState) {
        let value = wire::encode_state(s).expect("encodes");
        f.state_record(0, Some(s.order_id.as_bytes()), Some(&value))
            .expect("folds");
    }

    fn mark_complete(f: &mut Fold) {
        f.state_record(
            0,
            Some(&wire::COMPLETE_KEY),
            Some(&wire::encode_complete(1)),
        )
        .expect("folds");
    }

    fn unwritten(store: &mut PartitionStore) -> usize {
        store.take_unwritten(usize::MAX).len()
    }

    #[test]
    fn the_last_record_of_a_key_wins_and_a_tombstone_removes_it() {
        let mut f = fold();
        let a = order("a", NOW);
        let mut a2 = a.clone();
        a2.version = 2;
        put_state(&mut f, &a);
        put_state(&mut f, &a2);
        put_state(&mut f, &order("gone", NOW));
        f.state_record(0, Some(b"gone"), None).expect("folds");
        let k = finished_key("done");
        let record = Finished::of(&completed("done", NOW - 5_000));
        let fk = wire::finished_state_key(k);
        f.state_record(0, Some(&fk), Some(&wire::encode_finished(&record)))
            .expect("folds");
        let forgotten = wire::finished_state_key(finished_key("old"));
        f.state_record(0, Some(&forgotten), Some(&wire::encode_finished(&record)))
            .expect("folds");
        f.state_record(0, Some(&forgotten), None).expect("folds");
        mark_complete(&mut f);
        assert!(f.incomplete().is_empty());

        let mut stores = f.finish(1_000);
        let store = stores.get_mut(&0).expect("partition 0");
        assert_eq!(store.order("a").map(|s| s.version), Some(2));
        assert!(store.get("gone").is_none());
        assert_eq!(store.finished("done"), Some(record));
        assert_eq!(store.finished("old"), None);
        assert!(store.is_complete());
        assert_eq!(
            unwritten(store),
            0,
            "a complete partition has nothing to write"
        );
    }

    #[test]
    fn a_partition_without_its_marker_is_restored_from_order_status_once() {
        let mut f = fold();
        // Evicted by this version already: order-state holds its finished record.
        let evicted = completed("evicted", NOW - 5_000);
        let fk = wire::finished_state_key(finished_key("evicted"));
        f.state_record(
            0,
            Some(&fk),
            Some(&wire::encode_finished(&Finished::of(&evicted))),
        )
        .expect("folds");
        assert_eq!(f.incomplete(), BTreeSet::from([0]));

        f.status_state(0, order("open", NOW));
        f.status_state(0, completed("recent", NOW - RETENTION / 2));
        f.status_state(0, completed("settled", NOW - 5_000));
        f.status_state(0, completed("ancient", NOW - WINDOW - 1));
        let mut older = evicted.clone();
        older.version = 4;
        older.status = Status::ShippingScheduled;
        f.status_state(0, older);

        let mut stores = f.finish(1_000);
        let store = stores.get_mut(&0).expect("partition 0");
        assert!(store.order("open").is_some());
        assert!(
            store.order("recent").is_some(),
            "kept until its retention ends"
        );
        assert!(store.order("settled").is_none());
        assert_eq!(store.finished("settled").map(|r| r.version), Some(5));
        assert_eq!(store.finished("ancient"), None, "past the dedup window");
        assert!(
            store.order("evicted").is_none(),
            "an older status of an evicted order does not bring it back"
        );
        assert_eq!(store.finished("evicted").map(|r| r.version), Some(5));
        assert!(!store.is_complete());
        // open, recent, settled, evicted: all go to order-state, then the marker.
        assert_eq!(unwritten(store), 4);
        store.commit(NOW);
        assert!(store.take_marker());
    }

    #[test]
    fn held_events_give_way_to_an_order_of_their_id_and_go_with_a_tombstone() {
        let mut f = fold();
        put_state(&mut f, &order("a", NOW));
        mark_complete(&mut f);
        let early = |id: &str| {
            let cancel = Event::Cancel(crate::saga::CancelRequest {
                order_id: id.into(),
                reason: "r".into(),
                requested_at: NOW,
            });
            match crate::saga::Policy::default().decide_early(None, &cancel, NOW, None, NOW) {
                crate::saga::EarlyDecision::Hold(e) => wire::encode_early(&e).expect("encodes"),
                other => panic!("{other:?}"),
            }
        };
        f.early_record(0, Some(b"a"), Some(&early("a")))
            .expect("folds");
        f.early_record(0, Some(b"b"), Some(&early("b")))
            .expect("folds");
        f.early_record(0, Some(b"c"), Some(&early("c")))
            .expect("folds");
        f.early_record(0, Some(b"c"), None).expect("folds");
        let stores = f.finish(1_000);
        let store = &stores[&0];
        assert!(store.order("a").is_some());
        assert!(matches!(store.get("b"), Some(Entry::Early(_))));
        assert!(store.get("c").is_none());
        assert_eq!(store.early_count(), 1);
    }

    #[test]
    fn records_with_a_foreign_key_or_a_value_of_another_kind_are_refused() {
        let mut f = fold();
        let record = wire::encode_finished(&Finished::of(&completed("x", NOW)));
        assert!(f.state_record(0, Some(b"x"), Some(&record)).is_err());
        assert!(f.state_record(0, None, Some(&record)).is_err());
        assert!(f.state_record(0, Some(&[0xFF, 1, 2]), None).is_err());
        let value = wire::encode_state(&order("x", NOW)).expect("encodes");
        assert!(f.state_record(0, Some(b"y"), Some(&value)).is_err());
        assert!(
            f.state_record(7, Some(b"x"), Some(&value)).is_ok(),
            "other partitions' records are not ours to judge"
        );
        let stores = f.finish(1_000);
        assert!(stores[&0].is_empty());
    }
}
