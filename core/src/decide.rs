//! The decision function: `(state, event, now) → Decision`.
//!
//! Pure and deterministic: the same inputs give the same decision, byte for byte, and the
//! only time it knows is the `now` passed in. The rules are the saga table of the README,
//! with the choices the order contract leaves open written down here:
//!
//! - **Timeouts are retried.** A `Tick` after an attempt's deadline times the attempt out;
//!   with attempts left the step is retried after the backoff, exactly as after a
//!   retriable FAILURE, and the timed-out attempt is remembered. Only the timeout of the
//!   last attempt fails the step. (A service that is briefly down should not cancel
//!   orders; the price is that a slow service may execute two attempts, which the
//!   late-result rules below undo.)
//! - **A deadline acts only through a `Tick`.** A result that arrives after its deadline
//!   but before the `Tick` that would expire it is accepted normally.
//! - **A late SUCCESS of an earlier attempt of the step still under way** (attempt 1 timed
//!   out, attempt 2 is out or scheduled) is accepted as the step's success: the effect
//!   happened, so the saga moves on and abandons attempt 2 (whose own late success would
//!   then be compensated).
//! - **A late SUCCESS of an abandoned command** (timed out, or in flight when the order
//!   was canceled or failed) whose step is over triggers that command's compensation:
//!   `RESERVE → RELEASE`, `CHARGE → REFUND`, as a new compensation series of its own.
//!   `SEND` has nothing to undo (ignored). `SCHEDULE` has no compensating action in the
//!   contract: the order is marked as needing manual action (`late_shipment`, reason) and
//!   a `CANCELED` order becomes `FAILED`; other statuses stay.
//! - **A late FAILURE of an abandoned command changes nothing.**
//! - **Compensations** are retried like steps (retriable FAILURE or timeout, with
//!   backoff). One that fails for good turns a `CANCELED` order into `FAILED` with a reason
//!   starting [`MANUAL_ACTION_NEEDED`]; any other status stays and records the reason (an
//!   order that only becomes `CANCELED` in the same decision stays `CANCELED`, as one
//!   decision publishes one status and `PAID → FAILED` is no allowed arrow). Later reasons
//!   keep the note. A late SUCCESS of a compensation that gave up marks it done (the
//!   status stays).
//! - **Cancel** of `CREATED`/`RESERVED`/`PAID` compensates what was done (`RELEASE`;
//!   `REFUND` then `RELEASE`) and abandons the forward command in flight; its late success
//!   is compensated when it arrives. A cancel of `SHIPPING_SCHEDULED` or `COMPLETED` is
//!   refused and recorded (a change: version + 1; an identical repeated request is
//!   ignored). `FAILED`/`CANCELED` ignore it.
//! - **Create** of an existing order: the same request is a duplicate (ignored); a
//!   different cart, customer, total, currency or address under the same id is rejected as
//!   a conflict, so it reaches the dead-letter topic instead of vanishing. An empty order
//!   id is rejected (there is no key to keep a state under); any other invalid order
//!   becomes `FAILED`.
//! - **Results and cancels for an unknown order** are rejected here; the processor does
//!   not call `decide` for them but holds them until the create comes (see
//!   [`super::early`]). For a known order, a result whose command id
//!   the order never issued, or which was already answered, is ignored; one whose action
//!   disagrees with the issued command is rejected.
//! - **Commands carry `issued_at = now`.** Their ids are derived from (order, action,
//!   attempt), so a replay after an aborted transaction emits the same ids; `issued_at`
//!   may differ on replay, which is harmless as services deduplicate by id.

use std::fmt;

use super::ids::command_id;
use super::model::{
    Action, CancelRequest, Command, Event, Millis, OrderRequest, Outcome, Status, Step, StepResult,
};
use super::policy::Policy;
use super::state::{CancelRefusal, Fate, IssuedCommand, OrderState, Phase, StatusTime, Task};
use super::validate::{validate_order, InvalidOrder};

