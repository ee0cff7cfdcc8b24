//! `order-saga-tools load`: an upstream service that publishes sample orders.
//!
//! It produces `--orders` Avro `OrderCreate` records on `order-create-request` (key = order
//! id, murmur2 partitioner, like a Java producer) at about `--rate` orders per second,
//! some of them deliberately invalid (`--invalid-share`) and some followed by a cancel
//! request (`--cancel-share`, `--cancel-delay-ms` after the create).
//!
//! Everything random comes from one [`Rng`] seeded by `--seed`, so a run can be repeated
//! exactly. Without `--seed` the seed is taken from the clock (and logged): two runs against
//! the same cluster must not publish the same order ids.
//!
//! The library half is reusable by tests and other tools: [`sample_order`],
//! [`sample_invalid_order`], [`sample_cancel`] build records, and [`OrderPublisher`]
//! publishes one create or cancel record.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

use order_saga::config::Config;
use order_saga::contracts::records::{OrderCancel, OrderCreate};
use order_saga::contracts::{Codec, CodecError};
use order_saga::kafka::clients::plain_producer;
use order_saga::retry::Backoff;
use order_saga::saga::{Address, CancelRequest, Item, Millis, OrderRequest};
use order_saga::topics::{self, Topics};

/// How long a run waits for an unreachable schema registry before it gives up.
const REGISTRY_WAIT: Duration = Duration::from_secs(60);

/// How long the end of a run waits for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before retrying when the producer's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Deliveries awaited at most at once; beyond this the generator waits for some to finish.
const MAX_IN_FLIGHT: usize = 100_000;

/// Why the load generator stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag is out of range.
    #[error("invalid load arguments: {0}")]
    InvalidArgs(String),
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    /// A record could not be encoded (registry down, schema not registered, …).
    #[error("cannot encode a record for {topic}: {source}")]
    Encode {
        /// The fixed topic name.
        topic: &'static str,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// The producer refused to enqueue a record.
    #[error("cannot enqueue a record for {topic}: {source}")]
    Enqueue {
        /// The deployed topic name.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// A record was enqueued but not delivered.
    #[error("a record was not delivered: {0}")]
    Delivery(String),
    /// Some records of a run were not delivered; the report has the counts.
    #[error("{failed} of {total} records were not delivered; first error: {first_error}")]
    Undelivered {
        /// Records that failed.
        failed: u64,
        /// Records enqueued.
        total: u64,
        /// The first delivery error seen.
        first_error: String,
    },
    /// Flushing the producer at the end did not finish in time.
    #[error("flushing the producer failed: {0}")]
    Flush(#[source] KafkaError),
}

/// Parses a probability flag: a number from 0 to 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// The flags of `order-saga-tools load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Number of orders to create.
    #[arg(long, env = "ORDER_SAGA_LOAD_ORDERS", default_value_t = 1000)]
    pub orders: u64,

    /// Orders per second; 0 means as fast as the producer accepts them.
    #[arg(long, env = "ORDER_SAGA_LOAD_RATE", default_value_t = 100.0)]
    pub rate: f64,

    /// Share of orders made invalid on purpose (empty cart, wrong total, unsupported
    /// currency or a zero quantity), from 0 to 1.
    #[arg(long, env = "ORDER_SAGA_LOAD_INVALID_SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub invalid_share: f64,

    /// Share of valid orders followed by a cancel request, from 0 to 1.
    #[arg(long, env = "ORDER_SAGA_LOAD_CANCEL_SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub cancel_share: f64,

    /// Delay between an order's create and its cancel request, in milliseconds.
    #[arg(long, env = "ORDER_SAGA_LOAD_CANCEL_DELAY_MS", default_value_t = 200)]
    pub cancel_delay_ms: u64,

    /// Seed of every random choice (order ids included); taken from the clock if absent.
    /// The same seed publishes the same orders again.
    #[arg(long, env = "ORDER_SAGA_LOAD_SEED")]
    pub seed: Option<u64>,
}

impl LoadArgs {
    /// Checks what clap's parsers do not.
    pub fn validate(&self) -> Result<(), LoadError> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(LoadError::InvalidArgs(format!(
                "--rate must be 0 (unlimited) or a positive number, got {}",
                self.rate
            )));
        }
        for (flag, v) in [
            ("--invalid-share", self.invalid_share),
            ("--cancel-share", self.cancel_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(LoadError::InvalidArgs(format!(
                    "{flag} must be between 0 and 1, got {v}"
                )));
            }
        }
        if self.cancel_delay_ms > 3_600_000 {
            return Err(LoadError::InvalidArgs(format!(
                "--cancel-delay-ms must be at most 3600000, got {}",
                self.cancel_delay_ms
            )));
        }
        Ok(())
    }
}

