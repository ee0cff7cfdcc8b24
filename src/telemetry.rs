//! Metrics pushed with OpenTelemetry over OTLP/HTTP (protobuf).
//!
//! Owns the meter provider (its resource, the periodic reader and the exporter) and every
//! instrument of the service. The processor and the sink call a few cheap methods:
//!
//! - record counts and saga changes made inside the open Kafka transaction are kept
//!   aside ([`Telemetry::on_consumed`], [`Telemetry::on_produced`],
//!   [`Telemetry::on_change`], [`Telemetry::on_dlq`]) and reach the instruments only
//!   when the transaction commits ([`Telemetry::on_commit`]); an abort
//!   ([`Telemetry::on_abort`]) drops them, so the metrics count what the changelog holds,
//!   not what was retried;
//! - gauges (orders in flight by status, stuck orders, sink lag and outage) are read by
//!   callback from a snapshot the processor refreshes once per cycle
//!   ([`Telemetry::observe_states`], at most every [`SNAPSHOT_EVERY`]).
//!
//! With no `--otlp-endpoint` every method returns at once: no provider, no thread.
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`messaging.client.*`), and are `order_saga.*` otherwise; the README lists them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, ObservableGauge};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::saga::{Command, Fate, Millis, OrderState, Status};

/// The OpenTelemetry `service.name` of every process of the project.
pub const SERVICE_NAME: &str = "order-saga";

/// How often the in-flight snapshot is recomputed at most.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Buckets for durations in seconds: 1 ms to 10 minutes.
const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Why metrics could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Every instrument of the service.
struct Instruments {
    consumed: Counter<u64>,
    produced: Counter<u64>,
    transactions: Counter<u64>,
    commit_duration: Histogram<f64>,
    dlq: Counter<u64>,
    restore_duration: Histogram<f64>,
    restore_records: Counter<u64>,
    failures: Counter<u64>,
    entered: Counter<u64>,
    status_duration: Histogram<f64>,
    compensations: Counter<u64>,
    retries: Counter<u64>,
    timeouts: Counter<u64>,
    cancel_refused: Counter<u64>,
    sink_rows: Counter<u64>,
    sink_rejected: Counter<u64>,
    sink_batch_duration: Histogram<f64>,
    // Kept so that their callbacks stay registered for the provider's life.
    _gauges: Vec<ObservableGauge<u64>>,
    _lag: ObservableGauge<f64>,
}

/// What an uncommitted transaction would add to the counters.
#[derive(Default)]
struct Pending {
    consumed: HashMap<String, u64>,
    produced: HashMap<String, u64>,
    dlq: HashMap<String, u64>,
    entered: HashMap<Status, u64>,
    /// (status left, seconds spent in it).
    left: Vec<(Status, f64)>,
    compensations: HashMap<&'static str, u64>,
    retries: HashMap<&'static str, u64>,
    timeouts: HashMap<&'static str, u64>,
    cancel_refused: u64,
}

/// What the gauges report, refreshed by the processor and the sink.
#[derive(Default)]
struct Snapshot {
    in_flight: HashMap<Status, u64>,
    stuck: u64,
    /// Seconds between the newest `order-status` record the sink applied and its commit.
    sink_lag_s: Option<f64>,
    sink_outage: Option<bool>,
}

struct Inner {
    provider: SdkMeterProvider,
    instruments: Instruments,
    pending: Mutex<Pending>,
    snapshot: Arc<Mutex<Snapshot>>,
    last_snapshot: Mutex<Option<Instant>>,
    stuck_after_ms: Millis,
    consumer_group: String,
}

/// The service's metrics; cheap to clone and share between the processor and the sink.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The OTLP/HTTP metrics URL of an OTLP base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is read: `/v1/metrics` is appended unless already there.
pub fn metrics_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/metrics") {
        base.to_string()
    } else {
        format!("{base}/v1/metrics")
    }
}

fn topic_attrs(topic: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.destination.name", topic.to_string()),
    ]
}

fn status_attr(status: Status) -> [KeyValue; 1] {
    [KeyValue::new("status", status.as_str())]
}

fn add(map: &mut HashMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_string(), n);
        }
    }
}

impl Telemetry {
    /// Metrics off: every method is a no-op.
    pub fn disabled() -> Self {
        Telemetry { inner: None }
    }

