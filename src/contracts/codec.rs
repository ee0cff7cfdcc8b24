//! Encoding and decoding topic values in the schema-registry wire format.
//!
//! Encoding writes with our local schema under the id the registry gives it. Decoding
//! reads with the writer's schema (fetched by the id in the header) and resolves the
//! datum to our local reader schema, so producers can add optional fields, or enum
//! symbols, without breaking us. Schema ids and writer schemas are cached for the
//! lifetime of the [`Codec`]: only the first record per subject or per id waits for the
//! registry.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::framing;
use super::registry::{RegistryClient, RegistryError, COMPATIBILITY, SCHEMA_NOT_FOUND};
use super::schemas::{LocalSchema, SchemaError, Schemas};

/// Why a value could not be encoded or decoded.
///
/// Three families, told apart by [`CodecError::is_poison`] and
/// [`CodecError::is_transient`]:
/// - the record itself is bad (poison): dead-letter it;
/// - the registry could not be reached (transient): retry later, do not dead-letter;
/// - anything else is a configuration or programming error: neither retrying nor
///   dead-lettering helps, stop and report.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value has no bytes at all (e.g. a tombstone on a topic that has none).
    #[error("empty value: expected the schema-registry wire format")]
    EmptyPayload,
    /// The value is shorter than the 5-byte header.
    #[error("value of {len} bytes is shorter than the 5-byte wire-format header")]
    ShortPayload {
        /// Length of the value.
        len: usize,
    },
    /// The first byte is not the wire format's magic byte `0`.
    #[error("value starts with byte {found:#04x}, not the wire-format magic byte 0x00")]
    BadMagicByte {
        /// The first byte found.
        found: u8,
    },
    /// The registry does not know the schema id in the header.
    #[error("schema id {id} is not known to the registry")]
    UnknownSchemaId {
        /// The id from the header.
        id: u32,
    },
    /// The registry returned a writer schema that is not valid Avro.
    #[error("writer schema {id} from the registry is not usable Avro: {reason}")]
    InvalidWriterSchema {
        /// The id from the header.
        id: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes are not a datum of the writer schema.
    #[error("value is not valid Avro for writer schema {id}: {reason}")]
    Undecodable {
        /// The writer schema id.
        id: u32,
        /// What the decoder said.
        reason: String,
    },
    /// The writer schema cannot be resolved to our reader schema (an incompatible change
    /// the registry should have refused).
    #[error("writer schema {id} cannot be read with the local schema of {topic}: {reason}")]
    SchemaMismatch {
        /// The writer schema id.
        id: u32,
        /// The topic whose local schema was the reader.
        topic: String,
        /// What resolution said.
        reason: String,
    },
    /// The record decoded but a field breaks the contract (unknown enum symbol, an id
    /// that is not a UUID, …).
    #[error("field {field} is invalid: {reason}")]
    InvalidField {
        /// The field's name.
        field: String,
        /// Why.
        reason: String,
    },
    /// The registry did not answer, or answered with a server error. Retry later.
    #[error("schema registry unavailable: {reason}")]
    RegistryUnavailable {
        /// What went wrong.
        reason: String,
    },
    /// The registry refused a request (authentication, invalid or incompatible schema).
    #[error("schema registry refused the request: {reason}")]
    RegistryRejected {
        /// What the registry said.
        reason: String,
    },
    /// Encoding found no registered schema for the subject, and auto-registration is off.
    #[error("the local schema is not registered under subject {subject}; run `order-saga schemas register`")]
    SubjectNotRegistered {
        /// The subject.
        subject: String,
    },
    /// The topic has no local schema.
    #[error("topic {topic} has no Avro schema")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The record does not fit our own schema: a bug in this program.
    #[error("record for {topic} does not fit its schema: {reason}")]
    Encode {
        /// The topic.
        topic: String,
        /// What the serializer said.
        reason: String,
    },
    /// A local schema failed to load.
    #[error(transparent)]
    LocalSchema(#[from] SchemaError),
}

impl CodecError {
    /// A short snake_case name of the error, for the `dlq.error.kind` header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::EmptyPayload => "empty_payload",
            CodecError::ShortPayload { .. } => "short_payload",
            CodecError::BadMagicByte { .. } => "bad_magic_byte",
            CodecError::UnknownSchemaId { .. } => "unknown_schema_id",
            CodecError::InvalidWriterSchema { .. } => "invalid_writer_schema",
            CodecError::Undecodable { .. } => "undecodable_avro",
            CodecError::SchemaMismatch { .. } => "schema_mismatch",
            CodecError::InvalidField { .. } => "invalid_field",
            CodecError::RegistryUnavailable { .. } => "registry_unavailable",
            CodecError::RegistryRejected { .. } => "registry_rejected",
            CodecError::SubjectNotRegistered { .. } => "subject_not_registered",
            CodecError::UnknownTopic { .. } => "unknown_topic",
            CodecError::Encode { .. } => "encode_failed",
            CodecError::LocalSchema(_) => "local_schema",
        }
    }

    /// The registry could not be reached: the same record may succeed later, so retry
    /// (with backoff) instead of dead-lettering it.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable { .. })
    }

    /// The record's own bytes or content are at fault: dead-letter it and move on.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            CodecError::EmptyPayload
                | CodecError::ShortPayload { .. }
                | CodecError::BadMagicByte { .. }
                | CodecError::UnknownSchemaId { .. }
                | CodecError::InvalidWriterSchema { .. }
                | CodecError::Undecodable { .. }
                | CodecError::SchemaMismatch { .. }
                | CodecError::InvalidField { .. }
        )
    }

    fn from_registry(error: RegistryError) -> Self {
        if error.is_transient() {
            CodecError::RegistryUnavailable {
                reason: error.to_string(),
            }
        } else {
            CodecError::RegistryRejected {
                reason: error.to_string(),
            }
        }
    }
}

