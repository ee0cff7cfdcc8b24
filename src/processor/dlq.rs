//! Dead letters: input records the saga cannot process go to `order-dlq`, in the same
//! transaction as their offset, so each is neither lost nor processed twice.
//!
//! A dead letter keeps the original key and value (and the original headers) and adds
//! `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`, `dlq.error.kind` and
//! `dlq.error.message`. A held event that expires is dead-lettered from the copy kept in
//! its [`Origin`], with `dlq.held.ms` saying how long it waited.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::BaseRecord;
use tracing::warn;

use super::metrics::Metrics;
use super::{now_millis, Loop, StepError};
use crate::saga::{Held, Origin};
use crate::topics;

fn dlq_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    kind: &str,
    message: &str,
) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "dlq.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "dlq.source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "dlq.source.offset",
            value: Some(&offset),
        })
        .insert(Header {
            key: "dlq.error.kind",
            value: Some(kind),
        })
        .insert(Header {
            key: "dlq.error.message",
            value: Some(message),
        })
}

impl Loop {
    /// Sends an input record that cannot be processed to the dead-letter topic.
    pub(super) fn dead_letter(
        &mut self,
        msg: &OwnedMessage,
        kind: &str,
        message: &str,
    ) -> Result<(), StepError> {
        warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            kind,
            message,
            "record dead-lettered"
        );
        let mut headers = dlq_headers(msg.topic(), msg.partition(), msg.offset(), kind, message);
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        self.begin()?;
        let dlq = self.topics.name(topics::ORDER_DLQ);
        self.ctx.telemetry.on_dlq(kind, &dlq);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&dlq).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        self.enqueue(record)?;
        Metrics::add(&self.ctx.metrics.dlq_records, 1);
        Ok(())
    }

    /// Sends a held event that can no longer be applied to the dead-letter topic, as it
    /// was read.
    pub(super) fn dead_letter_held(
        &mut self,
        order_id: &str,
        held: &Held,
        kind: &str,
        message: &str,
    ) -> Result<(), StepError> {
        let unknown = Origin {
            topic: String::new(),
            partition: -1,
            offset: -1,
            payload: Vec::new(),
        };
        let origin = held.origin.as_ref().unwrap_or(&unknown);
        let held_ms = (now_millis() - held.held_at).max(0).to_string();
        warn!(
            topic = %origin.topic,
            partition = origin.partition,
            offset = origin.offset,
            order_id,
            kind,
            message,
            "held event dead-lettered"
        );
        let headers = dlq_headers(
            &origin.topic,
            origin.partition,
            origin.offset,
            kind,
            message,
        )
        .insert(Header {
            key: "dlq.held.ms",
            value: Some(&held_ms),
        });
        self.begin()?;
        let dlq = self.topics.name(topics::ORDER_DLQ);
        self.ctx.telemetry.on_dlq(kind, &dlq);
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&dlq)
            .headers(headers)
            .key(order_id.as_bytes())
            .payload(origin.payload.as_slice());
        self.enqueue(record)?;
        Metrics::add(&self.ctx.metrics.dlq_records, 1);
        Ok(())
    }
}
