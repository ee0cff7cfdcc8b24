//! `order-saga explain <order-id>`: one order's story told from Kafka alone.
//!
//! Owns finding the partition an order lives on (murmur2 of the key, as the Java client
//! and our producers hash), reading every saga topic's records of that key with
//! read_committed, decoding them with the registry codec, and merging them into one
//! timeline. It needs no PostgreSQL, so it works while the database is down.
//!
//! Upstream producers may use another partitioner; when the hashed partition holds
//! nothing for the key, every partition of every saga topic is scanned instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;
use crate::contracts::records::{ActionSymbol, OrderCancel, OrderCreate, StepResultRecord};
use crate::contracts::{Codec, CodecError};
use crate::kafka::admin::{self, AdminError};
use crate::kafka::{partitioner, read};
use crate::saga::{Millis, OrderState, Phase};
use crate::sink::rfc3339_millis;
use crate::topics;

/// Why an order could not be explained.
#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topics: {0}")]
    Admin(#[from] AdminError),
    #[error("reading {topic} did not reach its end within {seconds} s")]
    Timeout { topic: String, seconds: u64 },
    #[error("registry unreachable while decoding {topic}: {source}")]
    Registry { topic: String, source: CodecError },
    #[error("reader thread failed: {0}")]
    Thread(String),
    #[error("cannot write the explanation: {0}")]
    Output(String),
}

/// Arguments of `order-saga explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The order id (the record key on every topic).
    pub order_id: String,
    /// Print JSON for tools instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up if a topic cannot be read to its end within this many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub read_timeout_ms: u64,
}

/// The fields every command record shares, whatever its service.
#[derive(Debug, Clone, Deserialize)]
struct CommandFields {
    command_id: String,
    action: ActionSymbol,
    attempt: i32,
    issued_at: Millis,
}

/// One step of an order's story.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// The order request from upstream.
    Create {
        customer_id: String,
        total_minor: i64,
        currency: String,
        items: usize,
        created_at: Millis,
    },
    /// A cancel request from upstream.
    Cancel {
        reason: String,
        requested_at: Millis,
    },
    /// A version of the order on `order-status`.
    Status {
        status: String,
        version: i64,
        reason: Option<String>,
        updated_at: Millis,
        /// The commands whose results this version waits for, e.g. `SCHEDULE attempt 2`.
        awaiting: Vec<String>,
        /// Why a step waits for a retry (its last failure or timeout), if it does.
        retry_after: Option<String>,
    },
    /// A command to a downstream service.
    Command {
        command_id: String,
        action: String,
        attempt: i32,
        issued_at: Millis,
    },
    /// A downstream service's answer.
    Result {
        command_id: String,
        action: String,
        outcome: String,
        reason: Option<String>,
        retriable: bool,
        produced_at: Millis,
    },
    /// A record of this key that the processor dead-lettered, with its `dlq.*` headers.
    DeadLetter { headers: Vec<(String, String)> },
    /// Events the processor held because they came before the order's create:
    /// `events` of them (e.g. `cancel`, `INVENTORY result`); none once released.
    Held { events: Vec<String> },
    /// A record of this key that could not be decoded.
    Undecodable { error: String },
}

impl Step {
    /// Inputs sort before what they caused when timestamps tie.
    fn rank(&self) -> u8 {
        match self {
            Step::Create { .. } | Step::Cancel { .. } | Step::Result { .. } => 0,
            Step::Status { .. } | Step::Held { .. } => 1,
            Step::Command { .. } => 2,
            Step::DeadLetter { .. } | Step::Undecodable { .. } => 3,
        }
    }
}

/// A step with where and when it was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The record's Kafka timestamp (ms since the epoch).
    pub timestamp: Millis,
    /// The same, as UTC RFC 3339.
    pub time: String,
    /// Milliseconds since the previous entry (0 for the first).
    pub since_previous_ms: i64,
    /// The fixed topic name (without the deployment prefix).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(flatten)]
    pub step: Step,
}

/// The whole story of one order.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub order_id: String,
    /// The partition murmur2 gives the key on the input topics.
    pub hashed_partition: i32,
    /// Whether the hashed partition held nothing and every partition was scanned.
    pub scanned_all_partitions: bool,
    /// The latest status and version, if any.
    pub status: Option<String>,
    pub version: Option<i64>,
    /// Milliseconds from the first entry to the last.
    pub elapsed_ms: i64,
    pub entries: Vec<Entry>,
}

