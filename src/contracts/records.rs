//! Rust mirrors of the Avro records in `schemas/`, field by field. Their conversions to
//! and from the saga's vocabulary are all in [`super::convert`].
//!
//! Field names and order follow the `.avsc` files exactly: the schema-aware serializer
//! writes fields in schema order, and a struct in the same order takes its fast path.
//! Enums carry an `Unknown` symbol, the schemas' default: a writer with a newer symbol is
//! resolved to it, and the conversions turn it into [`CodecError::InvalidField`].

use serde::{Deserialize, Serialize};

use crate::saga::{Address, Item, Millis, Status};

/// `OrderItem`: one line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Stock-keeping unit.
    pub sku: String,
    /// Units ordered.
    pub quantity: i32,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
}

/// `ShippingAddress`: where the goods go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// Person or company receiving the goods.
    pub recipient: String,
    /// Street and house number.
    pub street: String,
    /// City or town.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// `order-create-request`: an order as an upstream service submits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreate {
    /// Order id, a UUID; also the record key.
    pub order_id: String,
    /// Customer who placed the order.
    pub customer_id: String,
    /// Order lines.
    pub items: Vec<ItemRecord>,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Delivery address.
    pub shipping_address: AddressRecord,
    /// When the order was placed (epoch millis).
    pub created_at: Millis,
}

/// `order-cancel-request`: a request to cancel an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancel {
    /// Order id, a UUID.
    pub order_id: String,
    /// Why, in plain words.
    pub reason: String,
    /// When the cancellation was requested (epoch millis).
    pub requested_at: Millis,
}

/// The symbols of the four action enums together. Each topic's schema allows only its
/// service's actions plus `UNKNOWN`; encoding another action for that topic fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionSymbol {
    /// The default: a symbol this version does not know.
    Unknown,
    /// Inventory: reserve the items.
    Reserve,
    /// Inventory: release a reservation.
    Release,
    /// Payment: charge the customer.
    Charge,
    /// Payment: refund a charge.
    Refund,
    /// Shipping: schedule delivery.
    Schedule,
    /// Notification: send a message.
    Send,
}

/// The symbols of the `Outcome` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeSymbol {
    /// The default: a symbol this version does not know.
    Unknown,
    /// The action was carried out.
    Success,
    /// The action was not carried out.
    Failure,
}

/// The symbols of the `OrderStatusValue` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusSymbol {
    /// The default: a symbol this version does not know. Never written.
    Unknown,
    /// See [`Status::Created`].
    Created,
    /// See [`Status::Reserved`].
    Reserved,
    /// See [`Status::Paid`].
    Paid,
    /// See [`Status::ShippingScheduled`].
    ShippingScheduled,
    /// See [`Status::Completed`].
    Completed,
    /// See [`Status::Failed`].
    Failed,
    /// See [`Status::Canceled`].
    Canceled,
}

/// `inventory-reserve-request`: RESERVE or RELEASE the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryCommand {
    /// Order id.
    pub order_id: String,
    /// Deterministic command id.
    pub command_id: String,
    /// `RESERVE` or `RELEASE`.
    pub action: ActionSymbol,
    /// From 1.
    pub attempt: i32,
    /// Epoch millis.
    pub issued_at: Millis,
    /// Items to reserve or release.
    pub items: Vec<ItemRecord>,
}

/// `payment-process-request`: CHARGE or REFUND the order's total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCommand {
    /// Order id.
    pub order_id: String,
    /// Deterministic command id.
    pub command_id: String,
    /// `CHARGE` or `REFUND`.
    pub action: ActionSymbol,
    /// From 1.
    pub attempt: i32,
    /// Epoch millis.
    pub issued_at: Millis,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Customer to charge or refund.
    pub customer_id: String,
}

/// `shipping-schedule-request`: SCHEDULE delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingCommand {
    /// Order id.
    pub order_id: String,
    /// Deterministic command id.
    pub command_id: String,
    /// `SCHEDULE`.
    pub action: ActionSymbol,
    /// From 1.
    pub attempt: i32,
    /// Epoch millis.
    pub issued_at: Millis,
    /// Where to deliver.
    pub shipping_address: AddressRecord,
    /// What to deliver.
    pub items: Vec<ItemRecord>,
}

/// `notification-send-request`: SEND the customer a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationCommand {
    /// Order id.
    pub order_id: String,
    /// Deterministic command id.
    pub command_id: String,
    /// `SEND`.
    pub action: ActionSymbol,
    /// From 1.
    pub attempt: i32,
    /// Epoch millis.
    pub issued_at: Millis,
    /// Customer to notify.
    pub customer_id: String,
    /// Order status the message is about, e.g. `SHIPPING_SCHEDULED`.
    pub status: String,
    /// Suggested text; may be empty.
    pub message: String,
}

/// The order data a command carries besides the [`Command`] itself; filled from the
/// order's saga state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPayload {
    /// Customer who placed the order.
    pub customer_id: String,
    /// Order lines.
    pub items: Vec<Item>,
    /// Total in minor units; the amount charged or refunded.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Delivery address.
    pub shipping_address: Address,
    /// The order's status once this command is issued; the notification is about it.
    pub status: Status,
}

/// A command record for any of the four command topics.
///
/// It serializes as the inner record (no tag), so it can be passed straight to
/// [`Codec::encode`](super::Codec::encode) with [`CommandRecord::topic`]. It does not
/// implement `Deserialize`: without the topic, an inventory and a shipping command
/// cannot be told apart; decode into the specific record type instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CommandRecord {
    /// For `inventory-reserve-request`.
    Inventory(InventoryCommand),
    /// For `payment-process-request`.
    Payment(PaymentCommand),
    /// For `shipping-schedule-request`.
    Shipping(ShippingCommand),
    /// For `notification-send-request`.
    Notification(NotificationCommand),
}

/// A downstream service's answer, on any of the four `*-result` topics (their schemas
/// differ only in the action symbols).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResultRecord {
    /// Order id.
    pub order_id: String,
    /// The command answered.
    pub command_id: String,
    /// The action of that command.
    pub action: ActionSymbol,
    /// `SUCCESS` or `FAILURE`.
    pub outcome: OutcomeSymbol,
    /// Why it failed.
    pub reason: Option<String>,
    /// Whether asking again may succeed.
    pub retriable: bool,
    /// Epoch millis.
    pub produced_at: Millis,
}

/// `order-status`: the current state of one order, the compacted changelog and public
/// status stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusRecord {
    /// Order id.
    pub order_id: String,
    /// Current status.
    pub status: StatusSymbol,
    /// Incremented on every change.
    pub version: i64,
    /// Customer who placed the order.
    pub customer_id: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Why it failed or was cancelled, or why a cancellation was refused.
    pub reason: Option<String>,
    /// Epoch millis of the last change.
    pub updated_at: Millis,
    /// Epoch millis when the order was placed.
    pub created_at: Option<Millis>,
    /// Order lines.
    pub items: Vec<ItemRecord>,
    /// Delivery address.
    pub shipping_address: Option<AddressRecord>,
    /// Opaque JSON of the saga state, to restore it from the changelog. Not a public
    /// contract.
    pub saga_state: Option<String>,
}
