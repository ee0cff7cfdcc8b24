//! The sink consumer's context: what happens inside librdkafka's rebalance callbacks,
//! and the log-end offsets its statistics report (for the lag).
//!
//! The callbacks run inside `recv()`, on the sink's own task, and do as little as
//! possible: a newly assigned partition is paused at once, so not one record of it is
//! handed out before the sink has read its stored offset from PostgreSQL and sought
//! there, and the change is queued for the loop, which acts on it when `recv()` returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

/// A change of the sink's assignment, by partition number of its one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Assigned(BTreeSet<i32>),
    Revoked(BTreeSet<i32>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The consumer context of the sink.
pub struct SinkContext {
    topic: String,
    changes: Mutex<Vec<Change>>,
    /// Wakes the loop, which otherwise would not see a change until its next timer:
    /// `recv()` consumes rebalance events without returning.
    changed: tokio::sync::Notify,
    /// Last stable offset per partition, from the statistics: the end a read_committed
    /// consumer can reach.
    log_end: Mutex<HashMap<i32, i64>>,
}

impl SinkContext {
    pub fn new(topic: &str) -> Self {
        SinkContext {
            topic: topic.to_owned(),
            changes: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            log_end: Mutex::default(),
        }
    }

    /// Changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *lock(&self.changes))
    }

    /// Completes once a change is queued (at once if one was queued since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn push(&self, change: Change) {
        lock(&self.changes).push(change);
        self.changed.notify_one();
    }

    /// The last stable offset of `partition`, if statistics have reported it.
    pub fn log_end(&self, partition: i32) -> Option<i64> {
        lock(&self.log_end).get(&partition).copied()
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> BTreeSet<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut log_end = lock(&self.log_end);
        for (p, stats) in &topic.partitions {
            // -1 is librdkafka's "not known yet"; the internal partition is -1 too.
            if *p >= 0 && stats.ls_offset >= 0 {
                log_end.insert(*p, stats.ls_offset);
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions(tpl);
            info!(partitions = ?parts, "sink partitions revoked");
            self.push(Change::Revoked(parts));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.partitions(tpl);
                if let Err(e) = consumer.pause(tpl) {
                    // The loop pauses every partition it has not positioned yet again, so
                    // this only risks a few records read and discarded.
                    warn!(error = %e, "could not pause newly assigned partitions");
                }
                info!(partitions = ?parts, "sink partitions assigned");
                self.push(Change::Assigned(parts));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "sink rebalance failed"),
        }
    }
}
