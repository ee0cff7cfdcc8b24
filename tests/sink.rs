//! The PostgreSQL sink on the real stack (`scripts/stack up`): Kafka, the schema
//! registry and PostgreSQL, addressed by `ORDER_SAGA_BOOTSTRAP`,
//! `ORDER_SAGA_REGISTRY_URL` and `ORDER_SAGA_DATABASE_URL` (loopback defaults).
//!
//! Isolation: every test has its own topic prefix, sink group and PostgreSQL schema (the
//! sink's connection URL sets `search_path`, so its migrations create a private copy of
//! the tables). Tests therefore count whole tables instead of filtering, and
//! `report::summary` sees only the test's orders. Notifications are shared by the
//! database; they are told apart by the topic in their payload.
//!
//! The tests write `order-status` records themselves and compare the tables with the
//! fold of exactly what they wrote, counting records, never offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::{mpsc, oneshot, RwLock};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use order_saga::config::Config;
use order_saga::contracts::{
    AddressRecord, Codec, ItemRecord, OrderStatusRecord, RegistryClient, StatusSymbol,
};
use order_saga::kafka::{admin, clients};
use order_saga::report::{self, ReportArgs};
use order_saga::saga::Status;
use order_saga::sink::{self, SinkError};
use order_saga::topics;

/// The PostgreSQL restart test takes this for writing; every other test for reading, so
/// no test's own connections break under it.
static PG_RESTART: RwLock<()> = RwLock::const_new(());

const WAIT: Duration = Duration::from_secs(120);

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn bootstrap() -> String {
    env_or("ORDER_SAGA_BOOTSTRAP", "127.0.0.1:9092")
}

fn registry_url() -> String {
    env_or(
        "ORDER_SAGA_REGISTRY_URL",
        "http://127.0.0.1:8080/apis/ccompat/v7",
    )
}

fn base_database_url() -> String {
    env_or(
        "ORDER_SAGA_DATABASE_URL",
        "postgres://order:order@127.0.0.1:55432/order",
    )
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_test_writer()
        .try_init();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Connects, retrying while the server is (re)starting.
async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for PostgreSQL ({e}); is `scripts/stack up` running?");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("PostgreSQL unreachable at {url}: {e}; run `scripts/stack up`"),
        }
    }
}

/// One test's world: topic prefix, sink group, schema, codec, producer.
#[derive(Clone)]
struct Env {
    config: Config,
    topic: String,
    schema: String,
    codec: Arc<Codec>,
    producer: FutureProducer,
}

impl Env {
    async fn new(partitions: i32) -> Env {
        init_logs();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("t{}-", &id[..12]);
        let group = format!("sink-test-{}", &id[..12]);
        let schema = format!("sink_test_{}", &id[..12]);
        let admin_db = connect(&base_database_url()).await;
        admin_db
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create the test schema");
        let base = base_database_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let boot = bootstrap();
        let reg = registry_url();
        let args = [
            "test",
            "--bootstrap",
            &boot,
            "--registry-url",
            &reg,
            "--database-url",
            &url,
            "--topic-prefix",
            &prefix,
            "--sink-group",
            &group,
            "--stats-interval-s",
            "2",
        ];
        let config = match Config::try_parse_from(args) {
            Ok(config) => config,
            Err(e) => panic!("test config: {e}"),
        };
        let topic = config.topics().name(topics::ORDER_STATUS);
        let deadline = Instant::now() + WAIT;
        loop {
            match admin::create_topics(&config, &[&topic], partitions).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for Kafka ({e}); is `scripts/stack up` running?");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("cannot create {topic}: {e}; run `scripts/stack up`"),
            }
        }
        let registry = RegistryClient::new(&reg).expect("registry client");
        let codec = Arc::new(Codec::new(registry).expect("codec"));
        let producer: FutureProducer = clients::plain_producer(&config, "sink-test")
            .create()
            .expect("producer");
        Env {
            config,
            topic,
            schema,
            codec,
            producer,
        }
    }

    /// A connection to the test's schema.
    async fn db(&self) -> Client {
        connect(&self.config.database_url).await
    }

    fn start_sink(&self) -> RunningSink {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(sink::run(
            self.config.clone(),
            self.codec.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        RunningSink { stop, handle }
    }

    async fn encode(&self, record: &OrderStatusRecord) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.codec.encode(topics::ORDER_STATUS, record).await {
                Ok(bytes) => return bytes,
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    eprintln!("waiting for the registry ({e})");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("encode: {e}"),
            }
        }
    }

    /// Produces `records` in order and returns where each landed.
    async fn produce(&self, records: &[OrderStatusRecord]) -> Vec<(i32, i64)> {
        let mut payloads = Vec::with_capacity(records.len());
        for r in records {
            payloads.push((r.order_id.clone(), self.encode(r).await));
        }
        // Enqueued synchronously, in order: the idempotent producer keeps that order per
        // partition, as the processor's changelog has it per order.
        let mut deliveries = Vec::with_capacity(payloads.len());
        for (key, bytes) in &payloads {
            loop {
                let record = FutureRecord::to(&self.topic).key(key).payload(bytes);
                match self.producer.send_result(record) {
                    Ok(d) => {
                        deliveries.push(d);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => panic!("produce: {e}"),
                }
            }
        }
        let mut placed = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match d.await {
                Ok(Ok(d)) => placed.push((d.partition, d.offset)),
                other => panic!("record not delivered: {other:?}"),
            }
        }
        placed
    }

    async fn send(&self, key: String, payload: Option<Vec<u8>>) -> (i32, i64) {
        let mut record = FutureRecord::<String, Vec<u8>>::to(&self.topic).key(&key);
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(d) => (d.partition, d.offset),
            Err((e, _)) => panic!("produce: {e}"),
        }
    }

    /// Produces `records` in one transaction and aborts it: a read_committed reader
    /// must never see them.
    async fn produce_aborted(&self, records: &[OrderStatusRecord]) {
        let mut c: ClientConfig = clients::plain_producer(&self.config, "sink-test-aborted");
        c.set(
            "transactional.id",
            format!("{}aborted", self.config.topic_prefix),
        );
        let producer: FutureProducer = c.create().expect("transactional producer");
        let mut payloads = Vec::new();
        for r in records {
            payloads.push((r.order_id.clone(), self.encode(r).await));
        }
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .init_transactions(Duration::from_secs(30))
                .expect("init transactions");
            producer.begin_transaction().expect("begin");
            let mut deliveries = Vec::new();
            for (key, bytes) in &payloads {
                let record = FutureRecord::to(&topic).key(key).payload(bytes);
                match producer.send_result(record) {
                    Ok(d) => deliveries.push(d),
                    Err((e, _)) => panic!("enqueue: {e}"),
                }
            }
            producer.flush(Duration::from_secs(30)).expect("flush");
            for d in deliveries {
                match futures::executor::block_on(d) {
                    Ok(Ok(_)) => {}
                    other => panic!("aborted-transaction record not delivered: {other:?}"),
                }
            }
            producer
                .abort_transaction(Duration::from_secs(30))
                .expect("abort");
        })
        .await
        .expect("aborted transaction task");
    }

    async fn drop_schema(self) {
        let db = connect(&base_database_url()).await;
        let _ = db
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await;
    }
}