/// What to do with one event.
// `Apply` is the common case and is moved into the store right away; boxing the state
// would add an allocation per event and make callers' patterns clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Persist `state` (its `version` is one higher than before, or 1 for a new order) and
    /// emit `commands`, atomically with the event's offset.
    Apply {
        /// The order's new state.
        state: OrderState,
        /// Commands to send, in this order.
        commands: Vec<Command>,
    },
    /// Nothing changes; the event is consumed.
    Ignore(IgnoreReason),
    /// The event cannot apply to any order: send it to the dead-letter topic with this
    /// reason.
    Reject(RejectReason),
}

impl Decision {
    /// The new state, if the decision is `Apply`.
    pub fn state(&self) -> Option<&OrderState> {
        match self {
            Decision::Apply { state, .. } => Some(state),
            Decision::Ignore(_) | Decision::Reject(_) => None,
        }
    }

    /// The commands to emit (none unless `Apply`).
    pub fn commands(&self) -> &[Command] {
        match self {
            Decision::Apply { commands, .. } => commands,
            Decision::Ignore(_) | Decision::Reject(_) => &[],
        }
    }
}

/// Why an event changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The same create request was seen before.
    DuplicateCreate,
    /// A `Tick` for an order that does not exist.
    NoOrder,
    /// A `Tick` with no deadline or retry due.
    NothingDue,
    /// The command was already answered.
    DuplicateResult {
        /// The command.
        command_id: String,
    },
    /// The order never issued this command id.
    UnknownCommand {
        /// The id the result claims to answer.
        command_id: String,
    },
    /// A FAILURE for a command the order no longer waits for (timed out, abandoned, or a
    /// compensation already done).
    LateFailure {
        /// The command.
        command_id: String,
    },
    /// A late SUCCESS that needs no compensation (`SEND`, or a compensation already
    /// confirmed by another attempt).
    NothingToUndo {
        /// The command.
        command_id: String,
        /// Its action.
        action: Action,
    },
    /// A cancel for an order that is already `FAILED` or `CANCELED`.
    AlreadyFinished {
        /// The order's status.
        status: Status,
    },
    /// The same cancel request was already refused and recorded.
    DuplicateCancel,
    /// A create for an order that finished and is remembered only by its finished
    /// record (see [`super::finished`]).
    FinishedCreate {
        /// The order's final status.
        status: Status,
    },
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::DuplicateCreate => write!(f, "duplicate create request"),
            IgnoreReason::NoOrder => write!(f, "tick for an unknown order"),
            IgnoreReason::NothingDue => write!(f, "nothing due"),
            IgnoreReason::DuplicateResult { command_id } => {
                write!(f, "command {command_id} was already answered")
            }
            IgnoreReason::UnknownCommand { command_id } => {
                write!(f, "command {command_id} was not issued for this order")
            }
            IgnoreReason::LateFailure { command_id } => {
                write!(f, "late failure of command {command_id}, no longer awaited")
            }
            IgnoreReason::NothingToUndo { command_id, action } => write!(
                f,
                "late success of {} command {command_id} needs no compensation",
                action.as_str()
            ),
            IgnoreReason::AlreadyFinished { status } => {
                write!(f, "cancel of an order already {}", status.as_str())
            }
            IgnoreReason::DuplicateCancel => write!(f, "cancel request already refused"),
            IgnoreReason::FinishedCreate { status } => {
                write!(
                    f,
                    "create of an order that already finished {}",
                    status.as_str()
                )
            }
        }
    }
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// A result or cancel for an order this processor does not know.
    UnknownOrder {
        /// The order id the event names.
        order_id: String,
    },
    /// The event names another order than the state it was given with (a keying bug
    /// upstream or in the caller).
    OrderIdMismatch {
        /// The state's order id.
        expected: String,
        /// The event's order id.
        got: String,
    },
    /// A result whose action is not the action of the command it claims to answer.
    ActionMismatch {
        /// The command id.
        command_id: String,
        /// The action the command was issued with.
        issued: Action,
        /// The action the result claims.
        claimed: Action,
    },
    /// A create request with an empty order id.
    InvalidOrderId,
    /// A create request for an existing order id with different contents.
    ConflictingCreate {
        /// The order id.
        order_id: String,
    },
    /// A result for an order that finished and is remembered only by its finished record:
    /// a late result whose compensation the evicted state can no longer derive.
    FinishedOrder {
        /// The order id.
        order_id: String,
        /// The order's final status.
        status: Status,
    },
}

