//! The processor on the real stack: the order saga end to end, through Kafka
//! transactions, with scripted downstream services.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use order_saga::saga::{Action, Status};
use order_saga::topics;

const WAIT: Duration = Duration::from_secs(90);

/// Topics, a processor and the given downstream script, ready for orders.
struct Setup {
    config: order_saga::config::Config,
    codec: Arc<order_saga::contracts::Codec>,
    producer: rdkafka::producer::FutureProducer,
    processor: Proc,
}

async fn setup(extra: &[&str]) -> Setup {
    let prefix = random_prefix();
    let config = config(&prefix, extra);
    create_topics(&config).await;
    let codec = codec();
    let producer = producer(&config);
    let processor = spawn(&config, "p0", &["run", "--no-sink"]);
    Setup {
        config,
        codec,
        producer,
        processor,
    }
}

fn count_actions(cmds: &[CommandHeader], id: &str) -> HashMap<Action, usize> {
    let mut m = HashMap::new();
    for c in cmds.iter().filter(|c| c.order_id == id) {
        *m.entry(c.action()).or_insert(0) += 1;
    }
    m
}

/// (RELEASE, REFUND) commands issued for one order.
fn compensations(cmds: &[CommandHeader], id: &str) -> (usize, usize) {
    let c = count_actions(cmds, id);
    (
        c.get(&Action::Release).copied().unwrap_or(0),
        c.get(&Action::Refund).copied().unwrap_or(0),
    )
}