struct RunningSink {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), SinkError>>,
}

impl RunningSink {
    async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("sink did not stop cleanly: {other:?}"),
        }
    }
}

const PATHS: [&[Status]; 5] = [
    &[
        Status::Created,
        Status::Reserved,
        Status::Paid,
        Status::ShippingScheduled,
        Status::Completed,
    ],
    &[Status::Created, Status::Failed],
    &[Status::Created, Status::Reserved, Status::Canceled],
    &[
        Status::Created,
        Status::Reserved,
        Status::Paid,
        Status::Canceled,
        Status::Failed,
    ],
    &[Status::Created, Status::Reserved],
];

/// One order's changelog: the record of each version along its path.
struct Order {
    id: String,
    records: Vec<OrderStatusRecord>,
}

/// `count` orders along the paths above, created at `base`, version `v` at
/// `base + v * 1000`. Every third order carries no `saga_state`.
fn orders(count: usize, base: i64) -> Vec<Order> {
    (0..count)
        .map(|n| {
            let id = uuid::Uuid::new_v4().to_string();
            let path = PATHS[n % PATHS.len()];
            let records = (1..=path.len())
                .map(|v| {
                    let status = path[v - 1];
                    let times: Vec<serde_json::Value> = path[..v]
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            serde_json::json!({"status": s.as_str(), "at": base + (i as i64 + 1) * 1000})
                        })
                        .collect();
                    let saga_state = (n % 3 != 0).then(|| {
                        serde_json::json!({"created_at": base, "status_times": times}).to_string()
                    });
                    OrderStatusRecord {
                        order_id: id.clone(),
                        status: StatusSymbol::from(status),
                        version: v as i64,
                        customer_id: format!("customer-{}", n % 7),
                        total_minor: 2_999,
                        currency: "EUR".into(),
                        reason: matches!(status, Status::Failed | Status::Canceled)
                            .then(|| format!("{} at version {v}", status.as_str())),
                        updated_at: base + v as i64 * 1000,
                        created_at: Some(base),
                        items: vec![ItemRecord {
                            sku: format!("SKU-{n}"),
                            quantity: 1,
                            unit_price_minor: 2_999,
                        }],
                        shipping_address: Some(AddressRecord {
                            recipient: "Ada Lovelace".into(),
                            street: "1 Analytical Way".into(),
                            city: "London".into(),
                            postal_code: "N1 9GU".into(),
                            country: "GB".into(),
                        }),
                        saga_state,
                    }
                })
                .collect();
            Order { id, records }
        })
        .collect()
}

/// The changelog of `orders` with versions interleaved across orders (every order's v1,
/// then every v2, …), as the processor would write a busy period.
fn interleaved(orders: &[Order]) -> Vec<OrderStatusRecord> {
    let longest = orders.iter().map(|o| o.records.len()).max().unwrap_or(0);
    (0..longest)
        .flat_map(|v| orders.iter().filter_map(move |o| o.records.get(v).cloned()))
        .collect()
}

/// What `orders` should hold for one order.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    status: String,
    version: i64,
    reason: Option<String>,
    customer_id: String,
    created_at: i64,
    updated_at: i64,
    times: [Option<i64>; 6],
}

const TIME_STATUSES: [Status; 6] = [
    Status::Reserved,
    Status::Paid,
    Status::ShippingScheduled,
    Status::Completed,
    Status::Failed,
    Status::Canceled,
];

