//! The processor's state on the real stack: finished orders are remembered after their
//! state is evicted, the memory survives a restart through the private changelog, and a
//! partition whose restore is held up holds up no other.

mod common;

use std::time::{Duration, Instant};

use common::*;
use order_saga::saga::{Action, Status};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

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

/// Writes `n` tombstones to partition `partition` of the processor's `order-state`
/// changelog: a restore reads every one of them (they remove nothing), so they make that
/// partition's restore slow without holding any state.
fn bloat_changelog_partition(config: &order_saga::config::Config, partition: i32, n: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let topic = config.topics().name(order_saga::topics::ORDER_STATE);
    for i in 0..n {
        let key = format!("gone-{i}");
        let mut record = BaseRecord::<str, [u8]>::to(&topic)
            .partition(partition)
            .key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// When the processor logged the end of the restore that covered `partition` (its own
/// line, or the summary of a restore of several), and the `seconds` it took.
fn restore_of(log: &str, partition: i32) -> Option<(i64, f64)> {
    let line = log.lines().find(|l| {
        let restore = l.contains("partitions restored") || l.contains("state restored");
        let set = l
            .split("partitions={")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or("");
        restore && set.split(", ").any(|p| p == partition.to_string())
    })?;
    let at = utc_millis(line.split_whitespace().next()?)?;
    let seconds = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("seconds="))?
        .parse()
        .ok()?;
    Some((at, seconds))
}

/// Milliseconds since the epoch of a log timestamp such as `2026-12-01T09:37:07.566994Z`.
fn utc_millis(ts: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + hh) * 60 + mm) * 60 + ss) * 1000 + ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_restore_of_one_partition_holds_up_no_other() {
    let prefix = random_prefix();
    let config = config(&prefix, &[]);
    create_topics(&config).await;
    let codec = codec();
    let cfg = config.clone();
    tokio::task::spawn_blocking(move || bloat_changelog_partition(&cfg, 0, 1_000_000))
        .await
        .expect("producer thread");
    let orders: Vec<_> = (0..24).map(order).collect();
    let on_slow = |o: &&order_saga::saga::OrderRequest| {
        order_saga::kafka::partitioner::partition_for(o.order_id.as_bytes(), PARTITIONS) == 0
    };
    let (slow, free): (Vec<_>, Vec<_>) = orders.iter().partition(on_slow);
    assert!(
        !slow.is_empty() && !free.is_empty(),
        "the orders must fall on the slow partition and on others ({} and {})",
        slow.len(),
        free.len()
    );
    // Waiting before the processor starts, so they can be processed at once.
    produce_orders(&producer(&config), &config, &codec, &orders).await;

    let processor = spawn(&config, "p0", &["run", "--no-sink"]);
    let _downstream = Downstream::start(&config, codec.clone(), |_| Reply::success());
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    let states = wait_for_states(&config, &codec, &ids, WAIT, terminal).await;
    assert!(statuses(&states, &ids)
        .iter()
        .all(|s| *s == Status::Completed));

    let (restored_at, seconds) = restore_of(&processor.log_text(), 0)
        .expect("the processor logs the restore of partition 0");
    // Guard: the restore was slow enough for the case to be exercised.
    assert!(
        seconds >= 0.5,
        "the restore of partition 0 took only {seconds} s; the test needs a slower one"
    );
    let first_status = free
        .iter()
        .filter_map(|o| states[&o.order_id].1.status_times.first().map(|t| t.at))
        .min()
        .expect("status times of the free orders");
    assert!(
        first_status < restored_at,
        "orders of partitions 1 and 2 waited for partition 0's restore ({seconds:.2} s): \
         their first status at {first_status}, the restore ended at {restored_at}"
    );
}

/// How many of `ids` have a committed status.
async fn with_status(
    config: &order_saga::config::Config,
    codec: &order_saga::contracts::Codec,
    ids: &[String],
) -> usize {
    let states = committed_states(config, codec).await;
    ids.iter().filter(|id| states.contains_key(*id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_wait_in_kafka_while_memory_is_full_and_all_complete_once_orders_finish() {
    const LIMIT: usize = 10;
    let prefix = random_prefix();
    let config = config(&prefix, &["--max-orders-in-memory", "10"]);
    create_topics(&config).await;
    let codec = codec();
    let processor = spawn(&config, "p0", &["run", "--no-sink"]);
    // No downstream service answers yet: every order admitted stays in flight.
    let orders: Vec<_> = (0..25).map(order).collect();
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    produce_orders(&producer(&config), &config, &codec, &orders).await;

    let until = Instant::now() + WAIT;
    while with_status(&config, &codec, &ids).await < LIMIT {
        assert!(
            Instant::now() < until,
            "the first orders were never admitted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Time for more to be admitted if the limit did not hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        with_status(&config, &codec, &ids).await,
        LIMIT,
        "exactly the limit of orders is admitted while none can finish"
    );
    assert!(
        processor.log_text().contains("intake paused"),
        "the pause is logged"
    );

    let downstream = Downstream::start(&config, codec.clone(), |_| Reply::success());
    let states = wait_for_states(&config, &codec, &ids, WAIT, terminal).await;
    assert!(
        statuses(&states, &ids)
            .iter()
            .all(|s| *s == Status::Completed),
        "every order completes once orders in flight can finish"
    );
    assert!(
        processor.log_text().contains("intake resumed"),
        "the resumption is logged"
    );
    let commands = committed_commands(&config, &codec).await;
    let unique: std::collections::HashSet<_> = commands
        .iter()
        .map(|c| (c.order_id.clone(), c.action()))
        .collect();
    assert_eq!(commands.len(), 4 * ids.len(), "four commands an order");
    assert_eq!(unique.len(), commands.len(), "no command twice");
    drop(downstream);
}

/// Item: a restore that begins while a previous owner's transaction is still open on the
/// changelog (committed a moment later, its markers not yet written) must wait for it and
/// read what it committed. Reading only to the last stable offset of the moment would
/// miss it, and the new owner would decide again what the previous one had decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_waits_for_a_transaction_open_on_the_changelog_and_reads_what_it_committed() {
    let prefix = random_prefix();
    let config = config(&prefix, &[]);
    create_topics(&config).await;
    let topic = config.topics().name(order_saga::topics::ORDER_STATE);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", format!("{prefix}previous-owner"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    let write = |key: &str| {
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key(key)
                    .payload("state"),
            )
            .map_err(|(e, _)| e)
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    };
    producer.begin_transaction().expect("begin");
    write("committed-before");
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    // The previous owner's last transaction: on the broker, not yet committed.
    producer.begin_transaction().expect("begin");
    write("committed-during");

    let reader_config = config.clone();
    let reader_topic = topic.clone();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut keys = Vec::new();
        let read = order_saga::kafka::read::read_to_end(
            &reader_config,
            "restore-test",
            &reader_topic,
            [0],
            || Ok::<(), rdkafka::error::KafkaError>(()),
            |msg| {
                use rdkafka::Message;
                keys.push(String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned());
                Ok(())
            },
        );
        (read, keys, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !reader.is_finished(),
        "the read ended while a transaction was open on the partition"
    );
    producer
        .commit_transaction(Duration::from_secs(30))
        .expect("commit");
    let (read, keys, took) = reader.join().expect("reader thread");
    assert_eq!(read.expect("read"), 2);
    assert_eq!(keys, vec!["committed-before", "committed-during"]);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}
