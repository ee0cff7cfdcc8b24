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
        .set("queue.buffering.max.messages", "200000")
        // Right after a commit the coordinator is still writing the previous transaction's
        // markers, and the next transaction's first offsets are refused with
        // CONCURRENT_TRANSACTIONS; at the default backoff of 100 ms that retry alone made a
        // hop cost 100 ms. The Java client retries that case after 20 ms.
        .set("retry.backoff.ms", "20");
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
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000");
    // Static membership concerns the processor's group only: its transactional id is
    // unique per replica, while other groups (sink, simulator) may share an instance id.
    if config.static_membership && group == config.application_id {
        c.set("group.instance.id", config.transactional_id())
            // A pod that restarts is usually back within this; a dead one holds its
            // partitions that long before the group moves them.
            .set("session.timeout.ms", STATIC_SESSION_TIMEOUT_MS);
    }
    c
}

/// The client id of the processor's consumer: its instance's transactional id, so the
/// group's member list shows which instance each member is.
pub fn processor_client_id(config: &Config) -> String {
    format!("{}-consumer", config.transactional_id())
}

/// The member id the group coordinator gave `consumer` when it last joined, if it has.
pub fn member_id<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
) -> Option<String> {
    use rdkafka::consumer::Consumer;
    let handle = consumer.client().native_ptr();
    // SAFETY: the handle is valid while `consumer` is borrowed; rd_kafka_memberid returns
    // a copy of the id (or null) that the caller frees with rd_kafka_mem_free, which is
    // done once it has been copied into a String.
    unsafe {
        let ptr = rdkafka::bindings::rd_kafka_memberid(handle);
        if ptr.is_null() {
            return None;
        }
        let id = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(handle, ptr.cast());
        (!id.is_empty()).then_some(id)
    }
}

/// Session timeout of a static member of the processor's group.
pub const STATIC_SESSION_TIMEOUT_MS: &str = "30000";

/// The session timeout of the processor's consumer, as [`read_committed_consumer`] sets it.
pub fn processor_session_timeout(config: &Config) -> std::time::Duration {
    let ms = if config.static_membership {
        STATIC_SESSION_TIMEOUT_MS
    } else {
        SESSION_TIMEOUT_MS
    };
    std::time::Duration::from_millis(ms.parse().unwrap_or(10_000))
}

/// Session timeout of a dynamic member.
const SESSION_TIMEOUT_MS: &str = "10000";

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
        log_client_error(error, reason);
    }
}

/// Logs a global client error, except the end of a partition: a consumer that asks for
/// those gets each one as a "global error" too, and it is routine, not an error.
pub fn log_client_error(error: rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let eof = matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    );
    if !eof {
        tracing::error!(error = %error, reason, "kafka client error");
    }
}

impl rdkafka::consumer::ConsumerContext for EofAwareContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut all = vec![
            "order-saga",
            "--application-id",
            "order",
            "--instance-id",
            "order-saga-1",
        ];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn static_membership_gives_the_processor_consumer_its_transactional_id() {
        let c = config(&["--static-membership"]);
        let consumer = read_committed_consumer(&c, "order", "x");
        assert_eq!(
            consumer.get("group.instance.id"),
            Some("order-order-saga-1")
        );
        assert_eq!(
            consumer.get("session.timeout.ms"),
            Some(STATIC_SESSION_TIMEOUT_MS)
        );
        let sink = read_committed_consumer(&c, "order-pg-sink", "x");
        assert_eq!(sink.get("group.instance.id"), None);
    }

    #[test]
    fn without_static_membership_the_consumer_is_dynamic() {
        let consumer = read_committed_consumer(&config(&[]), "order", "x");
        assert_eq!(consumer.get("group.instance.id"), None);
    }
}