/// Every topic whose records of the order tell part of its story: all but the last, the
/// private state changelog, which repeats `order-status` in another encoding.
const TOPICS: [&str; 13] = {
    let mut t = [""; 13];
    let mut i = 0;
    while i < t.len() {
        t[i] = topics::ALL[i];
        i += 1;
    }
    t
};

struct RawRecord {
    base: &'static str,
    partition: i32,
    offset: i64,
    timestamp: Millis,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

/// Reads `partitions` of `topic` from the beginning to their end with read_committed and
/// keeps the records whose key is `key`. One consumer per topic, so that an
/// end-of-partition event, which names only the partition, is unambiguous.
fn read_topic(
    config: &Config,
    base: &'static str,
    partitions: &[i32],
    key: &[u8],
    timeout: Duration,
) -> Result<Vec<RawRecord>, ExplainError> {
    let topic = config.topics().name(base);
    let until = Instant::now() + timeout;
    let mut out = Vec::new();
    read::read_to_end(
        config,
        &format!("order-saga-explain-{}", uuid::Uuid::new_v4().simple()),
        &topic,
        partitions.iter().copied(),
        || {
            if Instant::now() > until {
                Err(ExplainError::Timeout {
                    topic: topic.clone(),
                    seconds: timeout.as_secs(),
                })
            } else {
                Ok(())
            }
        },
        |m| {
            if m.key() != Some(key) {
                return Ok(());
            }
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            let v = x.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (x.key.to_string(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RawRecord {
                base,
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis().unwrap_or(0),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// Reads every saga topic in parallel; `partitions` says which partitions of a topic
/// with a given partition count to read.
fn read_all(
    config: &Config,
    key: &[u8],
    counts: &[i32],
    partitions: impl Fn(i32) -> Vec<i32> + Sync,
    timeout: Duration,
) -> Result<Vec<RawRecord>, ExplainError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = TOPICS
            .iter()
            .copied()
            .zip(counts)
            .map(|(base, count)| {
                let parts = partitions(*count);
                scope.spawn(move || read_topic(config, base, &parts, key, timeout))
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let records = h
                .join()
                .map_err(|_| ExplainError::Thread("a topic reader panicked".into()))??;
            all.extend(records);
        }
        Ok(all)
    })
}

async fn decode(codec: &Codec, r: &RawRecord) -> Result<Step, ExplainError> {
    if r.base == topics::ORDER_DLQ {
        let headers = r
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("dlq."))
            .cloned()
            .collect();
        return Ok(Step::DeadLetter { headers });
    }
    if r.base == topics::ORDER_EARLY_EVENTS {
        let events = match r.payload.as_deref() {
            // A tombstone: released with the create, or dead-lettered after the grace.
            None => Vec::new(),
            Some(p) => match crate::processor::wire::decode_early(p) {
                Ok(early) => early
                    .held
                    .iter()
                    .map(|h| match &h.event {
                        crate::saga::EarlyEvent::Cancel(_) => "cancel".to_string(),
                        crate::saga::EarlyEvent::Result(r) => {
                            format!("{} result", r.action.as_str())
                        }
                    })
                    .collect(),
                Err(e) => {
                    return Ok(Step::Undecodable {
                        error: e.to_string(),
                    })
                }
            },
        };
        return Ok(Step::Held { events });
    }
    let Some(payload) = r.payload.as_deref() else {
        return Ok(Step::Undecodable {
            error: "no value (tombstone)".into(),
        });
    };
    let decoded = decode_value(codec, r.base, payload).await;
    match decoded {
        Ok(step) => Ok(step),
        Err(e) if e.is_transient() => Err(ExplainError::Registry {
            topic: r.base.to_string(),
            source: e,
        }),
        Err(e) => Ok(Step::Undecodable {
            error: e.to_string(),
        }),
    }
}

fn action_name(a: ActionSymbol) -> String {
    a.to_action()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|_| "UNKNOWN".into())
}

async fn decode_value(codec: &Codec, base: &str, payload: &[u8]) -> Result<Step, CodecError> {
    if base == topics::ORDER_STATUS {
        let r = crate::contracts::convert::decode_status_record(codec, payload).await?;
        let status = r
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into());
        // The saga state says what this version waits for; a record without one (or one
        // this build cannot read) still tells its status.
        let state: Option<OrderState> = r
            .saga_state
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok());
        let awaiting = state
            .as_ref()
            .map(|s| {
                s.outstanding_commands()
                    .map(|c| format!("{} attempt {}", c.action.as_str(), c.attempt))
                    .collect()
            })
            .unwrap_or_default();
        let retry_after = state.as_ref().and_then(|s| {
            s.forward
                .iter()
                .chain(&s.compensations)
                .find(|t| matches!(t.phase, Phase::RetryAt { .. }))
                .and_then(|t| t.last_error.clone())
        });
        return Ok(Step::Status {
            status,
            version: r.version,
            reason: r.reason,
            updated_at: r.updated_at,
            awaiting,
            retry_after,
        });
    }
    if base == topics::ORDER_CREATE_REQUEST {
        let r: OrderCreate = codec.decode(base, payload).await?;
        return Ok(Step::Create {
            customer_id: r.customer_id,
            total_minor: r.total_minor,
            currency: r.currency,
            items: r.items.len(),
            created_at: r.created_at,
        });
    }
    if base == topics::ORDER_CANCEL_REQUEST {
        let r: OrderCancel = codec.decode(base, payload).await?;
        return Ok(Step::Cancel {
            reason: r.reason,
            requested_at: r.requested_at,
        });
    }
    if topics::step_of_result_topic(base).is_some() {
        let r: StepResultRecord = codec.decode(base, payload).await?;
        let outcome = match r.outcome {
            crate::contracts::OutcomeSymbol::Success => "SUCCESS",
            crate::contracts::OutcomeSymbol::Failure => "FAILURE",
            crate::contracts::OutcomeSymbol::Unknown => "UNKNOWN",
        };
        return Ok(Step::Result {
            command_id: r.command_id,
            action: action_name(r.action),
            outcome: outcome.into(),
            reason: r.reason,
            retriable: r.retriable,
            produced_at: r.produced_at,
        });
    }
    let c: CommandFields = codec.decode(base, payload).await?;
    Ok(Step::Command {
        command_id: c.command_id,
        action: action_name(c.action),
        attempt: c.attempt,
        issued_at: c.issued_at,
    })
}

/// Builds the explanation of `order_id` from what Kafka holds.
pub async fn explain(
    config: &Config,
    codec: &Codec,
    order_id: &str,
    timeout: Duration,
) -> Result<Explanation, ExplainError> {
    let key = order_id.as_bytes().to_vec();
    let cfg = config.clone();
    let names: Vec<String> = TOPICS.iter().map(|t| config.topics().name(t)).collect();
    let (raw, hashed, scanned_all) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let counts = admin::partition_counts(&cfg, &refs)?;
        let input_count = counts.first().copied().unwrap_or(1);
        let hashed = partitioner::partition_for(&key, input_count);
        let raw = read_all(
            &cfg,
            &key,
            &counts,
            |n| vec![partitioner::partition_for(&key, n)],
            timeout,
        )?;
        // Nothing about the order on its hashed partitions: an upstream producer may have
        // used another partitioner, so look everywhere.
        let found = raw
            .iter()
            .any(|r| r.base == topics::ORDER_STATUS || r.base == topics::ORDER_CREATE_REQUEST);
        if found {
            return Ok::<_, ExplainError>((raw, hashed, false));
        }
        let raw = read_all(&cfg, &key, &counts, |n| (0..n).collect(), timeout)?;
        Ok((raw, hashed, true))
    })
    .await
    .map_err(|e| ExplainError::Thread(e.to_string()))??;

    let mut steps = Vec::with_capacity(raw.len());
    for r in &raw {
        steps.push((r, decode(codec, r).await?));
    }
    steps.sort_by_key(|(r, s)| (r.timestamp, s.rank(), r.base, r.offset));
    let mut entries: Vec<Entry> = Vec::with_capacity(steps.len());
    let mut previous: Option<Millis> = None;
    for (r, step) in steps {
        entries.push(Entry {
            timestamp: r.timestamp,
            time: rfc3339_millis(r.timestamp),
            since_previous_ms: previous.map(|p| r.timestamp - p).unwrap_or(0),
            topic: r.base.to_string(),
            partition: r.partition,
            offset: r.offset,
            step,
        });
        previous = Some(r.timestamp);
    }
    let latest = entries
        .iter()
        .filter_map(|e| match &e.step {
            Step::Status {
                status, version, ..
            } => Some((status.clone(), *version)),
            _ => None,
        })
        .max_by_key(|(_, v)| *v);
    let elapsed_ms = match (entries.first(), entries.last()) {
        (Some(a), Some(b)) => b.timestamp - a.timestamp,
        _ => 0,
    };
    Ok(Explanation {
        order_id: order_id.to_string(),
        hashed_partition: hashed,
        scanned_all_partitions: scanned_all,
        status: latest.as_ref().map(|(s, _)| s.clone()),
        version: latest.map(|(_, v)| v),
        elapsed_ms,
        entries,
    })
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The explanation as lines for a person.
pub fn render_text(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "order {}  partition {}{}",
        e.order_id,
        e.hashed_partition,
        if e.scanned_all_partitions {
            " (nothing there: scanned every partition)"
        } else {
            " (murmur2 of the key)"
        }
    );
    if e.entries.is_empty() {
        let _ = writeln!(out, "no records of this order on any saga topic");
        return out;
    }
    for entry in &e.entries {
        let what = match &entry.step {
            Step::Create {
                customer_id,
                total_minor,
                currency,
                items,
                ..
            } => format!(
                "create      {customer_id}, {items} item(s), {total_minor} {currency} minor units"
            ),
            Step::Cancel { reason, .. } => format!("cancel      requested: {reason}"),
            Step::Status {
                status,
                version,
                reason,
                awaiting,
                retry_after,
                ..
            } => format!(
                "status      {status} v{version}{}{}{}",
                reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                retry_after
                    .as_deref()
                    .map(|r| format!("  [{r}; retry due]"))
                    .unwrap_or_default(),
                if awaiting.is_empty() {
                    String::new()
                } else {
                    format!("  awaiting {}", awaiting.join(", "))
                }
            ),
            Step::Command {
                command_id,
                action,
                attempt,
                ..
            } => format!(
                "command     {action} attempt {attempt}  id {command_id}  → {}",
                entry.topic
            ),
            Step::Result {
                command_id,
                action,
                outcome,
                reason,
                retriable,
                ..
            } => format!(
                "result      {action} {outcome}{}{}  for {}",
                if *retriable { " (retriable)" } else { "" },
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                short(command_id)
            ),
            Step::DeadLetter { headers } => format!(
                "dead letter {}",
                headers
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Step::Held { events } if events.is_empty() => {
                "held events released (or expired)".to_string()
            }
            Step::Held { events } => format!("held before the create: {}", events.join(", ")),
            Step::Undecodable { error } => {
                format!("undecodable record on {}: {error}", entry.topic)
            }
        };
        let _ = writeln!(
            out,
            "{}  {:>+8} ms  {what}",
            entry.time, entry.since_previous_ms
        );
    }
    let _ = writeln!(
        out,
        "now {} v{} after {} ms, {} records",
        e.status.as_deref().unwrap_or("(no status yet)"),
        e.version.unwrap_or(0),
        e.elapsed_ms,
        e.entries.len()
    );
    out
}

