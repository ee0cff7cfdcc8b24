//! Contracts against the real local stack (`scripts/stack up`): a Kafka 4 broker at
//! `ORDER_SAGA_BOOTSTRAP` (default `127.0.0.1:9092`) and Apicurio Registry at
//! `ORDER_SAGA_REGISTRY_URL` (default `http://127.0.0.1:8080/apis/ccompat/v7`).
//!
//! Every test uses its own random topics, subjects, group and transactional ids, so tests
//! run in parallel with each other and with a running processor without clashing.

use std::time::{Duration, Instant};

use apache_avro::schema::ResolvedSchema;
use apache_avro::Schema;
use order_saga::contracts::{
    convert, framing, Codec, CodecError, OrderCreate, RegistryClient, Schemas, COMPATIBILITY,
};
use order_saga::saga::{Address, Item, OrderRequest};
use order_saga::topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(20);

fn bootstrap() -> String {
    std::env::var("ORDER_SAGA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn registry_url() -> String {
    std::env::var("ORDER_SAGA_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8080/apis/ccompat/v7".into())
}

fn registry() -> RegistryClient {
    RegistryClient::new(&registry_url()).expect("registry URL")
}

/// A name no other test run uses.
fn unique(what: &str) -> String {
    format!("test-contracts-{what}-{}", Uuid::new_v4())
}

fn order(total_minor: i64) -> OrderRequest {
    OrderRequest {
        order_id: Uuid::new_v4().to_string(),
        customer_id: "customer-1".into(),
        items: vec![
            Item {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 250,
            },
            Item {
                sku: "SKU-2".into(),
                quantity: 1,
                unit_price_minor: total_minor - 500,
            },
        ],
        total_minor,
        currency: "EUR".into(),
        shipping_address: Address {
            recipient: "Ada Lovelace".into(),
            street: "Main St 1".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        created_at: 1_764_000_000_000,
    }
}

async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code:?}"));
    }
}

/// A key and a value.
type Record = (String, Vec<u8>);

/// Records to produce in one transaction, and whether to commit (else abort) it.
type Transaction = (Vec<Record>, bool);

/// Produces each batch in its own transaction, committing or aborting it as flagged.
/// Blocking: run it with `spawn_blocking`.
fn produce_transactions(topic: &str, batches: Vec<Transaction>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("txn"))
        .set("transaction.timeout.ms", "10000")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    for (records, commit) in batches {
        producer.begin_transaction().expect("begin_transaction");
        for (key, value) in &records {
            producer
                .send(BaseRecord::to(topic).key(key).payload(value))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        if commit {
            producer.commit_transaction(TIMEOUT).expect("commit");
        } else {
            // Flush first so the aborted records really are in the log, between A and C.
            producer.flush(TIMEOUT).expect("flush");
            producer.abort_transaction(TIMEOUT).expect("abort");
        }
    }
}

/// Reads the whole of partition 0 of `topic` with `read_committed`, up to its end.
/// Blocking: run it with `spawn_blocking`.
fn read_committed(topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("group"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut records = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            // All transactions ended before reading, so the end is the last stable offset.
            Some(Err(KafkaError::PartitionEOF(_))) => return records,
            Some(Err(e)) => panic!("consume: {e}"),
            Some(Ok(m)) => records.push((
                String::from_utf8(m.key().unwrap_or_default().to_vec()).expect("utf-8 key"),
                m.payload().unwrap_or_default().to_vec(),
            )),
        }
    }
    panic!(
        "no end of partition within {TIMEOUT:?}; read {} records",
        records.len()
    );
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test]
async fn an_avro_record_written_in_a_committed_transaction_round_trips_through_the_registry() {
    let topic = unique("order-create");
    create_topic(&topic).await;
    let prefix = format!("{}-", unique("subject"));
    let codec = Codec::new(registry()).unwrap().subject_prefix(&prefix);
    let sent = order(1500);
    let value = codec
        .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(&sent))
        .await
        .expect("encode");

    // Encoding registered the schema, and set the rule before doing so.
    let subject = format!("{prefix}{}-value", topics::ORDER_CREATE_REQUEST);
    let client = registry();
    assert_eq!(client.versions(&subject).await.unwrap(), vec![1]);
    assert_eq!(
        client.compatibility(&subject).await.unwrap().as_deref(),
        Some(COMPATIBILITY)
    );
    let (id, _) = framing::unframe(&value).unwrap();
    assert_eq!(
        client
            .lookup(
                &subject,
                Schemas::global()
                    .unwrap()
                    .get(topics::ORDER_CREATE_REQUEST)
                    .unwrap()
                    .source()
            )
            .await
            .unwrap(),
        Some(id)
    );

    let key = sent.order_id.clone();
    let t = topic.clone();
    blocking(move || produce_transactions(&t, vec![(vec![(key, value)], true)])).await;
    let t = topic.clone();
    let read = blocking(move || read_committed(&t)).await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, sent.order_id);

    // A fresh codec knows nothing: it fetches the writer schema by id.
    let fresh = Codec::new(registry()).unwrap().auto_register(false);
    let event = convert::decode_event(&fresh, topics::ORDER_CREATE_REQUEST, &read[0].1)
        .await
        .expect("decode");
    assert_eq!(event, order_saga::saga::Event::Create(sent));
}

