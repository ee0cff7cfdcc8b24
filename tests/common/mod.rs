//! Helpers shared by the integration tests. They talk to the real local stack
//! (`scripts/stack up`): broker, registry and PostgreSQL addresses come from the
//! environment with loopback defaults, and every test works in topics of its own,
//! named with a random prefix, so tests never see each other's records.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use order_saga::config::Config;
use order_saga::contracts::records::{
    ActionSymbol, OrderCancel, OrderCreate, OrderStatusRecord, StepResultRecord,
};
use order_saga::contracts::registry::RegistryClient;
use order_saga::contracts::Codec;
use order_saga::kafka::{admin, clients};
use order_saga::saga::{
    Action, Address, CancelRequest, Item, OrderRequest, OrderState, Outcome, Status, StepResult,
};
use order_saga::topics;

pub const PARTITIONS: i32 = 3;

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

pub fn bootstrap() -> String {
    env_or("ORDER_SAGA_BOOTSTRAP", "127.0.0.1:9092")
}

pub fn registry_url() -> String {
    env_or(
        "ORDER_SAGA_REGISTRY_URL",
        "http://127.0.0.1:8080/apis/ccompat/v7",
    )
}

pub fn database_url() -> String {
    env_or(
        "ORDER_SAGA_DATABASE_URL",
        "postgres://order:order@127.0.0.1:55432/order",
    )
}

