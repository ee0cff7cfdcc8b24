//! The transition table in README.md (between the `saga-table` markers) is checked here
//! against the code: every row is set up, decided and compared. A row this test does not
//! understand fails it too, so the table cannot drift into prose.

use super::test_support::*;
use super::*;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
const BEGIN: &str = "<!-- saga-table:begin -->";
const END: &str = "<!-- saga-table:end -->";

/// The rows of the order contract (and the safety rules) that the table must keep.
const REQUIRED: &[(&str, &str, &str)] = &[
    ("(none)", "create (valid)", "CREATED"),
    ("(none)", "create (empty cart)", "FAILED"),
    ("(none)", "create (quantity ≤ 0)", "FAILED"),
    ("(none)", "create (unit price ≤ 0)", "FAILED"),
    ("(none)", "create (total ≠ sum of lines)", "FAILED"),
    ("CREATED", "inventory SUCCESS", "RESERVED"),
    ("CREATED", "inventory FAILURE", "FAILED"),
    ("CREATED", "inventory timeout (last attempt)", "FAILED"),
    ("RESERVED", "payment SUCCESS", "PAID"),
    ("RESERVED", "payment FAILURE", "FAILED"),
    ("RESERVED", "payment timeout (last attempt)", "FAILED"),
    ("PAID", "shipping SUCCESS", "SHIPPING_SCHEDULED"),
    ("PAID", "shipping FAILURE", "CANCELED"),
    ("PAID", "shipping timeout (last attempt)", "CANCELED"),
    ("SHIPPING_SCHEDULED", "notification SUCCESS", "COMPLETED"),
    ("SHIPPING_SCHEDULED", "notification FAILURE", "FAILED"),
    (
        "SHIPPING_SCHEDULED",
        "notification timeout (last attempt)",
        "FAILED",
    ),
    ("CREATED", "cancel", "CANCELED"),
    ("RESERVED", "cancel", "CANCELED"),
    ("PAID", "cancel", "CANCELED"),
    ("SHIPPING_SCHEDULED", "cancel", "SHIPPING_SCHEDULED"),
    ("COMPLETED", "cancel", "COMPLETED"),
    (
        "CANCELED (RELEASE awaited)",
        "inventory RELEASE FAILURE",
        "FAILED",
    ),
    ("CREATED (retry due)", "tick", "CREATED"),
    (
        "CANCELED (RESERVE abandoned)",
        "late inventory SUCCESS",
        "CANCELED",
    ),
    (
        "FAILED (CHARGE timed out)",
        "late payment SUCCESS",
        "FAILED",
    ),
    (
        "CANCELED (SCHEDULE abandoned)",
        "late shipping SUCCESS",
        "FAILED",
    ),
    ("RESERVED", "result (already answered)", "ignored"),
    ("CREATED", "result (wrong action)", "rejected"),
    ("(none)", "result", "held"),
    ("(none)", "cancel", "held"),
    ("(none, cancel held)", "create (valid)", "CANCELED"),
    ("(none, cancel held)", "tick (grace over)", "rejected"),
];

#[derive(Debug)]
struct Row {
    line: usize,
    from: String,
    event: String,
    to: String,
    commands: String,
}

fn rows() -> Vec<Row> {
    let start = README.find(BEGIN).expect("the begin marker") + BEGIN.len();
    let end = README.find(END).expect("the end marker");
    let first_line = README[..start].lines().count();
    README[start..end]
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('|'))
        .map(|(i, l)| {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect();
            assert_eq!(cells.len(), 4, "README line {}: {l}", first_line + i);
            Row {
                line: first_line + i,
                from: cells[0].clone(),
                event: cells[1].clone(),
                to: cells[2].clone(),
                commands: cells[3].clone(),
            }
        })
        // The header and the separator.
        .filter(|r| r.from != "from" && !r.from.starts_with("---"))
        .collect()
}

fn forward_action(step: &str) -> Option<Action> {
    match step {
        "inventory" => Some(Action::Reserve),
        "payment" => Some(Action::Charge),
        "shipping" => Some(Action::Schedule),
        "notification" => Some(Action::Send),
        _ => None,
    }
}

fn step_word(step: Step) -> &'static str {
    match step {
        Step::Inventory => "inventory",
        Step::Payment => "payment",
        Step::Shipping => "shipping",
        Step::Notification => "notification",
    }
}

