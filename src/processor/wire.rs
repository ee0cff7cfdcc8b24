//! The processor's private records: what it writes to its own topics for itself alone.
//!
//! Public records (inputs, commands, `order-status`) are converted in
//! [`crate::contracts::convert`]; the formats here are read by nobody but the processor,
//! so they carry a format version instead of a registry schema.

use crate::contracts::CodecError;
use crate::saga::{Early, Finished, OrderState, Status};
use crate::topics;

pub type WireError = CodecError;

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

// The `order-state` changelog (private to the processor).
//
// Keys: an order's state is under its id (UTF-8, as everywhere); a finished-order record
// under 0xFF and the 8 big-endian bytes of its `finished_key`; the marker that says a
// partition of the changelog is complete under the single byte 0xFE. Neither of the last
// two is valid UTF-8, so no order id (the processor dead-letters non-UTF-8 keys) can
// collide with them.
//
// Values start with a format byte and a kind byte, so that a later encoding can be told
// apart and read side by side with this one:
//
// - kind 1, order state: the state as JSON (format 1);
// - kind 2, finished record: status byte, version (u32 BE), finished-at (i64 BE ms):
//   15 bytes in all;
// - kind 3, complete marker: when it was written (i64 BE ms).

/// The format byte of `order-state` values written by this version.
pub const STATE_FORMAT: u8 = 1;
const KIND_ORDER: u8 = 1;
const KIND_FINISHED: u8 = 2;
const KIND_COMPLETE: u8 = 3;
const FINISHED_KEY_TAG: u8 = 0xFF;
/// The key of the marker that says a changelog partition holds every entry.
pub const COMPLETE_KEY: [u8; 1] = [0xFE];

/// What an `order-state` key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateKey<'a> {
    Order(&'a str),
    Finished(u64),
    Complete,
}

/// The key of a finished record.
pub fn finished_state_key(key: u64) -> [u8; 9] {
    let mut out = [FINISHED_KEY_TAG; 9];
    out[1..].copy_from_slice(&key.to_be_bytes());
    out
}

/// What an `order-state` key names, or `None` for a key this version does not know.
pub fn parse_state_key(bytes: &[u8]) -> Option<StateKey<'_>> {
    match bytes {
        [FINISHED_KEY_TAG, rest @ ..] => {
            let b: [u8; 8] = rest.try_into().ok()?;
            Some(StateKey::Finished(u64::from_be_bytes(b)))
        }
        b if b == COMPLETE_KEY => Some(StateKey::Complete),
        b => std::str::from_utf8(b).ok().map(StateKey::Order),
    }
}

/// A decoded `order-state` value.
#[derive(Debug, Clone, PartialEq)]
pub enum StateValue {
    Order(Box<OrderState>),
    Finished(Finished),
    Complete { at: crate::saga::Millis },
}

fn state_error(reason: String) -> WireError {
    CodecError::InvalidField {
        field: "order-state".to_string(),
        reason,
    }
}

/// The `order-state` value of an order's state.
pub fn encode_state(state: &OrderState) -> Result<Vec<u8>, WireError> {
    Ok(state_value(&crate::contracts::convert::state_json(state)?))
}

/// The `order-state` value of a state whose JSON is already made (the status record
/// carries the same JSON).
pub fn state_value(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 2);
    out.extend_from_slice(&[STATE_FORMAT, KIND_ORDER]);
    out.extend_from_slice(json.as_bytes());
    out
}

/// The `order-state` value of a finished record.
pub fn encode_finished(f: &Finished) -> Vec<u8> {
    let mut out = Vec::with_capacity(15);
    out.extend_from_slice(&[STATE_FORMAT, KIND_FINISHED, status_byte(f.status)]);
    out.extend_from_slice(&f.version.to_be_bytes());
    out.extend_from_slice(&f.finished_at.to_be_bytes());
    out
}

