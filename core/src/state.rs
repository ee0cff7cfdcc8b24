//! The per-order saga state: everything [`decide()`](super::decide()) needs to know about one
//! order, and nothing else.
//!
//! The state is the changelog record of the order (it is what survives a restart), so it
//! holds the deadlines and retry times, not timers, and every field added after the first
//! release carries `#[serde(default)]` so that older records still deserialize.

use serde::{Deserialize, Serialize};

use super::model::{Action, Address, Item, Millis, OrderRequest, Status};

/// Where one command series (a forward step, or one compensation) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The latest attempt is out; if no result has arrived by `deadline`, a `Tick` at or
    /// after it times the attempt out.
    Awaiting {
        /// When the latest attempt times out.
        deadline: Millis,
    },
    /// The latest attempt failed retriably or timed out; a `Tick` at or after `at` issues
    /// the next attempt.
    RetryAt {
        /// When the next attempt goes out.
        at: Millis,
    },
    /// Compensations only: a result confirmed it.
    Done {
        /// When the confirmation was processed.
        at: Millis,
    },
    /// Compensations only: it failed for good (non-retriable failure, or the last attempt
    /// failed or timed out). Someone has to finish it by hand; a late success still
    /// turns it into `Done`.
    GaveUp {
        /// When the saga gave up.
        at: Millis,
    },
}

impl Phase {
    /// The time at which a `Tick` would change this phase, if any.
    pub fn due_at(&self) -> Option<Millis> {
        match *self {
            Phase::Awaiting { deadline } => Some(deadline),
            Phase::RetryAt { at } => Some(at),
            Phase::Done { .. } | Phase::GaveUp { .. } => None,
        }
    }

    /// Awaiting a result or a retry.
    pub fn is_open(&self) -> bool {
        self.due_at().is_some()
    }
}

/// One command series: the attempts of one forward step, or of one compensation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// What the series asks for.
    pub action: Action,
    /// The attempt numbers of every command of this series, in order. Attempt numbers are
    /// counted per (order, action) and never reused, so that every command id is unique:
    /// two `RELEASE` series of one order (say the main one and one for a late reservation)
    /// interleave their numbers, e.g. `[1, 3]` and `[2]`.
    pub attempts: Vec<u32>,
    /// The attempt number of the latest command issued.
    pub attempt: u32,
    /// The id of the latest command issued.
    pub command_id: String,
    /// Compensations only: the id of the command whose effect this undoes (the accepted
    /// `RESERVE`/`CHARGE`, or a late-succeeding abandoned one).
    #[serde(default)]
    pub compensates: Option<String>,
    /// Where the series stands.
    pub phase: Phase,
    /// The reason of the latest failure or timeout, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Task {
    /// How many attempts of this series have been issued (1 for the first).
    pub fn attempts_used(&self) -> u32 {
        u32::try_from(self.attempts.len()).unwrap_or(u32::MAX)
    }

    /// Whether attempt number `attempt` of this task's action belongs to this series.
    pub fn owns_attempt(&self, attempt: u32) -> bool {
        self.attempts.contains(&attempt)
    }
}

/// What became of one issued command, as far as this order knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Fate {
    /// Its result is awaited.
    Awaiting,
    /// A SUCCESS was accepted for it.
    Succeeded,
    /// A FAILURE was accepted for it.
    Failed,
    /// Its deadline passed without a result; a late SUCCESS is still acted upon.
    TimedOut,
    /// The order stopped waiting for it while it was in flight (canceled, or an earlier
    /// attempt's late success made it redundant); a late SUCCESS is still acted upon.
    Abandoned,
    /// A SUCCESS arrived after it had timed out or been abandoned and was acted upon
    /// (compensated, or recorded as needing manual action).
    LateSuccess,
}

/// One command this order issued. The log is what recognises duplicates, stale results,
/// results with the wrong action and late results of abandoned commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCommand {
    /// Its id.
    pub command_id: String,
    /// Its action.
    pub action: Action,
    /// Its attempt number.
    pub attempt: u32,
    /// When it was issued.
    pub issued_at: Millis,
    /// What became of it.
    pub fate: Fate,
}

/// When the order reached a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTime {
    /// The status reached.
    pub status: Status,
    /// The `now` of the decision that reached it.
    pub at: Millis,
}

/// A cancel request that came too late (the order was `SHIPPING_SCHEDULED` or later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRefusal {
    /// The request's reason.
    pub reason: String,
    /// The request's `requested_at`.
    pub requested_at: Millis,
    /// When it was refused.
    pub refused_at: Millis,
    /// The order's status at the time.
    pub status: Status,
}

