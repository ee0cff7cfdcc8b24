//! The one place that decides what a Kafka error means for the transaction loop.
//!
//! It follows librdkafka's transactional-producer guide: an error flagged retriable is
//! retried, one flagged "requires abort" aborts the transaction and rewinds, one flagged
//! fatal (for instance a fenced producer) ends the producer.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same call again, after a short pause. Nothing has been lost.
    Retry,
    /// Abort the open transaction, rewind the consumer to the committed offsets and
    /// drop the state changes of the transaction; then carry on.
    Abort,
    /// The producer cannot be used any more (fenced, misconfigured, or in an unknown
    /// transactional state): stop and let the process exit or recreate the producer.
    Fatal,
}

/// Codes that mean another producer with our transactional id has taken over, or that
/// the client is not allowed to do what it must: nothing can fix that by retrying.
fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::InvalidTransactionTimeout
            | RDKafkaErrorCode::UnknownProducerId
    )
}

/// Codes that go away on their own: time-outs, back-pressure, leadership moves.
fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::QueueFull
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::ConcurrentTransactions
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::Retry
    )
}

/// Classifies any error returned by the producer or consumer in the transaction loop.
pub fn classify(error: &KafkaError) -> ErrorClass {
    match error {
        // Transaction API errors carry librdkafka's own verdict; trust it in this order,
        // since a fatal error may also be flagged abortable.
        KafkaError::Transaction(e) => {
            if e.is_fatal() || is_fatal_code(e.code()) {
                ErrorClass::Fatal
            } else if e.txn_requires_abort() {
                ErrorClass::Abort
            } else if e.is_retriable() || is_transient_code(e.code()) {
                ErrorClass::Retry
            } else {
                // Not retriable and not flagged: the transaction state is unknown to us,
                // and librdkafka has no KIP-890 to resolve it. Recreate rather than guess.
                ErrorClass::Fatal
            }
        }
        // commit_transaction flushes first; a flush time-out surfaces here, not as a
        // transaction error, and the commit may simply be called again.
        KafkaError::Flush(code) => {
            if is_fatal_code(*code) {
                ErrorClass::Fatal
            } else {
                ErrorClass::Retry
            }
        }
        KafkaError::MessageProduction(code) => {
            if is_fatal_code(*code) {
                ErrorClass::Fatal
            } else if *code == RDKafkaErrorCode::QueueFull {
                ErrorClass::Retry
            } else {
                // A record that failed to be produced poisons the transaction.
                ErrorClass::Abort
            }
        }
        KafkaError::Global(code)
        | KafkaError::MessageConsumption(code)
        | KafkaError::ConsumerCommit(code)
        | KafkaError::OffsetFetch(code)
        | KafkaError::MetadataFetch(code)
        | KafkaError::Rebalance(code)
        | KafkaError::SetPartitionOffset(code)
        | KafkaError::StoreOffset(code) => {
            if is_fatal_code(*code) {
                ErrorClass::Fatal
            } else if is_transient_code(*code) {
                ErrorClass::Retry
            } else {
                ErrorClass::Abort
            }
        }
        KafkaError::MessageConsumptionFatal(_)
        | KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Subscription(_)
        | KafkaError::Nul(_) => ErrorClass::Fatal,
        KafkaError::NoMessageReceived | KafkaError::PartitionEOF(_) => ErrorClass::Retry,
        KafkaError::Seek(_) | KafkaError::PauseResume(_) => ErrorClass::Abort,
        KafkaError::AdminOp(code) => {
            if is_transient_code(*code) {
                ErrorClass::Retry
            } else {
                ErrorClass::Fatal
            }
        }
        KafkaError::AdminOpCreation(_)
        | KafkaError::Canceled
        | KafkaError::ConsumerQueueClose(_)
        | KafkaError::GroupListFetch(_)
        | KafkaError::MockCluster(_) => ErrorClass::Fatal,
        // KafkaError is non-exhaustive; an error kind added by a newer rdkafka is not
        // understood, so stop rather than risk a duplicate.
        #[allow(unreachable_patterns)]
        _ => ErrorClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    #[test]
    fn a_flush_timeout_inside_commit_is_retried() {
        assert_eq!(
            classify(&KafkaError::Flush(C::OperationTimedOut)),
            ErrorClass::Retry
        );
    }

    #[test]
    fn a_fenced_producer_is_fatal_wherever_it_surfaces() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::ProducerFenced)),
            ErrorClass::Fatal
        );
        assert_eq!(classify(&KafkaError::Flush(C::Fenced)), ErrorClass::Fatal);
        assert_eq!(
            classify(&KafkaError::Global(C::InvalidProducerEpoch)),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn a_full_local_queue_is_retried() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::QueueFull)),
            ErrorClass::Retry
        );
    }

    #[test]
    fn a_record_that_could_not_be_produced_aborts_the_transaction() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::MessageSizeTooLarge)),
            ErrorClass::Abort
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::UnknownTopicOrPartition)),
            ErrorClass::Abort
        );
    }

    #[test]
    fn broker_outages_while_consuming_are_retried() {
        assert_eq!(
            classify(&KafkaError::Global(C::AllBrokersDown)),
            ErrorClass::Retry
        );
        assert_eq!(
            classify(&KafkaError::MessageConsumption(C::BrokerTransportFailure)),
            ErrorClass::Retry
        );
    }

    #[test]
    fn a_stale_group_generation_on_offset_commit_aborts() {
        assert_eq!(
            classify(&KafkaError::ConsumerCommit(C::IllegalGeneration)),
            ErrorClass::Abort
        );
    }

    #[test]
    fn configuration_errors_are_fatal() {
        assert_eq!(
            classify(&KafkaError::ClientCreation("bad".into())),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&KafkaError::MessageConsumptionFatal(C::Fail)),
            ErrorClass::Fatal
        );
    }
}
