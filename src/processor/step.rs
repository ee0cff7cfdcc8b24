//! One step of the saga inside the open transaction: an input record or a due deadline,
//! decided by the pure core and turned into produced records and state changes.
//!
//! This module owns the mapping from decisions to output: the `order-status` record of
//! every new state, the commands, the `order-early-events` record of held events (and its
//! tombstone once they are released or expire), and the state overlay. It never commits
//! or aborts; an error it returns makes the loop abort the transaction.

use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::BaseRecord;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use super::store::Entry;
use super::wire::{self, WireError};
use super::{now_millis, Loop, StepError};
use crate::contracts::convert;
use crate::kafka::{classify, partitioner, ErrorClass};
use crate::saga::{
    Action, Command, Decision, EarlyDecision, Event, IgnoreReason, OrderState, Origin,
};
use crate::topics;

/// The largest record the processor writes: the brokers' default `message.max.bytes`
/// (1 MiB plus a little) less room for the batch and headers.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

impl Loop {
    /// Handles one input record inside the open transaction.
    pub(super) fn handle(&mut self, msg: &OwnedMessage) -> Result<(), StepError> {
        self.begin()?;
        self.txn
            .consumed(msg.topic(), msg.partition(), msg.offset());
        Metrics::add(&self.ctx.metrics.records_in, 1);
        self.ctx.telemetry.on_consumed(msg.topic());

        let partition = msg.partition();
        let Some(base) = self.topics.base(msg.topic()) else {
            return self.dead_letter(
                msg,
                "unknown_topic",
                "record from a topic the processor does not read",
            );
        };
        let Some(key) = msg.key() else {
            return self.dead_letter(
                msg,
                "missing_key",
                "record has no key; the key must be the order id",
            );
        };
        let owner = partitioner::partition_for(key, self.partitions);
        if owner != partition && msg.headers().is_none_or(|h| !was_rerouted(h)) {
            return self.reroute(msg, owner);
        }
        let Ok(key) = std::str::from_utf8(key) else {
            return self.dead_letter(msg, "invalid_key", "key is not UTF-8");
        };
        let Some(payload) = msg.payload() else {
            return self.dead_letter(msg, "missing_value", "record has no value");
        };
        let event =
            match self
                .ctx
                .runtime
                .block_on(convert::decode_event(&self.ctx.codec, base, payload))
            {
                Ok(e) => e,
                // The registry being unreachable is not the record's fault: retry it.
                Err(e) if e.is_transient() => {
                    return Err(StepError::abort_by("input not decodable for now", e))
                }
                Err(e) => return self.dead_letter(msg, e.kind(), &e.to_string()),
            };
        if convert::event_order_id(&event) != Some(key) {
            return self.dead_letter(
                msg,
                "key_mismatch",
                "the record's order_id differs from its key",
            );
        }
        let now = now_millis();
        let timestamp = msg.timestamp().to_millis().unwrap_or(now);
        let Some(store) = self.stores.get(&partition) else {
            // Inputs are opened only for restored partitions; one that is not ours any
            // more will be read again by its owner.
            return Err(StepError::abort(format!(
                "record of partition {partition}, whose state is not here"
            )));
        };
        // Only ids without a state are looked up by their finished key (a hash).
        let finished = match store.get(key) {
            Some(Entry::Order(_)) => None,
            Some(Entry::Early(_)) | None => store.finished(key),
        };
        let outcome = match (store.get(key), finished) {
            (Some(Entry::Order(state)), _) => {
                let decision = self.ctx.policy.decide(Some(state.as_ref()), &event, now);
                if state.is_terminal()
                    && decision == Decision::Ignore(IgnoreReason::DuplicateCreate)
                {
                    self.finished_create(key, state.status);
                    return Ok(());
                }
                self.settle(partition, msg, decision)
            }
            // An order known only by its finished record: whatever is held for its id
            // (written before records existed) waits behind it.
            (_, Some(finished)) => match self.ctx.policy.decide_finished(&finished, &event) {
                Decision::Ignore(IgnoreReason::FinishedCreate { status }) => {
                    self.finished_create(key, status);
                    Ok(())
                }
                decision => self.settle(partition, msg, decision),
            },
            (other, None) => {
                let early = match other {
                    Some(Entry::Early(e)) => Some(e),
                    _ => None,
                };
                let had_early = early.is_some();
                let origin = matches!(event, Event::Cancel(_) | Event::Result(_)).then(|| Origin {
                    topic: msg.topic().to_string(),
                    partition,
                    offset: msg.offset(),
                    payload: payload.to_vec(),
                });
                let decision = self
                    .ctx
                    .policy
                    .decide_early(early, &event, timestamp, origin, now);
                self.settle_early(partition, key, Some(msg), had_early, decision)
            }
        };
        match outcome {
            Err(StepError::OutputTooLarge(why)) => self.dead_letter(msg, "output_too_large", &why),
            other => other,
        }
    }

