//! One test per row of the saga table and per safety rule (README, "The saga").

use super::test_support::*;
use super::*;

fn expect_apply(d: &Decision) -> &OrderState {
    match d {
        Decision::Apply { state, .. } => state,
        other => panic!("expected Apply, got {other:?}"),
    }
}

fn expect_ignore(d: &Decision) -> &IgnoreReason {
    match d {
        Decision::Ignore(reason) => reason,
        other => panic!("expected Ignore, got {other:?}"),
    }
}

fn expect_reject(d: &Decision) -> &RejectReason {
    match d {
        Decision::Reject(reason) => reason,
        other => panic!("expected Reject, got {other:?}"),
    }
}

fn create_with(change: impl FnOnce(&mut OrderRequest)) -> Decision {
    let mut r = request("order-1");
    change(&mut r);
    test_policy().decide(None, &Event::Create(r), T0)
}

fn assert_failed_create(d: &Decision, reason_contains: &str) {
    let st = expect_apply(d);
    assert_eq!(st.status, Status::Failed);
    assert_eq!(st.version, 1);
    assert!(d.commands().is_empty());
    let reason = st.reason.as_deref().unwrap_or_default();
    assert!(reason.contains(reason_contains), "reason {reason:?}");
    assert!(st.is_settled());
}

// ---------------------------------------------------------------- create

#[test]
fn valid_create_starts_the_order_and_reserves_stock() {
    let mut saga = Saga::new();
    let d = saga.create();
    let st = expect_apply(&d).clone();
    assert_eq!(st.status, Status::Created);
    assert_eq!(st.version, 1);
    assert_eq!(st.created_at, T0 - 5);
    assert_eq!(st.updated_at, T0);
    assert_eq!(st.total_minor, 3_000);
    assert_eq!(
        d.commands(),
        &[Command {
            order_id: "order-1".into(),
            command_id: command_id("order-1", Action::Reserve, 1),
            action: Action::Reserve,
            attempt: 1,
            issued_at: T0,
        }]
    );
    assert_eq!(st.next_deadline(), Some(T0 + 1_000));
    assert_eq!(st.reached_at(Status::Created), Some(T0));
}

#[test]
fn create_with_an_empty_cart_fails_the_order_without_commands() {
    assert_failed_create(&create_with(|r| r.items.clear()), "cart is empty");
}

#[test]
fn create_with_a_non_positive_quantity_fails_the_order() {
    assert_failed_create(
        &create_with(|r| r.items[1].quantity = 0),
        "line 2 has quantity 0",
    );
    assert_failed_create(&create_with(|r| r.items[0].quantity = -1), "quantity -1");
}

#[test]
fn create_with_a_non_positive_unit_price_fails_the_order() {
    assert_failed_create(
        &create_with(|r| r.items[0].unit_price_minor = 0),
        "unit price 0",
    );
}

#[test]
fn create_whose_total_differs_from_the_lines_fails_the_order() {
    assert_failed_create(&create_with(|r| r.total_minor = 2_999), "differs");
}

#[test]
fn create_whose_amount_overflows_fails_the_order() {
    assert_failed_create(
        &create_with(|r| {
            r.items[0].unit_price_minor = i64::MAX / 2 + 1;
            r.items[0].quantity = 2;
        }),
        "overflows",
    );
    assert_failed_create(
        &create_with(|r| {
            r.items[0].unit_price_minor = i64::MAX;
            r.items[0].quantity = 1;
        }),
        "overflows",
    );
}

#[test]
fn create_with_an_unsupported_currency_fails_the_order() {
    assert_failed_create(&create_with(|r| r.currency = "XTS".into()), "currency");
    assert_failed_create(&create_with(|r| r.currency = "eur".into()), "currency");
}

#[test]
fn create_with_an_empty_customer_id_fails_the_order() {
    assert_failed_create(&create_with(|r| r.customer_id = " ".into()), "customer_id");
}

#[test]
fn create_with_an_empty_sku_or_address_fails_the_order() {
    assert_failed_create(&create_with(|r| r.items[0].sku.clear()), "no sku");
    assert_failed_create(&create_with(|r| r.shipping_address.city.clear()), "no city");
    // A postal code is optional: some countries have none.
    let d = create_with(|r| r.shipping_address.postal_code.clear());
    assert_eq!(expect_apply(&d).status, Status::Created);
}