/// The order in the row's `from` state.
fn setup(from: &str) -> Saga {
    let at_retry = |saga: &mut Saga| saga.now = saga.state().next_deadline().expect("a retry");
    match from {
        "(none)" => Saga::new(),
        "FAILED" => {
            let mut s = Saga::reach(Status::Created);
            s.fail(Action::Reserve);
            s
        }
        "CANCELED" | "CANCELED (RESERVE abandoned)" => {
            let mut s = Saga::reach(Status::Created);
            s.cancel();
            s
        }
        "CREATED (retry due)" => {
            let mut s = Saga::reach(Status::Created);
            s.fail_retriable(Action::Reserve);
            at_retry(&mut s);
            s
        }
        "CREATED (RESERVE attempt 1 timed out)" => {
            let mut s = Saga::reach(Status::Created);
            s.expire();
            s
        }
        "RESERVED (RESERVE attempt 2 abandoned)" => {
            let mut s = Saga::reach(Status::Created);
            let first = s.awaited(Action::Reserve);
            s.expire();
            s.expire();
            s.answer_id(&first.command_id, Action::Reserve, Outcome::Success, false);
            s
        }
        "CANCELED (CHARGE abandoned)" | "CANCELED (RELEASE awaited)" => {
            let mut s = Saga::reach(Status::Reserved);
            s.cancel();
            s
        }
        "CANCELED (RELEASE retry due)" => {
            let mut s = Saga::reach(Status::Reserved);
            s.cancel();
            s.fail_retriable(Action::Release);
            at_retry(&mut s);
            s
        }
        "FAILED (CHARGE timed out)" => {
            let mut s = Saga::reach(Status::Reserved);
            s.exhaust(Action::Charge);
            s.expire();
            s
        }
        "FAILED (RELEASE awaited)" => {
            let mut s = Saga::reach(Status::Reserved);
            s.fail(Action::Charge);
            s
        }
        "CANCELED (SCHEDULE abandoned)" | "CANCELED (REFUND awaited)" => {
            let mut s = Saga::reach(Status::Paid);
            s.cancel();
            s
        }
        "FAILED (SEND timed out)" => {
            let mut s = Saga::reach(Status::ShippingScheduled);
            s.exhaust(Action::Send);
            s.expire();
            s
        }
        plain => match Status::parse(plain) {
            Some(status) => Saga::reach(status),
            None => panic!("the test does not know the state {plain:?}"),
        },
    }
}

fn create_event(what: &str) -> Event {
    let mut r = request("order-1");
    match what {
        "valid" | "same request" => {}
        "empty cart" => r.items.clear(),
        "quantity ≤ 0" => r.items[0].quantity = 0,
        "unit price ≤ 0" => r.items[0].unit_price_minor = -5,
        "total ≠ sum of lines" => r.total_minor += 1,
        "amount overflows" => r.items[0].unit_price_minor = i64::MAX,
        "unsupported currency" => r.currency = "XXX".into(),
        "empty customer id" => r.customer_id.clear(),
        "too many lines" => {
            let line = r.items[0].clone();
            r.items = vec![line; 501];
            r.total_minor = 501 * r.items[0].unit_price_minor * i64::from(r.items[0].quantity);
        }
        "text too long" => r.items[0].sku = "X".repeat(201),
        "no order id" => r.order_id.clear(),
        "same id, other contents" => r.customer_id = "someone else".into(),
        other => panic!("the test does not know the create {other:?}"),
    }
    Event::Create(r)
}

