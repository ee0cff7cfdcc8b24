//! The one place where saga types become topic records and back.
//!
//! Everything the saga core speaks (orders, events, commands, states) meets the Avro
//! mirrors of [`super::records`] here: the field-by-field mappings, the checks a record
//! must pass to become a saga value (UUIDs, currencies, `UNKNOWN` symbols), and the whole
//! conversions the processor, the sink and `explain` call — an input record to an
//! [`Event`], an [`OrderState`] to its `order-status` record, a [`Command`] to its
//! command record. Bytes go through [`Codec`]; nothing here decides anything.

use uuid::Uuid;

use super::records::*;
use super::{Codec, CodecError};
use crate::saga::{
    Action, Address, CancelRequest, Command, Event, Item, OrderRequest, OrderState, Outcome,
    Status, Step, StepResult,
};
use crate::topics;

/// Decodes a value of one of the processor's input topics (`topic`: its fixed name) into
/// a saga event, checking the contract on the way.
pub async fn decode_event(codec: &Codec, topic: &str, bytes: &[u8]) -> Result<Event, CodecError> {
    if topic == topics::ORDER_CREATE_REQUEST {
        let record: OrderCreate = codec.decode(topic, bytes).await?;
        return Ok(Event::Create(record.try_into()?));
    }
    if topic == topics::ORDER_CANCEL_REQUEST {
        let record: OrderCancel = codec.decode(topic, bytes).await?;
        return Ok(Event::Cancel(record.try_into()?));
    }
    match topics::step_of_result_topic(topic) {
        Some(step) => {
            let record: StepResultRecord = codec.decode(topic, bytes).await?;
            Ok(Event::Result(record.into_step_result(step)?))
        }
        None => Err(CodecError::UnknownTopic {
            topic: topic.to_owned(),
        }),
    }
}

/// The order an event is about, for checking it against the record key.
pub fn event_order_id(event: &Event) -> Option<&str> {
    match event {
        Event::Create(o) => Some(&o.order_id),
        Event::Result(r) => Some(&r.order_id),
        Event::Cancel(c) => Some(&c.order_id),
        Event::Tick => None,
    }
}

/// The saga state as the JSON that both changelogs carry: serialized once per change and
/// handed to [`encode_status_with`] and the processor's private `order-state` record.
pub fn state_json(state: &OrderState) -> Result<String, CodecError> {
    serde_json::to_string(state).map_err(|e| CodecError::Encode {
        topic: topics::ORDER_STATUS.to_string(),
        reason: e.to_string(),
    })
}

/// The public status record of `state`, carrying the full saga state for restores.
pub fn status_record(state: &OrderState) -> Result<OrderStatusRecord, CodecError> {
    Ok(status_record_with(state, state_json(state)?))
}

/// [`status_record`] with the state's JSON already made.
fn status_record_with(state: &OrderState, saga_state: String) -> OrderStatusRecord {
    OrderStatusRecord {
        order_id: state.order_id.clone(),
        status: state.status.into(),
        version: state.version,
        customer_id: state.customer_id.clone(),
        total_minor: state.total_minor,
        currency: state.currency.clone(),
        reason: state.reason.clone(),
        updated_at: state.updated_at,
        created_at: Some(state.created_at),
        items: OrderStatusRecord::items_from(&state.items),
        shipping_address: Some((&state.shipping_address).into()),
        saga_state: Some(saga_state),
    }
}

/// The `order-status` value of `state`.
pub async fn encode_status(codec: &Codec, state: &OrderState) -> Result<Vec<u8>, CodecError> {
    encode_status_with(codec, state, state_json(state)?).await
}

/// [`encode_status`] with the state's JSON (from [`state_json`]) already made.
pub async fn encode_status_with(
    codec: &Codec,
    state: &OrderState,
    saga_state: String,
) -> Result<Vec<u8>, CodecError> {
    codec
        .encode(topics::ORDER_STATUS, &status_record_with(state, saga_state))
        .await
}

/// The public record of an `order-status` value.
pub async fn decode_status_record(
    codec: &Codec,
    bytes: &[u8],
) -> Result<OrderStatusRecord, CodecError> {
    codec.decode(topics::ORDER_STATUS, bytes).await
}

/// The saga state an `order-status` record carries; `None` for a record without one
/// (written by something other than the processor).
pub fn state_of(record: &OrderStatusRecord) -> Result<Option<OrderState>, CodecError> {
    match &record.saga_state {
        None => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| CodecError::InvalidField {
                field: "saga_state".to_string(),
                reason: e.to_string(),
            }),
    }
}

/// The saga state carried by an `order-status` value (see [`state_of`]).
pub async fn decode_status(codec: &Codec, bytes: &[u8]) -> Result<Option<OrderState>, CodecError> {
    state_of(&decode_status_record(codec, bytes).await?)
}

/// The record value of `command`, issued for the order in `state`.
pub async fn encode_command(
    codec: &Codec,
    command: &Command,
    state: &OrderState,
) -> Result<Vec<u8>, CodecError> {
    let payload = CommandPayload {
        customer_id: state.customer_id.clone(),
        items: state.items.clone(),
        total_minor: state.total_minor,
        currency: state.currency.clone(),
        shipping_address: state.shipping_address.clone(),
        status: state.status,
    };
    let record = CommandRecord::build(command, &payload)?;
    codec.encode(record.topic(), &record).await
}

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

impl From<Outcome> for OutcomeSymbol {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success => OutcomeSymbol::Success,
            Outcome::Failure => OutcomeSymbol::Failure,
        }
    }
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