/// The `order-state` value of the complete marker.
pub fn encode_complete(at: crate::saga::Millis) -> Vec<u8> {
    let mut out = vec![STATE_FORMAT, KIND_COMPLETE];
    out.extend_from_slice(&at.to_be_bytes());
    out
}

/// Decodes an `order-state` value.
pub fn decode_state(payload: &[u8]) -> Result<StateValue, WireError> {
    match payload {
        [STATE_FORMAT, KIND_ORDER, json @ ..] => serde_json::from_slice(json)
            .map(|s| StateValue::Order(Box::new(s)))
            .map_err(|e| state_error(e.to_string())),
        [STATE_FORMAT, KIND_FINISHED, status, rest @ ..] => {
            let status = status_of_byte(*status)
                .ok_or_else(|| state_error(format!("unknown status byte {status}")))?;
            let (version, at) = rest
                .split_first_chunk::<4>()
                .and_then(|(v, r)| Some((v, <[u8; 8]>::try_from(r).ok()?)))
                .ok_or_else(|| state_error("finished record of the wrong length".into()))?;
            Ok(StateValue::Finished(Finished {
                status,
                version: u32::from_be_bytes(*version),
                finished_at: i64::from_be_bytes(at),
            }))
        }
        [STATE_FORMAT, KIND_COMPLETE, rest @ ..] => {
            let at = <[u8; 8]>::try_from(rest)
                .map_err(|_| state_error("complete marker of the wrong length".into()))?;
            Ok(StateValue::Complete {
                at: i64::from_be_bytes(at),
            })
        }
        [STATE_FORMAT, kind, ..] => Err(state_error(format!("unknown kind {kind}"))),
        [format, ..] => Err(state_error(format!("unknown format {format}"))),
        [] => Err(state_error("empty value".into())),
    }
}

/// Status bytes of finished records: fixed, as they are stored.
fn status_byte(s: Status) -> u8 {
    match s {
        Status::Created => 0,
        Status::Reserved => 1,
        Status::Paid => 2,
        Status::ShippingScheduled => 3,
        Status::Completed => 4,
        Status::Failed => 5,
        Status::Canceled => 6,
    }
}

fn status_of_byte(b: u8) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status_byte(*s) == b)
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn a_finished_record_round_trips_in_fifteen_bytes() {
        let f = Finished {
            status: Status::Canceled,
            version: 7,
            finished_at: 1_750_000_000_123,
        };
        let bytes = encode_finished(&f);
        assert_eq!(bytes.len(), 15);
        assert_eq!(decode_state(&bytes).ok(), Some(StateValue::Finished(f)));
        assert_eq!(
            &bytes[..3],
            &[STATE_FORMAT, KIND_FINISHED, 6],
            "format, kind and status bytes are fixed"
        );
    }

    #[test]
    fn every_status_has_its_own_byte() {
        for s in Status::ALL {
            assert_eq!(status_of_byte(status_byte(s)), Some(s));
        }
    }

    #[test]
    fn keys_of_records_and_of_the_marker_never_read_as_order_ids() {
        let k = finished_state_key(0x0102_0304_0506_0708);
        assert_eq!(
            parse_state_key(&k),
            Some(StateKey::Finished(0x0102_0304_0506_0708))
        );
        assert_eq!(parse_state_key(&COMPLETE_KEY), Some(StateKey::Complete));
        assert_eq!(parse_state_key(b"o-1"), Some(StateKey::Order("o-1")));
        assert_eq!(parse_state_key(&[0xFF, 1]), None);
    }

    #[test]
    fn a_value_of_an_unknown_format_or_kind_is_refused() {
        assert!(decode_state(&[9, KIND_ORDER]).is_err());
        assert!(decode_state(&[STATE_FORMAT, 9]).is_err());
        assert!(decode_state(&[STATE_FORMAT, KIND_FINISHED, 0, 1]).is_err());
        assert_eq!(
            decode_state(&encode_complete(5)).ok(),
            Some(StateValue::Complete { at: 5 })
        );
    }
}