#[test]
fn create_without_an_order_id_is_rejected() {
    let d = create_with(|r| r.order_id = "".into());
    assert_eq!(expect_reject(&d).kind(), "invalid_order_id");
}

#[test]
fn duplicate_create_is_ignored() {
    let mut saga = Saga::reach(Status::Paid);
    let mut again = request("order-1");
    again.created_at += 1_000; // an upstream retry may restamp it
    let d = saga.send(Event::Create(again));
    assert_eq!(expect_ignore(&d), &IgnoreReason::DuplicateCreate);
}

#[test]
fn create_with_other_contents_under_an_existing_id_is_rejected() {
    let mut saga = Saga::reach(Status::Created);
    let mut other = request("order-1");
    other.items[0].quantity = 3;
    other.total_minor = 4_250;
    let d = saga.send(Event::Create(other));
    assert_eq!(expect_reject(&d).kind(), "conflicting_create");
}

// ---------------------------------------------------------------- happy path

#[test]
fn successful_reservation_charges_the_payment() {
    let mut saga = Saga::reach(Status::Created);
    let d = saga.succeed(Action::Reserve);
    assert_eq!(expect_apply(&d).status, Status::Reserved);
    assert_eq!(actions(&d), vec![Action::Charge]);
    assert_eq!(saga.state().next_deadline(), Some(T0 + 2_000));
}

#[test]
fn successful_payment_schedules_shipping() {
    let mut saga = Saga::reach(Status::Reserved);
    let d = saga.succeed(Action::Charge);
    assert_eq!(expect_apply(&d).status, Status::Paid);
    assert_eq!(actions(&d), vec![Action::Schedule]);
}

#[test]
fn scheduled_shipping_notifies_the_customer() {
    let mut saga = Saga::reach(Status::Paid);
    let d = saga.succeed(Action::Schedule);
    assert_eq!(expect_apply(&d).status, Status::ShippingScheduled);
    assert_eq!(actions(&d), vec![Action::Send]);
}

#[test]
fn notification_success_completes_the_order() {
    let mut saga = Saga::reach(Status::ShippingScheduled);
    let d = saga.succeed(Action::Send);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Completed);
    assert!(d.commands().is_empty());
    assert!(st.is_settled());
    assert_eq!(st.next_deadline(), None);
}

#[test]
fn the_happy_path_records_every_status_with_its_time_and_version() {
    let saga = Saga::reach(Status::Completed);
    let st = saga.state();
    assert_eq!(st.version, 5);
    let statuses: Vec<Status> = st.status_times.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        vec![
            Status::Created,
            Status::Reserved,
            Status::Paid,
            Status::ShippingScheduled,
            Status::Completed
        ]
    );
    assert!(st.commands.iter().all(|c| c.fate == Fate::Succeeded));
    assert_eq!(st.reason, None);
}

// ---------------------------------------------------------------- failures

#[test]
fn inventory_failure_fails_the_order_without_commands() {
    let mut saga = Saga::reach(Status::Created);
    let d = saga.fail(Action::Reserve);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(d.commands().is_empty());
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("inventory RESERVE attempt 1 failed"));
    assert!(st.is_settled());
}

#[test]
fn payment_failure_after_reservation_releases_stock() {
    let mut saga = Saga::reach(Status::Reserved);
    let reserve = saga.state().commands[0].command_id.clone();
    let d = saga.fail(Action::Charge);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert_eq!(actions(&d), vec![Action::Release]);
    assert_eq!(
        st.compensations[0].compensates.as_deref(),
        Some(reserve.as_str())
    );
    assert!(!st.is_settled(), "the release is still awaited");
}

#[test]
fn shipping_failure_cancels_and_refunds_and_releases() {
    let mut saga = Saga::reach(Status::Paid);
    let d = saga.fail(Action::Schedule);
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Refund, Action::Release]);
}

#[test]
fn notification_failure_fails_the_order_without_compensation() {
    let mut saga = Saga::reach(Status::ShippingScheduled);
    let d = saga.fail(Action::Send);
    assert_eq!(expect_apply(&d).status, Status::Failed);
    assert!(d.commands().is_empty());
}

#[test]
fn inventory_timeout_at_the_last_attempt_fails_the_order() {
    let mut saga = Saga::reach(Status::Created);
    saga.exhaust(Action::Reserve);
    let d = saga.expire();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(d.commands().is_empty());
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("attempt 3 timed out"));
}