/// The fold of a changelog: per order, the record with the highest version, and the time
/// each status was first reached.
fn fold(records: &[OrderStatusRecord]) -> (BTreeMap<String, Expected>, BTreeSet<(String, i64)>) {
    let mut rows: BTreeMap<String, Expected> = BTreeMap::new();
    let mut reached: HashMap<String, HashMap<&'static str, i64>> = HashMap::new();
    let mut history = BTreeSet::new();
    for r in records {
        let status = r.status().expect("status");
        history.insert((r.order_id.clone(), r.version));
        reached
            .entry(r.order_id.clone())
            .or_default()
            .entry(status.as_str())
            .or_insert(r.updated_at);
        let newer = rows.get(&r.order_id).is_none_or(|e| e.version < r.version);
        if newer {
            rows.insert(
                r.order_id.clone(),
                Expected {
                    status: status.as_str().to_owned(),
                    version: r.version,
                    reason: r.reason.clone(),
                    customer_id: r.customer_id.clone(),
                    created_at: r.created_at.unwrap_or(r.updated_at),
                    updated_at: r.updated_at,
                    times: [None; 6],
                },
            );
        }
    }
    for (id, e) in rows.iter_mut() {
        let seen = &reached[id];
        for (slot, status) in e.times.iter_mut().zip(TIME_STATUSES) {
            *slot = seen.get(status.as_str()).copied();
        }
    }
    (rows, history)
}

const MS: &str = "(extract(epoch FROM {})::float8 * 1000)::int8";

fn ms(column: &str) -> String {
    MS.replace("{}", column)
}

/// The `orders` table as [`Expected`] rows.
async fn table(db: &Client) -> BTreeMap<String, Expected> {
    let sql = format!(
        "SELECT order_id, status, version, reason, customer_id, {}, {}, {}, {}, {}, {}, {}, {}
         FROM orders",
        ms("created_at"),
        ms("updated_at"),
        ms("reserved_at"),
        ms("paid_at"),
        ms("shipping_scheduled_at"),
        ms("completed_at"),
        ms("failed_at"),
        ms("canceled_at"),
    );
    let mut out = BTreeMap::new();
    for row in db.query(&sql, &[]).await.expect("read orders") {
        let mut times = [None; 6];
        for (i, slot) in times.iter_mut().enumerate() {
            *slot = row.get(7 + i);
        }
        out.insert(
            row.get(0),
            Expected {
                status: row.get(1),
                version: row.get(2),
                reason: row.get(3),
                customer_id: row.get(4),
                created_at: row.get(5),
                updated_at: row.get(6),
                times,
            },
        );
    }
    out
}

async fn history(db: &Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT order_id, version FROM order_status_history ORDER BY 1, 2",
        &[],
    )
    .await
    .expect("read history")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// History rows and the sum of `orders.version`, in one snapshot.
async fn progress(db: &Client) -> Option<(i64, i64)> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM order_status_history),
                    (SELECT coalesce(sum(version), 0)::int8 FROM orders)",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// Waits until the tables account for every record of `records` (each query on a fresh
/// connection, so a PostgreSQL restart does not break the wait).
async fn wait_caught_up(env: &Env, records: &[OrderStatusRecord]) {
    let (rows, hist) = fold(records);
    let want = (
        hist.len() as i64,
        rows.values().map(|e| e.version).sum::<i64>(),
    );
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        let db = env.db().await;
        last = progress(&db).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("sink did not catch up within {WAIT:?}: (history rows, version sum) = {last:?}, want {want:?}");
}

/// Asserts the tables are exactly the fold of `records`.
async fn assert_fold(db: &Client, records: &[OrderStatusRecord]) {
    let (rows, hist) = fold(records);
    let actual = table(db).await;
    assert_eq!(actual.len(), rows.len(), "one row per order");
    for (id, want) in &rows {
        assert_eq!(actual.get(id), Some(want), "order {id}");
    }
    let actual_history = history(db).await;
    assert_eq!(
        actual_history.len(),
        hist.len(),
        "one history row per (order, version)"
    );
    let actual_set: BTreeSet<(String, i64)> = actual_history.into_iter().collect();
    assert_eq!(actual_set, hist);
}

/// Collects the change-feed payloads of `topic`.
async fn listen(env: &Env) -> mpsc::UnboundedReceiver<serde_json::Value> {
    let (client, mut connection) = tokio_postgres::connect(&env.config.database_url, NoTls)
        .await
        .expect("listen connection");
    let (tx, rx) = mpsc::unbounded_channel();
    let topic = env.topic.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let payload: serde_json::Value = match serde_json::from_str(n.payload()) {
                    Ok(v) => v,
                    Err(e) => panic!("payload is not JSON ({e}): {}", n.payload()),
                };
                if payload["topic"] == topic.as_str() && tx.send(payload).is_err() {
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", sink::NOTIFY_CHANNEL))
        .await
        .expect("listen");
    // Keep the client (and so the connection) alive as long as the receiver is used.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(client);
    });
    rx
}