/// Prepares `saga` as the event needs (e.g. using up attempts) and returns the event.
fn event(saga: &mut Saga, event: &str) -> Event {
    if let Some(what) = event
        .strip_prefix("create (")
        .and_then(|e| e.strip_suffix(')'))
    {
        return create_event(what);
    }
    let id = saga.order_id.clone();
    match event {
        "tick" | "tick (nothing due)" => return Event::Tick,
        "cancel" => return cancel_event(&id, "changed my mind"),
        "result" => {
            return result_event(&id, "not-issued", Action::Reserve, Outcome::Success, false)
        }
        "result (unknown command id)" => {
            let unknown = command_id(&id, Action::Reserve, 99);
            return result_event(&id, &unknown, Action::Reserve, Outcome::Success, false);
        }
        "result (already answered)" => {
            let done = saga.state().commands[0].clone();
            return result_event(&id, &done.command_id, done.action, Outcome::Success, false);
        }
        "result (wrong action)" => {
            let out = saga.awaited(Action::Reserve);
            return result_event(
                &id,
                &out.command_id,
                Action::Charge,
                Outcome::Success,
                false,
            );
        }
        _ => {}
    }
    let words: Vec<&str> = event.split_whitespace().collect();
    if let ["late", step, outcome] = words.as_slice() {
        let action = forward_action(step).expect("a step");
        let late = saga.abandoned(action);
        let outcome = parse_outcome(outcome);
        return result_event(&id, &late.command_id, action, outcome, false);
    }
    let Some((step, rest)) = words.split_first() else {
        panic!("empty event");
    };
    let (action, rest) = match rest.split_first() {
        Some((word, tail)) if Action::parse(word).is_some() => (Action::parse(word), tail),
        _ => (forward_action(step), rest),
    };
    let action = action.unwrap_or_else(|| panic!("the test does not know the event {event:?}"));
    assert_eq!(
        step_word(action.step()),
        *step,
        "{event:?}: the action's step"
    );
    let attempts_left = |saga: &Saga| {
        saga.state()
            .forward
            .iter()
            .chain(saga.state().compensations.iter())
            .any(|t| {
                t.action == action
                    && t.phase.is_open()
                    && t.attempts_used() < saga.policy.attempts()
            })
    };
    match rest.join(" ").as_str() {
        "SUCCESS" => awaited_result(saga, action, Outcome::Success, false),
        "FAILURE" => awaited_result(saga, action, Outcome::Failure, false),
        "FAILURE (retriable, attempts left)" => {
            assert!(attempts_left(saga));
            awaited_result(saga, action, Outcome::Failure, true)
        }
        "FAILURE (retriable, last attempt)" => {
            saga.exhaust(action);
            awaited_result(saga, action, Outcome::Failure, true)
        }
        "timeout (attempts left)" => {
            assert!(attempts_left(saga));
            saga.now = saga.awaited_deadline(action);
            Event::Tick
        }
        "timeout (last attempt)" => {
            saga.exhaust(action);
            saga.now = saga.awaited_deadline(action);
            Event::Tick
        }
        other => panic!("the test does not know the event {other:?} in {event:?}"),
    }
}

fn parse_outcome(word: &str) -> Outcome {
    match word {
        "SUCCESS" => Outcome::Success,
        "FAILURE" => Outcome::Failure,
        other => panic!("not an outcome: {other:?}"),
    }
}

fn awaited_result(saga: &Saga, action: Action, outcome: Outcome, retriable: bool) -> Event {
    let out = saga.awaited(action);
    result_event(&saga.order_id, &out.command_id, action, outcome, retriable)
}

impl Saga {
    /// The deadline of the open series of `action`.
    fn awaited_deadline(&self, action: Action) -> Millis {
        self.state()
            .forward
            .iter()
            .chain(self.state().compensations.iter())
            .find_map(|t| match t.phase {
                Phase::Awaiting { deadline } if t.action == action => Some(deadline),
                _ => None,
            })
            .expect("an awaited command of the action")
    }
}

fn describe(d: &Decision) -> (String, String) {
    let to = match d {
        Decision::Apply { state, .. } => state.status.as_str().to_string(),
        Decision::Ignore(_) => "ignored".into(),
        Decision::Reject(_) => "rejected".into(),
    };
    (to, command_cell(d.commands()))
}

/// The table's `commands` cell: `none`, or e.g. `payment REFUND, inventory RELEASE`.
fn command_cell<'a>(commands: impl IntoIterator<Item = &'a Command>) -> String {
    let cells: Vec<String> = commands
        .into_iter()
        .map(|c| format!("{} {}", step_word(c.step()), c.action.as_str()))
        .collect();
    if cells.is_empty() {
        "none".to_string()
    } else {
        cells.join(", ")
    }
}