#[test]
fn payment_timeout_at_the_last_attempt_releases_stock() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.exhaust(Action::Charge);
    let d = saga.expire();
    assert_eq!(expect_apply(&d).status, Status::Failed);
    assert_eq!(actions(&d), vec![Action::Release]);
}

#[test]
fn shipping_timeout_at_the_last_attempt_cancels_with_refund_and_release() {
    let mut saga = Saga::reach(Status::Paid);
    saga.exhaust(Action::Schedule);
    let d = saga.expire();
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Refund, Action::Release]);
}

#[test]
fn notification_timeout_at_the_last_attempt_fails_the_order() {
    let mut saga = Saga::reach(Status::ShippingScheduled);
    saga.exhaust(Action::Send);
    let d = saga.expire();
    assert_eq!(expect_apply(&d).status, Status::Failed);
    assert!(d.commands().is_empty());
}

// ---------------------------------------------------------------- retries

#[test]
fn retriable_payment_failure_is_retried_with_a_new_command_id() {
    let mut saga = Saga::reach(Status::Reserved);
    let first = saga.awaited(Action::Charge);
    let d = saga.fail_retriable(Action::Charge);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Reserved);
    assert!(d.commands().is_empty(), "the retry waits for the backoff");
    assert_eq!(st.next_deadline(), Some(T0 + 100));

    saga.now = T0 + 100;
    let d = saga.tick();
    assert_eq!(expect_apply(&d).status, Status::Reserved);
    let retry = &d.commands()[0];
    assert_eq!(retry.action, Action::Charge);
    assert_eq!(retry.attempt, 2);
    assert_ne!(retry.command_id, first.command_id);
    assert_eq!(retry.command_id, command_id("order-1", Action::Charge, 2));
    assert_eq!(saga.state().next_deadline(), Some(T0 + 100 + 2_000));

    // The retry's success moves the order on as usual.
    let d = saga.succeed(Action::Charge);
    assert_eq!(expect_apply(&d).status, Status::Paid);
}

#[test]
fn a_retry_waits_for_its_backoff() {
    let mut saga = Saga::reach(Status::Created);
    saga.fail_retriable(Action::Reserve);
    saga.now = T0 + 99;
    assert_eq!(expect_ignore(&saga.tick()), &IgnoreReason::NothingDue);
    saga.now = T0 + 100;
    assert_eq!(actions(&saga.tick()), vec![Action::Reserve]);
}

#[test]
fn the_backoff_doubles_between_attempts_up_to_its_cap() {
    let mut saga = Saga::reach(Status::Created);
    saga.policy.max_attempts = 5;
    let mut delays = Vec::new();
    for _ in 0..4 {
        let failed_at = saga.now;
        saga.fail_retriable(Action::Reserve);
        let at = saga.state().next_deadline().expect("a retry");
        delays.push(at - failed_at);
        saga.now = at;
        saga.tick();
    }
    assert_eq!(delays, vec![100, 200, 250, 250]);
}

#[test]
fn retriable_failure_of_the_last_attempt_fails_the_step() {
    let mut saga = Saga::reach(Status::Reserved);
    for _ in 0..2 {
        saga.fail_retriable(Action::Charge);
        saga.expire();
    }
    assert_eq!(saga.awaited(Action::Charge).attempt, 3);
    let d = saga.fail_retriable(Action::Charge);
    assert_eq!(expect_apply(&d).status, Status::Failed);
    assert_eq!(actions(&d), vec![Action::Release]);
}

#[test]
fn a_timeout_with_attempts_left_is_retried_after_the_backoff() {
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    let d = saga.expire();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Created);
    assert!(d.commands().is_empty());
    assert_eq!(
        st.issued(&first.command_id).map(|c| c.fate),
        Some(Fate::TimedOut)
    );
    assert_eq!(st.next_deadline(), Some(T0 + 1_000 + 100));
    let d = saga.expire();
    assert_eq!(d.commands()[0].attempt, 2);
}

#[test]
fn a_tick_with_nothing_due_is_ignored() {
    let mut saga = Saga::reach(Status::Created);
    saga.now = T0 + 999;
    assert_eq!(expect_ignore(&saga.tick()), &IgnoreReason::NothingDue);
    let mut done = Saga::reach(Status::Completed);
    done.now = T0 + 1_000_000;
    assert_eq!(expect_ignore(&done.tick()), &IgnoreReason::NothingDue);
}