/// The payloads received so far.
fn drain(rx: &mut mpsc::UnboundedReceiver<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Ok(v) = rx.try_recv() {
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_table_equals_the_fold_of_the_changelog_and_aborted_records_never_show() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(3).await;
    let base = now_ms() - 3_600_000;
    let orders = orders(500, base);
    let mut changelog = interleaved(&orders);
    // Re-sent records (a changelog may repeat one) and a stale version after a newer one.
    changelog.extend(orders[..20].iter().map(|o| o.records[0].clone()));
    changelog.push(orders[0].records[1].clone());
    env.produce(&changelog).await;
    // Newer versions in an aborted transaction: read_committed must never show them.
    let aborted: Vec<OrderStatusRecord> = orders[..10]
        .iter()
        .map(|o| {
            let mut r = o.records.last().cloned().expect("a record");
            r.version = 100;
            r.status = StatusSymbol::Failed;
            r.reason = Some("aborted, never visible".into());
            r
        })
        .collect();
    env.produce_aborted(&aborted).await;
    let mut feed = listen(&env).await;

    let sink = env.start_sink();
    wait_caught_up(&env, &changelog).await;
    let db = env.db().await;
    assert_fold(&db, &changelog).await;

    // The change feed: one payload per batch that changed rows, summing to every row.
    let (_, hist) = fold(&changelog);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut payloads = Vec::new();
    let mut notified_history = 0;
    while notified_history < hist.len() as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        payloads.extend(drain(&mut feed));
        notified_history = payloads
            .iter()
            .map(|p| p["history"].as_i64().unwrap_or(0))
            .sum();
    }
    assert_eq!(
        notified_history,
        hist.len() as i64,
        "payloads: {payloads:?}"
    );
    for p in &payloads {
        assert!(p["orders"].as_i64().is_some_and(|n| n > 0), "{p}");
        assert!(
            p["partitions"].as_object().is_some_and(|m| !m.is_empty()),
            "{p}"
        );
        assert!(
            p["max_updated_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{p}"
        );
    }

    // The report's numbers over the same rows.
    let summary = report::summary(&db).await.expect("summary");
    let (rows, _) = fold(&changelog);
    assert_eq!(summary.orders, rows.len() as u64);
    for status in Status::ALL {
        let want = rows
            .values()
            .filter(|e| e.status == status.as_str())
            .count() as u64;
        assert_eq!(summary.count(status), want, "{status:?}");
    }
    let in_flight = summary.count(Status::Created)
        + summary.count(Status::Reserved)
        + summary.count(Status::Paid)
        + summary.count(Status::ShippingScheduled);
    assert_eq!(summary.in_flight, in_flight);
    assert_eq!(summary.terminal, summary.orders - in_flight);
    // Terminal times are 2, 3, 4 (canceled before failed) and 5 seconds after creation,
    // 100 orders each: the median interpolates between 3 and 4.
    let latency = summary.latency_ms.expect("latency");
    assert_eq!(
        (latency.p50, latency.p95, latency.p99, latency.max),
        (3500.0, 5000.0, 5000.0, 5000.0)
    );
    let rate = summary.orders_per_s.expect("rate");
    assert!(
        (rate - summary.terminal as f64 / 5.0).abs() < 1e-6,
        "{rate}"
    );
    let stuck = report::stuck_orders(&db, 60, 20).await.expect("stuck");
    assert_eq!(
        stuck.total, in_flight,
        "orders in flight for an hour are stuck"
    );
    assert_eq!(stuck.orders.len(), 20);
    assert!(report::print_order(&db, &orders[0].id)
        .await
        .expect("print order"));
    assert!(!report::print_order(&db, "no-such-order")
        .await
        .expect("print order"));
    let args = ReportArgs {
        stuck_after_s: 60,
        wait_for: None,
        timeout_s: 1,
        json: true,
        since_ms: 0,
    };
    report::print_report(&db, &args).await.expect("report");

    sink.stop().await;
    env.drop_schema().await;
}

/// Every row with its `xmin`, so a rewrite of identical content also shows.
async fn snapshot(db: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT xmin::text || ' ' || row_to_json(o)::text FROM orders o ORDER BY order_id",
        "SELECT xmin::text || ' ' || row_to_json(h)::text FROM order_status_history h
         ORDER BY order_id, version",
    ] {
        for row in db.query(sql, &[]).await.expect("snapshot") {
            out.push(row.get(0));
        }
    }
    out
}