/// Writes `record` with `local`'s schema, framed with `schema_id`. No registry involved.
pub fn encode_with_id<T: Serialize>(
    local: &LocalSchema,
    schema_id: u32,
    record: &T,
) -> Result<Vec<u8>, CodecError> {
    // 256 bytes holds a typical command without regrowing.
    let mut out = framing::header(schema_id, 256);
    apache_avro::write_avro_datum_ref(local.schema(), local.names(), record, &mut out).map_err(
        |e| CodecError::Encode {
            topic: local.topic().to_owned(),
            reason: e.to_string(),
        },
    )?;
    Ok(out)
}

/// Reads an Avro datum (without header) written with `writer`, resolved to `reader`'s
/// schema, into `T`. No registry involved; `writer_id` only labels errors.
///
/// This prepares the writer schema on every call; [`Codec::decode`] does that once per id.
pub fn decode_datum<T: DeserializeOwned>(
    writer: &Schema,
    writer_id: u32,
    reader: &LocalSchema,
    datum: &[u8],
) -> Result<T, CodecError> {
    let datum_reader = GenericDatumReader::builder(writer).build().map_err(|e| {
        CodecError::InvalidWriterSchema {
            id: writer_id,
            reason: e.to_string(),
        }
    })?;
    let same = writer == reader.schema();
    read_datum(&datum_reader, writer_id, reader, !same, datum)
}

fn read_datum<T: DeserializeOwned>(
    datum_reader: &GenericDatumReader<'_>,
    writer_id: u32,
    reader: &LocalSchema,
    resolve: bool,
    mut datum: &[u8],
) -> Result<T, CodecError> {
    let undecodable = |reason: String| CodecError::Undecodable {
        id: writer_id,
        reason,
    };
    let mut value = datum_reader
        .read_value(&mut datum)
        .map_err(|e| undecodable(e.to_string()))?;
    // Trailing bytes mean the header names a schema the value was not written with.
    if !datum.is_empty() {
        return Err(undecodable(format!(
            "{} bytes left over after the datum",
            datum.len()
        )));
    }
    // Resolution costs more than decoding itself; skip it when the writer schema is ours.
    if resolve {
        value = value
            .resolve_with_names(reader.schema(), reader.names())
            .map_err(|e| CodecError::SchemaMismatch {
                id: writer_id,
                topic: reader.topic().to_owned(),
                reason: e.to_string(),
            })?;
    }
    apache_avro::from_value(&value).map_err(|e| undecodable(e.to_string()))
}

/// A writer schema fetched from a registry, prepared for decoding.
struct WriterSchema {
    schema: &'static Schema,
    reader: GenericDatumReader<'static>,
}

