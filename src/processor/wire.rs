//! The processor's view of the contracts: saga types in, wire bytes out.

use crate::contracts::records::{CommandPayload, CommandRecord, OrderStatusRecord};
use crate::contracts::{Codec, CodecError};
use crate::saga::{Action, Command, Early, Event, OrderState};
use crate::topics;

pub type WireError = CodecError;

/// Decodes a record of the input topic `base` (its fixed name) into a saga event.
pub async fn decode_event(codec: &Codec, base: &str, payload: &[u8]) -> Result<Event, WireError> {
    codec.decode_event(base, payload).await
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

/// Whether `action` undoes an earlier step.
pub fn is_compensation(action: Action) -> bool {
    match action {
        Action::Release | Action::Refund => true,
        Action::Reserve | Action::Charge | Action::Schedule | Action::Send => false,
    }
}

/// The public status record of `state`, carrying the full saga state for restores.
pub fn status_record(state: &OrderState) -> Result<OrderStatusRecord, WireError> {
    let saga_state = serde_json::to_string(state).map_err(|e| CodecError::Encode {
        topic: topics::ORDER_STATUS.to_string(),
        reason: e.to_string(),
    })?;
    Ok(OrderStatusRecord {
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
    })
}

pub async fn encode_status(codec: &Codec, state: &OrderState) -> Result<Vec<u8>, WireError> {
    codec
        .encode(topics::ORDER_STATUS, &status_record(state)?)
        .await
}

pub async fn encode_command(
    codec: &Codec,
    command: &Command,
    state: &OrderState,
) -> Result<Vec<u8>, WireError> {
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

/// The saga state carried by a changelog record; `None` for a record without one (written
/// by something other than the processor).
pub async fn decode_status(codec: &Codec, payload: &[u8]) -> Result<Option<OrderState>, WireError> {
    let record: OrderStatusRecord = codec.decode(topics::ORDER_STATUS, payload).await?;
    match record.saga_state {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| CodecError::InvalidField {
                field: "saga_state".to_string(),
                reason: e.to_string(),
            }),
    }
}

/// The format of `order-early-events` values: a version, so that a later encoding can be
/// told apart, and the held events.
#[derive(serde::Serialize, serde::Deserialize)]
struct EarlyRecord {
    format: u32,
    early: Early,
}

const EARLY_FORMAT: u32 = 1;

/// The `order-early-events` value of `early` (private to the processor: JSON, versioned).
pub fn encode_early(early: &Early) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(&EarlyRecord {
        format: EARLY_FORMAT,
        early: early.clone(),
    })
    .map_err(|e| CodecError::Encode {
        topic: topics::ORDER_EARLY_EVENTS.to_string(),
        reason: e.to_string(),
    })
}

/// The held events of an `order-early-events` value.
pub fn decode_early(payload: &[u8]) -> Result<Early, WireError> {
    let record: EarlyRecord =
        serde_json::from_slice(payload).map_err(|e| CodecError::InvalidField {
            field: "early".to_string(),
            reason: e.to_string(),
        })?;
    if record.format != EARLY_FORMAT {
        return Err(CodecError::InvalidField {
            field: "format".to_string(),
            reason: format!("unknown early-events format {}", record.format),
        });
    }
    Ok(record.early)
}
