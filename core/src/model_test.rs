//! A model test: many orders, a simulated downstream that answers (or loses, duplicates,
//! reorders, delays) the commands it sees, cancels, bogus results and ticks, in random
//! interleavings. Then everything is drained: every result in transit is delivered, every
//! command answered (compensations succeed), time moves on, until nothing is due.
//!
//! Invariants:
//! 1. every order ends terminal with nothing outstanding;
//! 2. status only moves along the allowed arrows, and every `Apply` is version + 1;
//! 3. every successful reservation and charge is released or refunded exactly when the
//!    order never reached `SHIPPING_SCHEDULED` (one compensation series per extra success;
//!    a series that never succeeded must have given up, flagged for manual action), and a
//!    shipment scheduled for an order that stopped waiting for it is flagged;
//! 4. no command id is ever emitted with two different contents;
//! 5. `decide` is deterministic;
//!
//! and more on the way: real results are never rejected, bogus ones are ignored or
//! rejected as specified, and the state round-trips through JSON.
//!
//! A create of a settled order is also decided against its finished record, as after an
//! eviction: it must be ignored.
//!
//! Events for an order that has no state go through the early path, as in the processor:
//! cancels and results may arrive before their create in any order, are held, released
//! when the create comes (a held cancel means the order never issues a command) or expire
//! after the grace; after the drain nothing is held any more.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::test_support::*;
use super::*;

const ALLOWED: &[(Status, Status)] = &[
    (Status::Created, Status::Reserved),
    (Status::Created, Status::Failed),
    (Status::Created, Status::Canceled),
    (Status::Reserved, Status::Paid),
    (Status::Reserved, Status::Failed),
    (Status::Reserved, Status::Canceled),
    (Status::Paid, Status::ShippingScheduled),
    (Status::Paid, Status::Canceled),
    (Status::ShippingScheduled, Status::Completed),
    (Status::ShippingScheduled, Status::Failed),
    (Status::Canceled, Status::Failed),
];

#[derive(Debug, Clone)]
enum Op {
    /// A create request for order `order`, valid or not.
    Create { order: usize, valid: bool },
    /// The downstream executes one command it has seen and sends its result (maybe twice).
    Answer {
        pick: usize,
        success: bool,
        retriable: bool,
        duplicate: bool,
    },
    /// The downstream loses a command: never executed, never answered.
    Lose { pick: usize },
    /// One result in transit arrives (any of them: reordering).
    Deliver { pick: usize },
    /// Time moves on and every order is ticked.
    Tick { advance: i64 },
    /// A cancel request.
    Cancel { order: usize },
    /// A result with a command id nobody issued.
    UnknownCommand { order: usize },
    /// A result for an order that does not exist.
    UnknownOrder,
    /// A result for an issued command that claims another action.
    WrongAction { pick: usize },
    /// A replayed success of the first `RESERVE` of an order that may not exist yet.
    EarlyReservation { order: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize, prop::bool::weighted(0.8)).prop_map(|(order, valid)| Op::Create { order, valid }),
        6 => (any::<usize>(), prop::bool::weighted(0.7), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(pick, success, retriable, duplicate)| Op::Answer { pick, success, retriable, duplicate }),
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        6 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        3 => (0..3_000i64).prop_map(|advance| Op::Tick { advance }),
        1 => (0..8usize).prop_map(|order| Op::Cancel { order }),
        1 => (0..8usize).prop_map(|order| Op::UnknownCommand { order }),
        1 => Just(Op::UnknownOrder),
        1 => any::<usize>().prop_map(|pick| Op::WrongAction { pick }),
        1 => (0..8usize).prop_map(|order| Op::EarlyReservation { order }),
    ]
}

struct World {
    policy: Policy,
    now: Millis,
    orders: usize,
    states: BTreeMap<String, OrderState>,
    /// Events held for orders whose create has not come.
    early: BTreeMap<String, Early>,
    /// Orders created while a cancel was held for them.
    born_canceled: BTreeSet<String>,
    /// Every command ever emitted, by id.
    seen: BTreeMap<String, Command>,
    /// Commands the downstream has not answered (nor lost) yet.
    inbox: Vec<Command>,
    /// Commands the downstream executed successfully.
    succeeded: BTreeSet<String>,
    /// Results produced and not yet delivered.
    transit: Vec<StepResult>,
    decisions: usize,
}

