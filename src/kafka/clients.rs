//! Client settings, in one place so every command talks to Kafka the same way.

use rdkafka::ClientConfig;

use crate::config::Config;

/// Settings every client shares.
fn base(config: &Config, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap)
        .set("client.id", client_id)
        // Without this a missing broker is retried silently forever; with it, failures
        // surface as errors the callers log and back off on.
        .set("reconnect.backoff.max.ms", "5000");
    config.security.apply_kafka(&mut c);
    c
}

/// An admin client's settings.
pub fn admin(config: &Config, client_id: &str) -> ClientConfig {
    base(config, client_id)
}

/// Settings of a producer of keyed records that Java services also produce to or read.
fn keyed_producer(config: &Config, client_id: &str) -> ClientConfig {
    let mut c = base(config, client_id);
    // The Java client's default partitioner hashes keys with murmur2; librdkafka's default
    // (CRC32) would put the same order on another partition number than an upstream Java
    // producer does, breaking co-partitioning.
    c.set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    c
}

/// The processor's transactional producer.
pub fn transactional_producer(config: &Config) -> ClientConfig {
    let mut c = keyed_producer(config, &format!("{}-producer", config.transactional_id()));
    c.set("transactional.id", config.transactional_id())
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout_ms.to_string(),
        )
        .set("queue.buffering.max.messages", "200000");
    c
}

/// A non-transactional idempotent producer (load generator, simulator, tests).
pub fn plain_producer(config: &Config, client_id: &str) -> ClientConfig {
    let mut c = keyed_producer(config, client_id);
    c.set("acks", "all");
    c
}

/// A consumer in `group` that sees only committed records and commits nothing itself:
/// its offsets are committed by a transaction or stored elsewhere.
pub fn read_committed_consumer(config: &Config, group: &str, client_id: &str) -> ClientConfig {
    let mut c = base(config, client_id);
    c.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Range assigns the same partition number of every subscribed topic to the same
        // member, which is what co-partitioned joins need; cooperative-sticky does not.
        .set("partition.assignment.strategy", "range")
        // An order crosses the processor five times; the default 500 ms a fetch may idle
        // at the end of a partition would dominate its latency. 10 ms costs a few more
        // fetch requests on an idle topic.
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000");
    c
}

/// A consumer with no group that reads assigned partitions (state restore, tests).
pub fn assigned_reader(config: &Config, client_id: &str) -> ClientConfig {
    let mut c = base(config, client_id);
    // librdkafka needs a group id even for manual assignment; nothing is committed to it.
    c.set("group.id", format!("{client_id}-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        // Readers run to the end of a partition and stop; waiting the default 500 ms for
        // more data at the end would only delay that.
        .set("fetch.wait.max.ms", "20")
        .set("max.partition.fetch.bytes", "10485760");
    c
}

/// A client context for readers that ask for end-of-partition events: librdkafka also
/// reports those as global errors, which the default context would log as errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct EofAwareContext;

impl rdkafka::ClientContext for EofAwareContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(error = %error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofAwareContext {}
