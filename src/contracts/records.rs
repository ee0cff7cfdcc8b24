//! Rust mirrors of the Avro records in `schemas/`, and their conversions to and from the
//! saga's vocabulary.
//!
//! Field names and order follow the `.avsc` files exactly: the schema-aware serializer
//! writes fields in schema order, and a struct in the same order takes its fast path.
//! Enums carry an `Unknown` symbol, the schemas' default: a writer with a newer symbol is
//! resolved to it, and the conversions below turn it into [`CodecError::InvalidField`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::CodecError;
use crate::saga::{
    Action, Address, CancelRequest, Command, Item, Millis, OrderRequest, Outcome, Status, Step,
    StepResult,
};
use crate::topics;

fn invalid(field: &str, reason: impl Into<String>) -> CodecError {
    CodecError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that an id the contract defines as a UUID is one.
fn require_uuid(field: &str, value: &str) -> Result<(), CodecError> {
    Uuid::parse_str(value)
        .map(|_| ())
        .map_err(|e| invalid(field, format!("{value:?} is not a UUID: {e}")))
}

/// Checks the shape of an ISO 4217 code; whether the shop accepts it is business logic.
fn require_currency(field: &str, value: &str) -> Result<(), CodecError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not an ISO 4217 code (three capital letters)"),
        ))
    }
}

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

impl From<ItemRecord> for Item {
    fn from(r: ItemRecord) -> Self {
        Item {
            sku: r.sku,
            quantity: r.quantity,
            unit_price_minor: r.unit_price_minor,
        }
    }
}