/// What a load run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    /// Valid orders published.
    pub valid: u64,
    /// Invalid orders published.
    pub invalid: u64,
    /// Cancel requests published.
    pub cancels: u64,
    /// Records (creates and cancels) that were not delivered.
    pub failed: u64,
    /// Wall-clock duration of the run, until every record was delivered.
    pub seconds: f64,
    /// The seed of the run; passing it as `--seed` repeats the run.
    pub seed: u64,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let orders = self.valid + self.invalid;
        let rate = if self.seconds > 0.0 {
            orders as f64 / self.seconds
        } else {
            0.0
        };
        write!(
            f,
            "{orders} orders ({} valid, {} invalid), {} cancels, {} failed in {:.1} s ({rate:.0} orders/s), seed {}",
            self.valid, self.invalid, self.cancels, self.failed, self.seconds, self.seed
        )
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------

/// SplitMix64's output function: a bijective, well-mixing hash of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit hash of `text` under `seed` and `salt`: FNV-1a, finished with [`mix64`].
/// Stable across releases and platforms, so a decision derived from it is reproducible.
pub fn hash_str(seed: u64, salt: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h ^ mix64(seed ^ mix64(salt)))
}

/// A uniform number in `[0, 1)` from the top 53 bits of `bits`.
pub fn unit_from_bits(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A small, fast, deterministic pseudo-random generator (SplitMix64). Not cryptographic;
/// the same seed always yields the same sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        unit_from_bits(self.next_u64())
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform number in `[0, n)`; 0 if `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: no modulo bias worth measuring for small n.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform number in `[lo, hi]`; `lo` if `hi < lo`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = hi.abs_diff(lo).saturating_add(1);
        lo.wrapping_add(self.below(span) as i64)
    }

    /// A random (version 4) UUID made from this generator's bits.
    pub fn uuid_v4(&mut self) -> Uuid {
        let bits = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// One element of `items`, or `None` if it is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

// ---------------------------------------------------------------------------------------
// Sample records
// ---------------------------------------------------------------------------------------

const CITIES: [(&str, &str, &str); 8] = [
    ("Berlin", "10115", "DE"),
    ("Hamburg", "20095", "DE"),
    ("Paris", "75001", "FR"),
    ("Lyon", "69001", "FR"),
    ("Amsterdam", "1012", "NL"),
    ("Madrid", "28013", "ES"),
    ("Milano", "20121", "IT"),
    ("Wien", "1010", "AT"),
];

const STREETS: [&str; 6] = [
    "Hauptstraße",
    "Rue de la Paix",
    "Keizersgracht",
    "Calle Mayor",
    "Via Roma",
    "Ringstraße",
];

/// The currency of every valid sample order.
pub const SAMPLE_CURRENCY: &str = "EUR";

/// A well-formed ISO 4217 code that the shop does not accept (`XXX`: "no currency").
pub const UNSUPPORTED_CURRENCY: &str = "XXX";

/// A valid order: a v4 order id, 1 to 4 lines of 1 to 3 units at 1.99 to 199.99 EUR,
/// total = sum of the lines, a European address, created at `now`.
pub fn sample_order(rng: &mut Rng, now: Millis) -> OrderRequest {
    let order_id = rng.uuid_v4().hyphenated().to_string();
    let customer = rng.below(50_000);
    let lines = rng.between(1, 4);
    let items: Vec<Item> = (0..lines)
        .map(|_| Item {
            sku: format!("SKU-{:05}", rng.below(10_000)),
            quantity: rng.between(1, 3) as i32,
            unit_price_minor: rng.between(199, 19_999),
        })
        .collect();
    let total_minor = items
        .iter()
        .map(|i| i.unit_price_minor * i64::from(i.quantity))
        .sum();
    let (city, postal_code, country) = *rng.pick(&CITIES).unwrap_or(&CITIES[0]);
    let street = *rng.pick(&STREETS).unwrap_or(&STREETS[0]);
    OrderRequest {
        order_id,
        customer_id: format!("customer-{customer:05}"),
        items,
        total_minor,
        currency: SAMPLE_CURRENCY.to_owned(),
        shipping_address: Address {
            recipient: format!("Customer {customer}"),
            street: format!("{street} {}", rng.between(1, 200)),
            city: city.to_owned(),
            postal_code: postal_code.to_owned(),
            country: country.to_owned(),
        },
        created_at: now,
    }
}

/// How a sample order is made invalid. Each keeps the record within the contract (a UUID
/// order id, a three-letter currency), so the processor fails the order instead of
/// dead-lettering the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    /// No lines at all (total 0).
    EmptyCart,
    /// The total is one cent more than the sum of the lines.
    WrongTotal,
    /// The currency is [`UNSUPPORTED_CURRENCY`].
    UnsupportedCurrency,
    /// The first line has quantity 0 (total still the sum of the lines).
    ZeroQuantity,
}

impl InvalidKind {
    /// Every kind.
    pub const ALL: [InvalidKind; 4] = [
        InvalidKind::EmptyCart,
        InvalidKind::WrongTotal,
        InvalidKind::UnsupportedCurrency,
        InvalidKind::ZeroQuantity,
    ];

    /// One kind, uniformly.
    pub fn pick(rng: &mut Rng) -> InvalidKind {
        *rng.pick(&Self::ALL).unwrap_or(&InvalidKind::EmptyCart)
    }
}

/// A sample order made invalid as `kind` says; otherwise like [`sample_order`].
pub fn sample_invalid_order(rng: &mut Rng, now: Millis, kind: InvalidKind) -> OrderRequest {
    let mut order = sample_order(rng, now);
    match kind {
        InvalidKind::EmptyCart => {
            order.items.clear();
            order.total_minor = 0;
        }
        InvalidKind::WrongTotal => order.total_minor += 1,
        InvalidKind::UnsupportedCurrency => order.currency = UNSUPPORTED_CURRENCY.to_owned(),
        InvalidKind::ZeroQuantity => {
            if let Some(first) = order.items.first_mut() {
                order.total_minor -= first.unit_price_minor * i64::from(first.quantity);
                first.quantity = 0;
            }
        }
    }
    order
}

/// A cancel request for `order_id`, requested at `now`.
pub fn sample_cancel(order_id: &str, now: Millis) -> CancelRequest {
    CancelRequest {
        order_id: order_id.to_owned(),
        reason: "customer changed their mind (load generator)".to_owned(),
        requested_at: now,
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------

/// Publishes create and cancel records through the registry, keyed by order id with the
/// murmur2 partitioner (see [`plain_producer`]).
///
/// The `enqueue_*` methods return once librdkafka has the record, with a future of its
/// delivery, so callers can keep many records in flight; the `publish_*` methods also
/// wait for the delivery.
#[derive(Clone)]
pub struct OrderPublisher {
    producer: FutureProducer,
    codec: Arc<Codec>,
    create_topic: String,
    cancel_topic: String,
}

impl fmt::Debug for OrderPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderPublisher")
            .field("create_topic", &self.create_topic)
            .field("cancel_topic", &self.cancel_topic)
            .finish_non_exhaustive()
    }
}

impl OrderPublisher {
    /// A publisher with its own producer (client id `<application-id>-load`).
    pub fn new(config: &Config, codec: Arc<Codec>) -> Result<Self, LoadError> {
        let producer: FutureProducer =
            plain_producer(config, &format!("{}-load", config.application_id))
                .create()
                .map_err(LoadError::Producer)?;
        Ok(Self::from_producer(producer, codec, &config.topics()))
    }

    /// A publisher on an existing producer, writing to `topics`' deployed names.
    pub fn from_producer(producer: FutureProducer, codec: Arc<Codec>, topics: &Topics) -> Self {
        OrderPublisher {
            producer,
            codec,
            create_topic: topics.name(topics::ORDER_CREATE_REQUEST),
            cancel_topic: topics.name(topics::ORDER_CANCEL_REQUEST),
        }
    }

    /// Looks up (or registers) both schemas now, so a registry problem shows before the
    /// first record.
    pub async fn prepare(&self) -> Result<(), LoadError> {
        self.codec
            .prepare([topics::ORDER_CREATE_REQUEST, topics::ORDER_CANCEL_REQUEST])
            .await
            .map_err(|source| LoadError::Encode {
                topic: topics::ORDER_CREATE_REQUEST,
                source,
            })
    }

    /// The producer, e.g. to flush it.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Encodes `order` and hands it to the producer; the future resolves on delivery.
    pub async fn enqueue_create(&self, order: &OrderRequest) -> Result<DeliveryFuture, LoadError> {
        let record = OrderCreate::from(order);
        let value = self
            .codec
            .encode(topics::ORDER_CREATE_REQUEST, &record)
            .await
            .map_err(|source| LoadError::Encode {
                topic: topics::ORDER_CREATE_REQUEST,
                source,
            })?;
        self.enqueue(&self.create_topic, &order.order_id, &value)
            .await
    }

    /// Encodes `cancel` and hands it to the producer; the future resolves on delivery.
    pub async fn enqueue_cancel(
        &self,
        cancel: &CancelRequest,
    ) -> Result<DeliveryFuture, LoadError> {
        let record = OrderCancel::from(cancel);
        let value = self
            .codec
            .encode(topics::ORDER_CANCEL_REQUEST, &record)
            .await
            .map_err(|source| LoadError::Encode {
                topic: topics::ORDER_CANCEL_REQUEST,
                source,
            })?;
        self.enqueue(&self.cancel_topic, &cancel.order_id, &value)
            .await
    }

    /// Publishes one create record and waits until it is delivered.
    pub async fn publish_create(&self, order: &OrderRequest) -> Result<(), LoadError> {
        let delivery = self.enqueue_create(order).await?;
        delivered(delivery.await)
    }

    /// Publishes one cancel record and waits until it is delivered.
    pub async fn publish_cancel(&self, cancel: &CancelRequest) -> Result<(), LoadError> {
        let delivery = self.enqueue_cancel(cancel).await?;
        delivered(delivery.await)
    }

    /// Waits until every enqueued record is delivered or `timeout` passes, off the async
    /// worker threads.
    pub async fn flush(&self, timeout: Duration) -> Result<(), LoadError> {
        let producer = self.producer.clone();
        match tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await {
            Ok(result) => result.map_err(LoadError::Flush),
            Err(join) => Err(LoadError::Delivery(format!("flush task failed: {join}"))),
        }
    }

    async fn enqueue(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
    ) -> Result<DeliveryFuture, LoadError> {
        let mut record = FutureRecord::to(topic).key(key).payload(value);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's local queue is full: wait until it drains a little.
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    return Err(LoadError::Enqueue {
                        topic: topic.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

/// The outcome of one delivery future.
fn delivered(
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), LoadError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(LoadError::Delivery(e.to_string())),
        Err(_) => Err(LoadError::Delivery("the producer was dropped".to_owned())),
    }
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

/// Deliveries of one run, and what became of them.
struct Deliveries {
    in_flight: FuturesUnordered<DeliveryFuture>,
    total: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Deliveries {
    fn new() -> Self {
        Deliveries {
            in_flight: FuturesUnordered::new(),
            total: 0,
            failed: 0,
            first_error: None,
        }
    }

    fn push(&mut self, delivery: DeliveryFuture) {
        self.total += 1;
        self.in_flight.push(delivery);
    }

    fn account(&mut self, result: Result<(), LoadError>) {
        if let Err(e) = result {
            self.failed += 1;
            if self.first_error.is_none() {
                warn!(error = %e, "a record was not delivered");
                self.first_error = Some(e.to_string());
            }
        }
    }

    /// Takes the deliveries that already finished, without waiting; then, if too many are
    /// outstanding, waits for some.
    async fn reap(&mut self) {
        while let Some(Some(result)) = self.in_flight.next().now_or_never() {
            self.account(delivered(result));
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            match self.in_flight.next().await {
                Some(result) => self.account(delivered(result)),
                None => break,
            }
        }
    }

    async fn wait_all(&mut self) {
        while let Some(result) = self.in_flight.next().await {
            self.account(delivered(result));
        }
    }
}

/// Sleeps until `at`, unless it has passed.
async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// `order-saga-tools load`: publishes the orders and returns what was sent. Logs progress every
/// `--stats-interval-s` and the report at the end, and prints the report as one JSON line
/// on stdout for scripts.
pub async fn run(
    config: Config,
    args: LoadArgs,
    codec: Arc<Codec>,
) -> Result<LoadReport, LoadError> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(|| {
        mix64(now_millis() as u64 ^ u64::from(std::process::id()).rotate_left(32))
    });
    let publisher = OrderPublisher::new(&config, codec)?;
    let registry_deadline = Instant::now() + REGISTRY_WAIT;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        match publisher.prepare().await {
            Err(LoadError::Encode { source, .. })
                if source.is_transient() && Instant::now() < registry_deadline =>
            {
                let wait = backoff.next_delay();
                warn!(error = %source, wait_ms = wait.as_millis() as u64, "schema registry unavailable; waiting");
                tokio::time::sleep(wait).await;
            }
            other => break other?,
        }
    }
    info!(
        orders = args.orders,
        rate = args.rate,
        invalid_share = args.invalid_share,
        cancel_share = args.cancel_share,
        seed,
        topic = %publisher.create_topic,
        "load starting"
    );

    let mut rng = Rng::new(seed);
    let mut deliveries = Deliveries::new();
    let mut cancels: VecDeque<(Instant, CancelRequest)> = VecDeque::new();
    let cancel_delay = Duration::from_millis(args.cancel_delay_ms);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let progress_every = Duration::from_secs(config.stats_interval_s.max(1));
    let mut report = LoadReport {
        valid: 0,
        invalid: 0,
        cancels: 0,
        failed: 0,
        seconds: 0.0,
        seed,
    };

    let start = Instant::now();
    let mut next_progress = start + progress_every;
    for i in 0..args.orders {
        let due = match interval {
            Some(step) => start + step.mul_f64(i as f64),
            None => start,
        };
        // Cancels that fall due before this order go first.
        while let Some((at, _)) = cancels.front() {
            if *at > due {
                break;
            }
            let at = *at;
            sleep_until(at).await;
            if let Some((_, cancel)) = cancels.pop_front() {
                let cancel = CancelRequest {
                    requested_at: now_millis(),
                    ..cancel
                };
                deliveries.push(publisher.enqueue_cancel(&cancel).await?);
                report.cancels += 1;
            }
        }
        sleep_until(due).await;

        let now = now_millis();
        let order = if rng.chance(args.invalid_share) {
            report.invalid += 1;
            let kind = InvalidKind::pick(&mut rng);
            sample_invalid_order(&mut rng, now, kind)
        } else {
            report.valid += 1;
            let order = sample_order(&mut rng, now);
            if rng.chance(args.cancel_share) {
                cancels.push_back((
                    Instant::now() + cancel_delay,
                    sample_cancel(&order.order_id, now),
                ));
            }
            order
        };
        deliveries.push(publisher.enqueue_create(&order).await?);
        deliveries.reap().await;
        if i % 1024 == 1023 {
            // At unlimited rate nothing above waits; let other tasks run.
            tokio::task::yield_now().await;
        }

        if Instant::now() >= next_progress {
            let elapsed = start.elapsed().as_secs_f64();
            info!(
                sent = i + 1,
                of = args.orders,
                cancels = report.cancels,
                rate = format!("{:.0}", (i + 1) as f64 / elapsed.max(1e-9)),
                in_flight = deliveries.in_flight.len(),
                failed = deliveries.failed,
                "load progress"
            );
            next_progress += progress_every;
        }
    }
    while let Some((at, cancel)) = cancels.pop_front() {
        sleep_until(at).await;
        let cancel = CancelRequest {
            requested_at: now_millis(),
            ..cancel
        };
        deliveries.push(publisher.enqueue_cancel(&cancel).await?);
        report.cancels += 1;
        deliveries.reap().await;
    }
    publisher.flush(FLUSH_TIMEOUT).await?;
    deliveries.wait_all().await;

    report.failed = deliveries.failed;
    report.seconds = start.elapsed().as_secs_f64();
    info!(
        valid = report.valid,
        invalid = report.invalid,
        cancels = report.cancels,
        failed = report.failed,
        seconds = format!("{:.2}", report.seconds),
        seed,
        "load finished: {report}"
    );
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => warn!(error = %e, "cannot print the report as JSON"),
    }
    if let Some(first_error) = deliveries.first_error {
        return Err(LoadError::Undelivered {
            failed: deliveries.failed,
            total: deliveries.total,
            first_error,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_saga::saga::validate::{validate_order, InvalidOrder};
    use order_saga::saga::Policy;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Rng::new(43);
        assert_ne!(xs[0], c.next_u64());
    }

    #[test]
    fn splitmix64_matches_its_reference_values() {
        // Reference output of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn draws_stay_in_their_ranges_and_cover_them() {
        let mut r = Rng::new(7);
        let mut seen = [false; 4];
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let v = r.between(1, 4);
            assert!((1..=4).contains(&v));
            seen[(v - 1) as usize] = true;
            assert!(r.below(3) < 3);
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.between(5, 5), 5);
    }

    #[test]
    fn chance_honours_its_probability_roughly() {
        let mut r = Rng::new(9);
        let hits = (0..10_000).filter(|_| r.chance(0.3)).count();
        assert!((2_800..3_200).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
    }

    #[test]
    fn shuffle_permutes_without_losing_elements() {
        let mut r = Rng::new(1);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn generated_uuids_are_version_4_and_reproducible() {
        let a = Rng::new(5).uuid_v4();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a, Rng::new(5).uuid_v4());
        assert_ne!(a, Rng::new(6).uuid_v4());
    }

    #[test]
    fn hash_str_depends_on_seed_salt_and_text() {
        let h = hash_str(1, 2, "abc");
        assert_eq!(h, hash_str(1, 2, "abc"));
        assert_ne!(h, hash_str(0, 2, "abc"));
        assert_ne!(h, hash_str(1, 3, "abc"));
        assert_ne!(h, hash_str(1, 2, "abd"));
    }

    #[test]
    fn sample_orders_are_valid_and_their_total_is_the_sum_of_the_lines() {
        let mut r = Rng::new(11);
        let policy = Policy::default();
        for _ in 0..1_000 {
            let o = sample_order(&mut r, 1_700_000_000_000);
            assert!((1..=4).contains(&o.items.len()));
            let sum: i64 = o
                .items
                .iter()
                .map(|i| i.unit_price_minor * i64::from(i.quantity))
                .sum();
            assert_eq!(o.total_minor, sum);
            assert_eq!(o.currency, "EUR");
            assert!(Uuid::parse_str(&o.order_id).is_ok());
            assert_eq!(o.created_at, 1_700_000_000_000);
            assert_eq!(validate_order(&o, &policy), Ok(()), "{o:?}");
        }
    }

    #[test]
    fn sample_orders_fit_the_create_contract() {
        let mut r = Rng::new(12);
        let o = sample_order(&mut r, 1);
        let record = OrderCreate::from(&o);
        assert_eq!(OrderRequest::try_from(record).ok(), Some(o));
    }

    #[test]
    fn invalid_sample_orders_fail_validation_for_their_stated_reason() {
        let mut r = Rng::new(13);
        let policy = Policy::default();
        for _ in 0..200 {
            for kind in InvalidKind::ALL {
                let o = sample_invalid_order(&mut r, 1, kind);
                // Still within the record contract: the processor fails it, no dead letter.
                assert!(OrderRequest::try_from(OrderCreate::from(&o)).is_ok());
                let err = validate_order(&o, &policy);
                match kind {
                    InvalidKind::EmptyCart => assert_eq!(err, Err(InvalidOrder::EmptyCart)),
                    InvalidKind::WrongTotal => {
                        assert!(
                            matches!(err, Err(InvalidOrder::TotalMismatch { .. })),
                            "{err:?}"
                        )
                    }
                    InvalidKind::UnsupportedCurrency => assert_eq!(
                        err,
                        Err(InvalidOrder::UnsupportedCurrency(
                            UNSUPPORTED_CURRENCY.to_owned()
                        ))
                    ),
                    InvalidKind::ZeroQuantity => assert!(
                        matches!(
                            err,
                            Err(InvalidOrder::NonPositiveQuantity {
                                line: 1,
                                quantity: 0
                            })
                        ),
                        "{err:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn every_invalid_kind_gets_picked() {
        let mut r = Rng::new(14);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(InvalidKind::pick(&mut r));
        }
        assert_eq!(seen.len(), InvalidKind::ALL.len());
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("abc").is_err());
        assert!(parse_share("NaN").is_err());
    }

    #[test]
    fn a_negative_rate_is_refused() {
        let args = LoadArgs {
            orders: 1,
            rate: -1.0,
            invalid_share: 0.0,
            cancel_share: 0.0,
            cancel_delay_ms: 0,
            seed: None,
        };
        assert!(matches!(args.validate(), Err(LoadError::InvalidArgs(_))));
        let ok = LoadArgs { rate: 0.0, ..args };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn a_sample_cancel_names_its_order() {
        let c = sample_cancel("o-1", 5);
        assert_eq!(c.order_id, "o-1");
        assert_eq!(c.requested_at, 5);
        assert!(!c.reason.is_empty());
    }
}
