//! Events that arrive before their order's create.
//!
//! The processor reads its input topics in timestamp order, but a cancel or a result can
//! still reach it before the create it belongs to: an upstream producer that publishes
//! the create late, a replayed downstream answer, a create and a cancel stamped within
//! the same millisecond on two topics. Dead-lettering such an event would lose a
//! customer's cancel, so an event for an order with no state is **held** in an
//! [`Early`] entry, which the processor keeps and restores like any order state.
//!
//! - When the create arrives, `Policy::release` decides the create and then every held
//!   event in timestamp order. A held cancel means the customer canceled before any
//!   command could have been sent, so the order is created `CANCELED` with no command.
//! - A held event whose create has not arrived within the grace period
//!   ([`Policy::early_grace_ms`]) is given up: the `Tick` at [`Early::expires_at`]
//!   returns every held event for the dead-letter topic, with its age.
//! - At most [`MAX_HELD`] events are held per order; more are rejected at once, so a
//!   flood of results for an id that never comes cannot grow memory without bound.

use serde::{Deserialize, Serialize};

use super::decide::{Decision, IgnoreReason, RejectReason};
use super::model::{CancelRequest, Event, Millis, OrderRequest, Status, StepResult};
use super::policy::Policy;
use super::state::OrderState;
use super::validate::validate_order;

/// How many events one unknown order may hold.
pub const MAX_HELD: usize = 32;

/// An event that can arrive before its order's create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EarlyEvent {
    /// A cancel request.
    Cancel(CancelRequest),
    /// A downstream result.
    Result(StepResult),
}

impl EarlyEvent {
    /// The early form of `event`, if it is one that can be held.
    pub fn from_event(event: &Event) -> Option<EarlyEvent> {
        match event {
            Event::Cancel(c) => Some(EarlyEvent::Cancel(c.clone())),
            Event::Result(r) => Some(EarlyEvent::Result(r.clone())),
            Event::Create(_) | Event::Tick => None,
        }
    }

    /// The event to decide once the order exists.
    pub fn to_event(&self) -> Event {
        match self {
            EarlyEvent::Cancel(c) => Event::Cancel(c.clone()),
            EarlyEvent::Result(r) => Event::Result(r.clone()),
        }
    }

    /// The order the event is about.
    pub fn order_id(&self) -> &str {
        match self {
            EarlyEvent::Cancel(c) => &c.order_id,
            EarlyEvent::Result(r) => &r.order_id,
        }
    }

    /// Tie-break between events of one timestamp, in the input topics' fixed order:
    /// the cancel first, then results in saga step order.
    pub fn rank(&self) -> u8 {
        match self {
            EarlyEvent::Cancel(_) => 1,
            EarlyEvent::Result(r) => 2 + r.action.step() as u8,
        }
    }
}

/// Where a held record came from, so that it can be dead-lettered unchanged if its order
/// never comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The topic it was read from (as deployed, with any prefix).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its value, as it was.
    pub payload: Vec<u8>,
}

/// One held event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The event.
    pub event: EarlyEvent,
    /// The record's timestamp: the order in which held events are applied.
    pub timestamp: Millis,
    /// When the processor held it: the grace period runs from here.
    pub held_at: Millis,
    /// Where it came from, if known.
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// The events held for an order whose create has not been seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Early {
    /// The order's id (the record key).
    pub order_id: String,
    /// Held events, in arrival order.
    pub held: Vec<Held>,
}

impl Early {
    /// When the grace of the oldest held event runs out.
    pub fn expires_at(&self, grace_ms: Millis) -> Millis {
        self.held
            .iter()
            .map(|h| h.held_at)
            .min()
            .unwrap_or(Millis::MAX)
            .saturating_add(grace_ms.max(0))
    }