#[tokio::test]
async fn records_of_an_aborted_transaction_stay_invisible_to_a_read_committed_consumer() {
    let topic = unique("aborted");
    create_topic(&topic).await;
    let prefix = format!("{}-", unique("subject"));
    let codec = Codec::new(registry()).unwrap().subject_prefix(&prefix);
    let (a, b, c) = (order(1000), order(2000), order(3000));
    let mut batches = Vec::new();
    for (o, commit) in [(&a, true), (&b, false), (&c, true)] {
        let value = codec
            .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(o))
            .await
            .expect("encode");
        batches.push((vec![(o.order_id.clone(), value)], commit));
    }
    let t = topic.clone();
    blocking(move || produce_transactions(&t, batches)).await;
    let t = topic.clone();
    let read = blocking(move || read_committed(&t)).await;

    let mut seen = Vec::new();
    for (key, value) in &read {
        let record: OrderCreate = codec
            .decode(topics::ORDER_CREATE_REQUEST, value)
            .await
            .expect("decode");
        assert_eq!(&record.order_id, key);
        seen.push(record.total_minor);
    }
    assert_eq!(seen, vec![1000, 3000], "exactly A and C, in order");
}

/// order-create-request v2: one more optional field, here and in the item record.
fn order_create_v2() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(
        Schemas::global()
            .unwrap()
            .get(topics::ORDER_CREATE_REQUEST)
            .unwrap()
            .source(),
    )
    .unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.insert(
        2,
        serde_json::json!({"name": "coupon", "type": ["null", "string"], "default": null,
                           "doc": "Promotion code applied to the order."}),
    );
    let item_fields = fields[3]["type"]["items"]["fields"].as_array_mut().unwrap();
    item_fields.push(serde_json::json!({"name": "gift_wrap", "type": "boolean",
                                        "default": false, "doc": "Wrap as a gift."}));
    schema.to_string()
}

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
    shipping_address: order_saga::contracts::AddressRecord,
    created_at: i64,
}

