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

/// Codes that mean the producer's epoch is no longer current: another producer with its
/// transactional id initialised, or the broker timed its transaction out and bumped it.
fn is_fence_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// Codes that mean the client is not allowed to do what it must, or cannot with this
/// broker: only an operator can change that.
fn is_refusal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::InvalidTransactionTimeout
    )
}

/// Codes that no retry can fix: a fence, a refusal, a producer id the broker forgot.
fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    is_fence_code(code) || is_refusal_code(code) || code == RDKafkaErrorCode::UnknownProducerId
}

/// The error code an error carries, if any.
fn code_of(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error {
        KafkaError::Transaction(e) => Some(e.code()),
        other => other.rdkafka_error_code(),
    }
}

/// Whether an error says that the producer has been fenced (see [`is_fence_code`]).
pub fn is_fence(error: &KafkaError) -> bool {
    code_of(error).is_some_and(is_fence_code)
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

/// Whether a fatal error is one only an operator can fix (credentials, ACLs, settings, a
/// broker too old for transactions), as opposed to one that a new producer gets past (a
/// transaction the broker timed out, a transactional state librdkafka gave up on). The
/// processor recovers in-process from the latter and exits on the former.
pub fn needs_operator(error: &KafkaError) -> bool {
    match error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Subscription(_)
        | KafkaError::Nul(_)
        | KafkaError::AdminOpCreation(_) => true,
        other => code_of(other).is_some_and(|c| {
            is_refusal_code(c)
                || matches!(
                    c,
                    RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::InvalidArgument
                        | RDKafkaErrorCode::SSL
                )
        }),
    }
}

/// Why a client cannot get in, in plain words: a failure that retrying cannot fix, as
/// opposed to a broker that is merely unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessFailure {
    /// Wrong user name or password, or a mechanism the broker does not offer.
    Authentication(String),
    /// The TLS handshake failed: untrusted or expired certificate, wrong host name.
    Tls(String),
    /// The client speaks another protocol than the listener (plaintext against TLS).
    Protocol(String),
    /// The principal lacks an ACL.
    Authorization(String),
}

impl std::fmt::Display for AccessFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessFailure::Authentication(r) => write!(f, "authentication failed: {r}"),
            AccessFailure::Tls(r) => write!(f, "TLS handshake failed: {r}"),
            AccessFailure::Protocol(r) => write!(
                f,
                "the listener does not speak the configured security protocol \
                 (check --kafka-security-protocol): {r}"
            ),
            AccessFailure::Authorization(r) => write!(f, "not authorized: {r}"),
        }
    }
}

/// The access failure an error (with librdkafka's reason text, from a client context's
/// error callback) reports, if it reports one.
pub fn access_failure(code: RDKafkaErrorCode, reason: &str) -> Option<AccessFailure> {
    match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some(AccessFailure::Authentication(reason.to_string()))
        }
        RDKafkaErrorCode::SSL => Some(AccessFailure::Tls(reason.to_string())),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            Some(AccessFailure::Authorization(format!("{code}: {reason}")))
        }
        // librdkafka's own hint when a plaintext client meets a TLS listener: the broker
        // hangs up during the first request.
        _ if reason.contains("incorrect security.protocol") => {
            Some(AccessFailure::Protocol(reason.to_string()))
        }
        // The broker's TLS alert when a listener requires a client certificate (mutual
        // TLS) and gets none, or one it does not trust.
        _ if reason.contains("alert bad certificate")
            || reason.contains("alert certificate required") =>
        {
            Some(AccessFailure::Tls(format!(
                "the broker refused our client certificate (mutual TLS: check \
                 --kafka-ssl-cert-file and --kafka-ssl-key-file): {reason}"
            )))
        }
        _ if reason.contains("SSL handshake failed") || reason.contains("certificate verify") => {
            Some(AccessFailure::Tls(reason.to_string()))
        }
        _ => None,
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
    fn authentication_and_authorization_failures_are_fatal_with_a_plain_cause() {
        assert_eq!(
            classify(&KafkaError::Global(C::Authentication)),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&KafkaError::MetadataFetch(C::TopicAuthorizationFailed)),
            ErrorClass::Fatal
        );
        let f = access_failure(C::Authentication, "SASL authentication error").unwrap();
        assert!(f.to_string().starts_with("authentication failed"), "{f}");
        let f = access_failure(
            C::BrokerTransportFailure,
            "Disconnected while requesting ApiVersion: might be caused by incorrect \
             security.protocol configuration (connecting to a SSL listener?)",
        )
        .unwrap();
        assert!(f.to_string().contains("--kafka-security-protocol"), "{f}");
        assert_eq!(
            access_failure(C::AllBrokersDown, "1/1 brokers are down"),
            None
        );
    }

    #[test]
    fn only_access_and_setting_errors_need_an_operator_among_fatal_ones() {
        assert!(needs_operator(&KafkaError::Global(
            C::TopicAuthorizationFailed
        )));
        assert!(needs_operator(&KafkaError::MessageProduction(
            C::TransactionalIdAuthorizationFailed
        )));
        assert!(needs_operator(&KafkaError::ClientCreation("bad".into())));
        assert!(needs_operator(&KafkaError::Global(
            C::SaslAuthenticationFailed
        )));
        // A new producer gets past these: the broker timed out the transaction, or
        // librdkafka lost track of its state.
        assert!(!needs_operator(&KafkaError::Global(
            C::InvalidProducerEpoch
        )));
        assert!(!needs_operator(&KafkaError::Global(
            C::InvalidTransactionalState
        )));
        assert!(!needs_operator(&KafkaError::Global(C::Fatal)));
        assert!(!needs_operator(&KafkaError::Flush(C::ProducerFenced)));
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
