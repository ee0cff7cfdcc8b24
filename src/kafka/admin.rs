//! Topic administration: creating the saga's topics and checking co-partitioning.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::kafka::classify::{access_failure, AccessFailure};
use crate::topics;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("kafka admin: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist")]
    Missing(String),
    #[error(
        "input topics are not co-partitioned: {0}; every input topic needs the same partition count"
    )]
    NotCoPartitioned(String),
    /// Retrying cannot help: the credentials, certificates, protocol or ACLs are wrong.
    #[error("kafka at {bootstrap} (security protocol {protocol}{user}): {failure}")]
    Access {
        bootstrap: String,
        protocol: String,
        user: String,
        failure: AccessFailure,
    },
}

impl AdminError {
    fn access(config: &Config, failure: AccessFailure) -> Self {
        let user = &config.security.kafka.kafka_sasl_username;
        AdminError::Access {
            bootstrap: config.bootstrap.clone(),
            protocol: config.security.kafka.kafka_security_protocol.clone(),
            user: if user.is_empty() {
                String::new()
            } else {
                format!(", user {user}")
            },
            failure,
        }
    }
}

/// The access failure (authentication, TLS, ACL) `e` reports, as an error naming the
/// cluster and principal; `None` for every other error.
pub fn access_error(config: &Config, e: &KafkaError) -> Option<AdminError> {
    let code = match e {
        KafkaError::Transaction(t) => t.code(),
        other => other.rdkafka_error_code()?,
    };
    let failure = match code {
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            AccessFailure::Authorization(format!(
                "no Write permission on transactional id {} ({code})",
                config.transactional_id()
            ))
        }
        RDKafkaErrorCode::GroupAuthorizationFailed => AccessFailure::Authorization(format!(
            "no Read permission on group {} ({code})",
            config.application_id
        )),
        RDKafkaErrorCode::ClusterAuthorizationFailed => AccessFailure::Authorization(format!(
            "no IdempotentWrite permission on the cluster ({code})"
        )),
        other => access_failure(other, &e.to_string())?,
    };
    Some(AdminError::access(config, failure))
}

/// A client context that keeps the last access failure librdkafka reports: a wrong
/// password or an untrusted certificate never reaches the caller of `fetch_metadata`,
/// which only sees a time-out, and librdkafka's error events are only delivered to a
/// client that polls; its log lines are written from its own threads, so they are read.
#[derive(Clone, Default)]
pub struct AccessProbe {
    failure: Arc<Mutex<Option<AccessFailure>>>,
    /// Connections closed by the broker during the first request (ApiVersion).
    hang_ups: Arc<std::sync::atomic::AtomicU32>,
}

/// This many hang-ups during ApiVersion, and no success, mean a listener that expects
/// TLS or SASL; a broker that is shutting down does it once. librdkafka folds repeats of
/// one log line into a count, so few lines arrive.
const HANG_UPS_OF_A_PROTOCOL_MISMATCH: u32 = 2;

impl AccessProbe {
    pub fn failure(&self) -> Option<AccessFailure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn record(&self, failure: AccessFailure) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(failure);
        }
    }
}

impl rdkafka::ClientContext for AccessProbe {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use std::sync::atomic::Ordering;
        if let Some(failure) = access_failure_in_log(message) {
            self.record(failure);
        } else if message.contains("Disconnected")
            && message.contains("APIVERSION_QUERY")
            && self.hang_ups.fetch_add(1, Ordering::SeqCst) + 1 >= HANG_UPS_OF_A_PROTOCOL_MISMATCH
        {
            self.record(AccessFailure::Protocol(message.to_string()));
        }
        rdkafka::client::DefaultClientContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let found = error
            .rdkafka_error_code()
            .and_then(|code| access_failure(code, reason));
        match found {
            Some(failure) => self.record(failure),
            None => tracing::warn!(error = %error, reason, "kafka client error"),
        }
    }
}

/// The access failure a librdkafka log line reports, if any.
fn access_failure_in_log(message: &str) -> Option<AccessFailure> {
    if message.contains("SASL authentication error")
        || message.contains("SASL authentication failed")
    {
        Some(AccessFailure::Authentication(message.to_string()))
    } else if message.contains("SSL handshake failed") {
        Some(AccessFailure::Tls(message.to_string()))
    } else if message.contains("alert bad certificate")
        || message.contains("alert certificate required")
    {
        access_failure(RDKafkaErrorCode::BrokerTransportFailure, message)
    } else if message.contains("incorrect security.protocol") {
        Some(AccessFailure::Protocol(message.to_string()))
    } else {
        None
    }
}

impl rdkafka::consumer::ConsumerContext for AccessProbe {}

fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    crate::kafka::clients::admin(config, "order-saga-admin").create()
}

/// The topic settings of `order-state` (also in `scripts/stack`).
pub const STATE_TOPIC_CONFIG: [(&str, &str); 4] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
    ("delete.retention.ms", "3600000"),
];