impl RejectReason {
    /// A short snake_case code for the `dlq.error.kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::UnknownOrder { .. } => "unknown_order",
            RejectReason::OrderIdMismatch { .. } => "order_id_mismatch",
            RejectReason::ActionMismatch { .. } => "action_mismatch",
            RejectReason::InvalidOrderId => "invalid_order_id",
            RejectReason::ConflictingCreate { .. } => "conflicting_create",
            RejectReason::FinishedOrder { .. } => "finished_order",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::UnknownOrder { order_id } => write!(f, "unknown order {order_id:?}"),
            RejectReason::OrderIdMismatch { expected, got } => {
                write!(f, "event for order {got:?} applied to order {expected:?}")
            }
            RejectReason::ActionMismatch {
                command_id,
                issued,
                claimed,
            } => write!(
                f,
                "result claims {} but command {command_id} was {}",
                claimed.as_str(),
                issued.as_str()
            ),
            RejectReason::InvalidOrderId => write!(f, "create request without an order id"),
            RejectReason::ConflictingCreate { order_id } => write!(
                f,
                "create request for existing order {order_id:?} with different contents"
            ),
            RejectReason::FinishedOrder { order_id, status } => write!(
                f,
                "result for order {order_id:?}, which finished {} and whose state was \
                 evicted: a late result, check whether it needs undoing by hand",
                status.as_str()
            ),
        }
    }
}

impl std::error::Error for RejectReason {}

/// [`Policy::decide`] with [`Policy::default`].
pub fn decide(state: Option<&OrderState>, event: &Event, now: Millis) -> Decision {
    Policy::default().decide(state, event, now)
}

impl Policy {
    /// Decides what `event` does to the order whose current state is `state` (`None` if
    /// the order is unknown), at time `now`. Pure: no clock, no I/O, deterministic.
    pub fn decide(&self, state: Option<&OrderState>, event: &Event, now: Millis) -> Decision {
        match (state, event) {
            (None, Event::Create(request)) => self.create(request, now),
            (Some(st), Event::Create(request)) => {
                if st.order_id != request.order_id {
                    mismatch(st, &request.order_id)
                } else if st.same_request(request) {
                    Decision::Ignore(IgnoreReason::DuplicateCreate)
                } else {
                    Decision::Reject(RejectReason::ConflictingCreate {
                        order_id: request.order_id.clone(),
                    })
                }
            }
            (None, Event::Result(StepResult { order_id, .. }))
            | (None, Event::Cancel(CancelRequest { order_id, .. })) => {
                Decision::Reject(RejectReason::UnknownOrder {
                    order_id: order_id.clone(),
                })
            }
            (None, Event::Tick) => Decision::Ignore(IgnoreReason::NoOrder),
            (Some(st), Event::Result(result)) => self.on_result(st, result, now),
            (Some(st), Event::Cancel(cancel)) => self.on_cancel(st, cancel, now),
            (Some(st), Event::Tick) => self.on_tick(st, now),
        }
    }

    fn create(&self, request: &OrderRequest, now: Millis) -> Decision {
        if request.order_id.trim().is_empty() {
            return Decision::Reject(RejectReason::InvalidOrderId);
        }
        match validate_order(request, self) {
            // Its records would be as large as the order: keep the reason, not the cart.
            Err(invalid @ InvalidOrder::TooLarge { .. }) => {
                let mut state =
                    OrderState::new(request, Status::Failed, Some(invalid.to_string()), now);
                state.items.clear();
                let cut = |s: &mut String| {
                    if let Some((at, _)) = s.char_indices().nth(self.max_text_chars) {
                        s.truncate(at);
                    }
                };
                cut(&mut state.customer_id);
                let a = &mut state.shipping_address;
                for field in [
                    &mut a.recipient,
                    &mut a.street,
                    &mut a.city,
                    &mut a.postal_code,
                    &mut a.country,
                ] {
                    cut(field);
                }
                Decision::Apply {
                    state,
                    commands: Vec::new(),
                }
            }
            Err(invalid) => Decision::Apply {
                state: OrderState::new(request, Status::Failed, Some(invalid.to_string()), now),
                commands: Vec::new(),
            },
            Ok(()) => {
                let state = OrderState::new(request, Status::Created, None, now);
                let mut change = Change::new(self, state, now);
                change.start_forward(Action::Reserve);
                change.finish()
            }
        }
    }