    /// Held events sorted by timestamp, ties by the input topics' fixed order, then by
    /// arrival.
    pub fn in_event_time_order(&self) -> Vec<&Held> {
        let mut held: Vec<&Held> = self.held.iter().collect();
        // A stable sort keeps arrival order among equal keys.
        held.sort_by_key(|h| (h.timestamp, h.event.rank()));
        held
    }
}

/// What to do with an event for an order that has no state yet.
#[derive(Debug, Clone, PartialEq)]
pub enum EarlyDecision {
    /// Keep this entry (the previous one plus the new event) until the create comes.
    Hold(Early),
    /// The create came: apply these decisions in order. The first is the create's; the
    /// others are the held events', in event-time order. An `Apply` of a later one builds
    /// on the state of the last `Apply` before it.
    Release(Vec<Released>),
    /// The grace is over and no create came: dead-letter every one of these events.
    Expire(Vec<Held>),
    /// Nothing changes.
    Ignore(IgnoreReason),
    /// The event cannot be held (too many already): dead-letter it now.
    Reject(RejectReason),
}

/// One decision of a [`EarlyDecision::Release`].
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    /// The held event it decides, or `None` for the create itself.
    pub held: Option<Held>,
    /// Its decision.
    pub decision: Decision,
}

impl Policy {
    /// Decides `event` for an order that has no state: `early` holds what came before
    /// (or `None`), `timestamp` is the event record's timestamp and `origin` where it
    /// came from. Pure, like [`Policy::decide`].
    pub fn decide_early(
        &self,
        early: Option<&Early>,
        event: &Event,
        timestamp: Millis,
        origin: Option<Origin>,
        now: Millis,
    ) -> EarlyDecision {
        match event {
            Event::Create(request) => self.release(request, early, now),
            Event::Tick => match early {
                Some(e) if now >= e.expires_at(self.early_grace_ms) => {
                    EarlyDecision::Expire(e.held.clone())
                }
                Some(_) => EarlyDecision::Ignore(IgnoreReason::NothingDue),
                None => EarlyDecision::Ignore(IgnoreReason::NoOrder),
            },
            Event::Cancel(_) | Event::Result(_) => {
                let Some(held_event) = EarlyEvent::from_event(event) else {
                    return EarlyDecision::Ignore(IgnoreReason::NoOrder);
                };
                let order_id = held_event.order_id().to_string();
                let mut next = match early {
                    Some(e) if e.order_id != order_id => {
                        return EarlyDecision::Reject(RejectReason::OrderIdMismatch {
                            expected: e.order_id.clone(),
                            got: order_id,
                        })
                    }
                    Some(e) => e.clone(),
                    None => Early {
                        order_id: order_id.clone(),
                        held: Vec::new(),
                    },
                };
                if next.held.len() >= MAX_HELD {
                    return EarlyDecision::Reject(RejectReason::UnknownOrder { order_id });
                }
                next.held.push(Held {
                    event: held_event,
                    timestamp,
                    held_at: now,
                    origin,
                });
                EarlyDecision::Hold(next)
            }
        }
    }

