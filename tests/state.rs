//! The processor's state on the real stack: finished orders are remembered after their
//! state is evicted, and the memory survives a restart through the private changelog.

mod common;

use std::time::{Duration, Instant};

use common::*;
use order_saga::saga::{Action, Status};

const WAIT: Duration = Duration::from_secs(90);

/// Commands issued for `id`, by action.
async fn actions_of(
    config: &order_saga::config::Config,
    codec: &order_saga::contracts::Codec,
    id: &str,
) -> Vec<Action> {
    committed_commands(config, codec)
        .await
        .into_iter()
        .filter(|c| c.order_id == id)
        .map(|c| c.action())
        .collect()
}

/// Waits until the processor logs that it ignored a create of the finished order `id`,
/// or until a second `RESERVE` for it shows that it did not; returns whether it logged.
async fn wait_for_dedup(
    proc: &Proc,
    config: &order_saga::config::Config,
    codec: &order_saga::contracts::Codec,
    id: &str,
) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        let logged = proc
            .log_text()
            .lines()
            .any(|l| l.contains("create of a finished order ignored") && l.contains(id));
        if logged {
            return true;
        }
        let reserves = actions_of(config, codec, id)
            .await
            .into_iter()
            .filter(|a| *a == Action::Reserve)
            .count();
        if reserves > 1 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_create_of_a_completed_and_evicted_order_issues_no_command_and_no_status() {
    let prefix = random_prefix();
    let config = config(&prefix, &["--state-retention-ms", "1000"]);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    let mut processor = spawn(&config, "p0", &["run", "--no-sink"]);
    let _downstream = Downstream::start(&config, codec.clone(), |_| Reply::success());

    let first = order(1);
    let id = first.order_id.clone();
    produce_orders(&producer, &config, &codec, std::slice::from_ref(&first)).await;
    let states = wait_for_states(&config, &codec, std::slice::from_ref(&id), WAIT, terminal).await;
    assert_eq!(states[&id].1.status, Status::Completed);
    assert_eq!(states[&id].0.version, 5);

    // Past the retention and the once-a-second eviction: the state is gone from memory.
    let evicted_until = Instant::now() + WAIT;
    while !processor.log_text().contains("evicted=1") {
        assert!(
            Instant::now() < evicted_until,
            "the completed order was never evicted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    produce_orders(&producer, &config, &codec, std::slice::from_ref(&first)).await;
    assert!(
        wait_for_dedup(&processor, &config, &codec, &id).await,
        "the repeated create was not recognised as a finished order's"
    );

    // The memory of finished orders survives a restart: it is restored from the
    // private changelog, not rebuilt from order-status.
    processor.kill9();
    let restarted = spawn(&config, "p0", &["run", "--no-sink"]);
    produce_orders(&producer, &config, &codec, std::slice::from_ref(&first)).await;
    assert!(
        wait_for_dedup(&restarted, &config, &codec, &id).await,
        "after a restart the repeated create was not recognised as a finished order's"
    );

    let actions = actions_of(&config, &codec, &id).await;
    assert_eq!(
        actions,
        vec![
            Action::Reserve,
            Action::Charge,
            Action::Schedule,
            Action::Send
        ],
        "one command of each kind, none for the repeated creates"
    );
    let states = committed_states(&config, &codec).await;
    assert_eq!(states[&id].0.version, 5, "no new order-status version");
    let cfg = config.clone();
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&cfg, &[order_saga::topics::ORDER_STATUS]))
            .await
            .expect("reader thread");
    let versions = records
        .into_iter()
        .filter(|(_, key, _, _)| key.as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(versions, 5, "five status records, one per version");
}