    fn on_result(&self, st: &OrderState, result: &StepResult, now: Millis) -> Decision {
        if st.order_id != result.order_id {
            return mismatch(st, &result.order_id);
        }
        let Some(issued) = st.issued(&result.command_id) else {
            return Decision::Ignore(IgnoreReason::UnknownCommand {
                command_id: result.command_id.clone(),
            });
        };
        if issued.action != result.action {
            return Decision::Reject(RejectReason::ActionMismatch {
                command_id: issued.command_id.clone(),
                issued: issued.action,
                claimed: result.action,
            });
        }
        match issued.fate {
            Fate::Succeeded | Fate::Failed | Fate::LateSuccess => {
                return Decision::Ignore(IgnoreReason::DuplicateResult {
                    command_id: issued.command_id.clone(),
                })
            }
            Fate::Awaiting | Fate::TimedOut | Fate::Abandoned => {}
        }
        let forward_owns = st
            .forward
            .as_ref()
            .is_some_and(|t| t.action == issued.action && t.owns_attempt(issued.attempt));
        if forward_owns {
            return self.forward_result(st, issued, result, now);
        }
        let compensation = st
            .compensations
            .iter()
            .position(|t| t.action == issued.action && t.owns_attempt(issued.attempt));
        if let Some(index) = compensation {
            return self.compensation_result(st, index, issued, result, now);
        }
        self.late_result(st, issued, result, now)
    }

    /// A result of the forward step under way (its latest attempt, or an earlier one that
    /// timed out).
    fn forward_result(
        &self,
        st: &OrderState,
        issued: &IssuedCommand,
        result: &StepResult,
        now: Millis,
    ) -> Decision {
        match result.outcome {
            Outcome::Success => {
                let mut change = Change::from(self, st, now);
                change.set_fate(&issued.command_id, Fate::Succeeded);
                if let Some(task) = change.state.forward.take() {
                    // An earlier attempt won: the one still out is no longer awaited.
                    change.abandon_latest(&task);
                }
                change.advance(issued.action);
                change.finish()
            }
            Outcome::Failure => {
                if issued.fate != Fate::Awaiting {
                    return late_failure(issued);
                }
                let mut change = Change::from(self, st, now);
                change.set_fate(&issued.command_id, Fate::Failed);
                let why = describe_failure(issued, result);
                let used = st.forward.as_ref().map_or(1, Task::attempts_used);
                if result.retriable && used < self.attempts() {
                    change.schedule_retry(Slot::Forward, used, why);
                } else {
                    change.fail_step(issued.action, why);
                }
                change.finish()
            }
        }
    }