#[test]
fn a_tick_for_an_unknown_order_is_ignored() {
    let d = test_policy().decide(None, &Event::Tick, T0);
    assert_eq!(expect_ignore(&d), &IgnoreReason::NoOrder);
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancel_of_a_created_order_cancels_and_abandons_the_reservation_in_flight() {
    let mut saga = Saga::reach(Status::Created);
    let reserve = saga.awaited(Action::Reserve);
    let d = saga.cancel();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Canceled);
    assert!(d.commands().is_empty());
    assert_eq!(st.forward, None);
    assert_eq!(
        st.issued(&reserve.command_id).map(|c| c.fate),
        Some(Fate::Abandoned)
    );
    assert_eq!(
        st.reason.as_deref(),
        Some("canceled on request: customer changed their mind")
    );
    assert!(st.is_settled());
}

#[test]
fn cancel_after_reservation_releases_stock() {
    let mut saga = Saga::reach(Status::Reserved);
    let charge = saga.awaited(Action::Charge);
    let d = saga.cancel();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Release]);
    assert_eq!(
        st.issued(&charge.command_id).map(|c| c.fate),
        Some(Fate::Abandoned)
    );
}

#[test]
fn cancel_after_payment_refunds_and_releases() {
    let mut saga = Saga::reach(Status::Paid);
    let d = saga.cancel();
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Refund, Action::Release]);
}

#[test]
fn cancel_after_shipping_scheduled_is_refused_and_recorded() {
    let mut saga = Saga::reach(Status::ShippingScheduled);
    let before = saga.state().clone();
    let d = saga.cancel();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::ShippingScheduled);
    assert_eq!(st.version, before.version + 1);
    assert!(d.commands().is_empty());
    assert_eq!(st.cancel_refusals.len(), 1);
    assert_eq!(st.cancel_refusals[0].status, Status::ShippingScheduled);
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .starts_with("cancel refused"));
    // The notification is still awaited and completes the order.
    assert_eq!(st.forward, before.forward);
    assert_eq!(
        expect_apply(&saga.succeed(Action::Send)).status,
        Status::Completed
    );
}

#[test]
fn cancel_of_a_completed_order_is_refused_and_recorded() {
    let mut saga = Saga::reach(Status::Completed);
    let d = saga.cancel();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Completed);
    assert_eq!(st.cancel_refusals.len(), 1);
    assert!(d.commands().is_empty());
}

#[test]
fn a_repeated_refused_cancel_is_ignored() {
    let mut saga = Saga::reach(Status::Completed);
    saga.cancel();
    assert_eq!(
        expect_ignore(&saga.cancel()),
        &IgnoreReason::DuplicateCancel
    );
}

#[test]
fn cancel_of_a_failed_or_canceled_order_is_ignored() {
    let mut failed = Saga::reach(Status::Created);
    failed.fail(Action::Reserve);
    assert!(matches!(
        expect_ignore(&failed.cancel()),
        IgnoreReason::AlreadyFinished {
            status: Status::Failed
        }
    ));
    let mut canceled = Saga::reach(Status::Reserved);
    canceled.cancel();
    assert!(matches!(
        expect_ignore(&canceled.cancel()),
        IgnoreReason::AlreadyFinished {
            status: Status::Canceled
        }
    ));
}

#[test]
fn cancel_of_an_unknown_order_is_rejected() {
    let d = test_policy().decide(None, &cancel_event("ghost", "why"), T0);
    assert_eq!(expect_reject(&d).kind(), "unknown_order");
}

#[test]
fn cancel_while_a_retry_is_scheduled_drops_the_retry() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.fail_retriable(Action::Charge);
    let d = saga.cancel();
    assert_eq!(actions(&d), vec![Action::Release]);
    saga.now += 10_000_000;
    saga.succeed(Action::Release);
    assert!(saga.state().is_settled());
    assert_eq!(expect_ignore(&saga.tick()), &IgnoreReason::NothingDue);
}

// ---------------------------------------------------------------- late results

