//! Rebalance tracking for the processor's consumer.
//!
//! librdkafka runs the rebalance callbacks inside `poll`. All they do here is pause newly
//! assigned partitions, so that no record of a partition is processed before its state is
//! restored, and queue the event for the transaction loop, which acts on it when `poll`
//! returns.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tracing::{info, warn};

/// A change of the consumer's assignment, by partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// Partitions taken away. `lost`: the member was already out of the group (its
    /// session or poll interval ran out), so another member may have owned and processed
    /// them meanwhile.
    Revoked {
        parts: BTreeSet<i32>,
        lost: bool,
    },
    Assigned(BTreeSet<i32>),
    /// The rebalance failed; the group will try again.
    Failed(String),
}

#[derive(Default)]
pub struct RebalanceTracker {
    events: Mutex<Vec<RebalanceEvent>>,
}

impl RebalanceTracker {
    /// Events since the last call, oldest first.
    pub fn take(&self) -> Vec<RebalanceEvent> {
        match self.events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Whether events are waiting: a transaction must not commit across them.
    pub fn pending(&self) -> bool {
        match self.events.lock() {
            Ok(e) => !e.is_empty(),
            Err(poisoned) => !poisoned.into_inner().is_empty(),
        }
    }

    fn push(&self, event: RebalanceEvent) {
        match self.events.lock() {
            Ok(mut e) => e.push(event),
            Err(poisoned) => poisoned.into_inner().push(event),
        }
    }
}

impl ClientContext for RebalanceTracker {
    /// The loop asks for end-of-partition events (`inputs`); they are not logged.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::clients::log_client_error(error, reason);
    }
}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let lost = consumer.assignment_lost();
            if lost {
                warn!(partitions = ?parts, "partitions lost: this member was out of the group");
            } else {
                info!(partitions = ?parts, "partitions revoked");
            }
            self.push(RebalanceEvent::Revoked { parts, lost });
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if let Err(e) = consumer.pause(tpl) {
                    // The loop restores and resumes regardless; an unpaused partition is
                    // caught there because its store is not yet marked ready.
                    warn!(error = %e, "could not pause newly assigned partitions");
                }
                info!(partitions = ?parts, "partitions assigned");
                self.push(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance failed");
                self.push(RebalanceEvent::Failed(e.to_string()));
            }
        }
    }
}