    /// A result of an attempt of compensation `index`.
    fn compensation_result(
        &self,
        st: &OrderState,
        index: usize,
        issued: &IssuedCommand,
        result: &StepResult,
        now: Millis,
    ) -> Decision {
        let Some(task) = st.compensations.get(index) else {
            return late_failure(issued);
        };
        match (result.outcome, task.phase) {
            (Outcome::Success, Phase::Done { .. }) => {
                Decision::Ignore(IgnoreReason::NothingToUndo {
                    command_id: issued.command_id.clone(),
                    action: issued.action,
                })
            }
            (Outcome::Failure, Phase::Done { .. }) => late_failure(issued),
            (
                Outcome::Success,
                Phase::Awaiting { .. } | Phase::RetryAt { .. } | Phase::GaveUp { .. },
            ) => {
                let mut change = Change::from(self, st, now);
                change.set_fate(&issued.command_id, Fate::Succeeded);
                change.abandon_latest(task);
                change.complete_compensation(index);
                change.finish()
            }
            (
                Outcome::Failure,
                Phase::Awaiting { .. } | Phase::RetryAt { .. } | Phase::GaveUp { .. },
            ) => {
                if issued.fate != Fate::Awaiting {
                    return late_failure(issued);
                }
                let mut change = Change::from(self, st, now);
                change.set_fate(&issued.command_id, Fate::Failed);
                let why = describe_failure(issued, result);
                let used = task.attempts_used();
                if result.retriable && used < self.attempts() {
                    change.schedule_retry(Slot::Compensation(index), used, why);
                } else {
                    change.give_up(index, why);
                }
                change.finish()
            }
        }
    }

    /// A result of a command the order stopped waiting for, whose series is over.
    fn late_result(
        &self,
        st: &OrderState,
        issued: &IssuedCommand,
        result: &StepResult,
        now: Millis,
    ) -> Decision {
        if result.outcome == Outcome::Failure {
            return late_failure(issued);
        }
        let nothing_to_undo = || {
            Decision::Ignore(IgnoreReason::NothingToUndo {
                command_id: issued.command_id.clone(),
                action: issued.action,
            })
        };
        let mut change = Change::from(self, st, now);
        match issued.action {
            Action::Reserve => {
                change.set_fate(&issued.command_id, Fate::LateSuccess);
                change.start_compensation(Action::Release, Some(issued.command_id.clone()));
            }
            Action::Charge => {
                change.set_fate(&issued.command_id, Fate::LateSuccess);
                change.start_compensation(Action::Refund, Some(issued.command_id.clone()));
            }
            Action::Schedule => {
                // The contract has no action that unschedules a shipment: a person has to
                // stop it. A canceled order is no longer "canceled" in that case.
                change.set_fate(&issued.command_id, Fate::LateSuccess);
                change.state.late_shipment = Some(issued.command_id.clone());
                let note = format!(
                    "{MANUAL_ACTION_NEEDED}: shipping was scheduled by command {} after the order stopped \
                     waiting for it; stop the shipment",
                    issued.command_id
                );
                change.flag_manual_action(note);
            }
            // The customer was told; nothing to take back.
            Action::Send => return nothing_to_undo(),
            // A compensation attempt with no series of its own: nothing more to do.
            Action::Release | Action::Refund => return nothing_to_undo(),
        }
        change.finish()
    }

    fn on_cancel(&self, st: &OrderState, cancel: &CancelRequest, now: Millis) -> Decision {
        if st.order_id != cancel.order_id {
            return mismatch(st, &cancel.order_id);
        }
        match st.status {
            Status::Created | Status::Reserved | Status::Paid => {
                let mut change = Change::from(self, st, now);
                if let Some(task) = change.state.forward.take() {
                    change.abandon_latest(&task);
                }
                change.set_status(Status::Canceled);
                change.set_reason(format!("canceled on request: {}", cancel.reason));
                change.compensate_done_steps(st.status);
                change.finish()
            }
            Status::ShippingScheduled | Status::Completed => {
                let repeated = st
                    .cancel_refusals
                    .iter()
                    .any(|r| r.reason == cancel.reason && r.requested_at == cancel.requested_at);
                if repeated {
                    return Decision::Ignore(IgnoreReason::DuplicateCancel);
                }
                let mut change = Change::from(self, st, now);
                change.state.cancel_refusals.push(CancelRefusal {
                    reason: cancel.reason.clone(),
                    requested_at: cancel.requested_at,
                    refused_at: now,
                    status: st.status,
                });
                change.set_reason(format!(
                    "cancel refused: order is already {} (request: {})",
                    st.status.as_str(),
                    cancel.reason
                ));
                change.finish()
            }
            Status::Failed | Status::Canceled => {
                Decision::Ignore(IgnoreReason::AlreadyFinished { status: st.status })
            }
        }
    }

