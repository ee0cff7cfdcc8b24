//! The local schemas of every topic value, compiled into the binary from `schemas/`.
//!
//! They are parsed once per process ([`Schemas::global`]); encoding and decoding reuse the
//! parsed form and its resolved names, so no record pays for parsing.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use apache_avro::schema::{NamesRef, ResolvedSchema};
use apache_avro::Schema;

use crate::topics;

/// A local schema that could not be loaded. Unit tests parse every schema, so this
/// only happens if a broken `.avsc` is shipped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("local schema of topic {topic} is invalid: {reason}")]
pub struct SchemaError {
    /// The topic whose schema is broken.
    pub topic: String,
    /// What the Avro parser said.
    pub reason: String,
}

/// Every topic with an Avro value, and the `.avsc` that describes it. `order-dlq` keeps
/// the original bytes, so it has no schema.
pub const SOURCES: [(&str, &str); 11] = [
    (
        topics::ORDER_CREATE_REQUEST,
        include_str!("../../schemas/order-create-request.avsc"),
    ),
    (
        topics::ORDER_CANCEL_REQUEST,
        include_str!("../../schemas/order-cancel-request.avsc"),
    ),
    (
        topics::INVENTORY_RESERVE_REQUEST,
        include_str!("../../schemas/inventory-reserve-request.avsc"),
    ),
    (
        topics::INVENTORY_RESERVE_RESULT,
        include_str!("../../schemas/inventory-reserve-result.avsc"),
    ),
    (
        topics::PAYMENT_PROCESS_REQUEST,
        include_str!("../../schemas/payment-process-request.avsc"),
    ),
    (
        topics::PAYMENT_PROCESS_RESULT,
        include_str!("../../schemas/payment-process-result.avsc"),
    ),
    (
        topics::SHIPPING_SCHEDULE_REQUEST,
        include_str!("../../schemas/shipping-schedule-request.avsc"),
    ),
    (
        topics::SHIPPING_SCHEDULE_RESULT,
        include_str!("../../schemas/shipping-schedule-result.avsc"),
    ),
    (
        topics::NOTIFICATION_SEND_REQUEST,
        include_str!("../../schemas/notification-send-request.avsc"),
    ),
    (
        topics::NOTIFICATION_SEND_RESULT,
        include_str!("../../schemas/notification-send-result.avsc"),
    ),
    (
        topics::ORDER_STATUS,
        include_str!("../../schemas/order-status.avsc"),
    ),
];

/// The registry subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The parsed schemas, in [`SOURCES`] order. A static of its own because the resolved
/// names in [`LocalSchema`] borrow from it: apache-avro 0.22 only offers resolved names
/// that borrow their schema, and these schemas live as long as the process anyway.
static PARSED: LazyLock<Result<Vec<Schema>, SchemaError>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|(topic, source)| {
            Schema::parse_str(source).map_err(|e| SchemaError {
                topic: (*topic).to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
});

static GLOBAL: LazyLock<Result<Schemas, SchemaError>> = LazyLock::new(Schemas::load);

/// One topic's local schema: its source text, its subject and its parsed form.
pub struct LocalSchema {
    topic: &'static str,
    subject: String,
    source: &'static str,
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
}

impl LocalSchema {
    /// The topic this schema describes.
    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// The registry subject, `<topic>-value`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `.avsc` text, exactly as shipped. This is what is registered and looked up, so
    /// the registry keeps the docs and a lookup matches what was registered.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The parsed schema.
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// The named types of the schema, resolved once.
    pub fn names(&self) -> &NamesRef<'static> {
        self.resolved.get_names()
    }
}

impl std::fmt::Debug for LocalSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSchema")
            .field("topic", &self.topic)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The local schemas of all topics, keyed by topic.
#[derive(Debug)]
pub struct Schemas {
    by_topic: BTreeMap<&'static str, LocalSchema>,
}

impl Schemas {
    fn load() -> Result<Self, SchemaError> {
        let parsed = PARSED.as_ref().map_err(Clone::clone)?;
        let mut by_topic = BTreeMap::new();
        for ((topic, source), schema) in SOURCES.iter().zip(parsed) {
            let resolved = ResolvedSchema::new(schema).map_err(|e| SchemaError {
                topic: (*topic).to_owned(),
                reason: e.to_string(),
            })?;
            by_topic.insert(
                *topic,
                LocalSchema {
                    topic,
                    subject: value_subject(topic),
                    source,
                    schema,
                    resolved,
                },
            );
        }
        Ok(Self { by_topic })
    }