impl World {
    fn new(orders: usize, max_attempts: u32, backoff_base_ms: Millis) -> Self {
        World {
            policy: Policy {
                max_attempts,
                backoff_base_ms,
                ..test_policy()
            },
            now: T0,
            orders,
            states: BTreeMap::new(),
            early: BTreeMap::new(),
            born_canceled: BTreeSet::new(),
            seen: BTreeMap::new(),
            inbox: Vec::new(),
            succeeded: BTreeSet::new(),
            transit: Vec::new(),
            decisions: 0,
        }
    }

    fn order_id(&self, index: usize) -> String {
        format!("order-{}", index % self.orders)
    }

    /// Decides one event for `order_id` as the processor does: through the early path
    /// when the order has no state (the result is then the early decision's summary),
    /// else with `decide`.
    fn process(&mut self, order_id: &str, event: &Event) -> Result<Decision, TestCaseError> {
        if self.states.contains_key(order_id) {
            return self.decide_known(order_id, event);
        }
        self.decisions += 1;
        let early = self.early.get(order_id);
        let decision = self
            .policy
            .decide_early(early, event, self.now, None, self.now);
        let again = self
            .policy
            .decide_early(early, event, self.now, None, self.now);
        prop_assert_eq!(&decision, &again);
        let cancel_held = early.is_some_and(|e| {
            e.held
                .iter()
                .any(|h| matches!(h.event, EarlyEvent::Cancel(_)))
        });
        match decision {
            EarlyDecision::Hold(e) => {
                prop_assert!(e.held.len() <= early::MAX_HELD);
                self.early.insert(order_id.to_string(), e);
                Ok(Decision::Ignore(IgnoreReason::NoOrder))
            }
            EarlyDecision::Expire(held) => {
                prop_assert!(!held.is_empty());
                self.early.remove(order_id);
                Ok(Decision::Ignore(IgnoreReason::NoOrder))
            }
            EarlyDecision::Ignore(r) => Ok(Decision::Ignore(r)),
            EarlyDecision::Reject(r) => Ok(Decision::Reject(r)),
            EarlyDecision::Release(steps) => {
                self.early.remove(order_id);
                let mut first = None;
                for (i, step) in steps.into_iter().enumerate() {
                    if i == 0 {
                        if let Some(st) = step.decision.state() {
                            if cancel_held && st.status == Status::Canceled {
                                // A held cancel: the order never issues a command.
                                prop_assert!(step.decision.commands().is_empty());
                                self.born_canceled.insert(order_id.to_string());
                            }
                            if cancel_held {
                                prop_assert!(
                                    matches!(st.status, Status::Canceled | Status::Failed),
                                    "a held cancel was lost: {:?}",
                                    st.status
                                );
                            }
                        }
                    }
                    prop_assert!(
                        i == 0 || !matches!(step.decision, Decision::Reject(_)),
                        "a held event was rejected: {:?}",
                        step.decision
                    );
                    self.apply(order_id, event, &step.decision)?;
                    first.get_or_insert(step.decision);
                }
                first.ok_or_else(|| TestCaseError::fail("a release without the create"))
            }
        }
    }

    /// Decides one event for an order that has a state.
    fn decide_known(&mut self, order_id: &str, event: &Event) -> Result<Decision, TestCaseError> {
        self.decisions += 1;
        let before = self.states.get(order_id);
        let decision = self.policy.decide(before, event, self.now);
        // (5) deterministic.
        let again = self.policy.decide(before, event, self.now);
        prop_assert_eq!(&decision, &again);
        self.apply(order_id, event, &decision)?;
        Ok(decision)
    }