    fn on_tick(&self, st: &OrderState, now: Millis) -> Decision {
        let mut change = Change::from(self, st, now);
        let mut changed = false;
        changed |= change.tick_slot(Slot::Forward);
        // Index loop on purpose: a forward step failing above may have added compensations,
        // and a tick must see each open series once.
        let mut index = 0;
        while index < change.state.compensations.len() {
            changed |= change.tick_slot(Slot::Compensation(index));
            index += 1;
        }
        if changed {
            change.finish()
        } else {
            Decision::Ignore(IgnoreReason::NothingDue)
        }
    }
}

/// How every reason that asks a person to act starts.
pub const MANUAL_ACTION_NEEDED: &str = "manual action needed";

fn mismatch(st: &OrderState, got: &str) -> Decision {
    Decision::Reject(RejectReason::OrderIdMismatch {
        expected: st.order_id.clone(),
        got: got.to_string(),
    })
}

fn late_failure(issued: &IssuedCommand) -> Decision {
    Decision::Ignore(IgnoreReason::LateFailure {
        command_id: issued.command_id.clone(),
    })
}

/// The lower-case name of a step for reasons, e.g. `payment`.
fn step_name(step: Step) -> &'static str {
    match step {
        Step::Inventory => "inventory",
        Step::Payment => "payment",
        Step::Shipping => "shipping",
        Step::Notification => "notification",
    }
}

/// `"<step> <ACTION> attempt <n>"`, the subject of every reason about a command.
fn subject(action: Action, attempt: u32) -> String {
    format!(
        "{} {} attempt {attempt}",
        step_name(action.step()),
        action.as_str()
    )
}

fn describe_failure(issued: &IssuedCommand, result: &StepResult) -> String {
    let what = subject(issued.action, issued.attempt);
    match result.reason.as_deref() {
        Some(reason) if !reason.is_empty() => format!("{what} failed: {reason}"),
        _ => format!("{what} failed"),
    }
}

/// Which command series of the order.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Forward,
    Compensation(usize),
}

/// A change in progress: a copy of the state being edited and the commands to emit.
struct Change<'p> {
    policy: &'p Policy,
    state: OrderState,
    commands: Vec<Command>,
    now: Millis,
    /// A new order starts at version 1; an existing one goes up by one.
    bump: bool,
    /// The status before this decision.
    before: Status,
}

impl<'p> Change<'p> {
    fn new(policy: &'p Policy, state: OrderState, now: Millis) -> Self {
        Change {
            policy,
            before: state.status,
            state,
            commands: Vec::new(),
            now,
            bump: false,
        }
    }

    fn from(policy: &'p Policy, st: &OrderState, now: Millis) -> Self {
        Change {
            bump: true,
            ..Change::new(policy, st.clone(), now)
        }
    }

    fn finish(mut self) -> Decision {
        if self.bump {
            self.state.version = self.state.version.saturating_add(1);
        }
        self.state.updated_at = self.now;
        Decision::Apply {
            state: self.state,
            commands: self.commands,
        }
    }

    fn set_status(&mut self, status: Status) {
        if self.state.status != status {
            self.state.status = status;
            self.state.status_times.push(StatusTime {
                status,
                at: self.now,
            });
        }
    }

    /// Sets the order's reason, keeping an earlier note that manual action is needed (a
    /// compensation of a late result may give up while the order is still running, and
    /// the order's final reason must not hide it).
    fn set_reason(&mut self, reason: String) {
        let old = self.state.reason.take().unwrap_or_default();
        // Only the note itself is kept, so repeated changes do not grow the reason.
        let note = match old.find(MANUAL_ACTION_NEEDED) {
            Some(at) if self.state.needs_manual_action() => old.get(at..),
            _ => None,
        };
        self.state.reason = Some(match note {
            Some(note) => format!("{reason}; {note}"),
            None => reason,
        });
    }

    fn set_fate(&mut self, command_id: &str, fate: Fate) {
        if let Some(entry) = self
            .state
            .commands
            .iter_mut()
            .find(|c| c.command_id == command_id)
        {
            entry.fate = fate;
        }
    }

