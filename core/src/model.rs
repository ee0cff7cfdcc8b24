//! The saga's vocabulary: orders, events, commands and the per-order state.
//!
//! Everything here is plain data. Times are milliseconds since the Unix epoch, passed in
//! by the caller, so the saga never reads a clock.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The lifecycle of an order. Terminal statuses are `Completed`, `Failed` and `Canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Accepted and valid; the inventory reservation is under way.
    Created,
    /// Stock is reserved; the payment is under way.
    Reserved,
    /// Paid; shipping is being scheduled.
    Paid,
    /// Shipping is scheduled (goods are on their way); the customer is being notified.
    ShippingScheduled,
    /// The customer was notified. Terminal.
    Completed,
    /// Invalid, failed, or needs manual action. Terminal.
    Failed,
    /// Canceled on request or after a shipping failure; compensations may still run. Terminal.
    Canceled,
}

impl Status {
    /// Every status, in saga order.
    pub const ALL: [Status; 7] = [
        Status::Created,
        Status::Reserved,
        Status::Paid,
        Status::ShippingScheduled,
        Status::Completed,
        Status::Failed,
        Status::Canceled,
    ];

    /// The wire and database spelling, e.g. `SHIPPING_SCHEDULED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::Reserved => "RESERVED",
            Status::Paid => "PAID",
            Status::ShippingScheduled => "SHIPPING_SCHEDULED",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Canceled => "CANCELED",
        }
    }

    /// The inverse of [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// `Completed`, `Failed` and `Canceled`: no forward step runs any more (compensations
    /// still may, see `OrderState::is_settled`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Canceled)
    }
}

/// A downstream service, one per step of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// Reserves and releases stock.
    Inventory,
    /// Charges and refunds.
    Payment,
    /// Schedules the shipment.
    Shipping,
    /// Tells the customer.
    Notification,
}

impl Step {
    /// Every step, in saga order.
    pub const ALL: [Step; 4] = [
        Step::Inventory,
        Step::Payment,
        Step::Shipping,
        Step::Notification,
    ];

    /// The wire spelling, e.g. `INVENTORY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Inventory => "INVENTORY",
            Step::Payment => "PAYMENT",
            Step::Shipping => "SHIPPING",
            Step::Notification => "NOTIFICATION",
        }
    }
}

/// What a command asks a downstream service to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Inventory: reserve the order's items.
    Reserve,
    /// Inventory: release a reservation (compensation).
    Release,
    /// Payment: charge the order's total.
    Charge,
    /// Payment: refund a charge (compensation).
    Refund,
    /// Shipping: schedule the shipment.
    Schedule,
    /// Notification: tell the customer.
    Send,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 6] = [
        Action::Reserve,
        Action::Release,
        Action::Charge,
        Action::Refund,
        Action::Schedule,
        Action::Send,
    ];

    /// The service that performs this action.
    pub fn step(self) -> Step {
        match self {
            Action::Reserve | Action::Release => Step::Inventory,
            Action::Charge | Action::Refund => Step::Payment,
            Action::Schedule => Step::Shipping,
            Action::Send => Step::Notification,
        }
    }

    /// The wire spelling, e.g. `RESERVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reserve => "RESERVE",
            Action::Release => "RELEASE",
            Action::Charge => "CHARGE",
            Action::Refund => "REFUND",
            Action::Schedule => "SCHEDULE",
            Action::Send => "SEND",
        }
    }

    /// The inverse of [`Action::as_str`].
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// How a downstream service answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The service did what the command asked.
    Success,
    /// The service did not; see `retriable`.
    Failure,
}

/// One cart line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// Units ordered; must be positive.
    pub quantity: i32,
    /// Price of one unit in minor units of the order's currency; must be positive.
    pub unit_price_minor: i64,
}

/// Where the goods go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Who receives the parcel.
    pub recipient: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code; may be empty where a country has none.
    pub postal_code: String,
    /// Country.
    pub country: String,
}

/// An order as an upstream service asked for it (`order-create-request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The order's id (a UUID by contract), also the record key.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The cart.
    pub items: Vec<Item>,
    /// Must equal the sum of quantity × unit price over the items.
    pub total_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// When the upstream service created the order.
    pub created_at: Millis,
}

/// A downstream service's answer to one command (the `*-result` topics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// The order the answered command belongs to.
    pub order_id: String,
    /// The command this answers.
    pub command_id: String,
    /// The action of the answered command; must agree with it.
    pub action: Action,
    /// Whether the service did it.
    pub outcome: Outcome,
    /// Why it failed (or any note).
    pub reason: Option<String>,
    /// The service may succeed if asked again.
    pub retriable: bool,
    /// When the service produced the result.
    pub produced_at: Millis,
}

/// A request to cancel an order (`order-cancel-request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The order to cancel.
    pub order_id: String,
    /// Why, as the requester put it.
    pub reason: String,
    /// When it was requested.
    pub requested_at: Millis,
}

/// Everything that can happen to one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A record of `order-create-request`.
    Create(OrderRequest),
    /// A record of one of the four `*-result` topics.
    Result(StepResult),
    /// A record of `order-cancel-request`.
    Cancel(CancelRequest),
    /// Time has moved on: expire deadlines and fire due retries whose time is `<= now`.
    Tick,
}

/// A command to a downstream service. The payload (items, amount, address, …) is taken
/// from the order state by the encoder, so the command itself stays small.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// The order this command serves (also the record key).
    pub order_id: String,
    /// UUID v5 of (order id, step, action, attempt): a replay is byte-identical.
    pub command_id: String,
    /// What to do.
    pub action: Action,
    /// From 1. Attempt numbers are counted per (order, action) and never reused, so a
    /// second series of the same compensation continues past the first one's numbers.
    pub attempt: u32,
    /// The `now` of the decision that issued it. A replay re-derives the same command id
    /// but may carry a different `issued_at`; downstream services deduplicate by id.
    pub issued_at: Millis,
}

impl Command {
    /// The service this command goes to.
    pub fn step(&self) -> Step {
        self.action.step()
    }
}