#[tokio::test]
async fn a_record_written_with_a_v2_schema_with_an_extra_optional_field_decodes_into_our_v1_type() {
    let client = registry();
    let subject = format!("{}-value", unique("evolution"));
    let v1 = Schemas::global()
        .unwrap()
        .get(topics::ORDER_CREATE_REQUEST)
        .unwrap()
        .source();
    client
        .set_compatibility(&subject, COMPATIBILITY)
        .await
        .unwrap();
    let v1_id = client.register(&subject, v1).await.unwrap();
    let v2_text = order_create_v2();
    let check = client.check(&subject, &v2_text).await.unwrap();
    assert!(check.compatible, "{check:?}");
    let v2_id = client.register(&subject, &v2_text).await.unwrap();
    assert_ne!(v1_id, v2_id);

    let sent = OrderCreate::from(&order(1500));
    let v2 = OrderCreateV2 {
        order_id: sent.order_id.clone(),
        customer_id: sent.customer_id.clone(),
        coupon: Some("WELCOME10".into()),
        items: sent
            .items
            .iter()
            .map(|i| ItemV2 {
                sku: i.sku.clone(),
                quantity: i.quantity,
                unit_price_minor: i.unit_price_minor,
                gift_wrap: true,
            })
            .collect(),
        total_minor: sent.total_minor,
        currency: sent.currency.clone(),
        shipping_address: sent.shipping_address.clone(),
        created_at: sent.created_at,
    };
    let writer = Schema::parse_str(&v2_text).unwrap();
    let names = ResolvedSchema::new(&writer).unwrap();
    let mut datum = Vec::new();
    apache_avro::write_avro_datum_ref(&writer, names.get_names(), &v2, &mut datum).unwrap();
    let bytes = framing::frame(v2_id, &datum);

    let codec = Codec::new(registry()).unwrap().auto_register(false);
    let decoded: OrderCreate = codec
        .decode(topics::ORDER_CREATE_REQUEST, &bytes)
        .await
        .expect("v2 decodes with our v1 reader");
    assert_eq!(decoded, sent);
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_by_the_check_with_the_field_named_and_a_compatible_one_passes(
) {
    let client = registry();
    let subject = format!("{}-value", unique("check"));
    let v1 = Schemas::global()
        .unwrap()
        .get(topics::ORDER_CREATE_REQUEST)
        .unwrap()
        .source();

    let new = client.check(&subject, v1).await.unwrap();
    assert!(new.compatible && new.new_subject, "{new:?}");

    client
        .set_compatibility(&subject, COMPATIBILITY)
        .await
        .unwrap();
    client.register(&subject, v1).await.unwrap();

    let mut required: serde_json::Value = serde_json::from_str(v1).unwrap();
    required["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "loyalty_tier", "type": "string", "doc": "Required, without default."}
        ));
    let outcome = client.check(&subject, &required.to_string()).await.unwrap();
    assert!(!outcome.compatible, "{outcome:?}");
    assert!(
        outcome.messages.iter().any(|m| m.contains("loyalty_tier")),
        "{outcome:?}"
    );

    let mut retyped: serde_json::Value = serde_json::from_str(v1).unwrap();
    retyped["fields"][3]["type"] = "string".into();
    assert_eq!(retyped["fields"][3]["name"], "total_minor");
    let outcome = client.check(&subject, &retyped.to_string()).await.unwrap();
    assert!(!outcome.compatible, "{outcome:?}");
    assert!(
        outcome.messages.iter().any(|m| m.contains("total_minor")),
        "{outcome:?}"
    );

    let outcome = client.check(&subject, &order_create_v2()).await.unwrap();
    assert!(outcome.compatible, "{outcome:?}");
    assert!(outcome.messages.is_empty(), "{outcome:?}");

    // The registry agrees: registering the incompatible one is refused.
    let err = client
        .register(&subject, &required.to_string())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn a_subject_without_a_compatibility_rule_is_judged_locally_with_a_warning() {
    let client = registry();
    let subject = format!("{}-value", unique("norule"));
    let v1 = Schemas::global()
        .unwrap()
        .get(topics::ORDER_CANCEL_REQUEST)
        .unwrap()
        .source();
    // Registered without a rule: Apicurio's default is to check nothing.
    client.register(&subject, v1).await.unwrap();
    let mut retyped: serde_json::Value = serde_json::from_str(v1).unwrap();
    retyped["fields"][2]["type"] = "string".into();
    let outcome = client.check(&subject, &retyped.to_string()).await.unwrap();
    assert!(!outcome.compatible, "{outcome:?}");
    assert!(
        outcome.messages.iter().any(|m| m.contains("requested_at")),
        "{outcome:?}"
    );
    assert!(
        outcome.messages.iter().any(|m| m.contains("warning")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn register_all_sets_the_rule_on_every_subject_and_check_all_then_passes() {
    let client = registry();
    let prefix = format!("{}-", unique("all"));
    let registered = client.register_all(&prefix).await.unwrap();
    assert_eq!(registered.len(), Schemas::global().unwrap().iter().count());
    // Idempotent: the same ids again.
    assert_eq!(client.register_all(&prefix).await.unwrap(), registered);
    for (subject, _) in &registered {
        assert_eq!(
            client.compatibility(subject).await.unwrap().as_deref(),
            Some(COMPATIBILITY),
            "{subject}"
        );
    }
    let outcomes = client.check_all(&prefix).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.compatible && !o.new_subject && o.messages.is_empty()),
        "{outcomes:#?}"
    );
}

#[tokio::test]
async fn an_unknown_schema_id_is_poison_and_an_unreachable_registry_is_transient() {
    let codec = Codec::new(registry()).unwrap();
    let err = codec
        .decode::<OrderCreate>(
            topics::ORDER_CREATE_REQUEST,
            &framing::frame(i32::MAX as u32, &[]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId { .. }), "{err}");
    assert!(err.is_poison() && !err.is_transient());

    let down =
        Codec::new(RegistryClient::new("http://127.0.0.1:9/apis/ccompat/v7").unwrap()).unwrap();
    let err = down
        .encode(
            topics::ORDER_CREATE_REQUEST,
            &OrderCreate::from(&order(1500)),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient() && !err.is_poison(), "{err}");
    assert_eq!(err.kind(), "registry_unavailable");
}