    /// If `task`'s latest attempt is still awaited, stop awaiting it: a late success will
    /// be compensated (or ignored, for a compensation).
    fn abandon_latest(&mut self, task: &Task) {
        let awaited = self
            .state
            .issued(&task.command_id)
            .is_some_and(|c| c.fate == Fate::Awaiting);
        if awaited {
            self.set_fate(&task.command_id, Fate::Abandoned);
        }
    }

    /// Issues the next attempt of `action` (numbered after every earlier one of that
    /// action) and returns its number and id.
    fn issue(&mut self, action: Action) -> (u32, String) {
        let last = self
            .state
            .commands
            .iter()
            .filter(|c| c.action == action)
            .map(|c| c.attempt)
            .max()
            .unwrap_or(0);
        let attempt = last.saturating_add(1);
        let id = command_id(&self.state.order_id, action, attempt);
        self.state.commands.push(IssuedCommand {
            command_id: id.clone(),
            action,
            attempt,
            issued_at: self.now,
            fate: Fate::Awaiting,
        });
        self.commands.push(Command {
            order_id: self.state.order_id.clone(),
            command_id: id.clone(),
            action,
            attempt,
            issued_at: self.now,
        });
        (attempt, id)
    }

    fn deadline(&self, action: Action) -> Millis {
        self.now.saturating_add(self.policy.timeout_ms(action))
    }

    fn new_task(&mut self, action: Action, compensates: Option<String>) -> Task {
        let (attempt, command_id) = self.issue(action);
        Task {
            action,
            attempts: vec![attempt],
            attempt,
            command_id,
            compensates,
            phase: Phase::Awaiting {
                deadline: self.deadline(action),
            },
            last_error: None,
        }
    }

    fn start_forward(&mut self, action: Action) {
        let task = self.new_task(action, None);
        self.state.forward = Some(task);
    }

    fn start_compensation(&mut self, action: Action, compensates: Option<String>) {
        let task = self.new_task(action, compensates);
        self.state.compensations.push(task);
    }

    /// The id of the accepted (not late) success of `action`, which a compensation undoes.
    fn accepted(&self, action: Action) -> Option<String> {
        self.state
            .commands
            .iter()
            .find(|c| c.action == action && c.fate == Fate::Succeeded)
            .map(|c| c.command_id.clone())
    }

    /// Compensations for the steps done by the time the order was in `reached`: newest
    /// first (refund before release).
    fn compensate_done_steps(&mut self, reached: Status) {
        match reached {
            Status::Created => {}
            Status::Reserved => {
                let reserve = self.accepted(Action::Reserve);
                self.start_compensation(Action::Release, reserve);
            }
            Status::Paid => {
                let charge = self.accepted(Action::Charge);
                self.start_compensation(Action::Refund, charge);
                let reserve = self.accepted(Action::Reserve);
                self.start_compensation(Action::Release, reserve);
            }
            // Never compensated: shipping is under way or the order is over.
            Status::ShippingScheduled | Status::Completed | Status::Failed | Status::Canceled => {}
        }
    }

    /// The forward step `done` succeeded: move to the next status and step.
    fn advance(&mut self, done: Action) {
        match done {
            Action::Reserve => {
                self.set_status(Status::Reserved);
                self.start_forward(Action::Charge);
            }
            Action::Charge => {
                self.set_status(Status::Paid);
                self.start_forward(Action::Schedule);
            }
            Action::Schedule => {
                self.set_status(Status::ShippingScheduled);
                self.start_forward(Action::Send);
            }
            Action::Send => self.set_status(Status::Completed),
            // Never a forward step.
            Action::Release | Action::Refund => {}
        }
    }

