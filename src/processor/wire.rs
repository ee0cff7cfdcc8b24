//! The processor's private records: what it writes to its own topics for itself alone.
//!
//! Public records (inputs, commands, `order-status`) are converted in
//! [`crate::contracts::convert`]; the formats here are read by nobody but the processor,
//! so they carry a format version instead of a registry schema.

use crate::contracts::CodecError;
use crate::saga::Early;
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