    /// The create of an order, followed by the events held for it.
    fn release(&self, request: &OrderRequest, early: Option<&Early>, now: Millis) -> EarlyDecision {
        let held = early.map(Early::in_event_time_order).unwrap_or_default();
        let first_cancel = held
            .iter()
            .position(|h| matches!(h.event, EarlyEvent::Cancel(_)));
        let valid = !request.order_id.trim().is_empty() && validate_order(request, self).is_ok();
        let mut out = Vec::with_capacity(held.len() + 1);
        let mut consumed = None;
        let create = match (first_cancel, valid) {
            // No command can have been sent yet, so nothing needs undoing: the order is
            // born canceled, and no service ever hears of it.
            (Some(index), true) => {
                consumed = Some(index);
                let reason = match &held[index].event {
                    EarlyEvent::Cancel(c) => c.reason.as_str(),
                    EarlyEvent::Result(_) => "",
                };
                Decision::Apply {
                    state: OrderState::new(
                        request,
                        Status::Canceled,
                        Some(format!("canceled on request before it started: {reason}")),
                        now,
                    ),
                    commands: Vec::new(),
                }
            }
            _ => self.decide(None, &Event::Create(request.clone()), now),
        };
        let mut state = create.state().cloned();
        out.push(Released {
            held: None,
            decision: create,
        });
        for (index, h) in held.into_iter().enumerate() {
            let decision = if consumed == Some(index) {
                Decision::Ignore(IgnoreReason::AlreadyFinished {
                    status: Status::Canceled,
                })
            } else {
                match &state {
                    Some(st) => self.decide(Some(st), &h.event.to_event(), now),
                    // The create itself was rejected: there is no order to apply it to.
                    None => Decision::Reject(RejectReason::UnknownOrder {
                        order_id: h.event.order_id().to_string(),
                    }),
                }
            };
            if let Some(next) = decision.state() {
                state = Some(next.clone());
            }
            out.push(Released {
                held: Some(h.clone()),
                decision,
            });
        }
        EarlyDecision::Release(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::{command_id, Action, Outcome};

    fn hold(policy: &Policy, early: Option<&Early>, event: &Event, ts: Millis) -> Early {
        match policy.decide_early(early, event, ts, None, T0) {
            EarlyDecision::Hold(e) => e,
            other => panic!("expected Hold, got {other:?}"),
        }
    }

    fn released(d: EarlyDecision) -> Vec<Released> {
        match d {
            EarlyDecision::Release(r) => r,
            other => panic!("expected Release, got {other:?}"),
        }
    }

    #[test]
    fn a_cancel_before_its_create_is_held_not_rejected() {
        let p = test_policy();
        let e = hold(&p, None, &cancel_event("o-1", "changed my mind"), T0);
        assert_eq!(e.order_id, "o-1");
        assert_eq!(e.held.len(), 1);
        assert_eq!(e.held[0].held_at, T0);
    }

    #[test]
    fn a_create_after_a_held_cancel_is_born_canceled_with_no_command() {
        let p = test_policy();
        let e = hold(&p, None, &cancel_event("o-1", "changed my mind"), T0 - 10);
        let out =
            released(p.decide_early(Some(&e), &Event::Create(request("o-1")), T0, None, T0 + 1));
        let Decision::Apply { state, commands } = &out[0].decision else {
            panic!("create not applied: {:?}", out[0].decision);
        };
        assert_eq!(state.status, Status::Canceled);
        assert!(commands.is_empty(), "no command may be sent: {commands:?}");
        assert_eq!(state.version, 1);
        assert!(state
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("changed my mind"));
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1].decision, Decision::Ignore(_)));
    }

    #[test]
    fn a_held_cancel_does_not_rescue_an_invalid_order_from_failing() {
        let p = test_policy();
        let e = hold(&p, None, &cancel_event("o-1", "oops"), T0);
        let mut r = request("o-1");
        r.items.clear();
        let out = released(p.decide_early(Some(&e), &Event::Create(r), T0, None, T0));
        assert_eq!(
            out[0].decision.state().map(|s| s.status),
            Some(Status::Failed)
        );
        assert!(matches!(out[1].decision, Decision::Ignore(_)));
    }

    #[test]
    fn a_held_result_is_applied_after_the_create_by_the_saga_rules() {
        let p = test_policy();
        let reserve = command_id("o-1", Action::Reserve, 1);
        let success = result_event("o-1", &reserve, Action::Reserve, Outcome::Success, false);
        let e = hold(&p, None, &success, T0);
        let out = released(p.decide_early(
            Some(&e),
            &Event::Create(request("o-1")),
            T0 - 5,
            None,
            T0 + 1,
        ));
        assert_eq!(out.len(), 2);
        let after = out[1].decision.state().expect("the result applies");
        assert_eq!(after.status, Status::Reserved);
        assert_eq!(after.version, 2);
        let actions: Vec<Action> = out
            .iter()
            .flat_map(|r| r.decision.commands().iter().map(|c| c.action))
            .collect();
        assert_eq!(actions, vec![Action::Reserve, Action::Charge]);
    }

    #[test]
    fn a_held_result_of_a_command_never_issued_is_ignored_not_rejected() {
        let p = test_policy();
        let bogus = result_event("o-1", "nope", Action::Reserve, Outcome::Success, false);
        let e = hold(&p, None, &bogus, T0);
        let out = released(p.decide_early(Some(&e), &Event::Create(request("o-1")), T0, None, T0));
        assert!(matches!(
            out[1].decision,
            Decision::Ignore(IgnoreReason::UnknownCommand { .. })
        ));
    }

    #[test]
    fn held_events_are_applied_in_timestamp_order_with_ties_by_topic() {
        let p = test_policy();
        let reserve = command_id("o-1", Action::Reserve, 1);
        let success = result_event("o-1", &reserve, Action::Reserve, Outcome::Success, false);
        let e = hold(&p, None, &success, T0 + 5);
        let e = hold(&p, Some(&e), &cancel_event("o-1", "late cancel"), T0 + 5);
        let order: Vec<u8> = e
            .in_event_time_order()
            .iter()
            .map(|h| h.event.rank())
            .collect();
        assert_eq!(order, vec![1, 2]);
        let e2 = hold(&p, None, &cancel_event("o-1", "x"), T0 + 9);
        let e2 = hold(&p, Some(&e2), &success, T0 + 1);
        let order: Vec<Millis> = e2
            .in_event_time_order()
            .iter()
            .map(|h| h.timestamp)
            .collect();
        assert_eq!(order, vec![T0 + 1, T0 + 9]);
    }

    #[test]
    fn an_unmatched_event_expires_after_the_grace_and_not_before() {
        let p = Policy {
            early_grace_ms: 1_000,
            ..test_policy()
        };
        let e = hold(&p, None, &cancel_event("o-1", "x"), T0);
        assert_eq!(e.expires_at(p.early_grace_ms), T0 + 1_000);
        assert!(matches!(
            p.decide_early(Some(&e), &Event::Tick, 0, None, T0 + 999),
            EarlyDecision::Ignore(IgnoreReason::NothingDue)
        ));
        match p.decide_early(Some(&e), &Event::Tick, 0, None, T0 + 1_000) {
            EarlyDecision::Expire(held) => assert_eq!(held.len(), 1),
            other => panic!("expected Expire, got {other:?}"),
        }
    }

    #[test]
    fn an_order_holds_a_bounded_number_of_events() {
        let p = test_policy();
        let mut e: Option<Early> = None;
        for i in 0..MAX_HELD {
            e = Some(hold(
                &p,
                e.as_ref(),
                &cancel_event("o-1", &i.to_string()),
                T0,
            ));
        }
        assert!(matches!(
            p.decide_early(
                e.as_ref(),
                &cancel_event("o-1", "one too many"),
                T0,
                None,
                T0
            ),
            EarlyDecision::Reject(RejectReason::UnknownOrder { .. })
        ));
    }

    #[test]
    fn a_create_with_nothing_held_decides_exactly_as_decide_does() {
        let p = test_policy();
        let create = Event::Create(request("o-1"));
        let out = released(p.decide_early(None, &create, T0, None, T0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].decision, p.decide(None, &create, T0));
    }

    #[test]
    fn an_early_entry_survives_a_json_round_trip() {
        let p = test_policy();
        let mut e = hold(&p, None, &cancel_event("o-1", "x"), T0);
        e.held[0].origin = Some(Origin {
            topic: "order-cancel-request".into(),
            partition: 3,
            offset: 42,
            payload: vec![0, 0, 0, 0, 1, 2],
        });
        let json = serde_json::to_string(&e).expect("serializes");
        let back: Early = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, e);
    }
}
