//! The processor's inputs, read in event-time order within each partition group.
//!
//! A *partition group* is one partition number of the six co-partitioned input topics:
//! every event of an order lands in the same group. Reading the topics independently lets
//! a backlog of cancels be read before the creates they belong to, so, like a Kafka
//! Streams task, the processor picks within a group the buffered record with the smallest
//! timestamp (ties in the fixed input order: create, cancel, then results in step order).
//!
//! Each input partition gets its own librdkafka queue (`split_partition_queue`), so the
//! loop can look at the head of every partition of a group, and so that the
//! end-of-partition event of a queue says which topic reached its end. A partition whose
//! buffer is empty and which has not reported its end since its last record may still
//! hold an earlier event: the group waits for it up to `--max-task-idle-ms`, then goes on
//! without it, and counts that. An event that still arrives "too early" is not lost: the
//! saga core holds it until its create comes (`saga::early`).
//!
//! This module owns the partition queues and buffers and decides which record is next.
//! It does not decode, decide or produce anything, and it never commits offsets: the
//! records it hands out are consumed only once the transaction that decided them commits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};

use super::rebalance::RebalanceTracker;

type Queue = PartitionQueue<RebalanceTracker>;

/// Wakes the loop when any partition queue goes from empty to non-empty.
#[derive(Default)]
pub struct Wake {
    ready: Mutex<bool>,
    signal: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        let mut ready = match self.ready.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *ready = true;
        self.signal.notify_one();
    }

    /// Waits until notified or `timeout` passes, and clears the flag.
    pub fn wait(&self, timeout: Duration) {
        let ready = match self.ready.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut ready = match self.signal.wait_timeout_while(ready, timeout, |r| !*r) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        *ready = false;
    }
}

/// One input partition: its queue, what was read from it but not yet handed out, and
/// whether it has reported its end since its last record.
struct Lane {
    topic: String,
    queue: Option<Queue>,
    buffer: VecDeque<OwnedMessage>,
    caught_up: bool,
}

impl Lane {
    fn head_key(&self, rank: usize) -> Option<(i64, usize)> {
        self.buffer
            .front()
            .map(|m| (m.timestamp().to_millis().unwrap_or(0), rank))
    }
}

/// The lanes of one partition number, one per input topic, in rank order.
struct Group {
    lanes: Vec<Lane>,
    /// Since when the group has had a record to hand out but waited for an empty lane.
    waiting_since: Option<Instant>,
}

/// Rank of the create lane: every input topic list starts with creates, then cancels.
pub const CREATE_RANK: usize = 0;
/// Lanes of rank below this (creates and cancels) are the intake, held back while memory
/// is full: a cancel waits with the creates so that it is not read before its create.
const INTAKE_RANKS: usize = 2;

/// What [`Inputs::next`] found.
pub enum Next {
    /// The next record of some group, and its input rank (0 = create).
    Record(OwnedMessage, usize),
    /// No group can go on before this instant (a lane may still deliver an earlier
    /// record); nothing else is ready.
    WaitUntil(Instant),
    /// Nothing is buffered.
    Idle,
}

/// A record handed out that the consumer is past: where to seek back to on an abort.
pub type Rewind = BTreeMap<(String, i32), i64>;

pub struct Inputs {
    consumer: Arc<BaseConsumer<RebalanceTracker>>,
    /// Deployed input topic names, in rank order.
    topics: Vec<String>,
    groups: BTreeMap<i32, Group>,
    wake: Arc<Wake>,
    idle: Duration,
    /// Groups served round-robin, so one busy partition does not starve the others.
    cursor: i32,
    /// Records read from the main queue for partitions not (yet) split: sought back to.
    strays: Rewind,
    /// How often a group went on without a lane that might have had an earlier record.
    pub idle_timeouts: u64,
    /// Creates and cancels are held back (their lanes paused and passed over).
    intake_held: bool,
}

impl Inputs {
    pub fn new(
        consumer: Arc<BaseConsumer<RebalanceTracker>>,
        topics: Vec<String>,
        idle: Duration,
    ) -> Self {
        Inputs {
            consumer,
            topics,
            groups: BTreeMap::new(),
            wake: Arc::new(Wake::default()),
            idle,
            cursor: 0,
            strays: Rewind::new(),
            idle_timeouts: 0,
            intake_held: false,
        }
    }