pub fn random_prefix() -> String {
    format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A configuration for the topics behind `prefix`, with `extra` flags.
pub fn config(prefix: &str, extra: &[&str]) -> Config {
    let boot = bootstrap();
    let reg = registry_url();
    let db = database_url();
    // Each test is its own deployment: its own consumer group and transactional ids, so
    // parallel tests neither rebalance nor fence each other.
    let app = format!("{prefix}order");
    let mut args = vec![
        "test",
        "--application-id",
        &app,
        "--bootstrap",
        &boot,
        "--registry-url",
        &reg,
        "--database-url",
        &db,
        "--topic-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    match Config::try_parse_from(args) {
        Ok(config) => config,
        Err(e) => panic!("test config does not parse: {e}"),
    }
}

pub fn codec() -> Arc<Codec> {
    // The registry's CA and credentials come from the same ORDER_SAGA_* variables as the
    // program's, so these helpers work against a secured registry too.
    let auth = Config::try_parse_from(["test"])
        .map(|c| c.security)
        .unwrap_or_default()
        .registry_auth()
        .expect("registry CA, password or token file");
    let registry = RegistryClient::secured(&registry_url(), &auth).expect("registry client");
    Arc::new(Codec::new(registry).expect("codec"))
}

/// Creates all saga topics behind the config's prefix.
pub async fn create_topics(config: &Config) {
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin::create_topics(config, &refs, PARTITIONS)
        .await
        .expect("create topics");
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGKILL: no drain, no commit, no goodbye to the group.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `within` for the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(within)
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`, …) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([format!("-{name}").as_str(), &pid])
            .status();
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, while the process runs, until its log satisfies `ready`, and returns the
    /// log then; fails naming `what` if the process exits first or `within` passes.
    pub fn wait_for_log(
        &mut self,
        what: &str,
        within: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let until = Instant::now() + within;
        loop {
            let log = self.log_text();
            if ready(&log) {
                return log;
            }
            assert!(
                Instant::now() < until,
                "{what}: not within {within:?}:\n{log}"
            );
            assert_eq!(
                self.wait_exit(Duration::from_millis(200)),
                None,
                "{what}: the process exited:\n{log}"
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `order-saga <args>` against the topics of `config`, logging to a file under
/// `target/test-logs/`.
pub fn spawn(config: &Config, instance: &str, args: &[&str]) -> Proc {
    spawn_bin(
        &PathBuf::from(env!("CARGO_BIN_EXE_order-saga")),
        config,
        instance,
        args,
    )
}

/// Starts `order-saga-tools <args>` (the simulator, the load generator) like [`spawn`].
/// The tools are another package of the workspace, so cargo does not hand this test its
/// path: it is the binary beside `order-saga`, built by `cargo test --workspace`.
pub fn spawn_tool(config: &Config, instance: &str, args: &[&str]) -> Proc {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_order-saga")).with_file_name("order-saga-tools");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it with \
         `cargo build -p order-saga-tools`)",
        bin.display()
    );
    spawn_bin(&bin, config, instance, args)
}

fn spawn_bin(bin: &std::path::Path, config: &Config, instance: &str, args: &[&str]) -> Proc {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let log = dir.join(format!(
        "{}{}-{}.log",
        config.topic_prefix,
        instance,
        args.join("-")
    ));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin)
        .args(args)
        .envs(config.env_vars())
        .env("ORDER_SAGA_INSTANCE_ID", instance)
        .env("ORDER_SAGA_STATS_INTERVAL_S", "5")
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    Proc { child, log }
}

/// A valid sample order.
pub fn order(n: u32) -> OrderRequest {
    let items = vec![
        Item {
            sku: format!("SKU-{n}"),
            quantity: 2,
            unit_price_minor: 1_250,
        },
        Item {
            sku: "SKU-GIFT".into(),
            quantity: 1,
            unit_price_minor: 499,
        },
    ];
    OrderRequest {
        order_id: uuid::Uuid::new_v4().to_string(),
        customer_id: format!("customer-{}", n % 7),
        total_minor: 2 * 1_250 + 499,
        items,
        currency: "EUR".into(),
        shipping_address: Address {
            recipient: "Ada Lovelace".into(),
            street: "1 Analytical Way".into(),
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country: "GB".into(),
        },
        created_at: now_ms(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn producer(config: &Config) -> FutureProducer {
    clients::plain_producer(config, "test-producer")
        .create()
        .expect("producer")
}

/// Produces raw bytes to the fixed topic `base` behind the config's prefix.
pub async fn produce_raw(
    p: &FutureProducer,
    config: &Config,
    base: &str,
    key: Option<&str>,
    value: &[u8],
) {
    let topic = config.topics().name(base);
    let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).payload(value);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    p.send(rec, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

pub async fn produce_orders(
    p: &FutureProducer,
    config: &Config,
    codec: &Codec,
    orders: &[OrderRequest],
) {
    for o in orders {
        let bytes = codec
            .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(o))
            .await
            .expect("encode order");
        produce_raw(
            p,
            config,
            topics::ORDER_CREATE_REQUEST,
            Some(&o.order_id),
            &bytes,
        )
        .await;
    }
}

pub async fn produce_cancel(p: &FutureProducer, config: &Config, codec: &Codec, order_id: &str) {
    let cancel = CancelRequest {
        order_id: order_id.into(),
        reason: "customer asked".into(),
        requested_at: now_ms(),
    };
    let bytes = codec
        .encode(topics::ORDER_CANCEL_REQUEST, &OrderCancel::from(&cancel))
        .await
        .expect("encode cancel");
    produce_raw(
        p,
        config,
        topics::ORDER_CANCEL_REQUEST,
        Some(order_id),
        &bytes,
    )
    .await;
}

/// The fields every command record shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct CommandHeader {
    pub order_id: String,
    pub command_id: String,
    pub action: ActionSymbol,
    pub attempt: i32,
}

impl CommandHeader {
    pub fn action(&self) -> Action {
        self.action.to_action().expect("known action")
    }
}

/// What a scripted downstream service answers to one command.
#[derive(Debug, Clone)]
pub struct Reply {
    pub outcome: Outcome,
    pub retriable: bool,
    pub copies: usize,
}

impl Reply {
    pub fn success() -> Vec<Reply> {
        vec![Reply {
            outcome: Outcome::Success,
            retriable: false,
            copies: 1,
        }]
    }
    pub fn failure() -> Vec<Reply> {
        vec![Reply {
            outcome: Outcome::Failure,
            retriable: false,
            copies: 1,
        }]
    }
}

/// The four downstream services, scripted by a closure: every command seen is recorded
/// and answered as the closure says (nothing, once, or several times).
pub struct Downstream {
    pub seen: Arc<Mutex<Vec<CommandHeader>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Downstream {
    pub fn start(
        config: &Config,
        codec: Arc<Codec>,
        script: impl Fn(&CommandHeader) -> Vec<Reply> + Send + Sync + 'static,
    ) -> Downstream {
        let group = format!("{}downstream", config.topic_prefix);
        let consumer: StreamConsumer =
            clients::read_committed_consumer(config, &group, "test-downstream")
                .set("enable.auto.commit", "true")
                .create()
                .expect("downstream consumer");
        let names: Vec<String> = [
            topics::INVENTORY_RESERVE_REQUEST,
            topics::PAYMENT_PROCESS_REQUEST,
            topics::SHIPPING_SCHEDULE_REQUEST,
            topics::NOTIFICATION_SEND_REQUEST,
        ]
        .iter()
        .map(|t| config.topics().name(t))
        .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).expect("subscribe");
        let producer = producer(config);
        let cfg = config.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(Ok(msg)) = stream.next().await {
                let Some(base) = cfg.topics().base(msg.topic()) else {
                    continue;
                };
                let base = base.to_string();
                let Some(payload) = msg.payload() else {
                    continue;
                };
                let cmd = match codec.decode::<CommandHeader>(&base, payload).await {
                    Ok(cmd) => cmd,
                    Err(e) => {
                        eprintln!("downstream: undecodable command: {e}");
                        continue;
                    }
                };
                seen2.lock().expect("lock").push(cmd.clone());
                let result_topic = topics::result_topic(cmd.action().step());
                for reply in script(&cmd) {
                    let r = StepResult {
                        order_id: cmd.order_id.clone(),
                        command_id: cmd.command_id.clone(),
                        action: cmd.action(),
                        outcome: reply.outcome,
                        reason: (reply.outcome == Outcome::Failure)
                            .then(|| "scripted failure".to_string()),
                        retriable: reply.retriable,
                        produced_at: now_ms(),
                    };
                    let bytes = loop {
                        match codec
                            .encode(result_topic, &StepResultRecord::from(&r))
                            .await
                        {
                            Ok(b) => break b,
                            Err(e) => {
                                eprintln!("downstream: encoding a result failed, retrying: {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    };
                    for _ in 0..reply.copies {
                        produce_raw(&producer, &cfg, result_topic, Some(&cmd.order_id), &bytes)
                            .await;
                    }
                }
            }
        });
        Downstream { seen, task }
    }

    pub fn seen(&self) -> Vec<CommandHeader> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A record as a test reads it back: topic base, key, value and headers.
pub type ReadRecord = (String, Option<String>, Vec<u8>, Vec<(String, String)>);

/// Reads every partition of the fixed topics `bases` from the beginning to their end
/// with read_committed. One consumer per topic, so that an end-of-partition event,
/// which names only the partition, is unambiguous.
pub fn read_to_end(config: &Config, bases: &[&str]) -> Vec<ReadRecord> {
    use rdkafka::message::Headers;
    let mut out = Vec::new();
    for base in bases {
        let topic = config.topics().name(base);
        let group = format!(
            "{}reader-{}",
            config.topic_prefix,
            uuid::Uuid::new_v4().simple()
        );
        let mut cfg = clients::assigned_reader(config, &group);
        cfg.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = cfg.create().expect("reader");
        let mut tpl = TopicPartitionList::new();
        let mut pending = BTreeSet::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("tpl");
            pending.insert(p);
        }
        consumer.assign(&tpl).expect("assign");
        let until = Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() && Instant::now() < until {
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                // Transient errors (a leader not yet known for a new topic) clear up on
                // their own; the deadline above bounds the wait.
                Some(Err(e)) => eprintln!("reader: {e}"),
                Some(Ok(m)) => {
                    let key = m.key().map(|k| String::from_utf8_lossy(k).to_string());
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    let v = x.value.map(|v| String::from_utf8_lossy(v).to_string());
                                    (x.key.to_string(), v.unwrap_or_default())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        base.to_string(),
                        key,
                        m.payload().unwrap_or_default().to_vec(),
                        headers,
                    ));
                }
            }
        }
        assert!(
            pending.is_empty(),
            "did not reach the end of {topic} partitions {pending:?}"
        );
    }
    out
}

/// Every command written so far, as a read_committed consumer sees them.
pub async fn committed_commands(config: &Config, codec: &Codec) -> Vec<CommandHeader> {
    let bases = [
        topics::INVENTORY_RESERVE_REQUEST,
        topics::PAYMENT_PROCESS_REQUEST,
        topics::SHIPPING_SCHEDULE_REQUEST,
        topics::NOTIFICATION_SEND_REQUEST,
    ];
    let cfg = config.clone();
    let records = tokio::task::spawn_blocking(move || read_to_end(&cfg, &bases))
        .await
        .expect("reader thread");
    let mut out = Vec::new();
    for (base, _, value, _) in records {
        out.push(
            codec
                .decode::<CommandHeader>(&base, &value)
                .await
                .expect("decode command"),
        );
    }
    out
}

/// The latest committed state of every order in `order-status`.
pub async fn committed_states(
    config: &Config,
    codec: &Codec,
) -> HashMap<String, (OrderStatusRecord, OrderState)> {
    let cfg = config.clone();
    let records = tokio::task::spawn_blocking(move || read_to_end(&cfg, &[topics::ORDER_STATUS]))
        .await
        .expect("reader thread");
    let mut out: HashMap<String, (OrderStatusRecord, OrderState)> = HashMap::new();
    for (_, _, value, _) in records {
        let rec: OrderStatusRecord = codec
            .decode(topics::ORDER_STATUS, &value)
            .await
            .expect("decode status");
        let state: OrderState =
            serde_json::from_str(rec.saga_state.as_deref().expect("saga state"))
                .expect("state json");
        let newer = out
            .get(&rec.order_id)
            .map(|(r, _)| rec.version > r.version)
            .unwrap_or(true);
        if newer {
            out.insert(rec.order_id.clone(), (rec, state));
        }
    }
    out
}

/// Polls the committed states until every one of `ids` satisfies `done`, or panics
/// after `timeout` with what it saw.
pub async fn wait_for_states(
    config: &Config,
    codec: &Codec,
    ids: &[String],
    timeout: Duration,
    done: impl Fn(&OrderState) -> bool,
) -> HashMap<String, (OrderStatusRecord, OrderState)> {
    let until = Instant::now() + timeout;
    loop {
        let states = committed_states(config, codec).await;
        let ready = ids
            .iter()
            .all(|id| states.get(id).map(|(_, s)| done(s)).unwrap_or(false));
        if ready {
            return states;
        }
        if Instant::now() > until {
            let summary: HashMap<Status, usize> = ids.iter().fold(HashMap::new(), |mut m, id| {
                if let Some((_, s)) = states.get(id) {
                    *m.entry(s.status).or_insert(0) += 1;
                }
                m
            });
            panic!(
                "timed out: {} of {} orders present, by status {summary:?}",
                states.len(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn terminal(s: &OrderState) -> bool {
    s.is_settled()
}

/// Status reached by each order.
pub fn statuses(
    states: &HashMap<String, (OrderStatusRecord, OrderState)>,
    ids: &[String],
) -> Vec<Status> {
    ids.iter().map(|id| states[id].1.status).collect()
}
