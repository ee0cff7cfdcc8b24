//! The open transaction: begin, commit, abort and rewind.
//!
//! Follows librdkafka's transactional-producer guide. A call that fails retriably is
//! called again (for `commit_transaction` that is how its outcome is learned, not a
//! redo), within the transaction timeout in all; an error that requires an abort aborts
//! and rewinds; a fatal one ends the producer. A commit whose outcome is still unknown
//! when the transaction timeout has passed ends the process rather than guess: the broker
//! has by then completed or aborted it, and a restart resumes from what committed.
//!
//! This module owns the transaction's bookkeeping (offsets consumed, records produced)
//! and the consumer's position after an abort. It decides nothing about orders.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, warn};

use super::metrics::Metrics;
use super::{now_millis, Loop, ProcessorError, StepError};
use crate::kafka::flush::flush;
use crate::kafka::{classify, ErrorClass};
use crate::retry::Backoff;

/// What one transaction consumed from one input partition.
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    /// Offset of the first record decided: where an abort rewinds to.
    pub first: i64,
    /// Offset after the last record decided: what the commit stores.
    pub next: i64,
}

/// The state of the open transaction.
#[derive(Default)]
pub struct Txn {
    pub open: bool,
    /// When it was opened: a fence of a transaction open past the transaction timeout is
    /// the broker's time-out, not another process.
    pub opened: Option<Instant>,
    /// One entry per input partition read, at most one per lane: a short list searched
    /// in place, so noting a record allocates nothing once its partition is listed.
    pub consumed: Vec<Consumed>,
    pub records_out: u64,
}

impl Txn {
    /// Notes that the record at `offset` was decided in this transaction.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .consumed
            .iter_mut()
            .find(|c| c.partition == partition && c.topic == topic)
        {
            Some(c) => c.next = offset + 1,
            None => self.consumed.push(Consumed {
                topic: topic.to_string(),
                partition,
                first: offset,
                next: offset + 1,
            }),
        }
    }
}

impl Loop {
    /// Opens a transaction if none is open.
    pub(super) fn begin(&mut self) -> Result<(), StepError> {
        if !self.txn.open {
            self.producer.begin_transaction()?;
            self.txn.open = true;
            self.txn.opened = Some(Instant::now());
        }
        Ok(())
    }

    /// How long transaction calls may keep failing retriably in all.
    fn budget(&self) -> Duration {
        Duration::from_millis(self.ctx.config.transaction_timeout_ms)
    }

    /// Commits the open transaction with the consumed offsets.
    pub(super) fn commit(&mut self) -> Result<(), StepError> {
        if !self.txn.open {
            return Ok(());
        }
        let started = Instant::now();
        let budget = self.budget();
        let mut offsets = TopicPartitionList::new();
        for c in &self.txn.consumed {
            offsets.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.next))?;
        }
        // A member that dropped out of the group (its session ran out while it was stopped)
        // has group metadata without a generation, which the broker does not check: its
        // offsets would commit although another member owns the partitions now. So no
        // transaction commits across a lost assignment (the process exits) or a rebalance
        // (it is aborted, and the records are read again by whoever owns them).
        self.check_frozen()?;
        if self.consumer.assignment_lost() {
            return Err(StepError::OutOfGroup);
        }
        if self.consumer.context().pending() {
            return Err(StepError::abort(
                "the assignment changed under the open transaction",
            ));
        }
        if offsets.count() > 0 {
            let Some(group) = self.consumer.group_metadata() else {
                return Err(StepError::abort("consumer has no group metadata"));
            };
            retrying(budget, started, |left| {
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, left)
            })
            .map_err(|e| match e {
                // Offsets not sent: the transaction is still open and can be aborted.
                StepError::Indeterminate { reason, .. } => StepError::abort(reason),
                other => other,
            })?;
        }
        // Flushed here first: see `kafka::flush` for why the commit's own flush is slow.
        retrying(budget, started, |left| {
            flush(&self.producer, left)?;
            self.producer.commit_transaction(left)
        })?;
        self.ctx.telemetry.on_commit(started.elapsed());
        self.last_commit = started.elapsed();
        let now = now_millis();
        for store in self.stores.values_mut() {
            store.commit(now);
        }
        Metrics::add(&self.ctx.metrics.transactions_committed, 1);
        Metrics::add(&self.ctx.metrics.records_out, self.txn.records_out);
        self.txn = Txn::default();
        Ok(())
    }

    /// Aborts the open transaction and forgets its state changes, leaving the consumer
    /// where it is (for a rebalance, after which the consumer starts over anyway).
    pub(super) fn abort_only(&mut self) -> Result<(), StepError> {
        // An abort after the broker timed the transaction out bumps the producer epoch,
        // which would fence a replacement started while this process stood still.
        self.check_frozen()?;
        if self.txn.open {
            let started = Instant::now();
            retrying(self.budget(), started, |left| {
                self.producer.abort_transaction(left)
            })?;
            Metrics::add(&self.ctx.metrics.transactions_aborted, 1);
            self.ctx.telemetry.on_abort();
        }
        for store in self.stores.values_mut() {
            store.rollback();
        }
        self.txn = Txn::default();
        Ok(())
    }

    /// Aborts the open transaction, forgets its state changes, and seeks every input
    /// partition back to the first record not committed: those decided in the aborted
    /// transaction and those buffered but not yet decided.
    pub(super) fn abort_and_rewind(&mut self) -> Result<(), ProcessorError> {
        let consumed = std::mem::take(&mut self.txn.consumed);
        match self.abort_only() {
            Ok(()) => {}
            Err(StepError::Fatal(e)) => return Err(self.fatal(e)),
            Err(StepError::Indeterminate { waited_ms, reason }) => {
                return Err(ProcessorError::Indeterminate { waited_ms, reason })
            }
            Err(StepError::OutOfGroup) => return Err(ProcessorError::OutOfGroup),
            Err(e @ (StepError::Abort { .. } | StepError::OutputTooLarge(_))) => {
                return Err(ProcessorError::Indeterminate {
                    waited_ms: self.ctx.config.transaction_timeout_ms,
                    reason: e.chain(),
                })
            }
        }
        let mut rewind = self.inputs.drain_buffers();
        for c in consumed {
            rewind
                .entry((c.topic, c.partition))
                .and_modify(|o| *o = (*o).min(c.first))
                .or_insert(c.first);
        }
        self.inputs.rewound(&rewind);
        let assignment = self.consumer.assignment()?;
        for ((topic, partition), first) in rewind {
            if assignment.find_partition(&topic, partition).is_none() {
                continue;
            }
            if let Err(e) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(first),
                Duration::from_secs(10),
            ) {
                // A seek that fails leaves the consumer past records whose output was
                // just aborted: they would be skipped. Stop rather than risk that.
                error!(topic = %topic, partition, error = %e, "rewind failed");
                return Err(ProcessorError::Kafka(e));
            }
        }
        Ok(())
    }

    /// The end of the running state: commit what was decided; if that fails, abort, so
    /// the next owner of the partitions does the work again. Never fails: a drain that
    /// meets a rebalance or a fenced producer still ends in a clean stop.
    pub(super) fn drain(&mut self) {
        if let Err(e) = self.commit() {
            let why = match &e {
                StepError::Abort { .. } => e.chain(),
                StepError::OutputTooLarge(r) => r.clone(),
                StepError::Fatal(k) => k.to_string(),
                StepError::Indeterminate { reason, .. } => reason.clone(),
                StepError::OutOfGroup => "this instance was out of its group".into(),
            };
            warn!(reason = %why, "final commit failed; aborting it, the input will be processed again by its next owner");
            if self.abort_only().is_err() {
                warn!("abort at shutdown failed; the broker aborts the transaction at its timeout");
            }
        }
        self.consumer.unsubscribe();
    }

    /// The processor error for a fatal Kafka error of the open transaction: see [`fatal`];
    /// a fence of a transaction open past the transaction timeout is the broker's
    /// time-out.
    pub(super) fn fatal(&self, e: KafkaError) -> ProcessorError {
        let open = self.txn.opened.map(|t| t.elapsed());
        match open {
            Some(open) if classify::is_fence(&e) && open >= self.budget() => {
                ProcessorError::TimedOut {
                    open_ms: open.as_millis() as u64,
                    source: e,
                }
            }
            _ => fatal(&self.ctx.config.transactional_id(), e),
        }
    }
}