#[test]
fn late_reservation_success_after_timeout_releases_stock() {
    let mut saga = Saga::reach(Status::Created);
    saga.exhaust(Action::Reserve);
    saga.expire(); // the last attempt times out: FAILED
    assert_eq!(saga.status(), Status::Failed);
    let late = saga.abandoned(Action::Reserve);
    let d = saga.answer_id(&late.command_id, Action::Reserve, Outcome::Success, false);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert_eq!(actions(&d), vec![Action::Release]);
    assert_eq!(
        st.compensations[0].compensates.as_deref(),
        Some(late.command_id.as_str())
    );
    assert_eq!(
        st.issued(&late.command_id).map(|c| c.fate),
        Some(Fate::LateSuccess)
    );
    // Its duplicate is just a duplicate.
    let again = saga.answer_id(&late.command_id, Action::Reserve, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&again),
        IgnoreReason::DuplicateResult { .. }
    ));
}

#[test]
fn late_reservation_success_after_cancel_releases_stock() {
    let mut saga = Saga::reach(Status::Created);
    let reserve = saga.awaited(Action::Reserve);
    saga.cancel();
    let d = saga.answer_id(
        &reserve.command_id,
        Action::Reserve,
        Outcome::Success,
        false,
    );
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Release]);
}

#[test]
fn late_charge_success_after_timeout_refunds() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.exhaust(Action::Charge);
    saga.expire();
    assert_eq!(saga.status(), Status::Failed);
    let late = saga.abandoned(Action::Charge);
    let d = saga.answer_id(&late.command_id, Action::Charge, Outcome::Success, false);
    assert_eq!(expect_apply(&d).status, Status::Failed);
    assert_eq!(actions(&d), vec![Action::Refund]);
}

#[test]
fn late_charge_success_after_cancel_refunds() {
    let mut saga = Saga::reach(Status::Reserved);
    let charge = saga.awaited(Action::Charge);
    saga.cancel();
    let d = saga.answer_id(&charge.command_id, Action::Charge, Outcome::Success, false);
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert_eq!(actions(&d), vec![Action::Refund]);
}

#[test]
fn late_schedule_success_after_cancel_fails_the_order_for_manual_action() {
    let mut saga = Saga::reach(Status::Paid);
    let schedule = saga.awaited(Action::Schedule);
    saga.cancel();
    let d = saga.answer_id(
        &schedule.command_id,
        Action::Schedule,
        Outcome::Success,
        false,
    );
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(d.commands().is_empty());
    assert_eq!(
        st.late_shipment.as_deref(),
        Some(schedule.command_id.as_str())
    );
    assert!(st.needs_manual_action());
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("manual action needed"));
    // The refund and release issued by the cancel still run.
    assert_eq!(st.compensations.len(), 2);
    assert!(st.awaiting());
}

#[test]
fn a_late_failure_of_an_abandoned_command_is_ignored() {
    let mut saga = Saga::reach(Status::Created);
    let reserve = saga.awaited(Action::Reserve);
    saga.cancel();
    let d = saga.answer_id(&reserve.command_id, Action::Reserve, Outcome::Failure, true);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::LateFailure { .. }
    ));
}

#[test]
fn a_late_success_of_a_timed_out_attempt_while_the_step_is_retried_is_accepted() {
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    saga.expire(); // attempt 1 times out, retry scheduled
    let d = saga.answer_id(&first.command_id, Action::Reserve, Outcome::Success, false);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Reserved);
    assert_eq!(actions(&d), vec![Action::Charge]);
    assert_eq!(
        st.issued(&first.command_id).map(|c| c.fate),
        Some(Fate::Succeeded)
    );
}

#[test]
fn a_late_failure_of_a_timed_out_attempt_while_the_step_is_retried_is_ignored() {
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    saga.expire();
    saga.expire(); // attempt 2 is out
    let d = saga.answer_id(&first.command_id, Action::Reserve, Outcome::Failure, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::LateFailure { .. }
    ));
    assert_eq!(saga.awaited(Action::Reserve).attempt, 2);
}

#[test]
fn success_of_an_attempt_superseded_by_an_earlier_one_is_compensated() {
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    saga.expire();
    saga.expire(); // attempt 2 is out
    let second = saga.awaited(Action::Reserve);
    saga.answer_id(&first.command_id, Action::Reserve, Outcome::Success, false);
    assert_eq!(saga.status(), Status::Reserved);
    assert_eq!(
        saga.state().issued(&second.command_id).map(|c| c.fate),
        Some(Fate::Abandoned)
    );
    let d = saga.answer_id(&second.command_id, Action::Reserve, Outcome::Success, false);
    assert_eq!(expect_apply(&d).status, Status::Reserved);
    assert_eq!(actions(&d), vec![Action::Release]);
}