impl From<&Item> for ItemRecord {
    fn from(i: &Item) -> Self {
        ItemRecord {
            sku: i.sku.clone(),
            quantity: i.quantity,
            unit_price_minor: i.unit_price_minor,
        }
    }
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

impl From<AddressRecord> for Address {
    fn from(r: AddressRecord) -> Self {
        Address {
            recipient: r.recipient,
            street: r.street,
            city: r.city,
            postal_code: r.postal_code,
            country: r.country,
        }
    }
}

impl From<&Address> for AddressRecord {
    fn from(a: &Address) -> Self {
        AddressRecord {
            recipient: a.recipient.clone(),
            street: a.street.clone(),
            city: a.city.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

fn items_of(items: &[Item]) -> Vec<ItemRecord> {
    items.iter().map(ItemRecord::from).collect()
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

impl TryFrom<OrderCreate> for OrderRequest {
    type Error = CodecError;

    /// Checks the contract (UUID order id, ISO 4217 code shape) but not business rules:
    /// an empty cart or a wrong total is a valid record that the saga fails.
    fn try_from(r: OrderCreate) -> Result<Self, CodecError> {
        require_uuid("order_id", &r.order_id)?;
        require_currency("currency", &r.currency)?;
        Ok(OrderRequest {
            order_id: r.order_id,
            customer_id: r.customer_id,
            items: r.items.into_iter().map(Item::from).collect(),
            total_minor: r.total_minor,
            currency: r.currency,
            shipping_address: r.shipping_address.into(),
            created_at: r.created_at,
        })
    }
}

impl From<&OrderRequest> for OrderCreate {
    fn from(o: &OrderRequest) -> Self {
        OrderCreate {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            items: items_of(&o.items),
            total_minor: o.total_minor,
            currency: o.currency.clone(),
            shipping_address: (&o.shipping_address).into(),
            created_at: o.created_at,
        }
    }
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

impl TryFrom<OrderCancel> for CancelRequest {
    type Error = CodecError;

    fn try_from(r: OrderCancel) -> Result<Self, CodecError> {
        require_uuid("order_id", &r.order_id)?;
        Ok(CancelRequest {
            order_id: r.order_id,
            reason: r.reason,
            requested_at: r.requested_at,
        })
    }
}

impl From<&CancelRequest> for OrderCancel {
    fn from(c: &CancelRequest) -> Self {
        OrderCancel {
            order_id: c.order_id.clone(),
            reason: c.reason.clone(),
            requested_at: c.requested_at,
        }
    }
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

impl From<Action> for ActionSymbol {
    fn from(a: Action) -> Self {
        match a {
            Action::Reserve => ActionSymbol::Reserve,
            Action::Release => ActionSymbol::Release,
            Action::Charge => ActionSymbol::Charge,
            Action::Refund => ActionSymbol::Refund,
            Action::Schedule => ActionSymbol::Schedule,
            Action::Send => ActionSymbol::Send,
        }
    }
}

impl ActionSymbol {
    /// The saga action, or an error for `UNKNOWN`.
    pub fn to_action(self) -> Result<Action, CodecError> {
        match self {
            ActionSymbol::Unknown => Err(invalid(
                "action",
                "unknown action symbol (newer than this schema)",
            )),
            ActionSymbol::Reserve => Ok(Action::Reserve),
            ActionSymbol::Release => Ok(Action::Release),
            ActionSymbol::Charge => Ok(Action::Charge),
            ActionSymbol::Refund => Ok(Action::Refund),
            ActionSymbol::Schedule => Ok(Action::Schedule),
            ActionSymbol::Send => Ok(Action::Send),
        }
    }
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

impl From<Outcome> for OutcomeSymbol {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success => OutcomeSymbol::Success,
            Outcome::Failure => OutcomeSymbol::Failure,
        }
    }
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

impl From<Status> for StatusSymbol {
    fn from(s: Status) -> Self {
        match s {
            Status::Created => StatusSymbol::Created,
            Status::Reserved => StatusSymbol::Reserved,
            Status::Paid => StatusSymbol::Paid,
            Status::ShippingScheduled => StatusSymbol::ShippingScheduled,
            Status::Completed => StatusSymbol::Completed,
            Status::Failed => StatusSymbol::Failed,
            Status::Canceled => StatusSymbol::Canceled,
        }
    }
}

impl StatusSymbol {
    /// The saga status, or an error for `UNKNOWN`.
    pub fn to_status(self) -> Result<Status, CodecError> {
        match self {
            StatusSymbol::Unknown => Err(invalid(
                "status",
                "unknown status symbol (newer than this schema)",
            )),
            StatusSymbol::Created => Ok(Status::Created),
            StatusSymbol::Reserved => Ok(Status::Reserved),
            StatusSymbol::Paid => Ok(Status::Paid),
            StatusSymbol::ShippingScheduled => Ok(Status::ShippingScheduled),
            StatusSymbol::Completed => Ok(Status::Completed),
            StatusSymbol::Failed => Ok(Status::Failed),
            StatusSymbol::Canceled => Ok(Status::Canceled),
        }
    }
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

/// The suggested notification text for an order that reached `status`.
pub fn notification_message(order_id: &str, status: Status) -> String {
    let what = match status {
        Status::Created => "has been received",
        Status::Reserved => "has been reserved",
        Status::Paid => "has been paid",
        Status::ShippingScheduled => "has been scheduled for shipping",
        Status::Completed => "is complete",
        Status::Failed => "could not be completed",
        Status::Canceled => "has been cancelled",
    };
    format!("Your order {order_id} {what}.")
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

impl CommandRecord {
    /// Builds the record for `command`, taking what its service needs from `payload`.
    ///
    /// Fails only if the attempt number does not fit the schema's `int`.
    pub fn build(command: &Command, payload: &CommandPayload) -> Result<Self, CodecError> {
        let attempt = i32::try_from(command.attempt)
            .map_err(|_| invalid("attempt", format!("{} exceeds int", command.attempt)))?;
        let order_id = command.order_id.clone();
        let command_id = command.command_id.clone();
        let action = ActionSymbol::from(command.action);
        let issued_at = command.issued_at;
        Ok(match command.step() {
            Step::Inventory => CommandRecord::Inventory(InventoryCommand {
                order_id,
                command_id,
                action,
                attempt,
                issued_at,
                items: items_of(&payload.items),
            }),
            Step::Payment => CommandRecord::Payment(PaymentCommand {
                order_id,
                command_id,
                action,
                attempt,
                issued_at,
                amount_minor: payload.total_minor,
                currency: payload.currency.clone(),
                customer_id: payload.customer_id.clone(),
            }),
            Step::Shipping => CommandRecord::Shipping(ShippingCommand {
                order_id,
                command_id,
                action,
                attempt,
                issued_at,
                shipping_address: (&payload.shipping_address).into(),
                items: items_of(&payload.items),
            }),
            Step::Notification => CommandRecord::Notification(NotificationCommand {
                message: notification_message(&order_id, payload.status),
                order_id,
                command_id,
                action,
                attempt,
                issued_at,
                customer_id: payload.customer_id.clone(),
                status: payload.status.as_str().to_owned(),
            }),
        })
    }

    /// The topic this record belongs on.
    pub fn topic(&self) -> &'static str {
        match self {
            CommandRecord::Inventory(_) => topics::INVENTORY_RESERVE_REQUEST,
            CommandRecord::Payment(_) => topics::PAYMENT_PROCESS_REQUEST,
            CommandRecord::Shipping(_) => topics::SHIPPING_SCHEDULE_REQUEST,
            CommandRecord::Notification(_) => topics::NOTIFICATION_SEND_REQUEST,
        }
    }

    /// The order id, which is also the record key.
    pub fn order_id(&self) -> &str {
        match self {
            CommandRecord::Inventory(c) => &c.order_id,
            CommandRecord::Payment(c) => &c.order_id,
            CommandRecord::Shipping(c) => &c.order_id,
            CommandRecord::Notification(c) => &c.order_id,
        }
    }
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

impl StepResultRecord {
    /// Converts a result read from `step`'s result topic, refusing unknown symbols and an
    /// action that belongs to another service.
    pub fn into_step_result(self, step: Step) -> Result<StepResult, CodecError> {
        let result = StepResult::try_from(self)?;
        if result.action.step() != step {
            return Err(invalid(
                "action",
                format!(
                    "{} is not an action of the {} service",
                    result.action.as_str(),
                    step.as_str()
                ),
            ));
        }
        Ok(result)
    }
}

impl TryFrom<StepResultRecord> for StepResult {
    type Error = CodecError;

    fn try_from(r: StepResultRecord) -> Result<Self, CodecError> {
        require_uuid("order_id", &r.order_id)?;
        require_uuid("command_id", &r.command_id)?;
        let action = r.action.to_action()?;
        let outcome = match r.outcome {
            OutcomeSymbol::Success => Outcome::Success,
            OutcomeSymbol::Failure => Outcome::Failure,
            OutcomeSymbol::Unknown => {
                return Err(invalid(
                    "outcome",
                    "unknown outcome symbol (newer than this schema)",
                ))
            }
        };
        Ok(StepResult {
            order_id: r.order_id,
            command_id: r.command_id,
            action,
            outcome,
            reason: r.reason,
            retriable: r.retriable,
            produced_at: r.produced_at,
        })
    }
}

impl From<&StepResult> for StepResultRecord {
    fn from(r: &StepResult) -> Self {
        StepResultRecord {
            order_id: r.order_id.clone(),
            command_id: r.command_id.clone(),
            action: r.action.into(),
            outcome: r.outcome.into(),
            reason: r.reason.clone(),
            retriable: r.retriable,
            produced_at: r.produced_at,
        }
    }
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

impl OrderStatusRecord {
    /// The saga status, or an error for `UNKNOWN`.
    pub fn status(&self) -> Result<Status, CodecError> {
        self.status.to_status()
    }

    /// Converts saga items for the `items` field.
    pub fn items_from(items: &[Item]) -> Vec<ItemRecord> {
        items_of(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn payload() -> CommandPayload {
        CommandPayload {
            customer_id: "c-1".into(),
            items: vec![Item {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 250,
            }],
            total_minor: 500,
            currency: "EUR".into(),
            shipping_address: Address {
                recipient: "Ada".into(),
                street: "Main St 1".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
            status: Status::ShippingScheduled,
        }
    }

    fn command(action: Action) -> Command {
        Command {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            command_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            action,
            attempt: 2,
            issued_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn each_action_builds_the_record_of_its_service() {
        for action in Action::ALL {
            let record = CommandRecord::build(&command(action), &payload()).unwrap();
            assert_eq!(record.topic(), topics::command_topic(action));
            assert_eq!(record.order_id(), "0f8fad5b-d9cb-469f-a165-70867728950e");
        }
        let CommandRecord::Payment(p) =
            CommandRecord::build(&command(Action::Refund), &payload()).unwrap()
        else {
            panic!("not a payment command")
        };
        assert_eq!(
            (p.amount_minor, p.currency.as_str(), p.attempt),
            (500, "EUR", 2)
        );
        let CommandRecord::Notification(n) =
            CommandRecord::build(&command(Action::Send), &payload()).unwrap()
        else {
            panic!("not a notification command")
        };
        assert_eq!(n.status, "SHIPPING_SCHEDULED");
        assert!(
            n.message.contains("scheduled for shipping"),
            "{}",
            n.message
        );
    }

    #[test]
    fn an_attempt_beyond_int_is_refused() {
        let mut c = command(Action::Reserve);
        c.attempt = u32::MAX;
        assert!(matches!(
            CommandRecord::build(&c, &payload()),
            Err(CodecError::InvalidField { field, .. }) if field == "attempt"
        ));
    }

    fn result_record() -> StepResultRecord {
        StepResultRecord {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            command_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            action: ActionSymbol::Charge,
            outcome: OutcomeSymbol::Failure,
            reason: Some("card declined".into()),
            retriable: true,
            produced_at: 5,
        }
    }

    #[test]
    fn a_result_converts_to_the_saga_result_of_its_step_only() {
        let r = result_record().into_step_result(Step::Payment).unwrap();
        assert_eq!((r.action, r.outcome), (Action::Charge, Outcome::Failure));
        assert_eq!(StepResultRecord::from(&r), result_record());
        let err = result_record()
            .into_step_result(Step::Inventory)
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_field");
    }

    #[test]
    fn unknown_symbols_and_malformed_ids_are_invalid_fields() {
        let cases = [
            (
                StepResultRecord {
                    action: ActionSymbol::Unknown,
                    ..result_record()
                },
                "action",
            ),
            (
                StepResultRecord {
                    outcome: OutcomeSymbol::Unknown,
                    ..result_record()
                },
                "outcome",
            ),
            (
                StepResultRecord {
                    command_id: "cmd-1".into(),
                    ..result_record()
                },
                "command_id",
            ),
        ];
        for (record, expected) in cases {
            match StepResult::try_from(record) {
                Err(CodecError::InvalidField { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert!(StatusSymbol::Unknown.to_status().is_err());
        for s in Status::ALL {
            assert_eq!(StatusSymbol::from(s).to_status().unwrap(), s);
        }
    }

    #[test]
    fn an_order_create_checks_the_contract_not_the_business_rules() {
        let order = OrderRequest {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            customer_id: "c-1".into(),
            items: vec![],
            total_minor: -1,
            currency: "EUR".into(),
            shipping_address: payload().shipping_address,
            created_at: 1,
        };
        // An empty cart and a negative total are for the saga to refuse.
        assert_eq!(
            OrderRequest::try_from(OrderCreate::from(&order)).unwrap(),
            order
        );
        let bad_currency = OrderCreate {
            currency: "eur".into(),
            ..OrderCreate::from(&order)
        };
        assert!(OrderRequest::try_from(bad_currency).is_err());
        let bad_id = OrderCancel {
            order_id: "42".into(),
            reason: "r".into(),
            requested_at: 1,
        };
        assert!(CancelRequest::try_from(bad_id).is_err());
    }
}