/// Creates `names` with `partitions` partitions each, leaving existing topics as they are.
/// `order-status` and `order-early-events` are created compacted: they are the changelogs
/// of the saga state. The replication factor is the cluster's own
/// (`default.replication.factor`): 1 on the local stack, what the platform chose on a
/// production cluster, where a fixed 1 would lose data with a single broker.
pub async fn create_topics(
    config: &Config,
    names: &[&str],
    partitions: i32,
) -> Result<(), AdminError> {
    let client = admin(config)?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let t = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
            if *name == topics::ORDER_STATUS || name.ends_with(topics::ORDER_STATUS) {
                // The sink's history table needs every version; compaction may drop old
                // ones only after readers have had an hour to see them.
                t.set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", "3600000")
            } else if name.ends_with(topics::ORDER_STATE) {
                // Restores read it: compaction has to keep it near the keys still alive
                // (orders in flight, finished-order records), so segments roll and are
                // cleaned soon, and tombstones of evicted orders do not linger.
                STATE_TOPIC_CONFIG.iter().fold(t, |t, (k, v)| t.set(k, v))
            } else if name.ends_with(topics::ORDER_EARLY_EVENTS) {
                // Held events are tombstoned once released or expired; compaction keeps
                // the topic as small as the events still held.
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // Fails fast, and plainly, on wrong credentials or certificates, which the admin
    // client's create_topics would only report as a time-out.
    {
        let cfg = config.clone();
        let first: Vec<String> = names.iter().take(1).map(|n| n.to_string()).collect();
        let probed = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = first.iter().map(String::as_str).collect();
            partition_counts(&cfg, &refs)
        })
        .await
        .map_err(|e| AdminError::Missing(format!("metadata check failed: {e}")))?;
        if let Err(e @ AdminError::Access { .. }) = probed {
            return Err(e);
        }
    }
    for result in client.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code @ RDKafkaErrorCode::TopicAuthorizationFailed))
            | Err((topic, code @ RDKafkaErrorCode::ClusterAuthorizationFailed)) => {
                return Err(AdminError::access(
                    config,
                    AccessFailure::Authorization(format!("{code} creating topic {topic}")),
                ))
            }
            Err((topic, code)) => return Err(AdminError::Topic { topic, code }),
        }
    }
    // A created topic takes a moment to reach the metadata every client sees; a consumer
    // that subscribes before that would not see it until its next metadata refresh,
    // minutes later. Return only once they are visible.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cfg = config.clone();
        let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let visible = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            partition_counts(&cfg, &refs)
        })
        .await
        .map_err(|e| AdminError::Missing(format!("metadata check failed: {e}")))?;
        match visible {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The partition count of each of `names`, failing on a missing topic.
pub fn partition_counts(config: &Config, names: &[&str]) -> Result<Vec<i32>, AdminError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe = AccessProbe::default();
    let consumer: BaseConsumer<AccessProbe> =
        crate::kafka::clients::assigned_reader(config, "order-saga-meta")
            .create_with_context(probe.clone())?;
    let mut counts = Vec::with_capacity(names.len());
    for name in names {
        // Short attempts, so an access failure reported meanwhile ends the wait early.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let md = loop {
            match consumer.fetch_metadata(Some(name), Duration::from_secs(1)) {
                Ok(md) => break md,
                Err(e) => {
                    // Serves the client's queue: librdkafka hands its error events and
                    // log lines to the context callbacks only from a poll.
                    let _ = consumer.poll(Duration::from_millis(200));
                    if let Some(failure) = probe.failure().or_else(|| {
                        e.rdkafka_error_code()
                            .and_then(|c| access_failure(c, &e.to_string()))
                    }) {
                        return Err(AdminError::access(config, failure));
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(e.into());
                    }
                }
            }
        };
        let topic = md
            .topics()
            .first()
            .ok_or_else(|| AdminError::Missing(name.to_string()))?;
        if let Some(code) = topic.error() {
            let code = RDKafkaErrorCode::from(code);
            if code == RDKafkaErrorCode::TopicAuthorizationFailed {
                return Err(AdminError::access(
                    config,
                    AccessFailure::Authorization(format!(
                        "no Describe permission on topic {name} ({code})"
                    )),
                ));
            }
        }
        if topic.error().is_some() || topic.partitions().is_empty() {
            return Err(AdminError::Missing(name.to_string()));
        }
        counts.push(topic.partitions().len() as i32);
    }
    Ok(counts)
}

/// Waits until the topics `names` can be described: retries (with backoff, logged) while
/// the brokers are unreachable or the topics missing, and fails at once on an access
/// failure. Commands call it before they start their clients, so wrong credentials end
/// start-up with a plain message instead of a silent reconnect loop.
pub async fn preflight(config: &Config, names: &[String]) -> Result<(), AdminError> {
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let cfg = config.clone();
        let owned = names.to_vec();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            partition_counts(&cfg, &refs)
        })
        .await
        .map_err(|e| AdminError::Missing(format!("metadata check failed: {e}")))?;
        match result {
            Ok(_) => return Ok(()),
            Err(e @ (AdminError::Kafka(_) | AdminError::Missing(_))) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "kafka topics not usable yet; waiting");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Fails unless every topic in `names` has the same partition count; returns it.
pub fn check_co_partitioned(config: &Config, names: &[&str]) -> Result<i32, AdminError> {
    let counts = partition_counts(config, names)?;
    let first = counts.first().copied().unwrap_or(0);
    if counts.iter().any(|c| *c != first) {
        let listing = names
            .iter()
            .zip(&counts)
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AdminError::NotCoPartitioned(listing));
    }
    Ok(first)
}