    /// Checks the per-decision invariants of `decision` and applies it.
    fn apply(
        &mut self,
        order_id: &str,
        event: &Event,
        decision: &Decision,
    ) -> Result<(), TestCaseError> {
        let before = self.states.get(order_id);
        if let Decision::Apply { state, commands } = decision {
            prop_assert_eq!(&state.order_id, order_id);
            // (2) version + 1, allowed arrows.
            match before {
                None => {
                    prop_assert_eq!(state.version, 1);
                    prop_assert!(matches!(
                        state.status,
                        Status::Created | Status::Failed | Status::Canceled
                    ));
                }
                Some(b) => {
                    prop_assert_eq!(state.version, b.version + 1);
                    prop_assert!(
                        b.status == state.status || ALLOWED.contains(&(b.status, state.status)),
                        "forbidden arrow {:?} -> {:?} on {:?}",
                        b.status,
                        state.status,
                        event
                    );
                }
            }
            prop_assert_eq!(state.updated_at, self.now);
            // (4) one content per command id.
            for c in commands {
                prop_assert_eq!(&c.order_id, order_id);
                prop_assert_eq!(&c.command_id, &command_id(order_id, c.action, c.attempt));
                prop_assert_eq!(c.issued_at, self.now);
                if let Some(old) = self.seen.get(&c.command_id) {
                    prop_assert!(
                        old.order_id == c.order_id
                            && old.action == c.action
                            && old.attempt == c.attempt,
                        "command id {} reused: {:?} vs {:?}",
                        c.command_id,
                        old,
                        c
                    );
                    prop_assert!(false, "command {} emitted twice", c.command_id);
                }
                self.seen.insert(c.command_id.clone(), c.clone());
                self.inbox.push(c.clone());
            }
            // The state survives the changelog (checked on every 8th decision, for speed).
            if self.decisions & 7 == 0 {
                let json =
                    serde_json::to_string(state).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: OrderState =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, state);
            }
            self.states.insert(order_id.to_string(), state.clone());
        }
        Ok(())
    }

    fn create(&mut self, index: usize, valid: bool) -> Result<(), TestCaseError> {
        let id = self.order_id(index);
        let mut r = request(&id);
        if !valid {
            match index % 3 {
                0 => r.items.clear(),
                1 => r.total_minor += 1,
                _ => r.currency = "XXX".into(),
            }
        }
        let existing = self.states.get(&id).map(|s| s.same_request(&r));
        // The same create after the order's state was evicted meets only its finished
        // record: whatever the order went through, it starts nothing again.
        if let Some(st) = self.states.get(&id).filter(|s| s.is_settled()) {
            let d = self
                .policy
                .decide_finished(&Finished::of(st), &Event::Create(r.clone()));
            prop_assert_eq!(
                d,
                Decision::Ignore(IgnoreReason::FinishedCreate { status: st.status })
            );
        }
        let d = self.process(&id, &Event::Create(r))?;
        match existing {
            None => prop_assert!(matches!(d, Decision::Apply { .. }), "{:?}", d),
            Some(true) => prop_assert_eq!(d, Decision::Ignore(IgnoreReason::DuplicateCreate)),
            Some(false) => prop_assert!(
                matches!(d, Decision::Reject(RejectReason::ConflictingCreate { .. })),
                "{:?}",
                d
            ),
        }
        Ok(())
    }

    /// The downstream executes `command` with this outcome and sends the result.
    fn answer(&mut self, command: &Command, success: bool, retriable: bool, copies: usize) {
        if success {
            self.succeeded.insert(command.command_id.clone());
        }
        let result = StepResult {
            order_id: command.order_id.clone(),
            command_id: command.command_id.clone(),
            action: command.action,
            outcome: if success {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            reason: (!success).then(|| "simulated".to_string()),
            retriable,
            produced_at: self.now,
        };
        for _ in 0..copies {
            self.transit.push(result.clone());
        }
    }

    fn deliver(&mut self, index: usize) -> Result<(), TestCaseError> {
        if self.transit.is_empty() {
            return Ok(());
        }
        let result = self.transit.remove(index % self.transit.len());
        let id = result.order_id.clone();
        let d = self.process(&id, &Event::Result(result))?;
        prop_assert!(
            !matches!(d, Decision::Reject(_)),
            "a real result was rejected: {:?}",
            d
        );
        Ok(())
    }

    fn tick_all(&mut self) -> Result<(), TestCaseError> {
        let waiting: Vec<String> = self.early.keys().cloned().collect();
        for id in waiting {
            self.process(&id, &Event::Tick)?;
            if let Some(e) = self.early.get(&id) {
                prop_assert!(e.expires_at(self.policy.early_grace_ms) > self.now);
            }
        }
        let ids: Vec<String> = self.states.keys().cloned().collect();
        for id in ids {
            let d = self.process(&id, &Event::Tick)?;
            prop_assert!(!matches!(d, Decision::Reject(_)));
            let st = &self.states[&id];
            // After a tick nothing is overdue.
            prop_assert!(st.next_deadline().is_none_or(|t| t > self.now), "{:?}", st);
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Create { order, valid } => self.create(order, valid)?,
            Op::Answer {
                pick,
                success,
                retriable,
                duplicate,
            } => {
                if !self.inbox.is_empty() {
                    let c = self.inbox.remove(pick % self.inbox.len());
                    self.answer(&c, success, retriable, if duplicate { 2 } else { 1 });
                }
            }
            Op::Lose { pick } => {
                if !self.inbox.is_empty() {
                    self.inbox.remove(pick % self.inbox.len());
                }
            }
            Op::Deliver { pick } => self.deliver(pick)?,
            Op::Tick { advance } => {
                self.now += advance;
                self.tick_all()?;
            }
            Op::Cancel { order } => {
                let id = self.order_id(order);
                let known = self.states.contains_key(&id);
                let e = Event::Cancel(CancelRequest {
                    order_id: id.clone(),
                    reason: "changed my mind".into(),
                    requested_at: self.now,
                });
                let d = self.process(&id, &e)?;
                if !known {
                    prop_assert!(self.early.contains_key(&id) || matches!(d, Decision::Reject(_)));
                }
            }
            Op::UnknownCommand { order } => {
                let id = self.order_id(order);
                let known = self.states.contains_key(&id);
                let e = result_event(
                    &id,
                    "never-issued",
                    Action::Reserve,
                    Outcome::Success,
                    false,
                );
                let d = self.process(&id, &e)?;
                if known {
                    prop_assert!(
                        matches!(d, Decision::Ignore(IgnoreReason::UnknownCommand { .. })),
                        "{:?}",
                        d
                    );
                } else {
                    prop_assert!(self.early.contains_key(&id) || matches!(d, Decision::Reject(_)));
                }
            }
            Op::UnknownOrder => {
                let e = result_event("ghost", "x", Action::Charge, Outcome::Failure, true);
                self.process("ghost", &e)?;
                prop_assert!(!self.states.contains_key("ghost"));
            }
            Op::EarlyReservation { order } => {
                let id = self.order_id(order);
                if self.states.contains_key(&id) {
                    return Ok(());
                }
                let first = command_id(&id, Action::Reserve, 1);
                self.succeeded.insert(first.clone());
                let e = result_event(&id, &first, Action::Reserve, Outcome::Success, false);
                self.process(&id, &e)?;
            }
            Op::WrongAction { pick } => {
                if self.seen.is_empty() {
                    return Ok(());
                }
                let Some(c) = self.seen.values().nth(pick % self.seen.len()).cloned() else {
                    return Ok(());
                };
                let position = Action::ALL.iter().position(|a| *a == c.action).unwrap_or(0);
                let wrong = Action::ALL[(position + 1) % Action::ALL.len()];
                let e = result_event(&c.order_id, &c.command_id, wrong, Outcome::Success, false);
                let d = self.process(&c.order_id, &e)?;
                prop_assert!(
                    matches!(d, Decision::Reject(RejectReason::ActionMismatch { .. })),
                    "{:?}",
                    d
                );
            }
        }
        Ok(())
    }

    /// Delivers everything, answers everything (successfully), and lets time pass, until
    /// nothing is in transit, nothing unanswered and nothing due.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1_000 {
            while !self.transit.is_empty() {
                self.deliver(0)?;
            }
            let inbox = std::mem::take(&mut self.inbox);
            for c in &inbox {
                self.answer(c, true, false, 1);
            }
            if !self.transit.is_empty() {
                continue;
            }
            let grace = self.policy.early_grace_ms;
            let due = self
                .states
                .values()
                .filter_map(OrderState::next_deadline)
                .chain(self.early.values().map(|e| e.expires_at(grace)))
                .min();
            match due {
                None => return Ok(()),
                Some(t) => {
                    self.now = self.now.max(t);
                    self.tick_all()?;
                }
            }
        }
        Err(TestCaseError::fail("the drain did not settle"))
    }

    fn successes(&self, order_id: &str, action: Action) -> usize {
        self.seen
            .values()
            .filter(|c| {
                c.order_id == order_id
                    && c.action == action
                    && self.succeeded.contains(&c.command_id)
            })
            .count()
    }

    fn check_final(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.early.is_empty(), "still held: {:?}", self.early);
        for id in &self.born_canceled {
            let st = &self.states[id];
            prop_assert!(
                st.commands.is_empty(),
                "{}: born canceled, yet {:?}",
                id,
                st.commands
            );
        }
        for (id, st) in &self.states {
            // (1) terminal, nothing outstanding.
            prop_assert!(st.is_terminal(), "{} ended {:?}", id, st.status);
            prop_assert!(st.is_settled(), "{} still awaits: {:?}", id, st);
            prop_assert_eq!(st.outstanding_commands().count(), 0);
            let shipped = st.reached_at(Status::ShippingScheduled).is_some();
            if st.status == Status::Completed {
                prop_assert!(shipped);
            }
            // (3) what succeeded is undone exactly when the order did not ship.
            let kept = usize::from(shipped);
            for (forward, compensation) in [
                (Action::Reserve, Action::Release),
                (Action::Charge, Action::Refund),
            ] {
                let done = self.successes(id, forward);
                let series: Vec<&Task> = st
                    .compensations
                    .iter()
                    .filter(|t| t.action == compensation)
                    .collect();
                prop_assert_eq!(
                    series.len() + kept,
                    done,
                    "{}: {} {:?} successes, {} {:?} series, shipped {}: {:#?}",
                    id,
                    done,
                    forward,
                    series.len(),
                    compensation,
                    shipped,
                    st
                );
                for task in series {
                    let undone = task
                        .attempts
                        .iter()
                        .any(|n| self.succeeded.contains(&command_id(id, compensation, *n)));
                    match task.phase {
                        Phase::Done { .. } => {
                            prop_assert!(undone, "{}: done without a success", id)
                        }
                        Phase::GaveUp { .. } => {
                            prop_assert!(!undone, "{}: a success was not taken into account", id);
                            prop_assert!(st.needs_manual_action());
                        }
                        Phase::Awaiting { .. } | Phase::RetryAt { .. } => {
                            prop_assert!(false, "{}: open compensation", id)
                        }
                    }
                }
            }
            let schedules = self.successes(id, Action::Schedule);
            prop_assert!(
                schedules <= kept || st.late_shipment.is_some(),
                "{}: unflagged shipment",
                id
            );
            if st.late_shipment.is_some() {
                prop_assert!(st.needs_manual_action());
            }
            // Whoever reads the status table sees that a person has to act.
            if st.needs_manual_action() {
                let reason = st.reason.as_deref().unwrap_or_default();
                prop_assert!(
                    reason.contains(MANUAL_ACTION_NEEDED),
                    "{}: reason {:?}",
                    id,
                    reason
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides, for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_of_many_orders_keep_every_invariant(
        orders in 1..=8usize,
        max_attempts in 1..=4u32,
        backoff_base_ms in prop_oneof![1 => Just(0i64), 3 => Just(100i64)],
        ops in prop::collection::vec(op(), 0..150),
    ) {
        let mut world = World::new(orders, max_attempts, backoff_base_ms);
        for op in &ops {
            world.run(op)?;
        }
        world.drain()?;
        world.check_final()?;
    }
}