/// The saga state of one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    /// The order's id (the record key).
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The cart, as requested.
    pub items: Vec<Item>,
    /// The total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// Where the order stands.
    pub status: Status,
    /// 1 for the first state, one more on every change.
    pub version: i64,
    /// The order's `created_at` from the create request.
    pub created_at: Millis,
    /// The `now` of the last change.
    pub updated_at: Millis,
    /// Why the order failed or was canceled, a recorded cancel refusal, or a note that
    /// manual action is needed.
    pub reason: Option<String>,
    /// When each status was reached, in order.
    #[serde(default)]
    pub status_times: Vec<StatusTime>,
    /// The forward step under way (`RESERVE`, `CHARGE`, `SCHEDULE` or `SEND`), if any.
    #[serde(default)]
    pub forward: Option<Task>,
    /// Every compensation started for this order, open or finished.
    #[serde(default)]
    pub compensations: Vec<Task>,
    /// Every command issued for this order, in order.
    #[serde(default)]
    pub commands: Vec<IssuedCommand>,
    /// Cancel requests refused because the order was already shipping or completed.
    #[serde(default)]
    pub cancel_refusals: Vec<CancelRefusal>,
    /// A `SCHEDULE` command that succeeded after the order had stopped waiting for it
    /// (canceled, failed, or already scheduled by another attempt): the shipment has to be
    /// stopped by hand, as the contract has no action to undo it.
    #[serde(default)]
    pub late_shipment: Option<String>,
}

impl OrderState {
    /// A fresh state for `request`, with no commands, at version 1.
    pub fn new(
        request: &OrderRequest,
        status: Status,
        reason: Option<String>,
        now: Millis,
    ) -> Self {
        OrderState {
            order_id: request.order_id.clone(),
            customer_id: request.customer_id.clone(),
            items: request.items.clone(),
            total_minor: request.total_minor,
            currency: request.currency.clone(),
            shipping_address: request.shipping_address.clone(),
            status,
            version: 1,
            created_at: request.created_at,
            updated_at: now,
            reason,
            status_times: vec![StatusTime { status, at: now }],
            forward: None,
            compensations: Vec::new(),
            commands: Vec::new(),
            cancel_refusals: Vec::new(),
            late_shipment: None,
        }
    }

    /// Whether the order's status is terminal (`COMPLETED`, `FAILED`, `CANCELED`).
    /// Compensations may still be open: see [`OrderState::is_settled`].
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// Terminal, with nothing awaited and nothing due: only a late result of an abandoned
    /// command can still change it. The processor may evict such an order after its
    /// retention period.
    pub fn is_settled(&self) -> bool {
        self.is_terminal() && !self.awaiting()
    }

    /// Whether a command result or a retry is awaited (forward step or compensation).
    pub fn awaiting(&self) -> bool {
        self.next_deadline().is_some()
    }

    /// The earliest time at which a `Tick` would change this order: a command deadline or
    /// a retry time, of the forward step or of an open compensation.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.forward
            .iter()
            .chain(self.compensations.iter())
            .filter_map(|t| t.phase.due_at())
            .min()
    }

    /// When the order reached `status`, if it did.
    pub fn reached_at(&self, status: Status) -> Option<Millis> {
        self.status_times
            .iter()
            .find(|st| st.status == status)
            .map(|st| st.at)
    }

    /// Whether someone has to act by hand: a compensation gave up, or a shipment was
    /// scheduled after the order stopped waiting for it.
    pub fn needs_manual_action(&self) -> bool {
        self.late_shipment.is_some()
            || self
                .compensations
                .iter()
                .any(|c| matches!(c.phase, Phase::GaveUp { .. }))
    }

    /// The log entry of a command id.
    pub fn issued(&self, command_id: &str) -> Option<&IssuedCommand> {
        self.commands.iter().find(|c| c.command_id == command_id)
    }

    /// The commands whose result is awaited right now (the latest attempt of the forward
    /// step and of each compensation in `Awaiting`).
    pub fn outstanding_commands(&self) -> impl Iterator<Item = &IssuedCommand> {
        self.commands.iter().filter(|c| c.fate == Fate::Awaiting)
    }

    /// The request this order was created from (for comparing a repeated create).
    pub fn same_request(&self, request: &OrderRequest) -> bool {
        // created_at is left out on purpose: an upstream retry may stamp a new time on the
        // same order, and that is a duplicate, not a conflict.
        self.order_id == request.order_id
            && self.customer_id == request.customer_id
            && self.items == request.items
            && self.total_minor == request.total_minor
            && self.currency == request.currency
            && self.shipping_address == request.shipping_address
    }
}