/// The events held for an unknown order in a row's `from`, e.g. `(none, cancel held)`.
fn setup_early(saga: &Saga, from: &str) -> Option<Early> {
    let held = from.strip_prefix("(none, ")?.strip_suffix(')')?;
    let id = saga.order_id.clone();
    let events: Vec<Event> = match held {
        "cancel held" => vec![cancel_event(&id, "changed my mind")],
        "inventory SUCCESS held" => {
            let reserve = command_id(&id, Action::Reserve, 1);
            vec![result_event(
                &id,
                &reserve,
                Action::Reserve,
                Outcome::Success,
                false,
            )]
        }
        "result held" => vec![result_event(
            &id,
            "not-issued",
            Action::Reserve,
            Outcome::Success,
            false,
        )],
        "32 events held" => (0..early::MAX_HELD)
            .map(|i| cancel_event(&id, &format!("request {i}")))
            .collect(),
        other => panic!("the test does not know the early state {other:?}"),
    };
    let mut entry: Option<Early> = None;
    for e in &events {
        match saga
            .policy
            .decide_early(entry.as_ref(), e, saga.now, None, saga.now)
        {
            EarlyDecision::Hold(next) => entry = Some(next),
            other => panic!("setting up {from:?}: {other:?}"),
        }
    }
    entry
}

/// What the processor does with an event for an order that has no state: the early
/// path, summarised as the table's `to` and `commands` cells.
fn describe_early(d: &EarlyDecision) -> (String, String) {
    match d {
        EarlyDecision::Hold(_) => ("held".into(), "none".into()),
        EarlyDecision::Expire(_) => ("rejected".into(), "none".into()),
        EarlyDecision::Ignore(_) => ("ignored".into(), "none".into()),
        EarlyDecision::Reject(_) => ("rejected".into(), "none".into()),
        EarlyDecision::Release(steps) => {
            let last = steps.iter().rev().find_map(|s| s.decision.state());
            let to = match (last, &steps[0].decision) {
                (Some(st), _) => st.status.as_str().to_string(),
                (None, first) => describe(first).0,
            };
            let commands = steps.iter().flat_map(|s| s.decision.commands().iter());
            (to, command_cell(commands))
        }
    }
}

#[test]
fn the_readme_transition_table_matches_the_code() {
    let rows = rows();
    assert!(rows.len() >= 50, "the table lost rows: {}", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        if row.from.starts_with("(none") {
            let mut saga = Saga::new();
            let entry = setup_early(&saga, &row.from);
            let e = match row.event.as_str() {
                "tick (grace not over)" => Event::Tick,
                "tick (grace over)" => {
                    saga.now += saga.policy.early_grace_ms;
                    Event::Tick
                }
                other => event(&mut saga, other),
            };
            let d = saga
                .policy
                .decide_early(entry.as_ref(), &e, saga.now, None, saga.now);
            let (to, commands) = describe_early(&d);
            if to != row.to || commands != row.commands {
                failures.push(format!(
                    "README line {}: {} | {} → table says {} / {}, code says {} / {} ({d:?})",
                    row.line, row.from, row.event, row.to, row.commands, to, commands
                ));
            }
            continue;
        }
        let mut saga = setup(&row.from);
        let from_status = row.from.split(" (").next().unwrap_or_default();
        match saga.state.as_ref() {
            None => assert_eq!(from_status, "(none)", "line {}", row.line),
            Some(st) => assert_eq!(st.status.as_str(), from_status, "line {}: setup", row.line),
        }
        let e = event(&mut saga, &row.event);
        let before = saga.state.as_ref().map(|s| s.version);
        let d = saga.peek(&e);
        if let Some(st) = d.state() {
            assert_eq!(st.version, before.map_or(1, |v| v + 1), "line {}", row.line);
        }
        let (to, commands) = describe(&d);
        if to != row.to || commands != row.commands {
            let why = match &d {
                Decision::Apply { state, .. } => format!("reason {:?}", state.reason),
                Decision::Ignore(r) => r.to_string(),
                Decision::Reject(r) => r.to_string(),
            };
            failures.push(format!(
                "README line {}: {} | {} → table says {} / {}, code says {} / {} ({why})",
                row.line, row.from, row.event, row.to, row.commands, to, commands
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_readme_table_keeps_every_row_of_the_design() {
    let rows = rows();
    for (from, event, to) in REQUIRED {
        assert!(
            rows.iter()
                .any(|r| r.from == *from && r.event == *event && r.to == *to),
            "README table lacks the row {from} | {event} | {to}"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        assert!(
            seen.insert((r.from.clone(), r.event.clone())),
            "README line {}: row repeated",
            r.line
        );
    }
}