#[test]
fn a_late_notification_success_is_ignored() {
    let mut saga = Saga::reach(Status::ShippingScheduled);
    saga.exhaust(Action::Send);
    saga.expire();
    assert_eq!(saga.status(), Status::Failed);
    let late = saga.abandoned(Action::Send);
    let d = saga.answer_id(&late.command_id, Action::Send, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::NothingToUndo { .. }
    ));
}

// ---------------------------------------------------------------- matching results

#[test]
fn a_result_for_an_unknown_order_is_rejected() {
    let e = result_event("ghost", "id", Action::Reserve, Outcome::Success, false);
    let d = test_policy().decide(None, &e, T0);
    let reason = expect_reject(&d);
    assert_eq!(reason.kind(), "unknown_order");
    assert!(reason.to_string().contains("ghost"));
}

#[test]
fn a_result_with_an_unknown_command_id_is_ignored() {
    let mut saga = Saga::reach(Status::Created);
    let d = saga.answer_id("not-ours", Action::Reserve, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::UnknownCommand { .. }
    ));
    // Even a well-formed id of an attempt never issued.
    let future = command_id("order-1", Action::Reserve, 2);
    let d = saga.answer_id(&future, Action::Reserve, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::UnknownCommand { .. }
    ));
}

#[test]
fn a_duplicate_result_is_ignored() {
    let mut saga = Saga::reach(Status::Created);
    let reserve = saga.awaited(Action::Reserve);
    saga.succeed(Action::Reserve);
    let d = saga.answer_id(
        &reserve.command_id,
        Action::Reserve,
        Outcome::Success,
        false,
    );
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::DuplicateResult { .. }
    ));
    // A contradicting answer to an answered command is no better.
    let d = saga.answer_id(
        &reserve.command_id,
        Action::Reserve,
        Outcome::Failure,
        false,
    );
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::DuplicateResult { .. }
    ));
}

#[test]
fn a_stale_result_of_a_failed_attempt_is_ignored() {
    let mut saga = Saga::reach(Status::Reserved);
    let first = saga.awaited(Action::Charge);
    saga.fail_retriable(Action::Charge);
    saga.expire();
    let d = saga.answer_id(&first.command_id, Action::Charge, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::DuplicateResult { .. }
    ));
    assert_eq!(saga.status(), Status::Reserved);
}

#[test]
fn a_result_with_the_wrong_action_is_rejected() {
    let mut saga = Saga::reach(Status::Created);
    let reserve = saga.awaited(Action::Reserve);
    let d = saga.answer_id(&reserve.command_id, Action::Charge, Outcome::Success, false);
    let reason = expect_reject(&d);
    assert_eq!(reason.kind(), "action_mismatch");
    assert_eq!(
        reason,
        &RejectReason::ActionMismatch {
            command_id: reserve.command_id,
            issued: Action::Reserve,
            claimed: Action::Charge
        }
    );
}

#[test]
fn an_event_for_another_order_is_rejected() {
    let saga = Saga::reach(Status::Created);
    let id = saga.awaited(Action::Reserve).command_id;
    let e = result_event("order-2", &id, Action::Reserve, Outcome::Success, false);
    assert_eq!(expect_reject(&saga.peek(&e)).kind(), "order_id_mismatch");
    let e = cancel_event("order-2", "x");
    assert_eq!(expect_reject(&saga.peek(&e)).kind(), "order_id_mismatch");
}

// ---------------------------------------------------------------- compensations

#[test]
fn a_compensation_success_marks_it_done_and_settles_the_order() {
    let mut saga = Saga::reach(Status::Paid);
    saga.cancel();
    let d = saga.succeed(Action::Refund);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Canceled);
    assert!(matches!(st.compensations[0].phase, Phase::Done { .. }));
    assert!(!st.is_settled());
    let d = saga.succeed(Action::Release);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Canceled);
    assert!(st.is_settled());
    assert!(!st.needs_manual_action());
}

#[test]
fn a_retriable_compensation_failure_is_retried() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    let first = saga.awaited(Action::Release);
    let d = saga.fail_retriable(Action::Release);
    assert_eq!(expect_apply(&d).status, Status::Canceled);
    assert!(d.commands().is_empty());
    let d = saga.expire();
    let retry = &d.commands()[0];
    assert_eq!(retry.action, Action::Release);
    assert_eq!(retry.attempt, 2);
    assert_ne!(retry.command_id, first.command_id);
    saga.succeed(Action::Release);
    assert_eq!(saga.status(), Status::Canceled);
    assert!(saga.state().is_settled());
}