async fn offsets(db: &Client, group: &str) -> BTreeMap<i32, i64> {
    db.query(
        "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = $1",
        &[&group],
    )
    .await
    .expect("offsets")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_changelog_from_the_beginning_after_an_offset_reset_changes_nothing() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(3).await;
    let changelog = interleaved(&orders(300, now_ms()));
    env.produce(&changelog).await;
    let sink = env.start_sink();
    wait_caught_up(&env, &changelog).await;
    let db = env.db().await;
    // Settle: the last batch's offsets are in the same transaction as its rows, so once
    // the rows are there the offsets are final.
    let end = offsets(&db, &env.config.sink_group).await;
    sink.stop().await;
    let before = snapshot(&db).await;

    let deleted = db
        .execute(
            "DELETE FROM sink_offsets WHERE consumer_group = $1",
            &[&env.config.sink_group],
        )
        .await
        .expect("reset offsets");
    assert_eq!(deleted as usize, end.len());
    let mut feed = listen(&env).await;
    let sink = env.start_sink();
    let deadline = Instant::now() + WAIT;
    while offsets(&db, &env.config.sink_group).await != end {
        assert!(
            Instant::now() < deadline,
            "the replay did not reach the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.stop().await;

    assert_eq!(snapshot(&db).await, before, "a replay rewrote rows");
    assert_fold(&db, &changelog).await;
    assert!(
        drain(&mut feed).is_empty(),
        "a replay that changes nothing notifies nobody"
    );
    env.drop_schema().await;
}

/// A child `order-saga sink` process, killed when dropped.
struct SinkProcess(Child);

impl SinkProcess {
    fn spawn(env: &Env, log_name: &str) -> SinkProcess {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log =
            std::fs::File::create(dir.join(format!("{}{log_name}.log", env.config.topic_prefix)))
                .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_order-saga"))
            .arg("sink")
            .env("ORDER_SAGA_BOOTSTRAP", &env.config.bootstrap)
            .env("ORDER_SAGA_REGISTRY_URL", &env.config.registry_url)
            .env("ORDER_SAGA_DATABASE_URL", &env.config.database_url)
            .env("ORDER_SAGA_TOPIC_PREFIX", &env.config.topic_prefix)
            .env("ORDER_SAGA_SINK_GROUP", &env.config.sink_group)
            .env("ORDER_SAGA_STATS_INTERVAL_S", "2")
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn order-saga sink");
        SinkProcess(child)
    }

    fn kill9(&mut self) {
        // std's kill() is SIGKILL on Unix: no drain, no last commit, no leaving the group.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Produces `records` in `waves` slices with a pause between, so the sink commits many
/// batches while they arrive.
async fn produce_slowly(
    env: &Env,
    records: &[OrderStatusRecord],
    waves: usize,
    pause: Duration,
) -> Vec<(i32, i64)> {
    let per_wave = records.len().div_ceil(waves).max(1);
    let mut placed = Vec::with_capacity(records.len());
    for wave in records.chunks(per_wave) {
        placed.extend(env.produce(wave).await);
        tokio::time::sleep(pause).await;
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_killed_with_sigkill_mid_stream_and_restarted_neither_loses_nor_duplicates_history()
{
    let _pg = PG_RESTART.read().await;
    let env = Env::new(3).await;
    let changelog = interleaved(&orders(6_000, now_ms()));
    let total = fold(&changelog).1.len() as i64;
    let mut first = SinkProcess::spawn(&env, "sink-first");
    let producing = {
        let (env, records) = (env.clone(), changelog.clone());
        tokio::spawn(
            async move { produce_slowly(&env, &records, 30, Duration::from_millis(150)).await },
        )
    };
    // Kill it once it has committed part of the stream, while records keep arriving.
    wait_for_tables(&env).await;
    let db = env.db().await;
    let deadline = Instant::now() + WAIT;
    let killed_at = loop {
        let (rows, _) = progress(&db).await.expect("progress");
        if rows > total / 4 {
            first.kill9();
            break rows;
        }
        assert!(Instant::now() < deadline, "the first sink never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        killed_at < total,
        "killed after the end ({killed_at} of {total}): nothing was tested"
    );
    producing.await.expect("producer task");

    let _second = SinkProcess::spawn(&env, "sink-second");
    wait_caught_up(&env, &changelog).await;
    assert_fold(&db, &changelog).await;
    env.drop_schema().await;
}

/// Restarts the PostgreSQL cluster that listens on `url`'s port (`pg_ctlcluster … restart
/// -m fast`, as `scripts/stack` manages it).
fn restart_postgres(url: &str) {
    let config: tokio_postgres::Config = url.parse().expect("database url");
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let listing = Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .expect("pg_lsclusters (postgresql-common) is needed to restart PostgreSQL");
    let text = String::from_utf8_lossy(&listing.stdout);
    let (version, cluster) = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[2] == port && f[3] == "online")
        .map(|f| (f[0].to_owned(), f[1].to_owned()))
        .unwrap_or_else(|| panic!("no online cluster on port {port} in:\n{text}"));
    // Its own session and no inherited output: the restarted server outlives this call.
    let status = Command::new("setsid")
        .args([
            "-w",
            "pg_ctlcluster",
            &version,
            &cluster,
            "restart",
            "-m",
            "fast",
        ])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pg_ctlcluster");
    assert!(
        status.success(),
        "pg_ctlcluster {version} {cluster} restart failed: {status}"
    );
}

async fn postmaster_started(env: &Env) -> String {
    env.db()
        .await
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .expect("postmaster start time")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_during_a_load_loses_nothing() {
    let _pg = PG_RESTART.write().await;
    let env = Env::new(3).await;
    let changelog = interleaved(&orders(4_000, now_ms()));
    let total = fold(&changelog).1.len() as i64;
    let started = postmaster_started(&env).await;
    let sink = env.start_sink();
    let producing = {
        let (env, records) = (env.clone(), changelog.clone());
        tokio::spawn(
            async move { produce_slowly(&env, &records, 40, Duration::from_millis(150)).await },
        )
    };
    wait_for_tables(&env).await;
    let deadline = Instant::now() + WAIT;
    let at_restart = loop {
        let db = env.db().await;
        let (rows, _) = progress(&db).await.expect("progress");
        if rows > total / 5 {
            break rows;
        }
        assert!(Instant::now() < deadline, "the sink never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let url = env.config.database_url.clone();
    tokio::task::spawn_blocking(move || restart_postgres(&url))
        .await
        .expect("restart task");
    producing.await.expect("producer task");
    wait_caught_up(&env, &changelog).await;

    assert_ne!(
        postmaster_started(&env).await,
        started,
        "PostgreSQL did not restart"
    );
    assert!(
        at_restart < total,
        "restarted after the end ({at_restart} of {total})"
    );
    assert_fold(&env.db().await, &changelog).await;
    sink.stop().await;
    env.drop_schema().await;
}

/// Waits until the sink has migrated the test's schema.
async fn wait_for_tables(env: &Env) {
    let db = env.db().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let row = db
            .query_one("SELECT to_regclass('sink_offsets')::text", &[])
            .await
            .expect("regclass");
        if row.get::<_, Option<String>>(0).is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never created its tables"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a reader saw in one REPEATABLE READ snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    offsets: BTreeMap<i32, i64>,
    /// (rows, sum of version) of `order_status_history`.
    history: (i64, i64),
    /// (rows, sum of version) of `orders`.
    orders: (i64, i64),
}

/// What a snapshot with `offsets` must show: the fold of exactly the records before
/// those offsets.
fn expected_at(
    offsets: &BTreeMap<i32, i64>,
    records: &[OrderStatusRecord],
    placed: &[(i32, i64)],
) -> ((i64, i64), (i64, i64)) {
    let consumed: Vec<OrderStatusRecord> = records
        .iter()
        .zip(placed)
        .filter(|(_, (p, o))| offsets.get(p).is_some_and(|next| o < next))
        .map(|(r, _)| r.clone())
        .collect();
    let (rows, hist) = fold(&consumed);
    (
        (hist.len() as i64, hist.iter().map(|(_, v)| v).sum()),
        (rows.len() as i64, rows.values().map(|e| e.version).sum()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_in_another_connection_never_sees_a_half_applied_batch() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(3).await;
    let changelog = interleaved(&orders(3_000, now_ms()));
    let sink = env.start_sink();
    wait_for_tables(&env).await;

    let (stop, mut stopped) = oneshot::channel::<()>();
    let reader = {
        let (url, group) = (
            env.config.database_url.clone(),
            env.config.sink_group.clone(),
        );
        tokio::spawn(async move {
            let mut db = connect(&url).await;
            let mut samples = Vec::new();
            while stopped.try_recv().is_err() {
                let tx = db
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .expect("begin");
                let offsets = tx
                    .query(
                        "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = $1",
                        &[&group],
                    )
                    .await
                    .expect("offsets")
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let h = tx
                    .query_one(
                        "SELECT count(*), coalesce(sum(version), 0)::int8 FROM order_status_history",
                        &[],
                    )
                    .await
                    .expect("history");
                let o = tx
                    .query_one(
                        "SELECT count(*), coalesce(sum(version), 0)::int8 FROM orders",
                        &[],
                    )
                    .await
                    .expect("orders");
                tx.commit().await.expect("commit");
                samples.push(Sample {
                    offsets,
                    history: (h.get(0), h.get(1)),
                    orders: (o.get(0), o.get(1)),
                });
            }
            samples
        })
    };
    let placed = produce_slowly(&env, &changelog, 30, Duration::from_millis(100)).await;
    wait_caught_up(&env, &changelog).await;
    let _ = stop.send(());
    let samples = reader.await.expect("reader task");
    sink.stop().await;

    let mut distinct: BTreeMap<BTreeMap<i32, i64>, Sample> = BTreeMap::new();
    for s in samples {
        match distinct.get(&s.offsets) {
            Some(seen) => assert_eq!(seen, &s, "one set of offsets, two table states"),
            None => {
                distinct.insert(s.offsets.clone(), s);
            }
        }
    }
    let (end_history, end_orders) = {
        let (rows, hist) = fold(&changelog);
        (hist.len() as i64, rows.len() as i64)
    };
    let mut intermediate = 0;
    for (offsets, s) in &distinct {
        let (history, orders) = expected_at(offsets, &changelog, &placed);
        assert_eq!(
            (s.history, s.orders),
            (history, orders),
            "a snapshot with offsets {offsets:?} does not hold exactly the records before them"
        );
        if s.history.0 > 0 && (s.history.0 < end_history || s.orders.0 < end_orders) {
            intermediate += 1;
        }
    }
    assert!(
        intermediate >= 5,
        "only {intermediate} in-between snapshots seen: the check proved little"
    );
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sinks_in_one_group_hand_partitions_over_and_the_table_still_equals_the_fold() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(3).await;
    let changelog = interleaved(&orders(1_500, now_ms()));
    let third = changelog.len() / 3;
    let a = env.start_sink();
    produce_slowly(&env, &changelog[..third], 10, Duration::from_millis(100)).await;
    let b = env.start_sink();
    produce_slowly(
        &env,
        &changelog[third..2 * third],
        10,
        Duration::from_millis(100),
    )
    .await;
    a.stop().await;
    produce_slowly(
        &env,
        &changelog[2 * third..],
        10,
        Duration::from_millis(100),
    )
    .await;
    wait_caught_up(&env, &changelog).await;
    let db = env.db().await;
    assert_fold(&db, &changelog).await;
    b.stop().await;
    assert_eq!(
        offsets(&db, &env.config.sink_group).await.len(),
        3,
        "an offset row per partition"
    );
    env.drop_schema().await;
}

/// A record of `order` one version past its last, as a producer with a bug would write
/// it: it decodes and converts, and PostgreSQL refuses it.
fn poisoned(order: &Order, spoil: impl FnOnce(&mut OrderStatusRecord)) -> OrderStatusRecord {
    let mut r = order.records.last().cloned().expect("a record");
    r.version += 1;
    spoil(&mut r);
    r
}

/// `order_status_rejects`: partition, offset, order id, version, SQLSTATE, reason,
/// constraint and the record's currency, by place.
type RejectRow = (
    i32,
    i64,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
);

async fn rejects(db: &Client) -> Vec<RejectRow> {
    db.query(
        "SELECT partition, record_offset, order_id, version, sqlstate, reason, constraint_name,
                record::jsonb ->> 'currency'
         FROM order_status_rejects ORDER BY partition, record_offset",
        &[],
    )
    .await
    .expect("read order_status_rejects")
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
        )
    })
    .collect()
}

/// Every reject row with its `xmin`: a second write of the same content shows.
async fn rejects_snapshot(db: &Client) -> Vec<String> {
    db.query(
        "SELECT xmin::text || ' ' || row_to_json(r)::text FROM order_status_rejects r
         ORDER BY partition, record_offset",
        &[],
    )
    .await
    .expect("snapshot order_status_rejects")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The rejects as `psql` (another client, through libpq) prints them: what an operator
/// sees.
fn rejects_via_psql(url: &str) -> String {
    let output = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT partition, record_offset, sqlstate, reason, record::jsonb ->> 'order_id' \
             FROM order_status_rejects ORDER BY partition, record_offset",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql (postgresql-client, installed by scripts/stack) must be on PATH");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_postgres_refuses_is_set_aside_and_every_other_row_written_exactly_once() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(2).await;
    // An operator's constraint on a public table: an ISO 4217 code, upper case.
    let mut db = env.db().await;
    order_saga::db::migrate(&mut db).await.expect("migrate");
    db.batch_execute(
        "ALTER TABLE orders ADD CONSTRAINT currency_is_iso_4217 CHECK (currency ~ '^[A-Z]{3}$')",
    )
    .await
    .expect("add the constraint");

    let orders = orders(60, now_ms());
    let mut good = interleaved(&orders);
    // Nanoseconds where milliseconds belong: beyond the range of a PostgreSQL interval
    // (22008). And a currency the constraint refuses (23514).
    let bad_time = poisoned(&orders[3], |r| r.updated_at = now_ms() * 1_000_000);
    let bad_currency = poisoned(&orders[8], |r| r.currency = "euro".into());
    let (third, two_thirds) = (good.len() / 3, 2 * good.len() / 3);
    let mut placed = env.produce(&good[..third]).await;
    let time_at = env.produce(std::slice::from_ref(&bad_time)).await[0];
    placed.extend(env.produce(&good[third..two_thirds]).await);
    let currency_at = env.produce(std::slice::from_ref(&bad_currency)).await[0];
    placed.extend(env.produce(&good[two_thirds..]).await);
    assert!(!placed.contains(&time_at) && !placed.contains(&currency_at));

    let mut feed = listen(&env).await;
    let sink = env.start_sink();
    wait_caught_up(&env, &good).await;
    // It keeps going: records after the rejected ones, in a later batch, land too.
    let later = interleaved(&self::orders(10, now_ms()));
    env.produce(&later).await;
    good.extend(later);
    wait_caught_up(&env, &good).await;
    assert!(
        !sink.handle.is_finished(),
        "the sink stopped on a refused record"
    );
    assert_fold(&db, &good).await;

    let mut want = vec![
        (
            time_at.0,
            time_at.1,
            bad_time.order_id.clone(),
            bad_time.version,
            "22008".to_owned(),
            None,
            Some("EUR".to_owned()),
        ),
        (
            currency_at.0,
            currency_at.1,
            bad_currency.order_id.clone(),
            bad_currency.version,
            "23514".to_owned(),
            Some("currency_is_iso_4217".to_owned()),
            Some("euro".to_owned()),
        ),
    ];
    want.sort();
    let found = rejects(&db).await;
    let without_reason: Vec<_> = found
        .iter()
        .map(|(p, o, id, v, state, _, constraint, currency)| {
            (
                *p,
                *o,
                id.clone(),
                *v,
                state.clone(),
                constraint.clone(),
                currency.clone(),
            )
        })
        .collect();
    assert_eq!(without_reason, want);
    for (.., reason, _, _) in &found {
        assert!(!reason.is_empty(), "a reject without a reason: {found:?}");
    }
    let payloads = drain(&mut feed);
    let rejected: i64 = payloads.iter().filter_map(|p| p["rejected"].as_i64()).sum();
    assert_eq!(rejected, 2, "{payloads:?}");
    assert!(
        payloads
            .iter()
            .any(|p| p["rejected"].as_i64().unwrap_or(0) > 0 && p["history"].as_i64() > Some(0)),
        "no batch wrote good rows next to a rejected one: {payloads:?}"
    );
    let shown = rejects_via_psql(&env.config.database_url);
    for (p, o, id, ..) in &want {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("{p}|{o}|")) && l.ends_with(id.as_str())),
            "psql does not show the reject at {p}/{o}:\n{shown}"
        );
    }

    // A restart resumes after the rejected records: nothing is rewritten or rejected
    // again, and what follows still lands.
    sink.stop().await;
    let rows_before = snapshot(&db).await;
    let rejects_before = rejects_snapshot(&db).await;
    let sink = env.start_sink();
    let after_restart = interleaved(&self::orders(5, now_ms()));
    env.produce(&after_restart).await;
    good.extend(after_restart);
    wait_caught_up(&env, &good).await;
    sink.stop().await;
    let rows_after = snapshot(&db).await;
    for row in &rows_before {
        assert!(rows_after.contains(row), "rewritten after a restart: {row}");
    }
    assert_eq!(rejects_snapshot(&db).await, rejects_before);

    // Even a replay from the beginning finds the same two records and adds nothing.
    let end = offsets(&db, &env.config.sink_group).await;
    db.execute(
        "DELETE FROM sink_offsets WHERE consumer_group = $1",
        &[&env.config.sink_group],
    )
    .await
    .expect("reset offsets");
    drain(&mut feed);
    let sink = env.start_sink();
    let deadline = Instant::now() + WAIT;
    while offsets(&db, &env.config.sink_group).await != end {
        assert!(
            Instant::now() < deadline,
            "the replay did not reach the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.stop().await;
    assert_eq!(snapshot(&db).await, rows_after, "a replay rewrote rows");
    assert_eq!(
        rejects_snapshot(&db).await,
        rejects_before,
        "a replay rejected again"
    );
    assert!(
        drain(&mut feed).is_empty(),
        "a replay that changes nothing notifies nobody"
    );
    assert_fold(&db, &good).await;
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_that_is_not_the_data_s_is_retried_and_rejects_nothing() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(2).await;
    let mut db = env.db().await;
    order_saga::db::migrate(&mut db).await.expect("migrate");
    // Every write to `orders` fails with a serialization failure while `outage.failing`
    // is set; a sequence (not rolled back) counts the attempts.
    db.batch_execute(
        "CREATE SEQUENCE attempts;
         CREATE TABLE outage (failing boolean NOT NULL);
         INSERT INTO outage VALUES (true);
         CREATE FUNCTION fail_while_out() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM nextval('attempts');
             IF (SELECT failing FROM outage) THEN
                 RAISE EXCEPTION 'simulated serialization failure' USING ERRCODE = '40001';
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER fail_while_out BEFORE INSERT ON orders
             FOR EACH STATEMENT EXECUTE FUNCTION fail_while_out();",
    )
    .await
    .expect("set up the outage");
    let changelog = interleaved(&orders(30, now_ms()));
    env.produce(&changelog).await;

    let sink = env.start_sink();
    let deadline = Instant::now() + WAIT;
    loop {
        let row = db
            .query_one("SELECT last_value, is_called FROM attempts", &[])
            .await
            .expect("attempts");
        let (tried, called): (i64, bool) = (row.get(0), row.get(1));
        if called && tried >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the sink never tried to write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written: i64 = db
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count orders")
        .get(0);
    assert_eq!(written, 0, "written through a failing trigger");
    assert!(rejects(&db).await.is_empty(), "rows blamed for an outage");

    db.batch_execute("UPDATE outage SET failing = false")
        .await
        .expect("end the outage");
    wait_caught_up(&env, &changelog).await;
    assert_fold(&db, &changelog).await;
    assert!(rejects(&db).await.is_empty(), "rows blamed for an outage");
    sink.stop().await;
    env.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_records_and_tombstones_are_skipped_and_the_records_around_them_applied() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(1).await;
    let orders = orders(40, now_ms());
    let changelog = interleaved(&orders);
    let half = changelog.len() / 2;
    env.produce(&changelog[..half]).await;
    env.send(orders[0].id.clone(), Some(b"not the wire format".to_vec()))
        .await;
    // The wire format, but a schema id the registry does not have.
    env.send(
        orders[1].id.clone(),
        Some(vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 0]),
    )
    .await;
    env.send(orders[2].id.clone(), None).await;
    env.produce(&changelog[half..]).await;

    let sink = env.start_sink();
    wait_caught_up(&env, &changelog).await;
    assert_fold(&env.db().await, &changelog).await;
    assert!(
        !sink.handle.is_finished(),
        "the sink stopped on a bad record"
    );
    sink.stop().await;
    env.drop_schema().await;
}

/// Not a check, a measurement: `cargo test --release --test sink -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark; run explicitly"]
async fn catching_up_on_a_backlog_measures_records_per_second() {
    let _pg = PG_RESTART.read().await;
    let env = Env::new(6).await;
    let count: usize = std::env::var("SINK_BENCH_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let changelog = interleaved(&orders(count, now_ms()));
    env.produce(&changelog).await;
    let started = Instant::now();
    let sink = env.start_sink();
    wait_caught_up(&env, &changelog).await;
    let took = started.elapsed();
    println!(
        "sink caught up on {} records in {:.2} s: {:.0} records/s (including start-up and group join)",
        changelog.len(),
        took.as_secs_f64(),
        changelog.len() as f64 / took.as_secs_f64()
    );
    sink.stop().await;
    env.drop_schema().await;
}