/// `order-saga explain`: prints the story; false if Kafka holds nothing about the order.
pub async fn run(
    config: &Config,
    codec: Arc<Codec>,
    args: &ExplainArgs,
) -> Result<bool, ExplainError> {
    let e = explain(
        config,
        &codec,
        &args.order_id,
        Duration::from_millis(args.read_timeout_ms),
    )
    .await?;
    let text = if args.json {
        serde_json::to_string_pretty(&e).map_err(|err| ExplainError::Output(err.to_string()))?
            + "\n"
    } else {
        render_text(&e)
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(ExplainError::Output(err.to_string()))
        }
        _ => {}
    }
    Ok(!e.entries.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_on_a_partition_within_the_count() {
        for n in 1..20 {
            let p = partitioner::partition_for(b"0f8fad5b-d9cb-469f-a165-70867728950e", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn inputs_sort_before_the_status_and_commands_they_caused() {
        let result = Step::Result {
            command_id: "c".into(),
            action: "RESERVE".into(),
            outcome: "SUCCESS".into(),
            reason: None,
            retriable: false,
            produced_at: 0,
        };
        let status = Step::Status {
            status: "RESERVED".into(),
            version: 2,
            reason: None,
            updated_at: 0,
            awaiting: vec!["CHARGE attempt 1".into()],
            retry_after: None,
        };
        let command = Step::Command {
            command_id: "d".into(),
            action: "CHARGE".into(),
            attempt: 1,
            issued_at: 0,
        };
        assert!(result.rank() < status.rank() && status.rank() < command.rank());
    }
}
