//! Orders that finished and whose full state is no longer kept.
//!
//! A settled order's state is evicted after a retention period; what remains for a
//! longer dedup window is a [`Finished`] record under a 64-bit [`finished_key`] of its id:
//! the final status, version and when it finished. It is enough to recognise a repeated
//! create, which must not start a second saga, and nothing more.
//!
//! The rules for an order known only by its record:
//!
//! - **Create**: ignored, whatever it contains. The request it was created from is no
//!   longer known, so a repeated create and a conflicting one cannot be told apart; both
//!   would otherwise start a second saga under an id that already finished.
//! - **Cancel**: ignored, as for any finished order.
//! - **Result**: rejected to the dead-letter topic. A settled order awaits nothing, so a
//!   result is a late one of an abandoned command; a late SUCCESS would need a
//!   compensation that the evicted state can no longer derive, so it is shown to an
//!   operator rather than dropped.
//! - **Tick**: nothing is ever due.

use uuid::Uuid;

use super::decide::{Decision, IgnoreReason, RejectReason};
use super::model::{Event, Millis, Status};
use super::policy::Policy;
use super::state::OrderState;

/// The namespace of [`finished_key`]: UUID v5 of `urn:order-saga:finished-order` in the
/// URL namespace. Changing it orphans every stored record.
const FINISHED_NAMESPACE: Uuid = Uuid::from_u128(0x0b5c_3a1e_6f0d_5a4b_9c7e_2d8f_1a6b_4e90);

/// What is remembered of an order that finished: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Its final status.
    pub status: Status,
    /// Its final version (saturated at `u32::MAX`; no order comes near it).
    pub version: u32,
    /// When it settled (the `updated_at` of its final state).
    pub finished_at: Millis,
}

impl Finished {
    /// The record of a settled order.
    pub fn of(state: &OrderState) -> Self {
        Finished {
            status: state.status,
            version: u32::try_from(state.version.max(0)).unwrap_or(u32::MAX),
            finished_at: state.updated_at,
        }
    }

    /// Whether the record is past the dedup window at `now`.
    pub fn expired(&self, window_ms: Millis, now: Millis) -> bool {
        self.finished_at.saturating_add(window_ms) <= now
    }
}

/// The 64-bit key of an order id: the first eight bytes of its UUID v5. Stable across
/// versions and machines (it is stored). Two ids share a key with probability about
/// n²/2⁶⁵ among n finished orders (≈ 3·10⁻⁸ for a million); the cost of a collision is
/// one create ignored as a repeat.
pub fn finished_key(order_id: &str) -> u64 {
    let uuid = Uuid::new_v5(&FINISHED_NAMESPACE, order_id.as_bytes());
    let b = uuid.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Policy {
    /// Decides `event` for an order known only by its finished record. Pure.
    pub fn decide_finished(&self, finished: &Finished, event: &Event) -> Decision {
        match event {
            Event::Create(_) => Decision::Ignore(IgnoreReason::FinishedCreate {
                status: finished.status,
            }),
            Event::Cancel(_) => Decision::Ignore(IgnoreReason::AlreadyFinished {
                status: finished.status,
            }),
            Event::Result(r) => Decision::Reject(RejectReason::FinishedOrder {
                order_id: r.order_id.clone(),
                status: finished.status,
            }),
            Event::Tick => Decision::Ignore(IgnoreReason::NothingDue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::decide;

    fn finished(status: Status) -> Finished {
        Finished {
            status,
            version: 5,
            finished_at: T0,
        }
    }

    #[test]
    fn a_create_of_a_finished_order_is_ignored_and_issues_nothing() {
        let p = Policy::default();
        let d = p.decide_finished(&finished(Status::Completed), &Event::Create(request("o-1")));
        assert_eq!(
            d,
            Decision::Ignore(IgnoreReason::FinishedCreate {
                status: Status::Completed
            })
        );
        assert!(d.commands().is_empty());
    }

    #[test]
    fn a_result_for_a_finished_order_is_dead_lettered_as_such() {
        let p = Policy::default();
        let result = Event::Result(crate::StepResult {
            order_id: "o-1".into(),
            command_id: "c".into(),
            action: crate::Action::Reserve,
            outcome: crate::Outcome::Success,
            reason: None,
            retriable: false,
            produced_at: T0,
        });
        match p.decide_finished(&finished(Status::Canceled), &result) {
            Decision::Reject(r) => assert_eq!(r.kind(), "finished_order"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_record_of_a_settled_order_keeps_its_status_version_and_time() {
        let mut st = match decide(None, &Event::Create(request("o-1")), T0) {
            Decision::Apply { state, .. } => state,
            other => panic!("{other:?}"),
        };
        st.status = Status::Failed;
        st.version = 3;
        st.updated_at = T0 + 7;
        let f = Finished::of(&st);
        assert_eq!(
            (f.status, f.version, f.finished_at),
            (Status::Failed, 3, T0 + 7)
        );
        assert!(!f.expired(10, T0 + 16));
        assert!(f.expired(10, T0 + 17));
    }

    #[test]
    fn the_key_of_an_id_is_stable_and_differs_between_ids() {
        assert_eq!(finished_key("o-1"), finished_key("o-1"));
        assert_ne!(finished_key("o-1"), finished_key("o-2"));
        // Stored in topics: a change of the hash would orphan every record.
        assert_eq!(finished_key("o-1"), finished_key(&String::from("o-1")));
    }

    #[test]
    fn a_finished_record_takes_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Finished>(), 16);
    }
}