/// Writer schemas by (registry base URL, id), shared by all codecs of the process.
///
/// apache-avro 0.22's prepared reader borrows its schema, so each schema is leaked once
/// to give it a `'static` home. That is bounded: ids are immutable in a registry, there
/// is one entry per schema version ever seen, and the cache is process-wide so codecs
/// created again do not leak again.
type WriterCache = RwLock<HashMap<(String, u32), &'static WriterSchema>>;
static WRITERS: LazyLock<WriterCache> = LazyLock::new(WriterCache::default);

fn prepare_writer(id: u32, text: &str) -> Result<&'static WriterSchema, CodecError> {
    let invalid = |reason: String| CodecError::InvalidWriterSchema { id, reason };
    let schema: &'static Schema = Box::leak(Box::new(
        Schema::parse_str(text).map_err(|e| invalid(e.to_string()))?,
    ));
    let reader = GenericDatumReader::builder(schema)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Box::leak(Box::new(WriterSchema { schema, reader })))
}

/// How to decode values of one topic written with one schema id.
#[derive(Clone, Copy)]
struct Plan {
    writer: &'static WriterSchema,
    resolve: bool,
}

/// Encodes and decodes topic values through a schema registry, caching what it learns.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Codec {
    registry: RegistryClient,
    schemas: &'static Schemas,
    auto_register: bool,
    subject_prefix: String,
    /// Schema id of each local schema, by topic.
    ids: RwLock<HashMap<&'static str, u32>>,
    /// Decoding plans by (writer schema id, topic). Ids are immutable in a registry, so
    /// entries never go stale.
    plans: RwLock<HashMap<(u32, &'static str), Plan>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry.base_url())
            .field("auto_register", &self.auto_register)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec using the compiled-in schemas, registering them on first use if missing
    /// (see [`Codec::auto_register`]).
    pub fn new(registry: RegistryClient) -> Result<Self, CodecError> {
        Ok(Self {
            registry,
            schemas: Schemas::global()?,
            auto_register: true,
            subject_prefix: String::new(),
            ids: RwLock::default(),
            plans: RwLock::default(),
        })
    }

    /// Whether encoding registers a local schema the registry does not have yet (after
    /// setting the subject's compatibility to BACKWARD_TRANSITIVE). With `false`,
    /// encoding fails with [`CodecError::SubjectNotRegistered`] instead, so schemas only
    /// change through `order-saga schemas register`.
    pub fn auto_register(mut self, enabled: bool) -> Self {
        self.auto_register = enabled;
        self
    }

    /// Puts `prefix` in front of every subject this codec looks up or registers, e.g. to
    /// keep the subjects of a test run apart; empty by default.
    pub fn subject_prefix(mut self, prefix: &str) -> Self {
        self.subject_prefix = prefix.to_owned();
        self
    }

    /// The subject under which `local` is looked up and registered.
    pub fn subject_of(&self, local: &LocalSchema) -> String {
        format!("{}{}", self.subject_prefix, local.subject())
    }

    /// The registry client.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The local schemas.
    pub fn schemas(&self) -> &'static Schemas {
        self.schemas
    }

    fn local(&self, topic: &str) -> Result<&'static LocalSchema, CodecError> {
        self.schemas
            .get(topic)
            .ok_or_else(|| CodecError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// Looks up (and caches) the schema ids of `topics`' local schemas, so that a
    /// missing schema or an unreachable registry shows at start-up, not on the first
    /// record.
    pub async fn prepare<'t>(
        &self,
        topics: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), CodecError> {
        for topic in topics {
            self.schema_id(self.local(topic)?).await?;
        }
        Ok(())
    }

    /// The registry id of a local schema: from the cache, else looked up, else
    /// registered (if allowed).
    async fn schema_id(&self, local: &'static LocalSchema) -> Result<u32, CodecError> {
        let cached = self
            .ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(local.topic())
            .copied();
        if let Some(id) = cached {
            return Ok(id);
        }
        let subject = self.subject_of(local);
        let found = self
            .registry
            .lookup(&subject, local.source())
            .await
            .map_err(CodecError::from_registry)?;
        let id = match found {
            Some(id) => id,
            None if self.auto_register => {
                // Apicurio enforces no compatibility until a rule is set: set it before the
                // first version exists, so the subject is never unguarded.
                self.registry
                    .set_compatibility(&subject, COMPATIBILITY)
                    .await
                    .map_err(CodecError::from_registry)?;
                self.registry
                    .register(&subject, local.source())
                    .await
                    .map_err(CodecError::from_registry)?
            }
            None => return Err(CodecError::SubjectNotRegistered { subject }),
        };
        self.ids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(local.topic(), id);
        Ok(id)
    }

    /// The writer schema with `id`: from the process-wide cache, else fetched and
    /// prepared once.
    async fn writer_schema(&self, id: u32) -> Result<&'static WriterSchema, CodecError> {
        let key = (self.registry.base_url().to_owned(), id);
        let cached = WRITERS
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(writer) = cached {
            return Ok(writer);
        }
        let text = match self.registry.schema_by_id(id).await {
            Ok(text) => text,
            Err(e) if e.is_not_found(SCHEMA_NOT_FOUND) => {
                return Err(CodecError::UnknownSchemaId { id })
            }
            Err(RegistryError::InvalidResponse { reason, .. }) => {
                return Err(CodecError::InvalidWriterSchema { id, reason })
            }
            Err(e) => return Err(CodecError::from_registry(e)),
        };
        let mut writers = WRITERS.write().unwrap_or_else(PoisonError::into_inner);
        // Another task may have fetched it meanwhile; keep the first, leak no second.
        if let Some(writer) = writers.get(&key) {
            return Ok(writer);
        }
        let writer = prepare_writer(id, &text)?;
        writers.insert(key, writer);
        Ok(writer)
    }

    async fn plan(&self, id: u32, local: &'static LocalSchema) -> Result<Plan, CodecError> {
        let key = (id, local.topic());
        let cached = self
            .plans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(plan) = cached {
            return Ok(plan);
        }
        let writer = self.writer_schema(id).await?;
        let plan = Plan {
            writer,
            resolve: writer.schema != local.schema(),
        };
        self.plans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, plan);
        Ok(plan)
    }

    /// Encodes `record` as a value of `topic` in the wire format.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        record: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let local = self.local(topic)?;
        let id = self.schema_id(local).await?;
        encode_with_id(local, id, record)
    }

    /// Decodes a wire-format value of `topic` into `T`, resolving the writer's schema to
    /// our local one.
    pub async fn decode<T: DeserializeOwned>(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        let local = self.local(topic)?;
        let (id, datum) = framing::unframe(bytes)?;
        let plan = self.plan(id, local).await?;
        read_datum(&plan.writer.reader, id, local, plan.resolve, datum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::records::*;
    use crate::saga::{Action, Address, Command, Item, Status};
    use crate::topics;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    const ORDER_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const COMMAND_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    fn local(topic: &str) -> &'static LocalSchema {
        Schemas::global().unwrap().get(topic).unwrap()
    }

    fn items() -> Vec<ItemRecord> {
        vec![
            ItemRecord {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 250,
            },
            ItemRecord {
                sku: "SKU-2".into(),
                quantity: 1,
                unit_price_minor: 1000,
            },
        ]
    }

    fn address() -> AddressRecord {
        AddressRecord {
            recipient: "Ada Lovelace".into(),
            street: "Main St 1".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        }
    }

    pub(crate) fn order_create() -> OrderCreate {
        OrderCreate {
            order_id: ORDER_ID.into(),
            customer_id: "c-1".into(),
            items: items(),
            total_minor: 1500,
            currency: "EUR".into(),
            shipping_address: address(),
            created_at: 1_700_000_000_000,
        }
    }

    fn payload() -> CommandPayload {
        CommandPayload {
            customer_id: "c-1".into(),
            items: items().into_iter().map(Item::from).collect(),
            total_minor: 1500,
            currency: "EUR".into(),
            shipping_address: Address::from(address()),
            status: Status::ShippingScheduled,
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(topic: &str, record: &T) {
        let local = local(topic);
        let bytes = encode_with_id(local, 42, record).unwrap();
        let (id, datum) = framing::unframe(&bytes).unwrap();
        assert_eq!(id, 42);
        let back: T = decode_datum(local.schema(), id, local, datum).unwrap();
        assert_eq!(&back, record, "{topic}");
    }

    #[test]
    fn every_record_type_round_trips_through_its_schema() {
        round_trip(topics::ORDER_CREATE_REQUEST, &order_create());
        round_trip(
            topics::ORDER_CANCEL_REQUEST,
            &OrderCancel {
                order_id: ORDER_ID.into(),
                reason: "changed my mind".into(),
                requested_at: 7,
            },
        );
        for action in Action::ALL {
            let command = Command {
                order_id: ORDER_ID.into(),
                command_id: COMMAND_ID.into(),
                action,
                attempt: 1,
                issued_at: 9,
            };
            match CommandRecord::build(&command, &payload()).unwrap() {
                CommandRecord::Inventory(c) => round_trip(topics::INVENTORY_RESERVE_REQUEST, &c),
                CommandRecord::Payment(c) => round_trip(topics::PAYMENT_PROCESS_REQUEST, &c),
                CommandRecord::Shipping(c) => round_trip(topics::SHIPPING_SCHEDULE_REQUEST, &c),
                CommandRecord::Notification(c) => round_trip(topics::NOTIFICATION_SEND_REQUEST, &c),
            }
        }
        for action in Action::ALL {
            for (outcome, reason) in [
                (OutcomeSymbol::Success, None),
                (OutcomeSymbol::Failure, Some("out of stock".to_owned())),
            ] {
                round_trip(
                    topics::result_topic(action.step()),
                    &StepResultRecord {
                        order_id: ORDER_ID.into(),
                        command_id: COMMAND_ID.into(),
                        action: action.into(),
                        outcome,
                        reason,
                        retriable: true,
                        produced_at: 11,
                    },
                );
            }
        }
        let status = OrderStatusRecord {
            order_id: ORDER_ID.into(),
            status: StatusSymbol::ShippingScheduled,
            version: 4,
            customer_id: "c-1".into(),
            total_minor: 1500,
            currency: "EUR".into(),
            reason: None,
            updated_at: 12,
            created_at: Some(1),
            items: items(),
            shipping_address: Some(address()),
            saga_state: Some(r#"{"deadline":5}"#.into()),
        };
        round_trip(topics::ORDER_STATUS, &status);
        round_trip(
            topics::ORDER_STATUS,
            &OrderStatusRecord {
                status: StatusSymbol::Failed,
                reason: Some("payment declined".into()),
                created_at: None,
                items: vec![],
                shipping_address: None,
                saga_state: None,
                ..status
            },
        );
    }

    #[test]
    fn a_command_record_encodes_as_its_inner_record() {
        let command = Command {
            order_id: ORDER_ID.into(),
            command_id: COMMAND_ID.into(),
            action: Action::Charge,
            attempt: 3,
            issued_at: 9,
        };
        let record = CommandRecord::build(&command, &payload()).unwrap();
        let local = local(record.topic());
        let bytes = encode_with_id(local, 1, &record).unwrap();
        let (_, datum) = framing::unframe(&bytes).unwrap();
        let back: PaymentCommand = decode_datum(local.schema(), 1, local, datum).unwrap();
        assert_eq!(CommandRecord::Payment(back), record);
    }

    #[test]
    fn an_action_of_another_service_does_not_fit_the_topic_schema() {
        let wrong = InventoryCommand {
            order_id: ORDER_ID.into(),
            command_id: COMMAND_ID.into(),
            action: ActionSymbol::Charge,
            attempt: 1,
            issued_at: 1,
            items: items(),
        };
        let err = encode_with_id(local(topics::INVENTORY_RESERVE_REQUEST), 1, &wrong).unwrap_err();
        assert_eq!(err.kind(), "encode_failed", "{err}");
    }

    /// order-create-request v2: a new optional field in the middle, and a new field in the
    /// item record.
    const ORDER_CREATE_V2: &str = r#"{
      "type": "record", "name": "OrderCreateRequest", "namespace": "shop.order.v1",
      "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {"name": "coupon", "type": ["null", "string"], "default": null},
        {"name": "items", "type": {"type": "array", "items": {
          "type": "record", "name": "OrderItem", "fields": [
            {"name": "sku", "type": "string"},
            {"name": "quantity", "type": "int"},
            {"name": "unit_price_minor", "type": "long"},
            {"name": "gift_wrap", "type": "boolean", "default": false}]}}},
        {"name": "total_minor", "type": "long"},
        {"name": "currency", "type": "string"},
        {"name": "shipping_address", "type": {"type": "record", "name": "ShippingAddress",
          "fields": [
            {"name": "recipient", "type": "string"}, {"name": "street", "type": "string"},
            {"name": "city", "type": "string"}, {"name": "postal_code", "type": "string"},
            {"name": "country", "type": "string"}]}},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
      ]}"#;

    #[derive(Serialize)]
    struct ItemV2 {
        sku: String,
        quantity: i32,
        unit_price_minor: i64,
        gift_wrap: bool,
    }

    #[derive(Serialize)]
    struct OrderCreateV2 {
        order_id: String,
        customer_id: String,
        coupon: Option<String>,
        items: Vec<ItemV2>,
        total_minor: i64,
        currency: String,
        shipping_address: AddressRecord,
        created_at: i64,
    }

    #[test]
    fn a_v2_writer_with_extra_optional_fields_resolves_to_our_v1_reader() {
        let v1 = order_create();
        let v2 = OrderCreateV2 {
            order_id: v1.order_id.clone(),
            customer_id: v1.customer_id.clone(),
            coupon: Some("WELCOME10".into()),
            items: v1
                .items
                .iter()
                .map(|i| ItemV2 {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price_minor: i.unit_price_minor,
                    gift_wrap: true,
                })
                .collect(),
            total_minor: v1.total_minor,
            currency: v1.currency.clone(),
            shipping_address: v1.shipping_address.clone(),
            created_at: v1.created_at,
        };
        let writer = Schema::parse_str(ORDER_CREATE_V2).unwrap();
        let names = apache_avro::schema::ResolvedSchema::new(&writer).unwrap();
        let mut datum = Vec::new();
        apache_avro::write_avro_datum_ref(&writer, names.get_names(), &v2, &mut datum).unwrap();

        let reader = local(topics::ORDER_CREATE_REQUEST);
        let decoded: OrderCreate = decode_datum(&writer, 2, reader, &datum).unwrap();
        assert_eq!(decoded, v1);
    }

    #[test]
    fn a_new_enum_symbol_falls_back_to_unknown_and_is_rejected_as_a_field() {
        let mut json: serde_json::Value =
            serde_json::from_str(local(topics::INVENTORY_RESERVE_RESULT).source()).unwrap();
        json["fields"][2]["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("RECOUNT".into());
        let writer = Schema::parse_str(&json.to_string()).unwrap();
        let value = apache_avro::types::Value::Record(vec![
            ("order_id".into(), ORDER_ID.into()),
            ("command_id".into(), COMMAND_ID.into()),
            (
                "action".into(),
                apache_avro::types::Value::Enum(3, "RECOUNT".into()),
            ),
            (
                "outcome".into(),
                apache_avro::types::Value::Enum(1, "SUCCESS".into()),
            ),
            (
                "reason".into(),
                apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
            ),
            ("retriable".into(), false.into()),
            (
                "produced_at".into(),
                apache_avro::types::Value::TimestampMillis(5),
            ),
        ]);
        let datum = GenericDatumWriterForTest::write(&writer, value);
        let reader = local(topics::INVENTORY_RESERVE_RESULT);
        let record: StepResultRecord = decode_datum(&writer, 3, reader, &datum).unwrap();
        assert_eq!(record.action, ActionSymbol::Unknown);
        let err = record
            .into_step_result(crate::saga::Step::Inventory)
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_field");
        assert!(!err.is_transient() && err.is_poison());
    }

    struct GenericDatumWriterForTest;

    impl GenericDatumWriterForTest {
        fn write(schema: &Schema, value: apache_avro::types::Value) -> Vec<u8> {
            apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap()
        }
    }

    #[test]
    fn trailing_bytes_and_garbage_are_undecodable() {
        let local = local(topics::ORDER_CANCEL_REQUEST);
        let mut bytes = encode_with_id(
            local,
            1,
            &OrderCancel {
                order_id: ORDER_ID.into(),
                reason: "r".into(),
                requested_at: 1,
            },
        )
        .unwrap();
        bytes.push(0);
        let (_, datum) = framing::unframe(&bytes).unwrap();
        let err = decode_datum::<OrderCancel>(local.schema(), 1, local, datum).unwrap_err();
        assert_eq!(err.kind(), "undecodable_avro", "{err}");
        // A string length far beyond the datum.
        let err = decode_datum::<OrderCancel>(local.schema(), 1, local, &[0x7e, 1]).unwrap_err();
        assert_eq!(err.kind(), "undecodable_avro", "{err}");
    }

    #[test]
    fn an_incompatible_writer_is_a_schema_mismatch() {
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"OrderCancelRequest","namespace":"shop.order.v1",
                "fields":[{"name":"order_id","type":"string"}]}"#,
        )
        .unwrap();
        let datum = GenericDatumWriterForTest::write(
            &writer,
            apache_avro::types::Value::Record(vec![("order_id".into(), ORDER_ID.into())]),
        );
        let local = local(topics::ORDER_CANCEL_REQUEST);
        let err = decode_datum::<OrderCancel>(&writer, 9, local, &datum).unwrap_err();
        assert_eq!(err.kind(), "schema_mismatch", "{err}");
    }

    #[test]
    fn error_kinds_are_snake_case_and_only_registry_outages_are_transient() {
        let errors = [
            CodecError::EmptyPayload,
            CodecError::ShortPayload { len: 2 },
            CodecError::BadMagicByte { found: 1 },
            CodecError::UnknownSchemaId { id: 1 },
            CodecError::RegistryUnavailable { reason: "x".into() },
            CodecError::RegistryRejected { reason: "x".into() },
        ];
        for e in &errors {
            assert!(
                e.kind()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                e.kind()
            );
            assert_eq!(e.is_transient(), e.kind() == "registry_unavailable");
            assert!(!(e.is_transient() && e.is_poison()));
        }
    }

    /// A stand-in registry on loopback that answers the few calls the codec makes and
    /// counts them.
    mod fake_registry {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        pub struct Fake {
            pub url: String,
            pub calls: Arc<AtomicUsize>,
        }

        /// Serves `schema` as id 7 and answers lookups with id 7.
        pub async fn start(schema: &'static str) -> Fake {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&calls);
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 8192];
                    // Read until the head and its announced body have arrived.
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                        if n == 0 {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&request).to_string();
                    let body = if head.starts_with("GET /schemas/ids/7 ") {
                        serde_json::json!({ "schema": schema }).to_string()
                    } else if head.starts_with("POST /subjects/") {
                        serde_json::json!({ "id": 7, "version": 1, "subject": "s", "schema": schema }).to_string()
                    } else {
                        String::new()
                    };
                    let status = if body.is_empty() {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let body = if body.is_empty() {
                        r#"{"error_code":40403,"message":"not found"}"#.to_owned()
                    } else {
                        body
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                }
            });
            Fake { url, calls }
        }
    }

    #[tokio::test]
    async fn the_registry_is_asked_once_per_subject_and_once_per_id() {
        let topic = topics::ORDER_CREATE_REQUEST;
        let fake = fake_registry::start(local(topic).source()).await;
        let codec = Codec::new(RegistryClient::new(&fake.url).unwrap())
            .unwrap()
            .auto_register(false);
        let record = order_create();
        for _ in 0..3 {
            let bytes = codec.encode(topic, &record).await.unwrap();
            assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
            let back: OrderCreate = codec.decode(topic, &bytes).await.unwrap();
            assert_eq!(back, record);
        }
        assert_eq!(
            fake.calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one lookup and one fetch by id"
        );
        let err = codec
            .decode::<OrderCreate>(topic, &[0, 0, 0, 0, 8, 1])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "unknown_schema_id", "{err}");
        let event = crate::contracts::convert::decode_event(
            &codec,
            topic,
            &codec.encode(topic, &record).await.unwrap(),
        )
        .await
        .unwrap();
        assert!(matches!(event, crate::saga::Event::Create(o) if o.total_minor == 1500));
    }

    #[tokio::test]
    async fn bad_framing_is_reported_without_asking_the_registry() {
        // Nothing listens on port 9 of loopback: any registry call would fail as unavailable.
        let codec = Codec::new(RegistryClient::new("http://127.0.0.1:9").unwrap()).unwrap();
        let topic = topics::ORDER_CREATE_REQUEST;
        let cases: [(&[u8], &str); 3] = [
            (&[], "empty_payload"),
            (&[0, 0], "short_payload"),
            (b"{\"json\":true}", "bad_magic_byte"),
        ];
        for (bytes, kind) in cases {
            let err = codec.decode::<OrderCreate>(topic, bytes).await.unwrap_err();
            assert_eq!(err.kind(), kind);
            assert!(err.is_poison() && !err.is_transient());
        }
        let err = codec
            .decode::<OrderCreate>(topic, &[0, 0, 0, 0, 1, 2])
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        let err = codec
            .decode::<OrderCreate>("order-dlq", &[0, 0, 0, 0, 1])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "unknown_topic");
    }
}
