//! The schema-registry wire format: magic byte `0`, the writer schema's id as a 4-byte
//! big-endian integer, then the Avro binary datum.
//!
//! These functions only frame and unframe bytes; they never talk to a registry, so they
//! can be tested (and used) with a fixed id.

use super::CodecError;

/// The first byte of every framed value.
pub const MAGIC_BYTE: u8 = 0;

/// Length of the header in front of the Avro datum: magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Starts a framed value: the header for `schema_id`, with room for `datum_len` more bytes.
pub fn header(schema_id: u32, datum_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum_len);
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out
}

/// Frames an Avro datum written with the schema `schema_id`.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = header(schema_id, datum.len());
    out.extend_from_slice(datum);
    out
}

/// Splits a framed value into the writer schema id and the Avro datum.
///
/// An empty value (e.g. a tombstone), a value shorter than the header, and a value that
/// does not start with the magic byte are distinct errors, so the dead-letter reason says
/// which.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [] => Err(CodecError::EmptyPayload),
        [magic, ..] if *magic != MAGIC_BYTE => Err(CodecError::BadMagicByte { found: *magic }),
        [_, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        short => Err(CodecError::ShortPayload { len: short.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_puts_magic_byte_and_big_endian_id_in_front() {
        let framed = frame(0x0102_0304, &[9, 8, 7]);
        assert_eq!(framed, vec![0, 1, 2, 3, 4, 9, 8, 7]);
        assert_eq!(unframe(&framed).unwrap(), (0x0102_0304, &[9u8, 8, 7][..]));
    }

    #[test]
    fn a_header_without_datum_is_accepted_as_an_empty_datum() {
        // An Avro record with no fields encodes to zero bytes, so this is not an error here.
        assert_eq!(unframe(&[0, 0, 0, 0, 7]).unwrap(), (7, &[][..]));
    }

    #[test]
    fn empty_short_and_bad_magic_payloads_are_told_apart() {
        assert!(matches!(unframe(&[]), Err(CodecError::EmptyPayload)));
        assert!(matches!(
            unframe(&[0, 0, 1]),
            Err(CodecError::ShortPayload { len: 3 })
        ));
        assert!(matches!(
            unframe(&[1, 0, 0, 0, 1, 2]),
            Err(CodecError::BadMagicByte { found: 1 })
        ));
        // JSON sent by mistake starts with '{'.
        assert!(matches!(
            unframe(b"{\"order_id\":1}"),
            Err(CodecError::BadMagicByte { found: b'{' })
        ));
    }
}
