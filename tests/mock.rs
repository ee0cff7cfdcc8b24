//! Faults a real broker cannot be made to produce on demand, on librdkafka's mock cluster
//! (in this process, on loopback ports the processor connects to like any broker). The
//! registry is the real one.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr as RespErr;

/// The first number after `key=` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A commit whose outcome stays unknown (the coordinator answers every EndTxn with a
/// retriable error) is called again within the transaction timeout and no longer: then
/// the loop ends without aborting or redoing anything, and the instance starts over with
/// a new producer, whose first commit once the coordinator answers again goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_unknown_outcome_is_never_aborted_or_redone_and_a_new_producer_takes_over() {
    const TXN_TIMEOUT_MS: u64 = 6_000;
    let mock = MockCluster::new(1).expect("mock cluster");
    let prefix = random_prefix();
    let mut config = config(&prefix, &["--transaction-timeout-ms", "6000"]);
    config.bootstrap = mock.bootstrap_servers();
    for topic in config.topics().all() {
        mock.create_topic(&topic, PARTITIONS, 1)
            .expect("mock topic");
    }
    // Every commit from now on is answered "coordinator loading": librdkafka retries it,
    // and the commit call times out with its outcome unknown.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 2_000],
    );
    let mut p = spawn(&config, "p0", &["run", "--no-sink"]);
    let codec = codec();
    let producer = producer(&config);
    produce_orders(&producer, &config, &codec, &[order(1)]).await;

    const MARK: &str = "the outcome of a transaction commit is unknown after";
    let log = p.wait_for_log(
        "a commit of unknown outcome",
        Duration::from_secs(90),
        |log| log.contains(MARK),
    );
    let unknown = log
        .lines()
        .find(|l| l.contains(MARK))
        .unwrap_or_default()
        .to_string();
    mock.clear_request_errors(RDKafkaApiKey::EndTxn);
    let waited = field(&unknown, "unknown after ").expect("waited ms");
    assert!(
        (TXN_TIMEOUT_MS - 1_000..=TXN_TIMEOUT_MS + 2_000).contains(&waited),
        "the commit must be retried for about the transaction timeout, not {waited} ms"
    );

    // The new loop commits once the coordinator answers again.
    p.wait_for_log(
        "a commit by the new producer",
        Duration::from_secs(90),
        |log| {
            log.find("starting over in-process").is_some_and(|at| {
                log[at..]
                    .lines()
                    .filter_map(|l| field(l, "txn_committed="))
                    .any(|n| n >= 1)
            })
        },
    );
    let log = p.log_text();
    assert!(
        !log.contains("aborting transaction"),
        "a commit of unknown outcome must not be aborted:\n{log}"
    );
    assert_eq!(log.matches("starting over in-process").count(), 1, "{log}");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "{log}");
}