    /// The service's metrics as `config` asks: off without `--otlp-endpoint`, else
    /// pushed there every `--metrics-interval-ms`. `role` tells processes of one
    /// deployment apart (`run`, `sink`) within `service.instance.id`.
    pub fn from_config(config: &Config, role: &str) -> Result<Self, TelemetryError> {
        if config.otlp_endpoint.is_empty() {
            return Ok(Self::disabled());
        }
        let url = metrics_url(&config.otlp_endpoint);
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            // Short: the last push at shutdown waits for it, and a backend that is down
            // must not hold up a processor that was asked to stop.
            .with_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: url.clone(),
                reason: e.to_string(),
            })?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(Duration::from_millis(config.metrics_interval_ms))
            .build();
        let instance = match role {
            "run" => config.transactional_id(),
            other => format!("{}-{other}", config.transactional_id()),
        };
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attributes([
                KeyValue::new("service.instance.id", instance),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let meter = provider.meter("order-saga");
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let instruments = instruments(&meter, &snapshot);
        tracing::info!(endpoint = %url, interval_ms = config.metrics_interval_ms, "metrics export on");
        Ok(Telemetry {
            inner: Some(Arc::new(Inner {
                provider,
                instruments,
                pending: Mutex::new(Pending::default()),
                snapshot,
                last_snapshot: Mutex::new(None),
                stuck_after_ms: config.stuck_after_ms as Millis,
                consumer_group: config.application_id.clone(),
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Exports what is left and stops the exporter; call once before the process exits.
    pub fn shutdown(&self) {
        if let Some(i) = &self.inner {
            if let Err(e) = i.provider.shutdown() {
                tracing::warn!(error = %e, "metrics export at shutdown failed");
            }
        }
    }

    // ---- processor: inside the open transaction ----

    /// One input record consumed from `topic` (the deployed name).
    pub fn on_consumed(&self, topic: &str) {
        if let Some(i) = &self.inner {
            add(&mut lock(&i.pending).consumed, topic, 1);
        }
    }

    /// One record produced to `topic` (the deployed name).
    pub fn on_produced(&self, topic: &str) {
        if let Some(i) = &self.inner {
            add(&mut lock(&i.pending).produced, topic, 1);
        }
    }

    /// One input record dead-lettered to `dlq_topic`, with its `dlq.error.kind`.
    pub fn on_dlq(&self, kind: &str, dlq_topic: &str) {
        if let Some(i) = &self.inner {
            let mut p = lock(&i.pending);
            add(&mut p.dlq, kind, 1);
            add(&mut p.produced, dlq_topic, 1);
        }
    }

    /// An order changed from `prev` (none for a new order) to `next`, issuing `commands`.
    pub fn on_change(&self, prev: Option<&OrderState>, next: &OrderState, commands: &[Command]) {
        if let Some(i) = &self.inner {
            tally(&mut lock(&i.pending), prev, next, commands);
        }
    }

    /// The open transaction committed after `took` in its commit call.
    pub fn on_commit(&self, took: Duration) {
        let Some(i) = &self.inner else {
            return;
        };
        let p = std::mem::take(&mut *lock(&i.pending));
        let m = &i.instruments;
        m.transactions
            .add(1, &[KeyValue::new("outcome", "committed")]);
        m.commit_duration.record(took.as_secs_f64(), &[]);
        for (topic, n) in &p.consumed {
            let [a, b] = topic_attrs(topic);
            m.consumed.add(
                *n,
                &[
                    a,
                    b,
                    KeyValue::new("messaging.consumer.group.name", i.consumer_group.clone()),
                ],
            );
        }
        for (topic, n) in &p.produced {
            m.produced.add(*n, &topic_attrs(topic));
        }
        for (kind, n) in &p.dlq {
            m.dlq.add(*n, &[KeyValue::new("error.type", kind.clone())]);
        }
        for (status, n) in &p.entered {
            m.entered.add(*n, &status_attr(*status));
        }
        for (status, seconds) in &p.left {
            m.status_duration.record(*seconds, &status_attr(*status));
        }
        for (action, n) in &p.compensations {
            m.compensations.add(*n, &[KeyValue::new("action", *action)]);
        }
        for (step, n) in &p.retries {
            m.retries.add(*n, &[KeyValue::new("step", *step)]);
        }
        for (step, n) in &p.timeouts {
            m.timeouts.add(*n, &[KeyValue::new("step", *step)]);
        }
        if p.cancel_refused > 0 {
            m.cancel_refused.add(p.cancel_refused, &[]);
        }
    }

    /// The open transaction was aborted: what it did will be done again.
    pub fn on_abort(&self) {
        if let Some(i) = &self.inner {
            *lock(&i.pending) = Pending::default();
            i.instruments
                .transactions
                .add(1, &[KeyValue::new("outcome", "aborted")]);
        }
    }

    // ---- processor: outside transactions ----

    /// A state restore read `records` changelog records in `took`.
    pub fn on_restore(&self, records: u64, took: Duration) {
        if let Some(i) = &self.inner {
            i.instruments.restore_records.add(records, &[]);
            i.instruments
                .restore_duration
                .record(took.as_secs_f64(), &[]);
        }
    }

    /// The processor stopped on an error: `fenced` by a newer instance, or `fatal`.
    pub fn on_failure(&self, kind: &'static str) {
        if let Some(i) = &self.inner {
            i.instruments
                .failures
                .add(1, &[KeyValue::new("error.type", kind)]);
        }
    }

    /// Refreshes the in-flight and stuck gauges from the orders in memory, at most every
    /// [`SNAPSHOT_EVERY`]; the iterator is not touched otherwise.
    pub fn observe_states<'a>(&self, states: impl Iterator<Item = &'a OrderState>, now: Millis) {
        let Some(i) = &self.inner else {
            return;
        };
        {
            let mut last = lock(&i.last_snapshot);
            if last.is_some_and(|t| t.elapsed() < SNAPSHOT_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut in_flight: HashMap<Status, u64> = HashMap::new();
        let mut stuck = 0;
        for s in states.filter(|s| !s.is_settled()) {
            *in_flight.entry(s.status).or_insert(0) += 1;
            if now - s.updated_at > i.stuck_after_ms {
                stuck += 1;
            }
        }
        let mut snap = lock(&i.snapshot);
        snap.in_flight = in_flight;
        snap.stuck = stuck;
    }

    // ---- sink ----

    /// The sink committed a batch: rows written per table, how long the PostgreSQL
    /// transaction took, and the newest `updated_at` it applied.
    pub fn on_sink_batch(&self, orders: u64, history: u64, took: Duration, newest: Option<Millis>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0);
        if let Some(i) = &self.inner {
            let m = &i.instruments;
            m.sink_rows.add(orders, &[KeyValue::new("table", "orders")]);
            m.sink_rows
                .add(history, &[KeyValue::new("table", "order_status_history")]);
            m.sink_batch_duration.record(took.as_secs_f64(), &[]);
            let mut snap = lock(&i.snapshot);
            if let Some(newest) = newest {
                snap.sink_lag_s = Some((now - newest).max(0) as f64 / 1000.0);
            }
            snap.sink_outage = Some(false);
        }
    }

    /// PostgreSQL refused a record's row for its data (`sqlstate`); it was set aside.
    pub fn on_sink_rejected(&self, sqlstate: &str) {
        if let Some(i) = &self.inner {
            i.instruments
                .sink_rejected
                .add(1, &[KeyValue::new("sqlstate", sqlstate.to_owned())]);
        }
    }

    /// PostgreSQL became unwritable (`true`) or writable again (`false`).
    pub fn on_sink_outage(&self, down: bool) {
        if let Some(i) = &self.inner {
            lock(&i.snapshot).sink_outage = Some(down);
        }
    }
}

/// Adds what the change from `prev` to `next`, issuing `commands`, means for the saga
/// counters to `p`.
fn tally(p: &mut Pending, prev: Option<&OrderState>, next: &OrderState, commands: &[Command]) {
    let status_changed = prev.map(|s| s.status) != Some(next.status);
    if status_changed {
        *p.entered.entry(next.status).or_insert(0) += 1;
        if let Some(prev) = prev {
            let since = prev.reached_at(prev.status).unwrap_or(prev.updated_at);
            let seconds = (next.updated_at - since).max(0) as f64 / 1000.0;
            p.left.push((prev.status, seconds));
        }
    }
    for c in commands {
        let action = c.action.as_str();
        if matches!(action, "RELEASE" | "REFUND") {
            *p.compensations.entry(action).or_insert(0) += 1;
        }
        if c.attempt > 1 {
            *p.retries.entry(c.step().as_str()).or_insert(0) += 1;
        }
    }
    for c in next.commands.iter().filter(|c| c.fate == Fate::TimedOut) {
        let was = prev.and_then(|s| s.issued(&c.command_id)).map(|x| x.fate);
        if was != Some(Fate::TimedOut) {
            *p.timeouts.entry(c.action.step().as_str()).or_insert(0) += 1;
        }
    }
    let refusals_before = prev.map(|s| s.cancel_refusals.len()).unwrap_or(0);
    if next.cancel_refusals.len() > refusals_before {
        p.cancel_refused += (next.cancel_refusals.len() - refusals_before) as u64;
    }
}

/// Checks the metrics settings of `config` (called by [`Config::validate`]).
pub fn validate_config(config: &Config) -> Result<(), ConfigError> {
    let e = config.otlp_endpoint.as_str();
    if !e.is_empty()
        && !((e.starts_with("http://") || e.starts_with("https://"))
            && e.parse::<reqwest::Url>().is_ok())
    {
        // The URL may carry credentials: name the key, not the value.
        return Err(ConfigError {
            key: "--otlp-endpoint",
            env: "ORDER_SAGA_OTLP_ENDPOINT",
            value: "(hidden)".into(),
            allowed: "empty (no metrics), or an http:// or https:// URL".into(),
        });
    }
    for (key, env, value, lo, hi) in [
        (
            "--metrics-interval-ms",
            "ORDER_SAGA_METRICS_INTERVAL_MS",
            config.metrics_interval_ms,
            100,
            3_600_000,
        ),
        (
            "--stuck-after-ms",
            "ORDER_SAGA_STUCK_AFTER_MS",
            config.stuck_after_ms,
            1,
            30 * 86_400_000,
        ),
    ] {
        if !(lo..=hi).contains(&value) {
            return Err(ConfigError {
                key,
                env,
                value: value.to_string(),
                allowed: format!("an integer from {lo} to {hi}"),
            });
        }
    }
    Ok(())
}

fn counter(
    meter: &Meter,
    name: &'static str,
    unit: &'static str,
    doc: &'static str,
) -> Counter<u64> {
    meter
        .u64_counter(name)
        .with_unit(unit)
        .with_description(doc)
        .build()
}

fn seconds(meter: &Meter, name: &'static str, doc: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(doc)
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build()
}

fn instruments(meter: &Meter, snapshot: &Arc<Mutex<Snapshot>>) -> Instruments {
    let in_flight_snap = snapshot.clone();
    let in_flight = meter
        .u64_observable_gauge("order_saga.orders.in_flight")
        .with_unit("{order}")
        .with_description("Orders in memory that are not settled, by status.")
        .with_callback(move |o| {
            let snap = lock(&in_flight_snap);
            for status in Status::ALL {
                if status.is_terminal() && !snap.in_flight.contains_key(&status) {
                    continue;
                }
                let n = snap.in_flight.get(&status).copied().unwrap_or(0);
                o.observe(n, &status_attr(status));
            }
        })
        .build();
    let stuck_snap = snapshot.clone();
    let stuck = meter
        .u64_observable_gauge("order_saga.orders.stuck")
        .with_unit("{order}")
        .with_description("Orders in flight whose state has not changed for --stuck-after-ms.")
        .with_callback(move |o| o.observe(lock(&stuck_snap).stuck, &[]))
        .build();
    let outage_snap = snapshot.clone();
    let outage = meter
        .u64_observable_gauge("order_saga.sink.outage")
        // No unit: "1" would make Prometheus call it order_saga_sink_outage_ratio.
        .with_description("1 while the sink cannot write to PostgreSQL.")
        .with_callback(move |o| {
            if let Some(down) = lock(&outage_snap).sink_outage {
                o.observe(u64::from(down), &[]);
            }
        })
        .build();
    let lag_snap = snapshot.clone();
    let lag = meter
        .f64_observable_gauge("order_saga.sink.lag")
        .with_unit("s")
        .with_description(
            "Age of the newest order-status record the sink had applied when its last batch committed.",
        )
        .with_callback(move |o| {
            if let Some(lag) = lock(&lag_snap).sink_lag_s {
                o.observe(lag, &[]);
            }
        })
        .build();
    Instruments {
        consumed: counter(
            meter,
            "messaging.client.consumed.messages",
            "{message}",
            "Input records the processor consumed, counted when their transaction commits.",
        ),
        produced: counter(
            meter,
            "messaging.client.sent.messages",
            "{message}",
            "Records the processor produced (commands, order-status, dead letters), counted when their transaction commits.",
        ),
        transactions: counter(
            meter,
            "order_saga.transactions",
            "{transaction}",
            "Kafka transactions ended, by outcome (committed, aborted).",
        ),
        commit_duration: seconds(
            meter,
            "order_saga.transaction.commit.duration",
            "Time to send the offsets and commit one transaction.",
        ),
        dlq: counter(
            meter,
            "order_saga.dlq.records",
            "{record}",
            "Input records sent to order-dlq, by error.type (dlq.error.kind).",
        ),
        restore_duration: seconds(
            meter,
            "order_saga.restore.duration",
            "Time to restore the state of newly assigned partitions from order-status.",
        ),
        restore_records: counter(
            meter,
            "order_saga.restore.records",
            "{record}",
            "Changelog records read by state restores.",
        ),
        failures: counter(
            meter,
            "order_saga.processor.failures",
            "{event}",
            "Processor stops on an error, by error.type (fenced, fatal).",
        ),
        entered: counter(
            meter,
            "order_saga.orders.entered",
            "{order}",
            "Orders that entered a status.",
        ),
        status_duration: seconds(
            meter,
            "order_saga.order.status.duration",
            "Time an order spent in a status before it left it, by the status left.",
        ),
        compensations: counter(
            meter,
            "order_saga.compensations",
            "{command}",
            "Compensating commands issued, by action (RELEASE, REFUND).",
        ),
        retries: counter(
            meter,
            "order_saga.retries",
            "{command}",
            "Commands issued as a second or later attempt, by step.",
        ),
        timeouts: counter(
            meter,
            "order_saga.timeouts",
            "{command}",
            "Commands whose deadline passed without a result, by step.",
        ),
        cancel_refused: counter(
            meter,
            "order_saga.cancel.refused",
            "{request}",
            "Cancel requests refused because the order was already shipping or completed.",
        ),
        sink_rows: counter(
            meter,
            "order_saga.sink.rows",
            "{row}",
            "Rows the sink wrote, by table (orders, order_status_history).",
        ),
        sink_rejected: counter(
            meter,
            "order_saga.sink.rejected",
            "{record}",
            "order-status records whose row PostgreSQL refused for its data, set aside in \
             order_status_rejects, by SQLSTATE.",
        ),
        sink_batch_duration: seconds(
            meter,
            "order_saga.sink.batch.duration",
            "Time of one sink batch's PostgreSQL transaction.",
        ),
        _gauges: vec![in_flight, stuck, outage],
        _lag: lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_path_is_appended_to_a_base_endpoint_once() {
        assert_eq!(
            metrics_url("http://127.0.0.1:9090/api/v1/otlp"),
            "http://127.0.0.1:9090/api/v1/otlp/v1/metrics"
        );
        assert_eq!(
            metrics_url("http://collector:4318/"),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(
            metrics_url("http://collector:4318/v1/metrics"),
            "http://collector:4318/v1/metrics"
        );
    }

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["order-saga"];
        all.extend_from_slice(args);
        match Config::try_parse_from(all) {
            Ok(config) => config,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    #[test]
    fn an_empty_endpoint_turns_metrics_off() {
        // The stack's .stack/env may set ORDER_SAGA_OTLP_ENDPOINT: override it.
        let c = parse(&["--otlp-endpoint", ""]);
        assert_eq!(c.validate(), Ok(()));
        assert!(!Telemetry::from_config(&c, "run").unwrap().is_enabled());
    }

    #[test]
    fn an_otlp_endpoint_that_is_no_http_url_is_refused_without_echoing_it() {
        let e = parse(&["--otlp-endpoint", "collector:4318?token=secret"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--otlp-endpoint");
        assert!(e.to_string().contains("ORDER_SAGA_OTLP_ENDPOINT"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn a_zero_metrics_interval_is_refused_naming_the_key() {
        let e = parse(&["--metrics-interval-ms", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--metrics-interval-ms");
        assert!(e.to_string().contains("from 100 to 3600000"), "{e}");
        let e = parse(&["--stuck-after-ms", "0"]).validate().unwrap_err();
        assert_eq!(e.key, "--stuck-after-ms");
    }

    /// Drives one order through the real `decide` and tallies every change.
    struct Drive {
        policy: crate::saga::Policy,
        state: Option<OrderState>,
        now: Millis,
        pending: Pending,
    }

    impl Drive {
        fn new() -> Self {
            Drive {
                policy: crate::saga::Policy::from_settings(1_000, 3, 100),
                state: None,
                now: 1_750_000_000_000,
                pending: Pending::default(),
            }
        }

        fn send(&mut self, event: crate::saga::Event) {
            match self.policy.decide(self.state.as_ref(), &event, self.now) {
                crate::saga::Decision::Apply { state, commands } => {
                    tally(&mut self.pending, self.state.as_ref(), &state, &commands);
                    self.state = Some(state);
                }
                other => panic!("expected a change, got {other:?}"),
            }
        }

        fn answer(&mut self, action: crate::saga::Action, outcome: crate::saga::Outcome) {
            let state = self.state.as_ref().expect("order");
            let c = state
                .outstanding_commands()
                .find(|c| c.action == action)
                .expect("command awaited");
            let result = crate::saga::StepResult {
                order_id: state.order_id.clone(),
                command_id: c.command_id.clone(),
                action,
                outcome,
                reason: None,
                retriable: false,
                produced_at: self.now,
            };
            self.send(crate::saga::Event::Result(result));
        }

        fn at(&mut self, now: Millis) -> &mut Self {
            self.now = now;
            self
        }
    }

    #[test]
    fn a_compensated_order_counts_its_statuses_times_timeouts_retries_and_compensations() {
        use crate::saga::{Action, Address, Event, Item, OrderRequest, Outcome};
        let mut d = Drive::new();
        let t0 = d.now;
        d.send(Event::Create(OrderRequest {
            order_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            customer_id: "c-1".into(),
            items: vec![Item {
                sku: "SKU-1".into(),
                quantity: 1,
                unit_price_minor: 500,
            }],
            total_minor: 500,
            currency: "EUR".into(),
            shipping_address: Address {
                recipient: "Ada".into(),
                street: "Main St 1".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
            created_at: t0,
        }));
        // The reservation times out once, then its retry goes out and succeeds.
        d.at(t0 + 1_000).send(Event::Tick);
        let retry_at = d
            .state
            .as_ref()
            .and_then(OrderState::next_deadline)
            .expect("retry");
        d.at(retry_at).send(Event::Tick);
        d.at(t0 + 2_500).answer(Action::Reserve, Outcome::Success);
        d.at(t0 + 3_000).answer(Action::Charge, Outcome::Success);
        d.at(t0 + 3_500).answer(Action::Schedule, Outcome::Failure);

        let p = &d.pending;
        let entered = |s: Status| p.entered.get(&s).copied().unwrap_or(0);
        assert_eq!(entered(Status::Created), 1);
        assert_eq!(entered(Status::Reserved), 1);
        assert_eq!(entered(Status::Paid), 1);
        assert_eq!(entered(Status::Canceled), 1);
        assert_eq!(entered(Status::Completed), 0);
        // Same-status versions (the timeout, the retry) leave no status.
        assert_eq!(
            p.left,
            vec![
                (Status::Created, 2.5),
                (Status::Reserved, 0.5),
                (Status::Paid, 0.5)
            ]
        );
        assert_eq!(p.timeouts.get("INVENTORY"), Some(&1));
        assert_eq!(p.retries.get("INVENTORY"), Some(&1));
        assert_eq!(p.retries.len(), 1);
        assert_eq!(p.compensations.get("RELEASE"), Some(&1));
        assert_eq!(p.compensations.get("REFUND"), Some(&1));
        assert_eq!(p.cancel_refused, 0);
    }

    #[test]
    fn disabled_telemetry_accepts_every_call() {
        let t = Telemetry::disabled();
        t.on_consumed("x");
        t.on_commit(Duration::from_millis(1));
        t.on_abort();
        t.observe_states(std::iter::empty(), 0);
        assert!(!t.is_enabled());
    }
}