    pub fn wake(&self) -> &Wake {
        &self.wake
    }

    /// A handle on the loop's wake-up, for work done on other threads.
    pub fn waker(&self) -> Arc<Wake> {
        self.wake.clone()
    }

    fn rank(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// Starts reading partition number `partition` of every input topic through queues
    /// of its own. Call after its state is restored and before it is resumed.
    pub fn open(&mut self, partition: i32) -> Result<(), KafkaError> {
        let mut lanes = Vec::with_capacity(self.topics.len());
        for topic in &self.topics {
            let mut queue = self.consumer.split_partition_queue(topic, partition);
            if let Some(q) = queue.as_mut() {
                let wake = self.wake.clone();
                q.set_nonempty_callback(move || wake.notify());
            }
            if let Some(offset) = self.strays.remove(&(topic.clone(), partition)) {
                self.consumer.seek(
                    topic,
                    partition,
                    rdkafka::Offset::Offset(offset),
                    Duration::from_secs(10),
                )?;
            }
            lanes.push(Lane {
                topic: topic.clone(),
                queue,
                buffer: VecDeque::new(),
                caught_up: false,
            });
        }
        self.groups.insert(
            partition,
            Group {
                lanes,
                waiting_since: None,
            },
        );
        Ok(())
    }

    /// Holds back (or lets in again) creates and cancels: their lanes are passed over by
    /// [`Inputs::next`] and their partitions paused in the consumer, so nothing more of
    /// them is fetched; results still flow, so orders in flight can finish.
    pub fn hold_intake(&mut self, held: bool) -> Result<(), KafkaError> {
        self.intake_held = held;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in self.groups.keys() {
            for topic in &self.topics[..INTAKE_RANKS.min(self.topics.len())] {
                tpl.add_partition(topic, *p);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        if held {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        }
    }

    pub fn intake_held(&self) -> bool {
        self.intake_held
    }

    /// Whether `topic` is one of the intake topics (creates, cancels).
    pub fn is_intake(&self, topic: &str) -> bool {
        self.rank(topic).is_some_and(|r| r < INTAKE_RANKS)
    }

    /// Forgets every group (after a rebalance: the queues are no longer valid and the
    /// consumer restarts each assigned partition from its committed offset).
    pub fn close_all(&mut self) {
        self.groups.clear();
        self.strays.clear();
    }

    pub fn is_open(&self, partition: i32) -> bool {
        self.groups.contains_key(&partition)
    }

    /// Takes a record that arrived on the main queue (a partition not split yet): it is
    /// buffered if its group is open, else the consumer is sought back to it when the
    /// group opens, so it is not skipped.
    pub fn stray(&mut self, msg: OwnedMessage) {
        let Some(rank) = self.rank(msg.topic()) else {
            return;
        };
        match self.groups.get_mut(&msg.partition()) {
            Some(g) => g.lanes[rank].buffer.push_back(msg),
            None => {
                let key = (msg.topic().to_string(), msg.partition());
                let offset = msg.offset();
                self.strays
                    .entry(key)
                    .and_modify(|o| *o = (*o).min(offset))
                    .or_insert(offset);
            }
        }
    }

    /// Polls every empty lane once, without blocking. Errors other than the end of a
    /// partition are returned for the caller to classify.
    pub fn fill(&mut self) -> Result<(), KafkaError> {
        for group in self.groups.values_mut() {
            for lane in &mut group.lanes {
                if lane.buffer.is_empty() {
                    poll_lane(lane)?;
                }
            }
        }
        Ok(())
    }

    /// The next record in event-time order of the next group that can go on.
    pub fn next(&mut self, now: Instant) -> Result<Next, KafkaError> {
        let mut wait: Option<Instant> = None;
        let skip = if self.intake_held { INTAKE_RANKS } else { 0 };
        let parts: Vec<i32> = self
            .groups
            .range(self.cursor..)
            .chain(self.groups.range(..self.cursor))
            .map(|(p, _)| *p)
            .collect();
        for p in parts {
            let Some(group) = self.groups.get_mut(&p) else {
                continue;
            };
            let mut best: Option<((i64, usize), usize)> = None;
            let mut blocked = false;
            for (rank, lane) in group.lanes.iter().enumerate().skip(skip) {
                match lane.head_key(rank) {
                    Some(key) => {
                        if best.is_none_or(|(b, _)| key < b) {
                            best = Some((key, rank));
                        }
                    }
                    None => blocked |= !lane.caught_up && lane.queue.is_some(),
                }
            }
            let Some((_, rank)) = best else {
                group.waiting_since = None;
                continue;
            };
            if blocked {
                let since = *group.waiting_since.get_or_insert(now);
                let until = since + self.idle;
                if now < until {
                    wait = Some(wait.map_or(until, |w| w.min(until)));
                    continue;
                }
                self.idle_timeouts += 1;
                tracing::debug!(
                    partition = p,
                    waited_ms = self.idle.as_millis() as u64,
                    "input partition still silent; going on without it"
                );
            }
            group.waiting_since = None;
            let lane = &mut group.lanes[rank];
            let Some(msg) = lane.buffer.pop_front() else {
                continue;
            };
            if lane.buffer.is_empty() {
                poll_lane(lane)?;
            }
            self.cursor = p + 1;
            return Ok(Next::Record(msg, rank));
        }
        Ok(match wait {
            Some(w) => Next::WaitUntil(w),
            None => Next::Idle,
        })
    }

    /// Empties every buffer and returns, per input partition, the offset of the first
    /// record buffered: an abort seeks the consumer back there.
    pub fn drain_buffers(&mut self) -> Rewind {
        let mut rewind = Rewind::new();
        for (p, group) in &mut self.groups {
            group.waiting_since = None;
            for lane in &mut group.lanes {
                if let Some(first) = lane.buffer.front() {
                    rewind.insert((lane.topic.clone(), *p), first.offset());
                }
                lane.buffer.clear();
            }
        }
        rewind
    }

    /// Notes that the consumer was sought back on these partitions: they have records to
    /// read again and will report their end anew. Only they: a lane that was caught up and
    /// not sought reports no end again until a new record comes, so forgetting its end
    /// would make its group wait `--max-task-idle-ms` for every record from then on.
    pub fn rewound(&mut self, rewind: &Rewind) {
        for (topic, partition) in rewind.keys() {
            let Some(group) = self.groups.get_mut(partition) else {
                continue;
            };
            if let Some(lane) = group.lanes.iter_mut().find(|l| &l.topic == topic) {
                lane.caught_up = false;
            }
        }
    }
}

fn poll_lane(lane: &mut Lane) -> Result<(), KafkaError> {
    let Some(queue) = lane.queue.as_ref() else {
        return Ok(());
    };
    // An end-of-partition event often sits right before the next record (every record
    // of a trickle arrives alone at the end): look past it, or the lane would yield one
    // record per loop step.
    loop {
        match queue.poll(Duration::ZERO) {
            None => return Ok(()),
            Some(Ok(msg)) => {
                lane.caught_up = false;
                lane.buffer.push_back(msg.detach());
                return Ok(());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => lane.caught_up = true,
            Some(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::message::Timestamp;

    fn inputs() -> Inputs {
        // Never connects: nothing here talks to a broker.
        let consumer: BaseConsumer<RebalanceTracker> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "inputs-test")
            .create_with_context(RebalanceTracker::default())
            .expect("consumer");
        Inputs::new(
            Arc::new(consumer),
            vec!["create".into(), "result".into()],
            Duration::from_millis(300),
        )
    }

    fn record(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            topic.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_record_polled_with_a_rebalance_for_a_partition_not_open_is_kept_to_be_read_again() {
        let mut inputs = inputs();
        // The poll that reported the rebalance also returned records of partition 2,
        // which is not open yet (its state is being restored).
        inputs.stray(record("result", 2, 41));
        inputs.stray(record("result", 2, 40));
        inputs.stray(record("create", 2, 7));
        // Not an input topic: nothing to keep.
        inputs.stray(record("elsewhere", 2, 1));
        // The partition is read again from the first of them once it opens.
        assert_eq!(
            inputs.strays,
            Rewind::from([(("create".into(), 2), 7), (("result".into(), 2), 40)])
        );
        // A later rebalance starts every assigned partition from its committed offset,
        // which is at or before any record not committed: nothing is left to seek to.
        inputs.close_all();
        assert!(inputs.strays.is_empty());
    }
}