#[test]
fn a_compensation_failing_for_good_turns_a_canceled_order_into_failed() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    let d = saga.fail(Action::Release);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(d.commands().is_empty());
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .starts_with("manual action needed"));
    assert!(st.needs_manual_action());
    assert!(st.is_settled());
}

#[test]
fn a_compensation_failing_for_good_on_a_failed_order_records_the_reason() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.fail(Action::Charge);
    assert_eq!(saga.status(), Status::Failed);
    let d = saga.fail(Action::Release);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(st
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("inventory RELEASE"));
    assert!(st.needs_manual_action());
}

#[test]
fn a_compensation_timing_out_at_its_last_attempt_needs_manual_action() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    saga.exhaust(Action::Release);
    let d = saga.expire();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed);
    assert!(matches!(st.compensations[0].phase, Phase::GaveUp { .. }));
    assert_eq!(st.compensations[0].attempts, vec![1, 2, 3]);
}

#[test]
fn a_late_compensation_success_after_giving_up_marks_it_done() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    saga.exhaust(Action::Release);
    saga.expire();
    let late = saga.abandoned(Action::Release);
    let d = saga.answer_id(&late.command_id, Action::Release, Outcome::Success, false);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Failed, "FAILED is final");
    assert!(matches!(st.compensations[0].phase, Phase::Done { .. }));
    assert!(!st.needs_manual_action());
}

#[test]
fn an_earlier_compensation_attempt_succeeding_late_completes_it() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    let first = saga.awaited(Action::Release);
    saga.expire();
    saga.expire(); // attempt 2 out
    let d = saga.answer_id(&first.command_id, Action::Release, Outcome::Success, false);
    let st = expect_apply(&d);
    assert!(matches!(st.compensations[0].phase, Phase::Done { .. }));
    assert!(st.is_settled());
    // Attempt 2's own success then has nothing left to do.
    let second = command_id("order-1", Action::Release, 2);
    let d = saga.answer_id(&second, Action::Release, Outcome::Success, false);
    assert!(matches!(
        expect_ignore(&d),
        IgnoreReason::NothingToUndo { .. }
    ));
}

#[test]
fn a_second_release_series_gets_fresh_command_ids() {
    // Reservation attempt 1 times out, attempt 2 succeeds; then payment fails (RELEASE of
    // attempt 2's reservation) and attempt 1's reservation succeeds late (a second
    // RELEASE). The two series must not share a command id.
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    saga.expire();
    saga.expire();
    saga.succeed(Action::Reserve);
    saga.fail(Action::Charge);
    let d = saga.answer_id(&first.command_id, Action::Reserve, Outcome::Success, false);
    assert_eq!(actions(&d), vec![Action::Release]);
    let st = saga.state();
    assert_eq!(st.compensations.len(), 2);
    assert_eq!(st.compensations[0].attempts, vec![1]);
    assert_eq!(st.compensations[1].attempts, vec![2]);
    let id1 = st.compensations[0].command_id.clone();
    // Retrying the first series continues after the second's number.
    saga.fail_retriable(Action::Release); // the latest awaited RELEASE: series 2
    saga.now += 1_000;
    saga.answer_id(&id1, Action::Release, Outcome::Failure, true);
    saga.now += 1_000;
    let d = saga.tick();
    let attempts: Vec<u32> = d.commands().iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, vec![3, 4]);
    let ids: std::collections::BTreeSet<&str> =
        saga.emitted.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids.len(), saga.emitted.len());
}

#[test]
fn a_compensation_giving_up_while_the_order_runs_keeps_the_status_and_the_note() {
    // Reservation attempt 1 times out, attempt 2 succeeds; attempt 1 then succeeds late
    // and its RELEASE fails for good while the order is still RESERVED.
    let mut saga = Saga::reach(Status::Created);
    let first = saga.awaited(Action::Reserve);
    saga.expire();
    saga.expire();
    saga.succeed(Action::Reserve);
    saga.answer_id(&first.command_id, Action::Reserve, Outcome::Success, false);
    let d = saga.fail(Action::Release);
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Reserved, "the order itself is fine");
    assert!(st.needs_manual_action());
    assert!(st.forward.is_some(), "the payment is still awaited");
    // A later cancel keeps the note in the reason.
    let d = saga.cancel();
    let st = expect_apply(&d);
    assert_eq!(st.status, Status::Canceled);
    let reason = st.reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with("canceled on request"), "{reason}");
    assert!(reason.contains(MANUAL_ACTION_NEEDED), "{reason}");
}

