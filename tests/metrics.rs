//! Metrics on the real backend: the processor pushes OTLP to the stack's Prometheus
//! (`scripts/stack up`, or `scripts/stack up-metrics`), and the values read back through
//! Prometheus' HTTP API match what the test drove. Without Prometheus these tests fail.

mod common;

use std::time::{Duration, Instant};

use common::*;
use order_saga::config::Config;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn prometheus_url() -> String {
    env_or("STACK_PROMETHEUS_URL", "http://127.0.0.1:9090")
}

/// A configuration that pushes metrics to the stack's Prometheus every 500 ms.
fn metrics_config(prefix: &str, extra: &[&str]) -> Config {
    let endpoint = format!("{}/api/v1/otlp", prometheus_url());
    let mut args = vec!["--otlp-endpoint", &endpoint, "--metrics-interval-ms", "500"];
    args.extend_from_slice(extra);
    config(prefix, &args)
}

/// The `instance` label Prometheus gives the processor's series: its
/// `service.instance.id`, the transactional id.
fn instance(config: &Config, id: &str) -> String {
    format!("{}-{id}", config.application_id)
}

/// The value of an instant PromQL query that returns at most one series; `None` while it
/// returns nothing.
async fn query(promql: &str) -> Option<f64> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", prometheus_url()),
        &[("query", promql)],
    )
    .expect("query url");
    let response = reqwest::get(url).await.unwrap_or_else(|e| {
        panic!(
            "Prometheus at {} does not answer ({e}); start it with scripts/stack up-metrics",
            prometheus_url()
        )
    });
    let body: Value = response.json().await.expect("query response json");
    assert_eq!(body["status"], "success", "{promql}: {body}");
    let result = body["data"]["result"].as_array().expect("result vector");
    assert!(
        result.len() <= 1,
        "{promql} returned several series: {body}"
    );
    result
        .first()
        .and_then(|r| r["value"][1].as_str())
        .map(|v| v.parse().expect("sample value"))
}

/// Polls `promql` until `ok` holds for its value, or panics with the last value seen.
async fn eventually(promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let until = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < until {
        last = query(promql).await;
        if let Some(v) = last.filter(|v| ok(*v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{promql}: last value {last:?} after {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_and_times_the_orders_the_saga_completed() {
    // Fails here, not later, when the backend is missing.
    assert!(
        query("vector(1)").await == Some(1.0),
        "Prometheus does not evaluate queries"
    );
    let prefix = random_prefix();
    let config = metrics_config(&prefix, &[]);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    let _processor = spawn(&config, "p0", &["run", "--no-sink"]);
    let _downstream = Downstream::start(&config, codec.clone(), |_| Reply::success());
    const N: usize = 12;
    let orders: Vec<_> = (0..N as u32).map(order).collect();
    produce_orders(&producer, &config, &codec, &orders).await;
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    wait_for_states(&config, &codec, &ids, WAIT, terminal).await;

    let inst = instance(&config, "p0");
    let n = N as f64;
    // Counter: every order entered COMPLETED once, and CREATED once.
    let completed =
        format!("sum(order_saga_orders_entered_total{{instance=\"{inst}\",status=\"COMPLETED\"}})");
    assert_eq!(eventually(&completed, |v| v >= n).await, n);
    let created =
        format!("sum(order_saga_orders_entered_total{{instance=\"{inst}\",status=\"CREATED\"}})");
    assert_eq!(eventually(&created, |v| v >= n).await, n);
    // Histogram: each order left CREATED, RESERVED, PAID and SHIPPING_SCHEDULED once.
    let left =
        format!("sum(order_saga_order_status_duration_seconds_count{{instance=\"{inst}\"}})");
    assert_eq!(eventually(&left, |v| v >= 4.0 * n).await, 4.0 * n);
    let left_created = format!(
        "sum(order_saga_order_status_duration_seconds_count{{instance=\"{inst}\",status=\"CREATED\"}})"
    );
    assert_eq!(eventually(&left_created, |v| v >= n).await, n);
    let buckets = format!(
        "sum(order_saga_order_status_duration_seconds_bucket{{instance=\"{inst}\",le=\"+Inf\"}})"
    );
    assert_eq!(eventually(&buckets, |v| v >= 4.0 * n).await, 4.0 * n);
    // Records: a create and four results in, four commands and five statuses out.
    let consumed = format!("sum(messaging_client_consumed_messages_total{{instance=\"{inst}\"}})");
    assert_eq!(eventually(&consumed, |v| v >= 5.0 * n).await, 5.0 * n);
    // The private `order-state` changelog gets a record per change too, plus its
    // per-partition markers: it is counted apart.
    let state_topic = config.topics().name(order_saga::topics::ORDER_STATE);
    let sent = format!(
        "sum(messaging_client_sent_messages_total{{instance=\"{inst}\",messaging_destination_name!=\"{state_topic}\"}})"
    );
    assert_eq!(eventually(&sent, |v| v >= 9.0 * n).await, 9.0 * n);
    let private = format!(
        "sum(messaging_client_sent_messages_total{{instance=\"{inst}\",messaging_destination_name=\"{state_topic}\"}})"
    );
    assert!(eventually(&private, |v| v >= 5.0 * n).await >= 5.0 * n);
    let status_topic = config.topics().name(order_saga::topics::ORDER_STATUS);
    let statuses = format!(
        "sum(messaging_client_sent_messages_total{{instance=\"{inst}\",messaging_destination_name=\"{status_topic}\"}})"
    );
    assert_eq!(eventually(&statuses, |v| v >= 5.0 * n).await, 5.0 * n);
    let commits =
        format!("sum(order_saga_transactions_total{{instance=\"{inst}\",outcome=\"committed\"}})");
    eventually(&commits, |v| v >= 1.0).await;
    // Nothing is left in flight.
    let in_flight = format!("sum(order_saga_orders_in_flight{{instance=\"{inst}\"}})");
    assert_eq!(eventually(&in_flight, |v| v == 0.0).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_a_service_never_answers_show_as_stuck_in_prometheus() {
    let prefix = random_prefix();
    let config = metrics_config(&prefix, &["--stuck-after-ms", "300"]);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    let _processor = spawn(&config, "p0", &["run", "--no-sink"]);
    // No downstream service: every order waits in CREATED for its reservation, whose
    // deadline (30 s by default) is far beyond --stuck-after-ms.
    let orders: Vec<_> = (0..3).map(order).collect();
    produce_orders(&producer, &config, &codec, &orders).await;
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    wait_for_states(&config, &codec, &ids, WAIT, |s| {
        s.status == order_saga::saga::Status::Created
    })
    .await;

    let inst = instance(&config, "p0");
    let stuck = format!("max(order_saga_orders_stuck{{instance=\"{inst}\"}})");
    assert_eq!(eventually(&stuck, |v| v >= 3.0).await, 3.0);
    let waiting =
        format!("max(order_saga_orders_in_flight{{instance=\"{inst}\",status=\"CREATED\"}})");
    assert_eq!(eventually(&waiting, |v| v >= 3.0).await, 3.0);
}