fn ids(orders: &[order_saga::saga::OrderRequest]) -> Vec<String> {
    orders.iter().map(|o| o.order_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_completes_with_exactly_one_command_of_each_kind() {
    let s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let orders: Vec<_> = (0..30).map(order).collect();
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;

    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));
    for id in ids(&orders) {
        // CREATED, RESERVED, PAID, SHIPPING_SCHEDULED, COMPLETED: one version each.
        assert_eq!(states[&id].0.version, 5, "order {id}");
    }
    let cmds = committed_commands(&s.config, &s.codec).await;
    assert_eq!(cmds.len(), orders.len() * 4);
    for id in ids(&orders) {
        let counts = count_actions(&cmds, &id);
        for a in [
            Action::Reserve,
            Action::Charge,
            Action::Schedule,
            Action::Send,
        ] {
            assert_eq!(counts.get(&a), Some(&1), "order {id} action {a:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_each_step_ends_in_its_status_with_its_compensations() {
    let s = setup(&[]).await;
    let orders: Vec<_> = (0..4).map(order).collect();
    // Order i fails at step i: inventory, payment, shipping, notification.
    let fail_at: HashMap<String, Action> = orders
        .iter()
        .zip([
            Action::Reserve,
            Action::Charge,
            Action::Schedule,
            Action::Send,
        ])
        .map(|(o, a)| (o.order_id.clone(), a))
        .collect();
    let script_map = fail_at.clone();
    let _downstream = Downstream::start(&s.config, s.codec.clone(), move |c| {
        if script_map.get(&c.order_id) == Some(&c.action()) {
            Reply::failure()
        } else {
            Reply::success()
        }
    });
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    let got = statuses(&states, &ids(&orders));
    assert_eq!(
        got,
        vec![
            Status::Failed,
            Status::Failed,
            Status::Canceled,
            Status::Failed
        ]
    );

    let cmds = committed_commands(&s.config, &s.codec).await;
    let comp = |i: usize| compensations(&cmds, &orders[i].order_id);
    assert_eq!(comp(0), (0, 0), "inventory failure: nothing to undo");
    assert_eq!(comp(1), (1, 0), "payment failure releases the stock");
    assert_eq!(comp(2), (1, 1), "shipping failure refunds and releases");
    assert_eq!(
        comp(3),
        (0, 0),
        "notification failure: goods are on their way"
    );
    for i in 0..4 {
        assert!(
            states[&orders[i].order_id].1.reason.is_some(),
            "order {i} has a reason"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_accepted_before_shipping_and_refused_after() {
    let s = setup(&["--step-timeout-ms", "120000"]).await;
    let orders: Vec<_> = (0..4).map(order).collect();
    // Order i is held at the i-th status by never answering the command that would move it on.
    let hold: HashMap<String, Action> = orders
        .iter()
        .zip([
            Action::Reserve,
            Action::Charge,
            Action::Schedule,
            Action::Send,
        ])
        .map(|(o, a)| (o.order_id.clone(), a))
        .collect();
    let script_map = hold.clone();
    let _downstream = Downstream::start(&s.config, s.codec.clone(), move |c| {
        if script_map.get(&c.order_id) == Some(&c.action()) {
            vec![]
        } else {
            Reply::success()
        }
    });
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let held = [
        Status::Created,
        Status::Reserved,
        Status::Paid,
        Status::ShippingScheduled,
    ];
    let expected: HashMap<String, Status> = ids(&orders).into_iter().zip(held).collect();
    let exp = expected.clone();
    let all_ids = ids(&orders);
    let until_held = |st: &order_saga::saga::OrderState| exp.get(&st.order_id) == Some(&st.status);
    wait_for_states(&s.config, &s.codec, &all_ids, WAIT, until_held).await;

    for o in &orders {
        produce_cancel(&s.producer, &s.config, &s.codec, &o.order_id).await;
    }
    let last = orders[3].order_id.clone();
    let settled = move |st: &order_saga::saga::OrderState| {
        if st.order_id == last {
            st.reason.is_some()
        } else {
            st.status == Status::Canceled
        }
    };
    let states = wait_for_states(&s.config, &s.codec, &all_ids, WAIT, settled).await;
    assert_eq!(
        statuses(&states, &all_ids),
        vec![
            Status::Canceled,
            Status::Canceled,
            Status::Canceled,
            Status::ShippingScheduled
        ]
    );
    let cmds = committed_commands(&s.config, &s.codec).await;
    let comp = |i: usize| compensations(&cmds, &orders[i].order_id);
    assert_eq!(
        comp(0),
        (0, 0),
        "cancel in CREATED: the reservation is still in flight"
    );
    assert_eq!(comp(1), (1, 0), "cancel in RESERVED releases");
    assert_eq!(comp(2), (1, 1), "cancel in PAID refunds and releases");
    assert_eq!(comp(3), (0, 0), "cancel after shipping is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_step_times_out_after_its_retries() {
    let s = setup(&[
        "--step-timeout-ms",
        "800",
        "--max-attempts",
        "2",
        "--retry-backoff-ms",
        "100",
    ])
    .await;
    let orders: Vec<_> = (0..3).map(order).collect();
    let downstream = Downstream::start(&s.config, s.codec.clone(), |_| vec![]);
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Failed));
    let cmds = committed_commands(&s.config, &s.codec).await;
    for id in ids(&orders) {
        let attempts: HashSet<i32> = cmds
            .iter()
            .filter(|c| c.order_id == id)
            .map(|c| c.attempt)
            .collect();
        assert_eq!(
            attempts,
            HashSet::from([1, 2]),
            "two reservation attempts for {id}"
        );
        assert_eq!(count_actions(&cmds, &id).get(&Action::Reserve), Some(&2));
    }
    assert!(!downstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_results_move_an_order_only_once() {
    let s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| {
        vec![Reply {
            outcome: order_saga::saga::Outcome::Success,
            retriable: false,
            copies: 3,
        }]
    });
    let orders: Vec<_> = (0..10).map(order).collect();
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    for id in ids(&orders) {
        assert_eq!(states[&id].1.status, Status::Completed);
        assert_eq!(states[&id].0.version, 5, "duplicates must not add versions");
    }
    let cmds = committed_commands(&s.config, &s.codec).await;
    assert_eq!(cmds.len(), orders.len() * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_later_orders_complete() {
    let s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let id = uuid::Uuid::new_v4().to_string();
    // Bad magic byte, unknown schema id, garbage after a valid header, and no key.
    produce_raw(
        &s.producer,
        &s.config,
        topics::ORDER_CREATE_REQUEST,
        Some(&id),
        b"{\"json\":true}",
    )
    .await;
    produce_raw(
        &s.producer,
        &s.config,
        topics::ORDER_CREATE_REQUEST,
        Some(&id),
        &[0, 0x7f, 0xff, 0xff, 0xf0, 1, 2],
    )
    .await;
    let valid = s
        .codec
        .encode(
            topics::ORDER_CREATE_REQUEST,
            &order_saga::contracts::records::OrderCreate::from(&order(1)),
        )
        .await
        .unwrap();
    let mut truncated = valid[..8].to_vec();
    truncated.extend_from_slice(&[0xff; 3]);
    produce_raw(
        &s.producer,
        &s.config,
        topics::ORDER_CREATE_REQUEST,
        Some(&id),
        &truncated,
    )
    .await;
    produce_raw(
        &s.producer,
        &s.config,
        topics::PAYMENT_PROCESS_RESULT,
        None,
        &valid,
    )
    .await;

    let orders: Vec<_> = (0..5).map(order).collect();
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));

    let cfg = s.config.clone();
    let dlq = tokio::task::spawn_blocking(move || read_to_end(&cfg, &[topics::ORDER_DLQ]))
        .await
        .unwrap();
    assert_eq!(
        dlq.len(),
        4,
        "every poison record, and only those, is dead-lettered"
    );
    let kinds: Vec<String> = dlq
        .iter()
        .map(|(_, _, _, h)| {
            h.iter()
                .find(|(k, _)| k == "dlq.error.kind")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        kinds.contains(&"bad_magic_byte".to_string()) || kinds.iter().any(|k| k.contains("magic")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"missing_key".to_string()), "{kinds:?}");
    for (_, _, value, headers) in &dlq {
        let h: HashMap<_, _> = headers.iter().cloned().collect();
        for key in [
            "dlq.source.topic",
            "dlq.source.partition",
            "dlq.source.offset",
            "dlq.error.kind",
            "dlq.error.message",
        ] {
            assert!(h.contains_key(key), "missing header {key} in {h:?}");
        }
        assert!(!value.is_empty(), "the original value is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_load_resumes_without_duplicates_or_losses() {
    let mut s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let orders: Vec<_> = (0..200).map(order).collect();
    let (first, second) = orders.split_at(100);
    produce_orders(&s.producer, &s.config, &s.codec, first).await;
    // Let it get going, then kill it without warning in the middle of the work.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.processor.kill9();
    produce_orders(&s.producer, &s.config, &s.codec, second).await;
    let _restarted = spawn(&s.config, "p0", &["run", "--no-sink"]);

    let states = wait_for_states(
        &s.config,
        &s.codec,
        &ids(&orders),
        Duration::from_secs(150),
        terminal,
    )
    .await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));
    let cmds = committed_commands(&s.config, &s.codec).await;
    let unique: HashSet<&str> = cmds.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(unique.len(), cmds.len(), "a command id appears twice");
    assert_eq!(cmds.len(), orders.len() * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_both_make_progress() {
    let mut s = setup(&[]).await;
    let mut second = spawn(&s.config, "p1", &["run", "--no-sink"]);
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    // Give the group time to settle with both members before the load.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let orders: Vec<_> = (0..60).map(order).collect();
    produce_orders(&s.producer, &s.config, &s.codec, &orders).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));

    assert_eq!(s.processor.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
    for log in [s.processor.log_text(), second.log_text()] {
        let changes = log
            .lines()
            .filter(|l| l.contains("processor stopped"))
            .find_map(|l| {
                l.split("state_changes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        assert!(changes > 0, "an instance made no progress:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_with_the_same_transactional_id_is_fenced_and_its_writes_never_show() {
    let mut s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let orders: Vec<_> = (0..100).map(order).collect();
    let (first, second) = orders.split_at(50);
    produce_orders(&s.producer, &s.config, &s.codec, first).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Same instance id: the newcomer's init_transactions fences the running one.
    let _newcomer = spawn(&s.config, "p0", &["run", "--no-sink"]);
    produce_orders(&s.producer, &s.config, &s.codec, second).await;

    let code = s.processor.wait_exit(Duration::from_secs(60));
    assert!(
        matches!(code, Some(c) if c != 0),
        "the zombie must exit with an error, got {code:?}"
    );
    assert!(
        s.processor.log_text().contains("fenced"),
        "the zombie says it was fenced"
    );

    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));
    let cmds = committed_commands(&s.config, &s.codec).await;
    let unique: HashSet<&str> = cmds.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(unique.len(), cmds.len(), "a zombie write became visible");
    assert_eq!(cmds.len(), orders.len() * 4);
}

/// A processor stopped past its session timeout (SIGSTOP) is replaced by one with the
/// same instance id; woken, it must write nothing more and exit at once, not rejoin the
/// group and contend for its transactional id or reuse the state it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_woken_after_its_replacement_started_exits_at_once_and_writes_nothing() {
    let mut s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let orders: Vec<_> = (0..60).map(order).collect();
    let (first, second) = orders.split_at(30);
    produce_orders(&s.producer, &s.config, &s.codec, first).await;
    // The zombie must have been working: its first orders are done before it stops.
    let states = wait_for_states(&s.config, &s.codec, &ids(first), WAIT, terminal).await;
    assert_eq!(
        states.len(),
        first.len(),
        "the first processor did not work"
    );

    s.processor.signal("STOP");
    // Past the session timeout (10 s), the group has dropped the stopped member.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let replacement = spawn(&s.config, "p0", &["run", "--no-sink"]);
    produce_orders(&s.producer, &s.config, &s.codec, second).await;
    let states = wait_for_states(&s.config, &s.codec, &ids(second), WAIT, terminal).await;
    assert!(
        statuses(&states, &ids(second))
            .iter()
            .all(|st| *st == Status::Completed),
        "the replacement did not take over:\n{}",
        replacement.log_text()
    );

    s.processor.signal("CONT");
    let code = s.processor.wait_exit(Duration::from_secs(5));
    assert!(
        matches!(code, Some(c) if c != 0),
        "the zombie must exit with an error within 5 s of waking, got {code:?}:\n{}",
        s.processor.log_text()
    );
    let log = s.processor.log_text();
    assert!(
        log.contains("out of its group") || log.contains("fenced"),
        "the zombie says why it stopped:\n{log}"
    );

    let cmds = committed_commands(&s.config, &s.codec).await;
    let unique: HashSet<&str> = cmds.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(unique.len(), cmds.len(), "a command was committed twice");
    assert_eq!(cmds.len(), orders.len() * 4);
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));
}

/// A stall longer than the transaction timeout and the session timeout (a long GC-like
/// pause, a VM freeze), with no other process taking the instance's id: the broker times
/// the open transaction out, the group drops the member, and the process must start over
/// in-process (new producer, rejoin, state restored from what committed) rather than stop
/// or sit idle, and every order must complete with each command exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_frozen_past_its_transaction_timeout_starts_over_in_process_and_loses_nothing() {
    const TXN_TIMEOUT_MS: u64 = 12_000;
    const BURST: u32 = 2_000;
    let mut s = setup(&["--transaction-timeout-ms", "12000"]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let first: Vec<_> = (0..20).map(order).collect();
    produce_orders(&s.producer, &s.config, &s.codec, &first).await;
    wait_for_states(&s.config, &s.codec, &ids(&first), WAIT, terminal).await;
    // The stall must hit an open transaction and outlast its timeout; a stall between two
    // transactions proves nothing, so it is tried again (each try is one more restart).
    let mut hit = None;
    let mut orders = first;
    for attempt in 1..=3 {
        let starts = s.processor.log_text().matches("processor started").count();
        // A backlog keeps the loop in one transaction after another.
        let burst: Vec<_> = (0..BURST).map(order).collect();
        produce_orders(&s.producer, &s.config, &s.codec, &burst).await;
        orders.extend(burst);
        s.processor.signal("STOP");
        // Past the session timeout (10 s) and the transaction timeout (12 s).
        tokio::time::sleep(Duration::from_millis(TXN_TIMEOUT_MS + 2_000)).await;
        s.processor.signal("CONT");
        let log = s.processor.wait_for_log(
            &format!("a new loop after waking (try {attempt})"),
            Duration::from_secs(30),
            |log| log.matches("processor started").count() > starts,
        );
        let ended = log
            .lines()
            .rfind(|l| l.contains("out of the group; this loop ends"))
            .unwrap_or_else(|| panic!("the woken loop did not end as out of its group:\n{log}"))
            .to_string();
        let open_ms: u64 = ended
            .split("transaction_open_ms=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ended.contains("transaction_open=true") && open_ms >= TXN_TIMEOUT_MS {
            hit = Some(open_ms);
            break;
        }
        // The next stall must find a loop that works again.
        let restored = Instant::now() + Duration::from_secs(30);
        while s.processor.log_text().matches("state restored").count() <= starts {
            assert!(
                Instant::now() < restored,
                "the new loop restored nothing within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let open_ms = hit.expect("no stall in 3 tries hit an open transaction");
    assert!(open_ms >= TXN_TIMEOUT_MS);

    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(
        statuses(&states, &ids(&orders))
            .iter()
            .all(|st| *st == Status::Completed),
        "not every order completed:\n{}",
        s.processor.log_text()
    );
    let cmds = committed_commands(&s.config, &s.codec).await;
    let unique: HashSet<&str> = cmds.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(unique.len(), cmds.len(), "a command was committed twice");
    assert_eq!(cmds.len(), orders.len() * 4);
    let log = s.processor.log_text();
    assert!(log.contains("starting over in-process"), "{log}");
    // The same process did it all, and it still stops cleanly.
    assert_eq!(
        s.processor.terminate(Duration::from_secs(30)),
        Some(0),
        "{log}"
    );
}

/// One order far larger than any record the saga writes may be: it must not stop the
/// partition (its status would exceed the broker's limit and fail every transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_order_fails_on_its_own_and_the_next_order_completes() {
    let s = setup(&[]).await;
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    let mut big = order(1);
    let line = big.items[0].clone();
    big.items = vec![line; 40_000];
    big.total_minor = 40_000 * big.items[0].unit_price_minor * i64::from(big.items[0].quantity);
    let normal = order(2);
    produce_orders(
        &s.producer,
        &s.config,
        &s.codec,
        &[big.clone(), normal.clone()],
    )
    .await;
    let all = ids(&[big.clone(), normal.clone()]);
    let states = wait_for_states(&s.config, &s.codec, &all, WAIT, terminal).await;
    let (_, big_state) = &states[&big.order_id];
    assert_eq!(big_state.status, Status::Failed);
    assert!(
        big_state
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("cart lines"),
        "{:?}",
        big_state.reason
    );
    assert_eq!(states[&normal.order_id].1.status, Status::Completed);
}

/// A rolling restart: both instances are stopped one right after the other under load,
/// so the second gets the first one's partitions back while it drains. Both must stop
/// cleanly, and a new instance finishes every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_stopped_one_after_the_other_under_load_both_exit_cleanly() {
    let mut s = setup(&[]).await;
    let mut second = spawn(&s.config, "p1", &["run", "--no-sink"]);
    let _downstream = Downstream::start(&s.config, s.codec.clone(), |_| Reply::success());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let orders: Vec<_> = (0..300).map(order).collect();
    let (early, late) = orders.split_at(150);
    produce_orders(&s.producer, &s.config, &s.codec, early).await;
    let producer = s.producer.clone();
    let config = s.config.clone();
    let codec = s.codec.clone();
    let late_orders = late.to_vec();
    let load = tokio::spawn(async move {
        for o in &late_orders {
            produce_orders(&producer, &config, &codec, std::slice::from_ref(o)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    s.processor.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.signal("TERM");
    let first_exit = s.processor.wait_exit(Duration::from_secs(60));
    let second_exit = second.wait_exit(Duration::from_secs(60));
    assert_eq!(first_exit, Some(0), "{}", s.processor.log_text());
    assert_eq!(second_exit, Some(0), "{}", second.log_text());
    load.await.expect("load");
    let _third = spawn(&s.config, "p2", &["run", "--no-sink"]);
    let states = wait_for_states(&s.config, &s.codec, &ids(&orders), WAIT, terminal).await;
    assert!(statuses(&states, &ids(&orders))
        .iter()
        .all(|st| *st == Status::Completed));
}

/// Forwards every connection accepted on `listener` to `target`.
async fn forward(listener: tokio::net::TcpListener, target: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// `run` hosts the processor and the sink; a sink that ends on its own must end the
/// process, non-zero and at once, though the processor is fine: a process that only
/// processes would leave the table behind without anyone noticing. Here PostgreSQL is
/// out of reach until the processor runs, and then refuses the sink's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_ends_on_its_own_ends_the_process_while_the_processor_runs() {
    const SECRET: &str = "sink-test-not-the-password";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let real = database_url();
    let postgres = real
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the database URL")
        .to_string();
    let refused = format!("postgres://order:{SECRET}@127.0.0.1:{port}/order");
    let prefix = random_prefix();
    let mut config = config(&prefix, &[]);
    config.database_url = refused;
    create_topics(&config).await;
    let mut p = spawn(&config, "p0", &["run"]);

    // Both halves must be alive before the sink can fail: the processor has its
    // partitions, and the sink waits for PostgreSQL.
    p.wait_for_log("the processor restored and the sink waiting", WAIT, |log| {
        log.contains("state restored") && log.contains("sink waiting for PostgreSQL")
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port chosen for PostgreSQL");
    tokio::spawn(forward(listener, postgres));

    let code = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the process must end non-zero once the sink has ended, got {code:?}:\n{log}"
    );
    assert!(
        log.contains("PostgreSQL refused the sink's connection"),
        "the process says why:\n{log}"
    );
    assert!(
        !log.contains(SECRET),
        "the password appears in the log:\n{log}"
    );
}