/// Calls a transaction call while its error is classified retriable, each time with what
/// is left of `budget` (counted from `started`) as its own timeout.
fn retrying(
    budget: Duration,
    started: Instant,
    mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
) -> Result<(), StepError> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        let left = budget.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(StepError::Indeterminate {
                waited_ms: started.elapsed().as_millis() as u64,
                reason: "transaction call kept failing retriably".into(),
            });
        }
        match call(left.min(Duration::from_secs(30))) {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == ErrorClass::Retry => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "transaction call failed; retrying");
                std::thread::sleep(delay.min(budget.saturating_sub(started.elapsed())));
            }
            Err(e) => return Err(StepError::from(e)),
        }
    }
}

/// The processor error for a fatal Kafka error: fenced by another process, or anything
/// else.
pub(super) fn fatal(transactional_id: &str, e: KafkaError) -> ProcessorError {
    if classify::is_fence(&e) {
        ProcessorError::Fenced {
            transactional_id: transactional_id.to_string(),
            source: e,
        }
    } else {
        ProcessorError::Kafka(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn a_call_that_keeps_failing_retriably_gives_up_within_its_budget_as_indeterminate() {
        let budget = Duration::from_millis(300);
        let started = Instant::now();
        let mut calls = 0;
        let outcome = retrying(budget, started, |left| {
            calls += 1;
            assert!(left <= budget, "a call was given more than what is left");
            Err(KafkaError::Flush(C::OperationTimedOut))
        });
        assert!(
            matches!(outcome, Err(StepError::Indeterminate { .. })),
            "{outcome:?}"
        );
        assert!(calls > 1, "a retriable failure is called again");
        // Bounded by the budget, plus at most one backoff's rounding.
        assert!(started.elapsed() < budget + Duration::from_millis(200));
    }

    #[test]
    fn a_call_that_fails_fatally_is_not_called_again() {
        let mut calls = 0;
        let outcome = retrying(Duration::from_secs(5), Instant::now(), |_| {
            calls += 1;
            Err(KafkaError::Flush(C::ProducerFenced))
        });
        assert!(matches!(outcome, Err(StepError::Fatal(_))), "{outcome:?}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_fence_is_told_from_other_fatal_errors() {
        assert!(matches!(
            fatal("order-0", KafkaError::Flush(C::ProducerFenced)),
            ProcessorError::Fenced { .. }
        ));
        assert!(matches!(
            fatal("order-0", KafkaError::Global(C::InvalidTransactionalState)),
            ProcessorError::Kafka(_)
        ));
    }
}
