//! Waiting for a producer's records to be delivered, as a transaction commit must.
//!
//! rust-rdkafka's `flush` (which its `commit_transaction` calls first) polls the
//! producer's event queue in slices of up to 100 ms. With a `ThreadedProducer` the queue
//! is served by the producer's own thread, so each slice runs out in full, and every
//! commit with a record still in flight took 100 ms whatever the broker did. librdkafka's
//! own flush, on a producer whose delivery reports come as events, waits on a condition
//! variable until the count of records in flight is zero, and returns as soon as it is.

use std::time::Duration;

use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// Waits up to `timeout` until every record produced so far is delivered or failed.
pub fn flush<C, P>(producer: &P, timeout: Duration) -> KafkaResult<()>
where
    C: ProducerContext,
    P: Producer<C>,
{
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is valid for as long as `producer` is borrowed, and librdkafka
    // allows `rd_kafka_flush` from any thread.
    let code = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
    match RDKafkaErrorCode::from(code) {
        RDKafkaErrorCode::NoError => Ok(()),
        e => Err(KafkaError::Flush(e)),
    }
}