    /// The forward step of `action` failed for good: the failure rows of the table.
    fn fail_step(&mut self, action: Action, why: String) {
        self.state.forward = None;
        self.set_reason(why);
        match action {
            Action::Reserve => self.set_status(Status::Failed),
            Action::Charge => {
                self.set_status(Status::Failed);
                self.compensate_done_steps(Status::Reserved);
            }
            Action::Schedule => {
                self.set_status(Status::Canceled);
                self.compensate_done_steps(Status::Paid);
            }
            // Goods are on their way: nothing to compensate.
            Action::Send => self.set_status(Status::Failed),
            Action::Release | Action::Refund => {}
        }
    }

    fn task_mut(&mut self, slot: Slot) -> Option<&mut Task> {
        match slot {
            Slot::Forward => self.state.forward.as_mut(),
            Slot::Compensation(index) => self.state.compensations.get_mut(index),
        }
    }

    /// Attempt number `used` (within its series) of `slot` failed or timed out and may be
    /// retried: wait for the backoff.
    fn schedule_retry(&mut self, slot: Slot, used: u32, why: String) {
        let at = self.now.saturating_add(self.policy.backoff_ms(used));
        if let Some(task) = self.task_mut(slot) {
            task.phase = Phase::RetryAt { at };
            task.last_error = Some(why);
        }
    }

    /// Issues the next attempt of `slot`.
    fn retry(&mut self, slot: Slot) {
        let Some(action) = self.task_mut(slot).map(|t| t.action) else {
            return;
        };
        let (attempt, id) = self.issue(action);
        let deadline = self.deadline(action);
        if let Some(task) = self.task_mut(slot) {
            task.attempts.push(attempt);
            task.attempt = attempt;
            task.command_id = id;
            task.phase = Phase::Awaiting { deadline };
        }
    }

    /// Expires the deadline and fires the retry of `slot` if due; true if anything changed.
    fn tick_slot(&mut self, slot: Slot) -> bool {
        let now = self.now;
        let Some(task) = self.task_mut(slot).cloned() else {
            return false;
        };
        let mut changed = false;
        if let Phase::Awaiting { deadline } = task.phase {
            if deadline <= now {
                changed = true;
                self.set_fate(&task.command_id, Fate::TimedOut);
                let why = format!("{} timed out", subject(task.action, task.attempt));
                let used = task.attempts_used();
                match slot {
                    _ if used < self.policy.attempts() => self.schedule_retry(slot, used, why),
                    Slot::Forward => self.fail_step(task.action, why),
                    Slot::Compensation(index) => self.give_up(index, why),
                }
            }
        }
        // Checked again after a timeout: with a zero backoff the retry is due at once.
        let retry_due = self
            .task_mut(slot)
            .is_some_and(|t| matches!(t.phase, Phase::RetryAt { at } if at <= now));
        if retry_due {
            changed = true;
            self.retry(slot);
        }
        changed
    }

    fn complete_compensation(&mut self, index: usize) {
        let now = self.now;
        if let Some(task) = self.state.compensations.get_mut(index) {
            task.phase = Phase::Done { at: now };
        }
    }

    /// Compensation `index` failed for good.
    fn give_up(&mut self, index: usize, why: String) {
        let now = self.now;
        let Some(task) = self.state.compensations.get_mut(index) else {
            return;
        };
        task.phase = Phase::GaveUp { at: now };
        task.last_error = Some(why.clone());
        let note = format!("{MANUAL_ACTION_NEEDED}: compensation failed for good: {why}");
        self.flag_manual_action(note);
    }

    /// Records that someone has to act: an order that was `CANCELED` before this decision
    /// becomes `FAILED`; any other status stays (`FAILED` already says it; a shipped or
    /// completed order is not failed; a running order goes on). An order that becomes
    /// `CANCELED` within this very decision stays `CANCELED`: `PAID → FAILED` is no
    /// allowed arrow, and one decision publishes one status. The reason carries the note.
    fn flag_manual_action(&mut self, note: String) {
        self.state.reason = Some(note);
        match self.state.status {
            Status::Canceled if self.before == Status::Canceled => self.set_status(Status::Failed),
            Status::Canceled => {}
            Status::Created
            | Status::Reserved
            | Status::Paid
            | Status::ShippingScheduled
            | Status::Completed
            | Status::Failed => {}
        }
    }
}