    /// Counts and logs a create of an order that already finished: it starts nothing.
    fn finished_create(&self, order_id: &str, status: crate::saga::Status) {
        info!(
            order_id,
            status = status.as_str(),
            "create of a finished order ignored"
        );
        Metrics::add(&self.ctx.metrics.finished_creates, 1);
    }

    /// Moves a record written to another partition than its key's (a producer with
    /// another partitioner) to the partition where its order lives, in the open
    /// transaction, keeping its timestamp and headers. It is decided when read there.
    fn reroute(&mut self, msg: &OwnedMessage, owner: i32) -> Result<(), StepError> {
        let topic = msg.topic().to_string();
        if self.rerouted_topics.insert(topic.clone()) {
            warn!(
                topic = %topic,
                partition = msg.partition(),
                owner,
                "record on another partition than murmur2 of its key gives; re-routing it \
                 (its producer does not use the murmur2 partitioner: see the README's \
                 partitioning contract); logged once per topic"
            );
        }
        let from = msg.partition().to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(rdkafka::message::Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        headers = headers.insert(rdkafka::message::Header {
            key: REROUTED_FROM,
            value: Some(&from),
        });
        self.begin()?;
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&topic).partition(owner).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(p) = msg.payload() {
            record = record.payload(p);
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.enqueue(record)?;
        Metrics::add(&self.ctx.metrics.rerouted, 1);
        Ok(())
    }

    /// Carries out a decision about a known order.
    fn settle(
        &mut self,
        partition: i32,
        msg: &OwnedMessage,
        decision: Decision,
    ) -> Result<(), StepError> {
        match decision {
            Decision::Apply { state, commands } => self.apply(partition, state, commands),
            Decision::Ignore(reason) => {
                debug!(reason = %reason, "event ignored");
                Metrics::add(&self.ctx.metrics.ignored_events, 1);
                Ok(())
            }
            Decision::Reject(reason) => self.dead_letter(msg, reason.kind(), &reason.to_string()),
        }
    }

    /// Carries out a decision about an order that had no state: hold the event, release
    /// the held events with the create, or dead-letter what expired.
    fn settle_early(
        &mut self,
        partition: i32,
        order_id: &str,
        msg: Option<&OwnedMessage>,
        had_early: bool,
        decision: EarlyDecision,
    ) -> Result<(), StepError> {
        let early_topic = self.topics.name(topics::ORDER_EARLY_EVENTS);
        match decision {
            EarlyDecision::Hold(early) => {
                let bytes = wire::encode_early(&early).map_err(encoding_failed)?;
                self.send(&early_topic, Some(partition), order_id, Some(&bytes), None)?;
                debug!(
                    order_id,
                    held = early.held.len(),
                    "event held until its order's create"
                );
                Metrics::add(&self.ctx.metrics.held_events, 1);
                if let Some(store) = self.stores.get_mut(&partition) {
                    store.put(order_id, Entry::Early(early));
                }
                Ok(())
            }
            EarlyDecision::Release(steps) => {
                if had_early {
                    self.send(&early_topic, Some(partition), order_id, None, None)?;
                    if let Some(store) = self.stores.get_mut(&partition) {
                        store.remove(order_id);
                    }
                }
                for step in steps {
                    match (step.decision, step.held) {
                        (Decision::Apply { state, commands }, held) => {
                            if held.is_some() {
                                Metrics::add(&self.ctx.metrics.released_events, 1);
                            }
                            self.apply(partition, state, commands)?;
                        }
                        (Decision::Ignore(reason), held) => {
                            debug!(order_id, reason = %reason, "event ignored");
                            if held.is_some() {
                                Metrics::add(&self.ctx.metrics.released_events, 1);
                            }
                            Metrics::add(&self.ctx.metrics.ignored_events, 1);
                        }
                        (Decision::Reject(reason), Some(held)) => {
                            self.dead_letter_held(
                                order_id,
                                &held,
                                reason.kind(),
                                &reason.to_string(),
                            )?;
                        }
                        (Decision::Reject(reason), None) => match msg {
                            Some(m) => self.dead_letter(m, reason.kind(), &reason.to_string())?,
                            None => warn!(order_id, reason = %reason, "create rejected"),
                        },
                    }
                }
                Ok(())
            }
            EarlyDecision::Expire(held) => {
                let now = now_millis();
                for h in &held {
                    let age = now - h.held_at;
                    let message = format!(
                        "unknown order {order_id:?}: no create arrived within the grace of {} ms (held {age} ms)",
                        self.ctx.policy.early_grace_ms
                    );
                    self.dead_letter_held(order_id, h, "unknown_order", &message)?;
                    Metrics::add(&self.ctx.metrics.expired_events, 1);
                }
                self.send(&early_topic, Some(partition), order_id, None, None)?;
                if let Some(store) = self.stores.get_mut(&partition) {
                    store.remove(order_id);
                }
                Ok(())
            }
            EarlyDecision::Ignore(reason) => {
                debug!(order_id, reason = %reason, "event ignored");
                Metrics::add(&self.ctx.metrics.ignored_events, 1);
                Ok(())
            }
            EarlyDecision::Reject(reason) => match msg {
                Some(m) => self.dead_letter(m, reason.kind(), &reason.to_string()),
                None => {
                    warn!(order_id, reason = %reason, "tick rejected");
                    Ok(())
                }
            },
        }
    }

    /// Writes a new state and its commands into the open transaction.
    pub(super) fn apply(
        &mut self,
        partition: i32,
        state: OrderState,
        commands: Vec<Command>,
    ) -> Result<(), StepError> {
        let status_topic = self.topics.name(topics::ORDER_STATUS);
        // One serialization of the state for both changelogs.
        let json = convert::state_json(&state).map_err(encoding_failed)?;
        let private = wire::state_value(&json);
        let status = self.encode(convert::encode_status_with(&self.ctx.codec, &state, json))?;
        let mut outputs = Vec::with_capacity(commands.len());
        for command in &commands {
            let topic = self.topics.name(topics::command_topic(command.action));
            let bytes = self.encode(convert::encode_command(&self.ctx.codec, command, &state))?;
            outputs.push((topic, bytes, command.action));
        }
        // A record the broker would refuse would fail the transaction on every retry and
        // stop the partition: refuse the change instead, before anything is sent.
        let largest = outputs
            .iter()
            .map(|(_, b, _)| b.len())
            .chain([status.len(), private.len()])
            .max()
            .unwrap_or(0);
        if largest > MAX_RECORD_BYTES {
            return Err(StepError::OutputTooLarge(format!(
                "order {} would write a record of {largest} bytes (at most {MAX_RECORD_BYTES})",
                state.order_id
            )));
        }
        self.begin()?;
        // The status record goes to the input's partition number, which is the partition
        // its state is restored from, whatever partitioner a producer upstream used.
        self.send(
            &status_topic,
            Some(partition),
            &state.order_id,
            Some(&status),
            None,
        )?;
        let state_topic = self.topics.name(topics::ORDER_STATE);
        self.send(
            &state_topic,
            Some(partition),
            &state.order_id,
            Some(&private),
            None,
        )?;
        for (topic, bytes, action) in &outputs {
            self.send(topic, None, &state.order_id, Some(bytes), None)?;
            if is_compensation(*action) {
                Metrics::add(&self.ctx.metrics.compensations, 1);
            }
        }
        debug!(order_id = %state.order_id, status = state.status.as_str(), version = state.version, commands = commands.len(), "order changed");
        Metrics::add(&self.ctx.metrics.state_changes, 1);
        let previous = self
            .stores
            .get(&partition)
            .and_then(|s| s.order(&state.order_id));
        self.ctx.telemetry.on_change(previous, &state, &commands);
        if let Some(store) = self.stores.get_mut(&partition) {
            let id = state.order_id.clone();
            store.put(&id, Entry::Order(Box::new(state)));
        }
        Ok(())
    }

    fn encode(
        &self,
        fut: impl std::future::Future<Output = Result<Vec<u8>, WireError>>,
    ) -> Result<Vec<u8>, StepError> {
        self.ctx.runtime.block_on(fut).map_err(encoding_failed)
    }

    /// Produces one record (or a tombstone) into the open transaction.
    pub(super) fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), StepError> {
        self.send_bytes(topic, partition, key.as_bytes(), payload, headers)
    }

