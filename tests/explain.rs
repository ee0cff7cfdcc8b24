//! `order-saga explain` on the real stack: an order's story read back from Kafka alone,
//! with PostgreSQL out of reach.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use order_saga::config::Config;
use order_saga::contracts::records::OrderCreate;
use order_saga::kafka::partitioner::partition_for as partition_of;
use order_saga::saga::{Action, Status};
use order_saga::topics;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// Runs `order-saga explain <id> --json` with a database URL that nothing listens on.
fn explain_json(config: &Config, order_id: &str) -> (Value, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .args(["explain", order_id, "--json"])
        .envs(config.env_vars())
        .env(
            "ORDER_SAGA_DATABASE_URL",
            "postgres://order:order@127.0.0.1:1/nowhere",
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("run explain");
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "explain printed no JSON ({e}); exit {code}\nstdout:\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, code)
}

fn entries<'a>(json: &'a Value, kind: &str) -> Vec<(usize, &'a Value)> {
    json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == kind)
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_tells_a_compensated_order_in_order_without_the_database() {
    let prefix = random_prefix();
    let config = config(&prefix, &[]);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    let _processor = spawn(&config, "p0", &["run", "--no-sink"]);
    let downstream = Downstream::start(&config, codec.clone(), |c| {
        if c.action() == Action::Schedule {
            Reply::failure()
        } else {
            Reply::success()
        }
    });
    // A second order on the same topics, so explain must pick its key out of others.
    let orders = vec![order(1), order(2)];
    produce_orders(&producer, &config, &codec, &orders).await;
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    let states = wait_for_states(&config, &codec, &ids, WAIT, terminal).await;
    let id = &ids[0];
    assert_eq!(states[id].1.status, Status::Canceled);

    let (json, code) = explain_json(&config, id);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["order_id"], id.as_str());
    assert_eq!(json["status"], "CANCELED");
    assert_eq!(json["version"], states[id].0.version);
    assert_eq!(json["scanned_all_partitions"], false);
    let hashed = json["hashed_partition"].as_i64().expect("hashed partition");
    assert_eq!(
        hashed,
        i64::from(partition_of(id.as_bytes(), PARTITIONS)),
        "the processor's inputs are partitioned by murmur2 of the key"
    );

    // Statuses: every version once, in version order, ending CANCELED.
    let statuses = entries(&json, "status");
    let names: Vec<&str> = statuses.iter().map(|(_, e)| s(&e["status"])).collect();
    assert_eq!(&names[..4], ["CREATED", "RESERVED", "PAID", "CANCELED"]);
    assert!(names[4..].iter().all(|n| *n == "CANCELED"), "{names:?}");
    let versions: Vec<i64> = statuses
        .iter()
        .map(|(_, e)| e["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    for (_, e) in &statuses {
        assert_eq!(e["partition"].as_i64(), Some(hashed));
    }
    assert_eq!(
        statuses[2].1["awaiting"],
        serde_json::json!(["SCHEDULE attempt 1"]),
        "PAID waits for the shipping command"
    );
    assert_eq!(
        statuses[0].1["awaiting"],
        serde_json::json!(["RESERVE attempt 1"])
    );

    // Commands: the five the downstream services saw, with their ids, in saga order.
    let commands = entries(&json, "command");
    let actions: Vec<&str> = commands.iter().map(|(_, e)| s(&e["action"])).collect();
    assert_eq!(&actions[..3], ["RESERVE", "CHARGE", "SCHEDULE"]);
    let mut compensations: Vec<&str> = actions[3..].to_vec();
    compensations.sort_unstable();
    assert_eq!(compensations, ["REFUND", "RELEASE"]);
    let seen: Vec<String> = downstream
        .seen()
        .into_iter()
        .filter(|c| &c.order_id == id)
        .map(|c| c.command_id)
        .collect();
    for (_, c) in &commands {
        assert!(
            seen.iter().any(|x| x == s(&c["command_id"])),
            "command {c} was not one the services saw"
        );
        assert_eq!(c["attempt"], 1);
    }

    // Results: one per command, after it, with the scripted outcome.
    let results = entries(&json, "result");
    assert_eq!(results.len(), commands.len());
    for (ci, c) in &commands {
        let (ri, r) = results
            .iter()
            .find(|(_, r)| r["command_id"] == c["command_id"])
            .unwrap_or_else(|| panic!("no result for {c}"));
        assert!(ri > ci, "result {r} listed before its command {c}");
        let expected = if c["action"] == "SCHEDULE" {
            "FAILURE"
        } else {
            "SUCCESS"
        };
        assert_eq!(r["outcome"], expected, "{r}");
    }

    // The story's order: the status a result caused comes after it, and the commands
    // issued in a status come after that status.
    let index_of_status = |name: &str| {
        statuses
            .iter()
            .find(|(_, e)| e["status"] == name)
            .expect(name)
            .0
    };
    let index_of_command = |name: &str| {
        commands
            .iter()
            .find(|(_, e)| e["action"] == name)
            .expect(name)
            .0
    };
    assert!(index_of_status("PAID") < index_of_command("SCHEDULE"));
    assert!(index_of_command("SCHEDULE") < index_of_status("CANCELED"));
    assert!(index_of_status("CANCELED") < index_of_command("REFUND"));
    assert!(index_of_status("CANCELED") < index_of_command("RELEASE"));
    let creates = entries(&json, "create");
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].0, 0, "the create request starts the story");

    let all = json["entries"].as_array().expect("entries");
    let mut last = 0;
    for e in all {
        let ts = e["timestamp"].as_i64().expect("timestamp");
        assert!(ts >= last, "entries out of timestamp order: {e}");
        assert!(e["since_previous_ms"].as_i64().expect("gap") >= 0);
        last = ts;
    }
    assert!(
        all.iter().all(|e| e["topic"] != topics::ORDER_DLQ),
        "no dead letters expected"
    );

    // The text form tells the same story for a person.
    let text = Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .args(["explain", id])
        .envs(config.env_vars())
        .env(
            "ORDER_SAGA_DATABASE_URL",
            "postgres://order:order@127.0.0.1:1/nowhere",
        )
        .output()
        .expect("run explain");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("status      PAID v3"), "{text}");
    assert!(text.contains("result      SCHEDULE FAILURE"), "{text}");
    assert!(text.contains("now CANCELED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_scans_every_partition_for_an_order_produced_with_another_partitioner() {
    let prefix = random_prefix();
    let config = config(&prefix, &[]);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    // No processor runs: it would re-route the create to its key's partition (see
    // tests/ordering.rs), and this test is about finding a record where it was written.
    let o = order(7);
    let hashed = partition_of(o.order_id.as_bytes(), PARTITIONS);
    let elsewhere = (hashed + 1) % PARTITIONS;
    let bytes = codec
        .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(&o))
        .await
        .expect("encode");
    let topic = config.topics().name(topics::ORDER_CREATE_REQUEST);
    producer
        .send(
            FutureRecord::to(&topic)
                .key(o.order_id.as_str())
                .payload(&bytes)
                .partition(elsewhere),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    let (json, code) = explain_json(&config, &o.order_id);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["scanned_all_partitions"], true);
    assert_eq!(json["hashed_partition"], hashed);
    assert!(json["status"].is_null(), "{json:#}");
    let create = entries(&json, "create");
    assert_eq!(create.len(), 1);
    assert_eq!(create[0].1["partition"], elsewhere);
    assert!(entries(&json, "command").is_empty());

    // An id nobody produced: nothing found, exit code 1.
    let (json, code) = explain_json(&config, &uuid::Uuid::new_v4().to_string());
    assert_eq!(code, 1);
    assert_eq!(json["entries"].as_array().map(Vec::len), Some(0));
}