    /// The process-wide instance, parsed on first use.
    pub fn global() -> Result<&'static Schemas, SchemaError> {
        GLOBAL.as_ref().map_err(Clone::clone)
    }

    /// The schema of `topic`'s values, if that topic has one.
    pub fn get(&self, topic: &str) -> Option<&LocalSchema> {
        self.by_topic.get(topic)
    }

    /// All schemas, in topic order.
    pub fn iter(&self) -> impl Iterator<Item = &LocalSchema> {
        self.by_topic.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    #[test]
    fn every_topic_with_avro_values_has_a_schema() {
        let schemas = Schemas::global().unwrap();
        for topic in topics::ALL {
            // The dead-letter topic keeps records as they came; the held-events changelog
            // is the processor's own, not a contract.
            assert_eq!(
                schemas.get(topic).is_some(),
                topic != topics::ORDER_DLQ
                    && topic != topics::ORDER_EARLY_EVENTS
                    && topic != topics::ORDER_STATE,
                "{topic}"
            );
        }
        assert_eq!(schemas.iter().count(), SOURCES.len());
        assert_eq!(
            schemas.get(topics::ORDER_STATUS).unwrap().subject(),
            "order-status-value"
        );
    }

    /// Collects the problems of one schema node: a record, enum or field without a doc.
    fn missing_docs(node: &Json, path: &str, problems: &mut Vec<String>) {
        match node {
            Json::Object(map) => {
                let kind = map.get("type").and_then(Json::as_str);
                if matches!(kind, Some("record" | "enum" | "fixed")) {
                    let name = map.get("name").and_then(Json::as_str).unwrap_or("?");
                    let path = format!("{path}/{name}");
                    if !has_doc(map) {
                        problems.push(format!("{path}: type without doc"));
                    }
                    for field in map
                        .get("fields")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let fname = field.get("name").and_then(Json::as_str).unwrap_or("?");
                        let fpath = format!("{path}.{fname}");
                        if !field.as_object().is_some_and(has_doc) {
                            problems.push(format!("{fpath}: field without doc"));
                        }
                        if let Some(t) = field.get("type") {
                            missing_docs(t, &fpath, problems);
                        }
                    }
                }
                for key in ["items", "values"] {
                    if let Some(inner) = map.get(key) {
                        missing_docs(inner, path, problems);
                    }
                }
                if let (None, Some(inner)) = (kind, map.get("type")) {
                    missing_docs(inner, path, problems);
                }
            }
            Json::Array(branches) => {
                for branch in branches {
                    missing_docs(branch, path, problems);
                }
            }
            _ => {}
        }
    }

    fn has_doc(map: &serde_json::Map<String, Json>) -> bool {
        map.get("doc")
            .and_then(Json::as_str)
            .is_some_and(|d| !d.trim().is_empty())
    }

    #[test]
    fn every_record_enum_and_field_has_a_doc() {
        for (topic, source) in SOURCES {
            let json: Json = serde_json::from_str(source).unwrap();
            let mut problems = Vec::new();
            missing_docs(&json, topic, &mut problems);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }

    #[test]
    fn the_doc_walker_notices_a_missing_doc() {
        let json: Json = serde_json::from_str(
            r#"{"type":"record","name":"R","doc":"r","fields":[
                {"name":"a","type":"string","doc":"a"},
                {"name":"b","type":{"type":"array","items":{"type":"record","name":"I","doc":"i",
                    "fields":[{"name":"x","type":"int"}]}},"doc":"b"},
                {"name":"c","type":["null",{"type":"enum","name":"E","symbols":["A"]}],"doc":"c"}
            ]}"#,
        )
        .unwrap();
        let mut problems = Vec::new();
        missing_docs(&json, "t", &mut problems);
        assert_eq!(
            problems,
            vec!["t/R.b/I.x: field without doc", "t/R.c/E: type without doc"]
        );
    }

    #[test]
    fn every_enum_has_a_default_symbol_so_it_can_grow() {
        fn walk(node: &Json, found: &mut Vec<String>) {
            match node {
                Json::Object(map) => {
                    if map.get("type").and_then(Json::as_str) == Some("enum") {
                        let default = map.get("default").and_then(Json::as_str);
                        let symbols = map["symbols"].as_array().unwrap();
                        assert!(
                            default.is_some_and(|d| symbols.iter().any(|s| s == d)),
                            "enum {} has no default symbol",
                            map["name"]
                        );
                        found.push(map["name"].as_str().unwrap().to_owned());
                    }
                    map.values().for_each(|v| walk(v, found));
                }
                Json::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        for (_, source) in SOURCES {
            walk(&serde_json::from_str(source).unwrap(), &mut found);
        }
        // 4 commands and 4 results with an action, 4 outcomes, 1 status.
        assert_eq!(found.len(), 13, "{found:?}");
    }
}
