//! Keeping the private changelog near the set of live keys, inside the open transaction:
//! settled orders past their retention are replaced by their finished records (the
//! state's key is tombstoned), finished records past the dedup window are tombstoned,
//! and entries restored from `order-status` on an upgrade are written, followed by the
//! marker that says a partition of the changelog is complete.

use tracing::info;

use super::metrics::Metrics;
use super::store::{Entry, Unwritten};
use super::wire;
use super::{now_millis, Loop, StepError};
use crate::saga::{finished_key, Millis};
use crate::topics;

/// Records of each kind one partition writes at most per transaction, so housekeeping
/// after a long pause (or an upgrade) is spread over several transactions.
const BATCH: usize = 5_000;

/// How often finished records are scanned for the end of their window: a hundredth of
/// the window, between a second and a minute. Each scan looks at every record (a few
/// milliseconds per million); a record outlives its window by at most this much.
pub fn expiry_scan_every(window_ms: Millis) -> Millis {
    (window_ms / 100).clamp(1_000, 60_000)
}

impl Loop {
    /// Does the housekeeping of every partition in the open transaction (opening one only
    /// if there is something to write).
    pub(super) fn housekeeping(&mut self) -> Result<(), StepError> {
        let now = now_millis();
        // Under memory pressure every settled order may go, oldest first: its finished
        // record still answers a repeated create.
        let older_than = if self.pressure {
            now
        } else {
            now - self.ctx.config.state_retention_ms as Millis
        };
        let window = self.ctx.config.dedup_window_ms as Millis;
        let state_topic = self.topics.name(topics::ORDER_STATE);
        // (partition, key, value): gathered first, as sending needs the loop mutably.
        let mut records: Vec<(i32, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let (mut evicted, mut expired) = (0u64, 0u64);
        for (p, store) in self.stores.iter_mut() {
            let p = *p;
            for entry in store.take_unwritten(BATCH) {
                match entry {
                    Unwritten::Order(id) => {
                        if let Some(Entry::Order(s)) = store.get(&id) {
                            let value = wire::encode_state(s)
                                .map_err(|e| StepError::abort_by("encoding failed", e))?;
                            records.push((p, id.into_bytes(), Some(value)));
                        }
                    }
                    Unwritten::Finished(k) => {
                        if let Some(f) = store.finished_by_key(k) {
                            let key = wire::finished_state_key(k).to_vec();
                            records.push((p, key, Some(wire::encode_finished(&f))));
                        }
                    }
                }
            }
            if store.take_marker() {
                info!(partition = p, "order-state partition complete");
                records.push((
                    p,
                    wire::COMPLETE_KEY.to_vec(),
                    Some(wire::encode_complete(now)),
                ));
            }
            for (id, finished) in store.evictable(older_than, BATCH) {
                let k = finished_key(&id);
                store.remove(&id);
                records.push((p, id.into_bytes(), None));
                // A record already past its window (a window shorter than the
                // retention) is not written at all.
                if !finished.expired(window, now) {
                    store.put_finished(k, finished);
                    let key = wire::finished_state_key(k).to_vec();
                    records.push((p, key, Some(wire::encode_finished(&finished))));
                }
                evicted += 1;
            }
            if now >= store.next_expiry_scan {
                let keys = store.expired_finished(window, now, BATCH);
                // A full batch means more are due: look again next time.
                store.next_expiry_scan = if keys.len() >= BATCH {
                    now
                } else {
                    now + expiry_scan_every(window)
                };
                for k in keys {
                    store.remove_finished(k);
                    records.push((p, wire::finished_state_key(k).to_vec(), None));
                    expired += 1;
                }
            }
        }
        for (p, key, value) in &records {
            self.send_bytes(&state_topic, Some(*p), key, value.as_deref(), None)?;
        }
        Metrics::add(&self.ctx.metrics.evicted_orders, evicted);
        Metrics::add(&self.ctx.metrics.expired_finished, expired);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_records_are_scanned_between_every_second_and_every_minute() {
        assert_eq!(expiry_scan_every(1_000), 1_000);
        assert_eq!(expiry_scan_every(600_000), 6_000);
        assert_eq!(expiry_scan_every(7 * 86_400_000), 60_000);
    }

    #[test]
    fn an_abort_keeps_its_cause_for_the_log() {
        let cause = crate::contracts::CodecError::InvalidField {
            field: "f".into(),
            reason: "bad bytes".into(),
        };
        let e = StepError::abort_by("encoding failed", cause);
        assert!(std::error::Error::source(&e).is_some());
        let logged = e.chain();
        assert!(logged.starts_with("encoding failed: "), "{logged}");
        assert!(logged.contains("bad bytes"), "{logged}");
        assert_eq!(StepError::abort("plain").chain(), "plain");
    }
}