#[test]
fn a_terminal_order_with_an_open_compensation_is_not_settled() {
    let mut saga = Saga::reach(Status::Reserved);
    saga.cancel();
    let st = saga.state();
    assert!(st.is_terminal());
    assert!(!st.is_settled());
    assert_eq!(st.next_deadline(), Some(T0 + 5_000));
    assert_eq!(st.outstanding_commands().count(), 1);
}

// ---------------------------------------------------------------- state and ids

#[test]
fn the_state_round_trips_through_json() {
    let mut saga = Saga::reach(Status::Paid);
    saga.fail_retriable(Action::Schedule);
    saga.cancel();
    let st = saga.state().clone();
    let json = serde_json::to_string(&st).expect("serializes");
    let back: OrderState = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, st);
    assert!(json.contains(r#""status":"CANCELED""#));
    assert!(json.contains(r#""phase":"awaiting""#));
}

#[test]
fn a_state_record_without_the_optional_fields_still_deserializes() {
    let saga = Saga::reach(Status::Created);
    let mut value = serde_json::to_value(saga.state()).expect("serializes");
    let object = value.as_object_mut().expect("an object");
    for key in [
        "status_times",
        "forward",
        "compensations",
        "commands",
        "cancel_refusals",
        "late_shipment",
    ] {
        object.remove(key);
    }
    let old: OrderState = serde_json::from_value(value).expect("deserializes");
    assert_eq!(old.status, Status::Created);
    assert!(old.commands.is_empty());
}

#[test]
fn decide_with_the_default_policy_matches_policy_default() {
    let e = Event::Create(request("order-1"));
    assert_eq!(decide(None, &e, T0), Policy::default().decide(None, &e, T0));
}

#[test]
fn a_replayed_event_gives_an_identical_decision() {
    let saga = Saga::reach(Status::Reserved);
    let id = saga.awaited(Action::Charge).command_id;
    let e = result_event("order-1", &id, Action::Charge, Outcome::Success, false);
    let a = saga.peek(&e);
    let b = saga.peek(&e);
    assert_eq!(a, b);
    let later = saga.policy.decide(saga.state.as_ref(), &e, saga.now + 10);
    // Only issued_at and times may differ; the ids are the same.
    let ids = |d: &Decision| -> Vec<String> {
        d.commands().iter().map(|c| c.command_id.clone()).collect()
    };
    assert_eq!(ids(&a), ids(&later));
}

#[test]
fn reasons_display_and_kinds_are_snake_case() {
    let rejects = [
        RejectReason::UnknownOrder {
            order_id: "o".into(),
        },
        RejectReason::OrderIdMismatch {
            expected: "a".into(),
            got: "b".into(),
        },
        RejectReason::ActionMismatch {
            command_id: "c".into(),
            issued: Action::Reserve,
            claimed: Action::Charge,
        },
        RejectReason::InvalidOrderId,
        RejectReason::ConflictingCreate {
            order_id: "o".into(),
        },
    ];
    for r in &rejects {
        let kind = r.kind();
        assert!(
            kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{kind}"
        );
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(IgnoreReason::NothingDue.to_string(), "nothing due");
}

#[test]
fn an_order_too_large_for_its_records_fails_without_its_cart() {
    let mut r = request("big");
    let line = r.items[0].clone();
    r.items = vec![line; 40_000];
    r.total_minor = 40_000 * r.items[0].unit_price_minor * i64::from(r.items[0].quantity);
    r.customer_id = "c".repeat(10_000);
    let d = test_policy().decide(None, &Event::Create(r), T0);
    let Decision::Apply { state, commands } = d else {
        panic!("not applied: {d:?}");
    };
    assert_eq!(state.status, Status::Failed);
    assert!(commands.is_empty());
    assert!(state.items.is_empty(), "the cart is not carried along");
    assert_eq!(state.customer_id.chars().count(), 200);
    assert!(state.reason.as_deref().unwrap_or("").contains("cart lines"));
}
