//! Topic administration: creating the saga's topics and checking co-partitioning.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use crate::config::Config;
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
}

fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap);
    c.create()
}

/// Creates `names` with `partitions` partitions each, leaving existing topics as they are.
/// `order-status` and `order-early-events` are created compacted: they are the changelogs
/// of the saga state.
pub async fn create_topics(
    config: &Config,
    names: &[&str],
    partitions: i32,
) -> Result<(), AdminError> {
    let client = admin(config)?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if *name == topics::ORDER_STATUS || name.ends_with(topics::ORDER_STATUS) {
                // The sink's history table needs every version; compaction may drop old
                // ones only after readers have had an hour to see them.
                t.set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", "3600000")
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
    for result in client.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
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
    let consumer: BaseConsumer =
        crate::kafka::clients::assigned_reader(config, "order-saga-meta").create()?;
    let mut counts = Vec::with_capacity(names.len());
    for name in names {
        let md = consumer.fetch_metadata(Some(name), Duration::from_secs(10))?;
        let topic = md
            .topics()
            .first()
            .ok_or_else(|| AdminError::Missing(name.to_string()))?;
        if topic.error().is_some() || topic.partitions().is_empty() {
            return Err(AdminError::Missing(name.to_string()));
        }
        counts.push(topic.partitions().len() as i32);
    }
    Ok(counts)
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