    /// [`Loop::send`] with a key that need not be text.
    pub(super) fn send_bytes(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), StepError> {
        self.begin()?;
        self.ctx.telemetry.on_produced(topic);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.enqueue(record)
    }

    /// Hands a record to the producer inside the open transaction, waiting while its
    /// local queue is full.
    pub(super) fn enqueue(
        &mut self,
        mut record: BaseRecord<'_, [u8], [u8]>,
    ) -> Result<(), StepError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => match classify(&e) {
                    ErrorClass::Retry => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => return Err(StepError::from(e)),
                },
            }
        }
        self.txn.records_out += 1;
        Ok(())
    }

    /// Feeds a `Tick` to every entry whose deadline has passed, in the open transaction,
    /// so a timeout and its compensations (or the expiry of held events and their dead
    /// letters) commit atomically.
    pub(super) fn fire_deadlines(&mut self) -> Result<(), StepError> {
        let now = now_millis();
        let due: Vec<(i32, String)> = self
            .stores
            .iter()
            .flat_map(|(p, s)| s.due(now).into_iter().map(move |id| (*p, id)))
            .collect();
        for (partition, id) in due {
            let Some(store) = self.stores.get(&partition) else {
                continue;
            };
            match store.get(&id) {
                Some(Entry::Order(state)) => {
                    match self
                        .ctx
                        .policy
                        .decide(Some(state.as_ref()), &Event::Tick, now)
                    {
                        Decision::Apply { state, commands } => {
                            match self.apply(partition, state, commands) {
                                Err(StepError::OutputTooLarge(why)) => {
                                    warn!(order_id = %id, reason = %why, "deadline change not written: too large")
                                }
                                other => other?,
                            }
                        }
                        Decision::Ignore(_) => {}
                        Decision::Reject(reason) => {
                            warn!(order_id = %id, reason = %reason, "tick rejected");
                        }
                    }
                }
                Some(Entry::Early(early)) => {
                    let decision =
                        self.ctx
                            .policy
                            .decide_early(Some(early), &Event::Tick, now, None, now);
                    self.settle_early(partition, &id, None, true, decision)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn encoding_failed(e: WireError) -> StepError {
    StepError::abort_by("encoding failed", e)
}

/// Header put on a re-routed record: the partition it was first written to.
pub const REROUTED_FROM: &str = "order-saga.rerouted-from";

/// Whether a record was already re-routed once: it is then decided where it is, so a
/// change of partition count can never bounce a record around.
fn was_rerouted(headers: &OwnedHeaders) -> bool {
    headers.iter().any(|h| h.key == REROUTED_FROM)
}

/// Whether `action` undoes an earlier step.
fn is_compensation(action: Action) -> bool {
    match action {
        Action::Release | Action::Refund => true,
        Action::Reserve | Action::Charge | Action::Schedule | Action::Send => false,
    }
}
