//! The Avro contracts of every topic: records, schemas, the wire format, and the registry.
//!
//! - [`schemas`]: the `.avsc` files of `schemas/`, compiled in and parsed once, keyed by
//!   topic; subjects follow TopicNameStrategy (`<topic>-value`).
//! - [`records`]: Rust mirrors of those records, field by field.
//! - [`convert`]: the one place where saga types ([`crate::saga`]) become topic records
//!   and back; the processor, the sink and `explain` all go through it.
//! - [`framing`]: the schema-registry framing (magic byte `0`, 4-byte big-endian schema id,
//!   Avro binary).
//! - [`codec`]: [`Codec`], which encodes with our schema under its registry id and decodes
//!   with the writer's schema resolved to ours; [`CodecError`] says whether a failure is
//!   the record's fault (dead-letter), transient (retry) or neither (stop).
//! - [`compat`]: plain-words reasons why a new schema cannot read old data.
//! - [`registry`]: [`RegistryClient`] for the Confluent-compatible API (Apicurio serves it
//!   at `/apis/ccompat/v7`), with [`register_all`] and [`check_all`] behind
//!   `order-saga schemas register` and `order-saga schemas check`.
//!
//! # Evolution rules
//!
//! Every subject is BACKWARD_TRANSITIVE: a new version must read everything written with
//! every earlier version. In practice: add fields only with a default, never remove a
//! field without a default or change a field's type, add enum symbols freely (every enum
//! has the default symbol `UNKNOWN`, which older readers fall back to and which the
//! conversions here reject as an invalid field).

pub mod codec;
pub mod compat;
pub mod convert;
pub mod framing;
pub mod records;
pub mod registry;
pub mod schemas;

pub use codec::{decode_datum, encode_with_id, Codec, CodecError};
pub use records::{
    ActionSymbol, AddressRecord, CommandPayload, CommandRecord, InventoryCommand, ItemRecord,
    NotificationCommand, OrderCancel, OrderCreate, OrderStatusRecord, OutcomeSymbol,
    PaymentCommand, ShippingCommand, StatusSymbol, StepResultRecord,
};
pub use registry::{
    check_all, register_all, CheckOutcome, RegistryClient, RegistryError, COMPATIBILITY,
};
pub use schemas::{value_subject, LocalSchema, SchemaError, Schemas};
