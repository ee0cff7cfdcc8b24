//! `chaos`: the tools of `scripts/chaos` (README, "Chaos runs").
//!
//! - `chaos poison --count N --out FILE` produces N malformed records on
//!   `order-create-request` (bad magic byte, unknown schema id, a bare magic byte, no key)
//!   and writes where each landed, one JSON object a line.
//! - `chaos verify --out DIR …` reads every topic of the run with a read_committed
//!   consumer (and once more with read_uncommitted, to count aborted records), PostgreSQL
//!   and the files the script wrote, and prints a scorecard (markdown on stdout,
//!   `DIR/scorecard.md` and `DIR/scorecard.json`). Exit code 1 if a check failed.
//!
//! The verifier does not ask the processor anything. What every order should end as is
//! recomputed from its create record and the simulated services' answers, which are a pure
//! function of the command id and the simulator's settings (the same `ORDER_SAGA_SIM_*`
//! variables the simulator ran with); command ids follow the published formula of
//! `saga::ids`. The saga rules it re-implements are the few rows of the README's table a
//! run without cancels, drops or timeouts can reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::json;

use order_saga::config::{Config, ConfigArgs};
use order_saga::contracts::records::{
    InventoryCommand, NotificationCommand, OrderCreate, OrderStatusRecord, PaymentCommand,
    ShippingCommand,
};
use order_saga::contracts::Codec;
use order_saga::kafka::clients;
use order_saga::saga::{command_id, Action, Outcome};
use order_saga_tools::simulate::{Answer, Behaviour, SimulateArgs};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Poison records and the verifier of scripts/chaos"
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce malformed records on order-create-request and record where they landed.
    Poison {
        /// How many records (spread over the four kinds).
        #[arg(long, default_value_t = 8)]
        count: u32,
        /// JSON lines file to append each record's topic, partition, offset, key and value to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the run and print its scorecard.
    Verify(Box<VerifyArgs>),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The simulator's settings (the same flags and ORDER_SAGA_SIM_* variables).
    #[command(flatten)]
    sim: SimulateArgs,
    /// Directory for scorecard.md and scorecard.json.
    #[arg(long)]
    out: PathBuf,
    /// Name of the run, printed in the scorecard.
    #[arg(long, default_value = "chaos")]
    name: String,
    /// Orders the load generator published; every one must be found.
    #[arg(long)]
    expect_orders: Option<u64>,
    /// The poison file `chaos poison` wrote.
    #[arg(long)]
    poison: Option<PathBuf>,
    /// The events file the script wrote (one JSON object a line, `t_ms` and `kind`).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Output of `kafka-transactions describe` for every transactional id, concatenated.
    #[arg(long)]
    transactions: Option<PathBuf>,
    /// Output of `kafka-transactions find-hanging` for every broker, concatenated.
    #[arg(long)]
    hanging: Option<PathBuf>,
    /// Log of the zombie processor (the one stopped, replaced and resumed).
    #[arg(long)]
    zombie_log: Option<PathBuf>,
    /// `DumpLogSegments --transaction-log-decoder` of `__transaction_state` on every
    /// broker: the coordinators' record of every transactional id's epochs and states.
    #[arg(long)]
    txn_log: Option<PathBuf>,
    /// `DumpLogSegments --deep-iteration` of the run's partitions and `__consumer_offsets`
    /// on every broker, reduced to segment headers and control batches: the transaction
    /// markers.
    #[arg(long)]
    markers: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.into_config();
    if let Err(e) = config.validate() {
        eprintln!("chaos: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Poison { count, out } => poison(&config, count, &out).await.map(|()| true),
            Command::Verify(args) => verify(&config, &args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(3)
        }
    }
}

// ------------------------------------------------------------------------------- poison

#[derive(Debug, Serialize, Deserialize)]
struct PoisonRecord {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value_hex: String,
    kind: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

async fn poison(config: &Config, count: u32, out: &Path) -> anyhow::Result<()> {
    let producer: FutureProducer = clients::plain_producer(config, "chaos-poison")
        .create()
        .context("creating the producer")?;
    let topic = config.topics().name("order-create-request");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut lines = String::new();
    for i in 0..count {
        let (kind, value, keyed): (&str, Vec<u8>, bool) = match i % 4 {
            0 => ("bad_magic", b"\x07not avro at all".to_vec(), true),
            1 => (
                "unknown_schema",
                vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6],
                true,
            ),
            2 => ("truncated", vec![0], true),
            _ => ("no_key", b"\x07no key either".to_vec(), false),
        };
        let key = format!("chaos-poison-{stamp}-{i}");
        let mut record = FutureRecord::to(&topic).payload(&value);
        if keyed {
            record = record.key(&key);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .context("producing a poison record")?;
        let line = serde_json::to_string(&PoisonRecord {
            topic: topic.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
            key: keyed.then(|| key.clone()),
            value_hex: hex(&value),
            kind: kind.to_owned(),
        })?;
        lines.push_str(&line);
        lines.push('\n');
    }
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    f.write_all(lines.as_bytes())?;
    println!("{count} poison records on {topic}");
    Ok(())
}

// ------------------------------------------------------------------------------- reading

/// One record as read, detached from the consumer.
struct Raw {
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads every partition of `topic` from its beginning to its end (the last stable offset
/// for read_committed), on a blocking thread.
async fn read_topic(config: &Config, topic: &str, committed: bool) -> anyhow::Result<Vec<Raw>> {
    let mut cfg = clients::assigned_reader(config, "chaos-verify");
    cfg.set("enable.partition.eof", "true").set(
        "isolation.level",
        if committed {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Raw>> {
        let consumer: BaseConsumer<clients::EofAwareContext> =
            cfg.create_with_context(clients::EofAwareContext)?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(30))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {topic} has no partitions (does it exist?)");
        }
        let mut tpl = TopicPartitionList::new();
        let mut pending = BTreeSet::new();
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(30))?;
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
                pending.insert(p);
            }
        }
        let mut out = Vec::new();
        if pending.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        // A hanging transaction would hold the last stable offset back for ever.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while !pending.is_empty() {
            if std::time::Instant::now() > deadline {
                bail!("reading {topic} did not reach the end of partitions {pending:?} in 300 s");
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => eprintln!("chaos: reading {topic}: {e}; continuing"),
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Raw {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        Ok(out)
    })
    .await?
}

// ------------------------------------------------------------------------------- the plan

/// What the saga must have done with one order, given the services' answers.
#[derive(Debug, Default)]
struct Plan {
    status: &'static str,
    commands: Vec<(String, Action)>,
}

/// Runs attempts of `action` until one succeeds, fails for good or none is left; true if it
/// succeeded. A dropped command would need the saga's timeouts, which a chaos run turns
/// off, so it makes the plan unknowable.
fn attempts(
    order_id: &str,
    action: Action,
    behaviour: &Behaviour,
    max_attempts: u32,
    plan: &mut Plan,
) -> anyhow::Result<bool> {
    for attempt in 1..=max_attempts {
        let id = command_id(order_id, action, attempt);
        let answer = behaviour.answer(&id, action);
        plan.commands.push((id, action));
        match answer {
            Answer::Drop => bail!("the simulator drops commands (--drop-rate > 0): no plan"),
            Answer::Reply {
                outcome: Outcome::Success,
                ..
            } => return Ok(true),
            Answer::Reply { retriable, .. } => {
                if !retriable {
                    return Ok(false);
                }
            }
        }
    }
    Ok(false)
}

/// The generator's invalid orders (empty cart, a zero quantity, a wrong total, the
/// unsupported currency `XXX`), judged here from the record, not by the saga's validator.
fn invalid(order: &OrderCreate) -> bool {
    let sum: i64 = order
        .items
        .iter()
        .map(|i| i.unit_price_minor * i64::from(i.quantity))
        .sum();
    order.items.is_empty()
        || order
            .items
            .iter()
            .any(|i| i.quantity <= 0 || i.unit_price_minor <= 0)
        || order.total_minor != sum
        || order.currency != "EUR"
}

fn plan(order: &OrderCreate, b: &Behaviour, max: u32) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let id = order.order_id.as_str();
    if invalid(order) {
        plan.status = "FAILED";
        return Ok(plan);
    }
    if !attempts(id, Action::Reserve, b, max, &mut plan)? {
        plan.status = "FAILED";
        return Ok(plan);
    }
    if !attempts(id, Action::Charge, b, max, &mut plan)? {
        attempts(id, Action::Release, b, max, &mut plan)?;
        plan.status = "FAILED";
        return Ok(plan);
    }
    if !attempts(id, Action::Schedule, b, max, &mut plan)? {
        let refunded = attempts(id, Action::Refund, b, max, &mut plan)?;
        let released = attempts(id, Action::Release, b, max, &mut plan)?;
        plan.status = if refunded && released {
            "CANCELED"
        } else {
            "FAILED"
        };
        return Ok(plan);
    }
    plan.status = if attempts(id, Action::Send, b, max, &mut plan)? {
        "COMPLETED"
    } else {
        "FAILED"
    };
    Ok(plan)
}

// ------------------------------------------------------------------------------- verify

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
}

fn check(checks: &mut Vec<Check>, name: &'static str, passed: bool, detail: String) {
    checks.push(Check {
        name,
        passed,
        detail,
    });
}

/// The first few items of a list, for a readable detail line.
fn sample<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items.iter().take(5).map(|i| format!("{i:?}")).collect();
    format!(
        "; e.g. {}{}",
        shown.join(", "),
        if items.len() > 5 { ", …" } else { "" }
    )
}

async fn decode_commands(
    codec: &Codec,
    topic: &str,
    base: &str,
    raws: &[Raw],
) -> anyhow::Result<Vec<(String, String, Action)>> {
    let mut out = Vec::with_capacity(raws.len());
    for r in raws {
        let Some(v) = r.value.as_deref() else {
            continue;
        };
        let (order, id, action) = match base {
            "inventory-reserve-request" => {
                let c: InventoryCommand = codec.decode(base, v).await?;
                (c.order_id, c.command_id, c.action)
            }
            "payment-process-request" => {
                let c: PaymentCommand = codec.decode(base, v).await?;
                (c.order_id, c.command_id, c.action)
            }
            "shipping-schedule-request" => {
                let c: ShippingCommand = codec.decode(base, v).await?;
                (c.order_id, c.command_id, c.action)
            }
            _ => {
                let c: NotificationCommand = codec.decode(base, v).await?;
                (c.order_id, c.command_id, c.action)
            }
        };
        out.push((
            order,
            id,
            action
                .to_action()
                .with_context(|| format!("a command on {topic}"))?,
        ));
    }
    Ok(out)
}

/// The rows of a table `kafka-transactions` prints (describe, find-hanging), each by header
/// name; the table starts at the line whose first cell is `first_column`.
fn parse_table(text: &str, first_column: &str) -> Vec<HashMap<String, String>> {
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in text.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&first_column) {
            header = Some(cells.iter().map(|s| (*s).to_owned()).collect());
            continue;
        }
        if let Some(h) = &header {
            if cells.len() >= h.len().saturating_sub(1) && !cells.is_empty() {
                rows.push(
                    h.iter()
                        .cloned()
                        .zip(cells.iter().map(|s| (*s).to_owned()))
                        .collect(),
                );
            }
        }
    }
    rows
}

#[derive(Debug, Deserialize)]
struct Event {
    t_ms: i64,
    kind: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("a line of {}", path.display())))
        .collect()
}

/// Milliseconds since the epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-01T07:01:02.123456Z`).
fn log_time_ms(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 * 1000.0 + secs * 1000.0) as i64)
}

/// The log file of the process `pid`, from the script's `start` events.
/// The first line of the replacement's log that says it was fenced while it still ran
/// as started: a fence after the script stalled or killed it (a stall past the
/// transaction timeout makes the coordinator abort and bump the epoch) is the script's
/// doing, not the zombie's.
fn replacement_fenced_line(log: &str, replacement_end: Option<i64>) -> Option<&str> {
    log.lines().find(|l| {
        l.to_ascii_lowercase().contains("fenced")
            && match (replacement_end, log_time_ms(l)) {
                (Some(end), Some(at)) => at < end,
                _ => true,
            }
    })
}

fn log_of(events: &[Event], pid: i64) -> Option<String> {
    let e = events
        .iter()
        .find(|e| e.kind == "start" && e.rest.get("pid").and_then(|v| v.as_i64()) == Some(pid))?;
    let slot = e.rest.get("slot")?.as_str()?;
    let gen = e.rest.get("gen")?.as_i64()?;
    Some(format!("{slot}-{gen}.log"))
}

/// The partitions a processor held at `t_ms`: its last `partitions assigned` line before
/// then, unless a `partitions revoked` came after it.
fn assigned_before(log: &Path, t_ms: i64) -> Option<BTreeSet<i32>> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut held = None;
    for line in text.lines() {
        if log_time_ms(line).is_none_or(|t| t > t_ms) {
            continue;
        }
        let Some(at) = line.find("partitions={") else {
            continue;
        };
        let list = &line[at + "partitions={".len()..];
        let parts: BTreeSet<i32> = list[..list.find('}').unwrap_or(0)]
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if line.contains("partitions assigned") {
            held = Some(parts);
        } else if line.contains("partitions revoked") {
            held = Some(BTreeSet::new());
        }
    }
    held.filter(|h| !h.is_empty())
}

fn field_u64(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))?;
    line[at + name.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ------------------------------------------------------------------------------- fencing

/// A producer generation: producer id, then epoch. The controller hands producer ids out
/// in rising blocks and an epoch only grows, so the pair's order is the order in which
/// generations began.
type Generation = (i64, i32);

fn generation(g: Generation) -> String {
    format!("producer {} epoch {}", g.0, g.1)
}

/// The coordinator's transaction states, by the ids `__transaction_state` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
    Unknown(i64),
}

impl TxnState {
    fn from_id(id: i64) -> Self {
        match id {
            0 => Self::Empty,
            1 => Self::Ongoing,
            2 => Self::PrepareCommit,
            3 => Self::PrepareAbort,
            4 => Self::CompleteCommit,
            5 => Self::CompleteAbort,
            6 => Self::Dead,
            7 => Self::PrepareEpochFence,
            other => Self::Unknown(other),
        }
    }
}

/// One state change of a transactional id as its coordinator appended it to
/// `__transaction_state` (`DumpLogSegments --transaction-log-decoder`).
#[derive(Debug, Clone, PartialEq)]
struct TxnLogRecord {
    /// The coordinator's append time, ms since the epoch.
    t_ms: i64,
    transactional_id: String,
    generation: Generation,
    state: TxnState,
}

/// A transaction marker (`DumpLogSegments --deep-iteration`): the control record a
/// partition leader appends when a transaction of `generation` ends there. Its timestamp
/// is the leader's clock when it wrote the marker, which is this machine's clock in a
/// chaos run, comparable with the script's event times.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    /// The `<topic>-<partition>` directory the segment was in.
    partition: String,
    offset: i64,
    t_ms: i64,
    generation: Generation,
    commit: bool,
}

/// The `<topic>-<partition>` of a `Dumping <dir>/<topic>-<partition>/<segment>.log` line.
fn dumped_partition(line: &str) -> Option<String> {
    let path = line.strip_prefix("Dumping ")?;
    Some(
        Path::new(path.trim())
            .parent()?
            .file_name()?
            .to_str()?
            .to_owned(),
    )
}

/// The token after `name` in a dump line of `name: value` pairs (`producerId:`).
fn dump_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut tokens = line.split_whitespace();
    while let Some(t) = tokens.next() {
        if t == name {
            return tokens.next();
        }
    }
    None
}

fn dump_number<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    dump_field(line, name)?.parse().ok()
}

/// The coordinator records in a `--transaction-log-decoder` dump. Every broker's replica
/// is dumped, so a record is kept once per partition and offset; tombstones and lines
/// that are not records are skipped.
fn parse_txn_log(text: &str) -> Vec<TxnLogRecord> {
    let mut seen = BTreeSet::new();
    let mut partition = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(p) = dumped_partition(line) {
            partition = p;
            continue;
        }
        if !line.starts_with("| offset:") {
            continue;
        }
        let (Some(key_at), Some(payload_at)) = (line.find(" key: "), line.find(" payload: "))
        else {
            continue;
        };
        if payload_at < key_at {
            continue;
        }
        let (Ok(key), Ok(payload)) = (
            serde_json::from_str::<serde_json::Value>(&line[key_at + 6..payload_at]),
            serde_json::from_str::<serde_json::Value>(&line[payload_at + 10..]),
        ) else {
            continue;
        };
        let data = &payload["data"];
        let (Some(offset), Some(t_ms), Some(id), Some(pid), Some(epoch), Some(state)) = (
            dump_number::<i64>(line, "offset:"),
            dump_number::<i64>(line, "CreateTime:"),
            key["data"]["transactionalId"].as_str(),
            data["producerId"].as_i64(),
            data["producerEpoch"].as_i64(),
            data["transactionStatus"].as_i64(),
        ) else {
            continue;
        };
        if !seen.insert((partition.clone(), offset)) {
            continue;
        }
        out.push(TxnLogRecord {
            t_ms,
            transactional_id: id.to_owned(),
            generation: (pid, i32::try_from(epoch).unwrap_or(i32::MAX)),
            state: TxnState::from_id(state),
        });
    }
    out
}

/// The COMMIT and ABORT markers in a `--deep-iteration` dump (of which only the segment
/// headers, control batches and their records need be kept), once per partition and
/// offset.
fn parse_markers(text: &str) -> Vec<Marker> {
    let mut seen = BTreeSet::new();
    let mut partition = String::new();
    let mut batch: Option<Generation> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(p) = dumped_partition(line) {
            partition = p;
            batch = None;
            continue;
        }
        if line.starts_with("baseOffset:") {
            batch = match (
                dump_field(line, "isControl:"),
                dump_number::<i64>(line, "producerId:"),
                dump_number::<i32>(line, "producerEpoch:"),
            ) {
                (Some("true"), Some(pid), Some(epoch)) => Some((pid, epoch)),
                _ => None,
            };
            continue;
        }
        let Some(generation) = batch.filter(|_| line.starts_with("| offset:")) else {
            continue;
        };
        let commit = match dump_field(line, "endTxnMarker:") {
            Some("COMMIT") => true,
            Some("ABORT") => false,
            _ => continue,
        };
        let (Some(offset), Some(t_ms)) = (
            dump_number::<i64>(line, "offset:"),
            dump_number::<i64>(line, "CreateTime:"),
        ) else {
            continue;
        };
        if seen.insert((partition.clone(), offset)) {
            out.push(Marker {
                partition: partition.clone(),
                offset,
                t_ms,
                generation,
                commit,
            });
        }
    }
    out
}

/// What the script did to the zombie and its replacement, ms since the epoch.
#[derive(Debug, Clone, Copy)]
struct ZombieTimes {
    /// When the zombie process was started, if the events say.
    started: Option<i64>,
    stopped: i64,
    replaced: i64,
    resumed: i64,
    /// When the zombie was gone: it exited, or the script killed it.
    gone: Option<i64>,
    /// When the replacement stopped running as started (killed, stalled or exited), if it
    /// did before the end of the run.
    replacement_end: Option<i64>,
}

/// The broker-side evidence about the zombie's transactional id.
struct FencingEvidence<'a> {
    /// The coordinator's records of that transactional id.
    txn_log: &'a [TxnLogRecord],
    /// Every marker read (of any producer).
    markers: &'a [Marker],
    /// The first line of the replacement's log that says it was fenced.
    replacement_fenced: Option<&'a str>,
    /// `kafka-transactions describe` of the id near the end of the run.
    described: Option<Generation>,
}

#[derive(Debug, Default)]
struct FencingVerdict {
    zombie: Option<Generation>,
    replacement: Option<Generation>,
    /// Problems found; none means the zombie was fenced and the replacement was not.
    problems: Vec<String>,
    /// What the evidence showed, for the scorecard.
    facts: Vec<String>,
}

/// Judges from the coordinator's log and the markers whether the zombie wrote nothing once
/// it woke and whether its replacement kept the newest producer epoch while it ran.
///
/// The zombie's generation is the one in force when it was stopped; the replacement's is
/// the first InitProducerId after it started. Anything below the replacement's (the
/// zombie's own, or the epoch its coordinator used to abort the zombie's open
/// transaction) must have no commit after SIGCONT. Above it, a generation that began
/// while the replacement ran and the zombie was awake (from SIGCONT to its exit) fenced
/// the replacement; one that began while the zombie was still stopped or already gone can
/// only be the replacement's own (librdkafka bumps the epoch after some abortable errors,
/// and the coordinator after a transaction of its timed out).
fn judge_fencing(t: &ZombieTimes, e: &FencingEvidence) -> FencingVerdict {
    let mut v = FencingVerdict::default();
    let mut log: Vec<&TxnLogRecord> = e.txn_log.iter().collect();
    log.sort_by_key(|r| r.t_ms);
    let pids: BTreeSet<i64> = log.iter().map(|r| r.generation.0).collect();
    v.zombie = log
        .iter()
        .rev()
        .find(|r| r.t_ms <= t.stopped)
        .map(|r| r.generation);
    v.replacement = log
        .iter()
        .find(|r| r.t_ms >= t.replaced && r.state == TxnState::Empty)
        .map(|r| r.generation);
    // A process stopped while it started up has no generation of its own yet: the one in
    // force is its predecessor's, and the zombie initialises only once it wakes.
    let own_init = log.iter().find(|r| {
        r.state == TxnState::Empty && t.started.is_some_and(|s| r.t_ms >= s) && r.t_ms <= t.stopped
    });
    match v.zombie {
        Some(z) => v.facts.push(match (own_init, t.started) {
            (Some(init), Some(s)) => format!(
                "zombie: {} (initialised {} ms after its start)",
                generation(z),
                init.t_ms - s
            ),
            (None, Some(s)) => format!(
                "the zombie had not initialised transactions when it was stopped {} ms after its start; in force then: {}",
                t.stopped - s,
                generation(z)
            ),
            (_, None) => format!("in force when the zombie was stopped: {}", generation(z)),
        }),
        None => v.problems.push(
            "the coordinator's log has no record of the transactional id before the zombie was stopped"
                .into(),
        ),
    }
    match (v.replacement, v.zombie) {
        (Some(r), Some(z)) if r <= z => v.problems.push(format!(
            "the replacement's {} is not above the zombie's {}",
            generation(r),
            generation(z)
        )),
        (Some(r), _) => {
            let init = log
                .iter()
                .find(|x| x.generation == r && x.state == TxnState::Empty)
                .map_or(0, |x| x.t_ms - t.replaced);
            v.facts.push(format!(
                "replacement: {} from {init} ms after its start",
                generation(r)
            ));
        }
        (None, _) => v.problems.push(
            "no InitProducerId after the replacement started: it never got an epoch of its own"
                .into(),
        ),
    }
    let stale = |g: Generation| match (v.replacement, v.zombie) {
        (Some(r), _) => g < r,
        (None, Some(z)) => g <= z,
        (None, None) => false,
    };
    let ours = |m: &&Marker| pids.contains(&m.generation.0);

    if let Some(last) = e
        .markers
        .iter()
        .filter(ours)
        .filter(|m| m.commit && Some(m.generation) == v.zombie && m.t_ms <= t.resumed)
        .map(|m| m.t_ms)
        .max()
    {
        v.facts.push(format!(
            "its last COMMIT marker {} ms {} SIGSTOP",
            (last - t.stopped).abs(),
            if last <= t.stopped { "before" } else { "after" }
        ));
    }
    let late_prepares: Vec<&&TxnLogRecord> = log
        .iter()
        .filter(|r| r.t_ms > t.resumed && r.state == TxnState::PrepareCommit && stale(r.generation))
        .collect();
    if let Some(first) = late_prepares.first() {
        v.problems.push(format!(
            "the coordinator accepted {} commits of {} after SIGCONT, the first {} ms after it",
            late_prepares.len(),
            generation(first.generation),
            first.t_ms - t.resumed
        ));
    }
    let late_markers: Vec<&Marker> = e
        .markers
        .iter()
        .filter(ours)
        .filter(|m| m.commit && m.t_ms > t.resumed && stale(m.generation))
        .collect();
    if let Some(first) = late_markers.first() {
        v.problems.push(format!(
            "{} COMMIT markers of an epoch below the replacement's after SIGCONT, e.g. {}@{} of {}, {} ms after it",
            late_markers.len(),
            first.partition,
            first.offset,
            generation(first.generation),
            first.t_ms - t.resumed
        ));
    }

    // Generations above the replacement's that the zombie could not have begun: the
    // replacement's own (librdkafka bumps the epoch after some abortable errors, or the
    // coordinator aborts a transaction of its that timed out).
    let mut own = Vec::new();
    if let Some(r) = v.replacement {
        let end = t.replacement_end.unwrap_or(i64::MAX);
        let running = |t_ms: i64| t_ms >= t.replaced && t_ms < end;
        let mut newer: Vec<&TxnLogRecord> = Vec::new();
        for rec in log.iter().filter(|x| running(x.t_ms) && x.generation > r) {
            if newer.iter().all(|n| n.generation != rec.generation) {
                newer.push(rec);
            }
        }
        for first in newer {
            let g = first.generation;
            let by = match first.state {
                TxnState::Empty => "an InitProducerId".to_owned(),
                TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                    "the coordinator aborting a transaction".to_owned()
                }
                other => format!("{other:?}"),
            };
            // Only the replacement and the zombie hold the id while the replacement runs,
            // and the zombie can act only between SIGCONT and its end.
            let zombie_awake =
                first.t_ms >= t.resumed && t.gone.is_none_or(|gone| first.t_ms <= gone);
            if zombie_awake {
                v.problems.push(format!(
                    "{} began by {by} {} ms after the replacement started, {} ms after SIGCONT, while the zombie was awake: the replacement was fenced",
                    generation(g),
                    first.t_ms - t.replaced,
                    first.t_ms - t.resumed,
                ));
            } else {
                v.facts.push(format!(
                    "the replacement moved on to {} itself ({by} {} ms after it started, {})",
                    generation(g),
                    first.t_ms - t.replaced,
                    if first.t_ms < t.resumed {
                        "the zombie still stopped"
                    } else {
                        "the zombie gone"
                    }
                ));
                own.push(g);
            }
        }
        let foreign_markers = e
            .markers
            .iter()
            .filter(ours)
            .filter(|m| running(m.t_ms) && m.generation > r && !own.contains(&m.generation))
            .count();
        if foreign_markers > 0 {
            v.problems.push(format!(
                "{foreign_markers} markers of a generation above the replacement's while it ran"
            ));
        }
        let latest = own.last().copied().unwrap_or(r);
        match (t.replacement_end, e.described) {
            (None, Some(d)) if d != latest => v.problems.push(format!(
                "at the end the coordinator holds {}, not the replacement's {}",
                generation(d),
                generation(latest)
            )),
            (None, Some(_)) => v
                .facts
                .push("still the replacement's at the end (describe)".into()),
            (None, None) => v.facts.push("no describe of the id at the end".into()),
            (Some(end), _) => v.facts.push(format!(
                "the replacement's for the {} ms it ran",
                end - t.replaced
            )),
        }
    }
    // A fence the replacement brought on itself (its transaction timed out after the
    // zombie was gone) is not the zombie's doing; one with no newer generation of its own
    // to explain it is.
    if let Some(line) = e.replacement_fenced {
        let line: String = line.chars().take(200).collect();
        if own.is_empty() {
            v.problems
                .push(format!("the replacement's log says it was fenced: {line}"));
        } else {
            v.facts.push(format!(
                "the replacement's log says it was fenced, after a generation of its own: {line}"
            ));
        }
    }
    v.facts.push(format!(
        "{} coordinator records and {} markers of the id read",
        log.len(),
        e.markers.iter().filter(ours).count()
    ));
    v
}

/// The run's process logs, beside the events file.
fn logs_dir(events: &Path) -> PathBuf {
    events
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("logs")
}

/// What the zombie's own log says: how far its `txn_committed` progress counter rose from
/// before its replacement started to its last line, and the error it ended with.
#[derive(Debug, PartialEq)]
struct ZombieProgress {
    commits_after: Option<u64>,
    ended: Option<String>,
}

fn zombie_progress(log: &str, replaced: i64) -> ZombieProgress {
    let mut before = None;
    let mut after = None;
    let mut ended = None;
    for line in log.lines() {
        let Some(t) = log_time_ms(line) else { continue };
        if let Some(n) = field_u64(line, "txn_committed") {
            if t < replaced {
                before = Some(n);
            } else {
                after = Some(n);
            }
        }
        if let Some(at) = line.find("order-saga failed error=") {
            ended = Some(
                line[at + "order-saga failed error=".len()..]
                    .chars()
                    .take(160)
                    .collect(),
            );
        }
    }
    let commits_after = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        (_, None) => Some(0),
        (None, Some(a)) => Some(a),
    };
    ZombieProgress {
        commits_after,
        ended,
    }
}

/// The zombie-fencing check from the broker side: pass or fail, and its detail; `None`
/// when the run had no zombie that was resumed.
fn zombie_fencing(
    config: &Config,
    args: &VerifyArgs,
    events: &[Event],
    logs: &Path,
) -> anyhow::Result<Option<(bool, String)>> {
    let find = |kind: &str| events.iter().position(|e| e.kind == kind);
    let (Some(stop), Some(replacement), Some(cont)) = (
        find("zombie_stop"),
        find("zombie_replacement"),
        find("zombie_cont"),
    ) else {
        return Ok(None);
    };
    let pid_of = |i: usize| {
        events[i]
            .rest
            .get("pid")
            .and_then(serde_json::Value::as_i64)
    };
    let slot = events[stop]
        .rest
        .get("slot")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let transactional_id = format!("{}-{}", config.application_id, slot.trim_start_matches('p'));
    let replacement_pid = pid_of(replacement);
    // The replacement runs as started until the run kills, stalls or loses it.
    let replacement_end = events[replacement + 1..]
        .iter()
        .find(|e| {
            e.kind != "start"
                && e.rest.get("pid").and_then(serde_json::Value::as_i64) == replacement_pid
        })
        .map(|e| e.t_ms);
    let gone = events
        .iter()
        .find(|e| e.kind == "zombie_exit" || e.kind == "zombie_still_alive")
        .map(|e| e.t_ms);
    let zombie_pid = pid_of(stop);
    let started = events[..stop]
        .iter()
        .rev()
        .find(|e| {
            e.kind == "start" && e.rest.get("pid").and_then(serde_json::Value::as_i64) == zombie_pid
        })
        .map(|e| e.t_ms);
    let times = ZombieTimes {
        started,
        stopped: events[stop].t_ms,
        replaced: events[replacement].t_ms,
        resumed: events[cont].t_ms,
        gone,
        replacement_end,
    };
    let (Some(txn_log), Some(markers)) = (&args.txn_log, &args.markers) else {
        return Ok(Some((
            false,
            "no broker-side evidence: --txn-log and --markers are needed".into(),
        )));
    };
    let txn_log: Vec<TxnLogRecord> = parse_txn_log(&std::fs::read_to_string(txn_log)?)
        .into_iter()
        .filter(|r| r.transactional_id == transactional_id)
        .collect();
    let markers = parse_markers(&std::fs::read_to_string(markers)?);
    let replacement_log = replacement_pid
        .and_then(|pid| log_of(events, pid))
        .and_then(|log| std::fs::read_to_string(logs.join(log)).ok())
        .unwrap_or_default();
    let replacement_fenced = replacement_fenced_line(&replacement_log, replacement_end);
    let described = match &args.transactions {
        Some(path) => parse_table(&std::fs::read_to_string(path)?, "CoordinatorId")
            .iter()
            .filter(|r| r.get("TransactionalId") == Some(&transactional_id))
            .find_map(|r| {
                Some((
                    r.get("ProducerId")?.parse().ok()?,
                    r.get("ProducerEpoch")?.parse().ok()?,
                ))
            }),
        None => None,
    };
    let verdict = judge_fencing(
        &times,
        &FencingEvidence {
            txn_log: &txn_log,
            markers: &markers,
            replacement_fenced,
            described,
        },
    );
    let ended = match &args.zombie_log {
        Some(log) => zombie_progress(&std::fs::read_to_string(log)?, times.replaced).ended,
        None => None,
    };
    let mut detail = format!("{transactional_id}: ");
    if verdict.problems.is_empty() {
        detail.push_str("no commit of the zombie's epoch after SIGCONT, no epoch above the replacement's while it ran");
    } else {
        detail.push_str(&verdict.problems.join("; "));
    }
    let _ = write!(
        detail,
        ". {}; the zombie's last error: {}",
        verdict.facts.join("; "),
        ended.as_deref().unwrap_or("none logged")
    );
    Ok(Some((verdict.problems.is_empty(), detail)))
}

async fn verify(config: &Config, args: &VerifyArgs) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let behaviour = args.sim.behaviour()?;
    let topics = config.topics();
    let codec = Codec::new(order_saga::contracts::registry::RegistryClient::secured(
        &config.registry_url,
        &config.security.registry_auth()?,
    )?)?;
    let mut checks = Vec::new();
    let mut figures: BTreeMap<&'static str, serde_json::Value> = BTreeMap::new();

    // Orders, and what each should have become.
    let creates = read_topic(config, &topics.name("order-create-request"), true).await?;
    let mut orders: BTreeMap<String, Plan> = BTreeMap::new();
    let mut undecodable_creates = 0u64;
    let mut repeated_creates = 0u64;
    for r in &creates {
        let Some(v) = r.value.as_deref() else {
            undecodable_creates += 1;
            continue;
        };
        match codec.decode::<OrderCreate>("order-create-request", v).await {
            Ok(c) => {
                let p = plan(&c, &behaviour, config.max_attempts)?;
                if orders.insert(c.order_id.clone(), p).is_some() {
                    repeated_creates += 1;
                }
            }
            Err(_) => undecodable_creates += 1,
        }
    }
    figures.insert("orders", json!(orders.len()));
    figures.insert("undecodable_creates", json!(undecodable_creates));
    if let Some(n) = args.expect_orders {
        check(
            &mut checks,
            "every published order is on order-create-request",
            orders.len() as u64 == n && repeated_creates == 0,
            format!(
                "{} distinct orders found, {n} published, {repeated_creates} repeated",
                orders.len()
            ),
        );
    }
    let cancels = read_topic(config, &topics.name("order-cancel-request"), true).await?;
    check(
        &mut checks,
        "no cancel requests (their outcome races the saga, so a chaos run sends none)",
        cancels.is_empty(),
        format!("{} cancel records", cancels.len()),
    );

    // Commands: each planned one exactly once.
    let mut seen: HashMap<String, (String, Action, u32)> = HashMap::new();
    let mut command_records = 0u64;
    for base in [
        "inventory-reserve-request",
        "payment-process-request",
        "shipping-schedule-request",
        "notification-send-request",
    ] {
        let topic = topics.name(base);
        let raws = read_topic(config, &topic, true).await?;
        for (order, id, action) in decode_commands(&codec, &topic, base, &raws).await? {
            command_records += 1;
            seen.entry(id).or_insert((order, action, 0)).2 += 1;
        }
    }
    let mut planned_ids: HashMap<&str, Action> = HashMap::new();
    for p in orders.values() {
        for (id, a) in &p.commands {
            planned_ids.insert(id.as_str(), *a);
        }
    }
    let missing_cmds: Vec<&str> = planned_ids
        .keys()
        .filter(|id| !seen.contains_key(**id))
        .copied()
        .collect();
    let duplicated_cmds: Vec<(&str, u32)> = seen
        .iter()
        .filter(|(_, (_, _, n))| *n > 1)
        .map(|(id, (_, _, n))| (id.as_str(), *n))
        .collect();
    let unplanned_cmds: Vec<(&str, &str, Action)> = seen
        .iter()
        .filter(|(id, _)| !planned_ids.contains_key(id.as_str()))
        .map(|(id, (o, a, _))| (id.as_str(), o.as_str(), *a))
        .collect();
    figures.insert("commands_planned", json!(planned_ids.len()));
    figures.insert("command_records", json!(command_records));
    check(
        &mut checks,
        "every planned command is on its topic exactly once, and no other",
        missing_cmds.is_empty() && duplicated_cmds.is_empty() && unplanned_cmds.is_empty(),
        format!(
            "{} planned, {command_records} records: {} missing{}, {} duplicated{}, {} unplanned{}",
            planned_ids.len(),
            missing_cmds.len(),
            sample(&missing_cmds),
            duplicated_cmds.len(),
            sample(&duplicated_cmds),
            unplanned_cmds.len(),
            sample(&unplanned_cmds)
        ),
    );

    // order-status: the fold, versions, and the final status against the plan.
    let status_topic = topics.name("order-status");
    let status_raws = read_topic(config, &status_topic, true).await?;
    let mut fold: HashMap<String, (String, i64)> = HashMap::new();
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    let mut status_times: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &status_raws {
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        status_times
            .entry(r.partition)
            .or_default()
            .push(r.timestamp);
        let Some(v) = r.value.as_deref() else {
            fold.remove(&key);
            continue;
        };
        let s: OrderStatusRecord = codec.decode("order-status", v).await?;
        versions.entry(key.clone()).or_default().push(s.version);
        fold.insert(key, (s.status()?.as_str().to_owned(), s.version));
    }
    let mut lost = Vec::new();
    let mut mismatched = Vec::new();
    for (id, p) in &orders {
        match fold.get(id) {
            None => lost.push(id.clone()),
            Some((status, _)) if status != p.status => {
                mismatched.push(format!("{id}: {status}, planned {}", p.status))
            }
            Some(_) => {}
        }
    }
    let mut duplicated_versions = Vec::new();
    let mut unordered = 0u64;
    for (id, vs) in &versions {
        let distinct: BTreeSet<i64> = vs.iter().copied().collect();
        if distinct.len() != vs.len() {
            duplicated_versions.push(id.clone());
        }
        if vs.windows(2).any(|w| w[1] <= w[0]) {
            unordered += 1;
        }
    }
    let mut per_status: BTreeMap<&str, u64> = BTreeMap::new();
    for p in orders.values() {
        *per_status.entry(p.status).or_default() += 1;
    }
    figures.insert("planned_statuses", json!(per_status));
    figures.insert("status_records", json!(status_raws.len()));
    check(
        &mut checks,
        "every order's last order-status is the status its plan implies",
        lost.is_empty() && mismatched.is_empty(),
        format!(
            "{} orders: {} lost (no status){}, {} mismatched{}",
            orders.len(),
            lost.len(),
            sample(&lost),
            mismatched.len(),
            sample(&mismatched)
        ),
    );
    check(
        &mut checks,
        "no order-status version is written twice or out of order",
        duplicated_versions.is_empty() && unordered == 0,
        format!(
            "{} orders with a repeated version{}, {unordered} with versions out of order",
            duplicated_versions.len(),
            sample(&duplicated_versions)
        ),
    );

    // Aborted records: on disk for read_uncommitted, never for read_committed.
    let mut aborted_total = 0usize;
    let mut overlap = 0usize;
    for base in [
        "inventory-reserve-request",
        "payment-process-request",
        "shipping-schedule-request",
        "notification-send-request",
        "order-status",
        "order-dlq",
        "order-early-events",
    ] {
        let topic = topics.name(base);
        let all = read_topic(config, &topic, false).await?;
        let committed: BTreeSet<(i32, i64)> = if base == "order-status" {
            status_raws
                .iter()
                .map(|r| (r.partition, r.offset))
                .collect()
        } else {
            read_topic(config, &topic, true)
                .await?
                .iter()
                .map(|r| (r.partition, r.offset))
                .collect()
        };
        let everything: BTreeSet<(i32, i64)> =
            all.iter().map(|r| (r.partition, r.offset)).collect();
        aborted_total += everything.difference(&committed).count();
        overlap += committed.difference(&everything).count();
    }
    figures.insert("aborted_records_hidden", json!(aborted_total));
    check(
        &mut checks,
        "read_committed sees no record outside what read_uncommitted sees, and no duplicate (aborted records are counted, not shown)",
        overlap == 0 && duplicated_cmds.is_empty() && duplicated_versions.is_empty(),
        format!("{aborted_total} aborted records hidden from read_committed; {overlap} committed offsets unknown to read_uncommitted"),
    );

    // Transactions left open.
    if let Some(path) = &args.transactions {
        let text = std::fs::read_to_string(path)?;
        let rows = parse_table(&text, "CoordinatorId");
        let hanging: Vec<String> = rows
            .iter()
            .filter(|r| {
                let state = r.get("TransactionState").map(String::as_str);
                let duration: i64 = r
                    .get("TransactionDurationMs")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                let timeout: i64 = r
                    .get("TransactionTimeoutMs")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(i64::MAX);
                state == Some("Ongoing") && duration > timeout
            })
            .map(|r| r.get("TransactionalId").cloned().unwrap_or_default())
            .collect();
        let described = rows.len();
        // A tool run that failed prints no table at all, which must not read as "none".
        let (hanging_partitions, hanging_tables) = match &args.hanging {
            Some(h) => {
                let text = std::fs::read_to_string(h)?;
                (
                    parse_table(&text, "Topic").len(),
                    text.lines().filter(|l| l.starts_with("Topic\t")).count(),
                )
            }
            None => (0, 1),
        };
        check(
            &mut checks,
            "no transaction is open for longer than its timeout, and no partition holds a hanging one",
            hanging.is_empty() && hanging_partitions == 0 && described > 0 && hanging_tables > 0,
            format!("{described} transactional ids described, {} ongoing past their timeout{}; find-hanging on {hanging_tables} brokers: {hanging_partitions} partitions", hanging.len(), sample(&hanging)),
        );
    }

    // PostgreSQL against the fold.
    let db = order_saga::db::connect(&config.database_url, Duration::from_secs(60)).await?;
    // The sink may still be applying the last batches: the table gets a minute to catch up.
    let mut table: HashMap<String, (String, i64)> = HashMap::new();
    for _ in 0..60 {
        table.clear();
        let rows = db
            .query("SELECT order_id, status, version FROM orders", &[])
            .await?;
        for row in rows {
            table.insert(row.get(0), (row.get(1), row.get(2)));
        }
        if table.len() == fold.len() && fold.iter().all(|(k, v)| table.get(k) == Some(v)) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut pg_missing = Vec::new();
    let mut pg_differs = Vec::new();
    for (id, want) in &fold {
        match table.get(id) {
            None => pg_missing.push(id.clone()),
            Some(got) if got != want => {
                pg_differs.push(format!("{id}: table {got:?}, changelog {want:?}"))
            }
            Some(_) => {}
        }
    }
    let pg_extra: Vec<&String> = table.keys().filter(|k| !fold.contains_key(*k)).collect();
    figures.insert("pg_rows", json!(table.len()));
    check(
        &mut checks,
        "the PostgreSQL orders table equals the last order-status of every key",
        pg_missing.is_empty() && pg_differs.is_empty() && pg_extra.is_empty(),
        format!(
            "{} rows, {} keys in the changelog: {} missing{}, {} differing{}, {} extra{}",
            table.len(),
            fold.len(),
            pg_missing.len(),
            sample(&pg_missing),
            pg_differs.len(),
            sample(&pg_differs),
            pg_extra.len(),
            sample(&pg_extra)
        ),
    );

    // Poison records in the dead-letter topic.
    let dlq = read_topic(config, &topics.name("order-dlq"), true).await?;
    figures.insert("dlq_records", json!(dlq.len()));
    if let Some(path) = &args.poison {
        let injected: Vec<PoisonRecord> = read_lines(path)?;
        let header = |r: &Raw, name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let mut not_found = Vec::new();
        for p in &injected {
            let found = dlq.iter().find(|r| {
                header(r, "dlq.source.topic").as_deref() == Some(p.topic.as_str())
                    && header(r, "dlq.source.partition") == Some(p.partition.to_string())
                    && header(r, "dlq.source.offset") == Some(p.offset.to_string())
            });
            let ok = found.is_some_and(|r| {
                r.key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    == p.key
                    && r.value.as_deref().map(hex) == Some(p.value_hex.clone())
                    && header(r, "dlq.error.kind").is_some_and(|k| !k.is_empty())
                    && header(r, "dlq.error.message").is_some_and(|m| !m.is_empty())
            });
            if !ok {
                not_found.push(format!("{} {}@{}", p.kind, p.partition, p.offset));
            }
        }
        let mut dlq_kinds: BTreeMap<String, u64> = BTreeMap::new();
        for r in &dlq {
            *dlq_kinds
                .entry(header(r, "dlq.error.kind").unwrap_or_default())
                .or_default() += 1;
        }
        figures.insert("dlq_kinds", json!(dlq_kinds));
        check(
            &mut checks,
            "every injected poison record is in order-dlq once, with its key, value and dlq.* headers",
            !injected.is_empty() && not_found.is_empty() && dlq.len() == injected.len(),
            format!(
                "{} injected, {} dead letters in all, {} not found or incomplete{}",
                injected.len(),
                dlq.len(),
                not_found.len(),
                sample(&not_found)
            ),
        );
    }

    // Recovery after each disruption, and the zombie.
    let mut recoveries = Vec::new();
    if let Some(path) = &args.events {
        let events: Vec<Event> = read_lines(path)?;
        for e in &events {
            if !matches!(
                e.kind.as_str(),
                "kill_processor" | "kill_broker" | "stall_start" | "zombie_stop" | "pg_down"
            ) {
                continue;
            }
            // A processor's own partitions (its log's last assignment before the event);
            // for a broker or the database, every partition that was busy just before.
            // The first order-status record each shows afterwards; the slowest is when
            // they all work again.
            let victim = e
                .rest
                .get("pid")
                .and_then(serde_json::Value::as_i64)
                .and_then(|pid| log_of(&events, pid))
                .and_then(|log| {
                    let dir = path.parent()?.join("logs");
                    assigned_before(&dir.join(log), e.t_ms)
                });
            let mut worst: Option<i64> = None;
            let mut watched = Vec::new();
            for (p, times) in &status_times {
                let concerned = match &victim {
                    Some(parts) => parts.contains(p),
                    None => times.iter().any(|t| *t <= e.t_ms && *t > e.t_ms - 5_000),
                };
                if !concerned {
                    continue;
                }
                watched.push(*p);
                if let Some(first) = times.iter().filter(|t| **t > e.t_ms).min() {
                    worst = Some(worst.map_or(first - e.t_ms, |w: i64| w.max(first - e.t_ms)));
                }
            }
            recoveries.push(json!({
                "t_ms": e.t_ms, "kind": e.kind, "details": e.rest,
                "partitions": watched,
                "partitions_from": if victim.is_some() { "victim's assignment" } else { "busy in the 5 s before" },
                "recovery_ms": worst,
            }));
        }
        figures.insert("disruptions", json!(recoveries));

        let at = |kind: &str| events.iter().find(|e| e.kind == kind).map(|e| e.t_ms);
        if let Some(fencing) = zombie_fencing(config, args, &events, &logs_dir(path))? {
            let (passed, detail) = fencing;
            check(
                &mut checks,
                "the zombie was fenced: no commit of its epoch after SIGCONT, and its replacement kept the newest epoch (coordinator log, transaction markers)",
                passed,
                detail,
            );
        }
        if let (Some(cont), Some(exit)) = (at("zombie_cont"), at("zombie_exit")) {
            let exit_ms = exit - cont;
            figures.insert("zombie_exit_ms", json!(exit_ms));
            if let Some(log) = &args.zombie_log {
                let replaced = at("zombie_replacement").unwrap_or(cont);
                let progress = zombie_progress(&std::fs::read_to_string(log)?, replaced);
                // Informational only: a commit made just before SIGSTOP shows in the first
                // progress line after SIGCONT, so this is no evidence either way.
                figures.insert(
                    "zombie_progress_commits_after_replacement",
                    json!(progress.commits_after),
                );
            }
            let code = events
                .iter()
                .find(|e| e.kind == "zombie_exit")
                .and_then(|e| e.rest.get("code").cloned())
                .map_or_else(|| "?".into(), |c| c.to_string());
            check(
                &mut checks,
                "the zombie exits within 5 s of SIGCONT",
                exit_ms <= 5_000,
                format!("{exit_ms} ms, exit code {code}"),
            );
        } else if at("zombie_stop").is_some() {
            check(
                &mut checks,
                "the zombie exits after SIGCONT",
                false,
                "no zombie_exit event: it did not exit within the script's wait".into(),
            );
        }
    }

    let passed = checks.iter().all(|c| c.passed);
    figures.insert("verify_seconds", json!(started.elapsed().as_secs_f64()));
    let lost_n = lost.len();
    let dup_n = duplicated_cmds.len() + duplicated_versions.len();
    let mism_n = mismatched.len();
    let card = json!({
        "name": args.name,
        "passed": passed,
        "lost": lost_n,
        "duplicated": dup_n,
        "mismatched": mism_n,
        "checks": checks,
        "figures": figures,
    });
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# chaos scorecard: {} — {}\n",
        args.name,
        if passed { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(
        md,
        "lost **{lost_n}** · duplicated **{dup_n}** · mismatched **{mism_n}** · orders {} · zombie exit {}\n",
        orders.len(),
        figures
            .get("zombie_exit_ms")
            .map(|v| format!("{v} ms after SIGCONT"))
            .unwrap_or_else(|| "n/a".into())
    );
    let _ = writeln!(md, "| check | result | detail |\n|---|---|---|");
    for c in &checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            if c.passed { "pass" } else { "**FAIL**" },
            c.detail.replace('|', "/")
        );
    }
    let _ = writeln!(md, "\n| disruption | at (s since start) | partitions watched | first order-status on all of them after |\n|---|---|---|---|");
    let t0 = recoveries
        .first()
        .and_then(|r| r["t_ms"].as_i64())
        .unwrap_or(0);
    let start = args
        .events
        .as_deref()
        .and_then(|p| read_lines::<Event>(p).ok())
        .and_then(|e| e.first().map(|e| e.t_ms))
        .unwrap_or(t0);
    for r in &recoveries {
        let details: Vec<String> = r["details"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} {} | {:.1} | {} ({}) | {} |",
            r["kind"].as_str().unwrap_or("?"),
            details.join(" "),
            (r["t_ms"].as_i64().unwrap_or(0) - start) as f64 / 1000.0,
            r["partitions"],
            r["partitions_from"].as_str().unwrap_or(""),
            r["recovery_ms"]
                .as_i64()
                .map(|g| format!("{g} ms"))
                .unwrap_or_else(|| "none after".into())
        );
    }
    let _ = writeln!(md, "\n| figure | value |\n|---|---|");
    for (k, v) in &figures {
        if *k != "disruptions" {
            let _ = writeln!(md, "| {k} | {v} |");
        }
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("scorecard.md"), &md)?;
    std::fs::write(
        args.out.join("scorecard.json"),
        serde_json::to_string_pretty(&card)?,
    )?;
    print!("{md}");
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_saga_tools::load::{sample_invalid_order, sample_order, InvalidKind, Rng};

    fn behaviour(fail_rate: f64, retriable_rate: f64) -> Behaviour {
        SimulateArgs {
            fail_rate,
            retriable_rate,
            ..SimulateArgs::default()
        }
        .behaviour()
        .unwrap()
    }

    fn order(seed: u64) -> OrderCreate {
        OrderCreate::from(&sample_order(&mut Rng::new(seed), 1_000))
    }

    #[test]
    fn an_order_whose_services_all_succeed_is_planned_completed_with_the_four_forward_commands() {
        let o = order(1);
        let p = plan(&o, &behaviour(0.0, 0.0), 3).unwrap();
        assert_eq!(p.status, "COMPLETED");
        let actions: Vec<Action> = p.commands.iter().map(|(_, a)| *a).collect();
        assert_eq!(
            actions,
            [
                Action::Reserve,
                Action::Charge,
                Action::Schedule,
                Action::Send
            ]
        );
        assert_eq!(p.commands[0].0, command_id(&o.order_id, Action::Reserve, 1));
    }

    #[test]
    fn a_reservation_that_always_fails_for_good_is_planned_failed_after_one_attempt() {
        let p = plan(&order(2), &behaviour(1.0, 0.0), 3).unwrap();
        assert_eq!(p.status, "FAILED");
        assert_eq!(p.commands.len(), 1);
    }

    #[test]
    fn a_retriable_failure_is_planned_as_every_attempt_up_to_the_limit() {
        let o = order(3);
        let p = plan(&o, &behaviour(1.0, 1.0), 3).unwrap();
        assert_eq!(p.status, "FAILED");
        let ids: Vec<&str> = p.commands.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            (1..=3)
                .map(|n| command_id(&o.order_id, Action::Reserve, n))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_invalid_order_is_planned_failed_with_no_command() {
        for kind in InvalidKind::ALL {
            let o = OrderCreate::from(&sample_invalid_order(&mut Rng::new(4), 1_000, kind));
            let p = plan(&o, &behaviour(0.0, 0.0), 3).unwrap();
            assert_eq!((p.status, p.commands.len()), ("FAILED", 0), "{kind:?}");
        }
    }

    #[test]
    fn a_simulator_that_drops_commands_makes_the_plan_unknowable() {
        let b = SimulateArgs {
            drop_rate: 1.0,
            ..SimulateArgs::default()
        }
        .behaviour()
        .unwrap();
        assert!(plan(&order(5), &b, 3).is_err());
    }

    #[test]
    fn a_log_line_time_is_read_as_epoch_milliseconds() {
        let line = "2026-12-01T07:00:03.106276Z ERROR librdkafka: something";
        assert_eq!(log_time_ms(line), Some(1_796_108_403_106));
        assert_eq!(log_time_ms("not a log line"), None);
    }

    #[test]
    fn a_describe_table_with_an_empty_last_column_is_read_by_header_name() {
        let text = "CoordinatorId\tTransactionalId  \tProducerId\tProducerEpoch\tTransactionState\tTransactionTimeoutMs\tCurrentTransactionStartTimeMs\tTransactionDurationMs\tTopicPartitions\t\n\
                    1            \tc1-0\t2000      \t2            \tOngoing         \t10000               \t1796109525364\t29496                \t               \t\n";
        let rows = parse_table(text, "CoordinatorId");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["TransactionState"], "Ongoing");
        assert_eq!(rows[0]["TransactionTimeoutMs"], "10000");
        assert_eq!(rows[0]["TransactionDurationMs"], "29496");
    }

    #[test]
    fn a_processor_holds_its_last_assignment_until_a_revocation() {
        let dir = std::env::temp_dir().join(format!("chaos-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("p0-0.log");
        std::fs::write(
            &log,
            "2026-12-01T07:00:00.000000Z  INFO order_saga::processor::rebalance: partitions assigned partitions={0, 1}\n\
             2026-12-01T07:00:10.000000Z  INFO order_saga::processor::rebalance: partitions revoked partitions={0, 1}\n",
        )
        .unwrap();
        let t = log_time_ms("2026-12-01T07:00:05.000000Z x").unwrap();
        assert_eq!(assigned_before(&log, t), Some(BTreeSet::from([0, 1])));
        assert_eq!(assigned_before(&log, t + 10_000), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn record(t_ms: i64, epoch: i32, state: TxnState) -> TxnLogRecord {
        TxnLogRecord {
            t_ms,
            transactional_id: "c1-0".into(),
            generation: (2000, epoch),
            state,
        }
    }

    fn marker(t_ms: i64, epoch: i32, commit: bool) -> Marker {
        Marker {
            partition: "c1-order-status-0".into(),
            offset: t_ms,
            t_ms,
            generation: (2000, epoch),
            commit,
        }
    }

    /// The seed-11 run: the zombie (epoch 1) committed 2 ms before SIGSTOP, the replacement
    /// initialised epoch 2 after it started, and nothing of epoch 1 came after SIGCONT.
    const TIMES: ZombieTimes = ZombieTimes {
        started: Some(4_000),
        stopped: 10_000,
        replaced: 25_000,
        resumed: 30_000,
        gone: Some(30_200),
        replacement_end: None,
    };

    fn zombie_then_replacement() -> (Vec<TxnLogRecord>, Vec<Marker>) {
        use TxnState::*;
        let log = vec![
            record(1_000, 0, Empty),
            record(5_000, 1, Empty),
            record(9_900, 1, Ongoing),
            record(9_990, 1, PrepareCommit),
            record(10_050, 1, CompleteCommit),
            record(26_000, 2, Empty),
            record(27_000, 2, Ongoing),
            record(27_100, 2, PrepareCommit),
            record(27_150, 2, CompleteCommit),
        ];
        let markers = vec![
            marker(9_998, 1, true),
            marker(27_120, 2, true),
            // Another producer's marker, which says nothing about this id.
            Marker {
                generation: (1000, 0),
                ..marker(31_000, 0, true)
            },
        ];
        (log, markers)
    }

    fn judge(
        times: &ZombieTimes,
        log: &[TxnLogRecord],
        markers: &[Marker],
        fenced: Option<&str>,
        described: Option<Generation>,
    ) -> FencingVerdict {
        judge_fencing(
            times,
            &FencingEvidence {
                txn_log: log,
                markers,
                replacement_fenced: fenced,
                described,
            },
        )
    }

    #[test]
    fn a_transaction_log_dump_is_read_once_per_partition_and_offset() {
        let line = r#"| offset: 9 CreateTime: 1796114450979 keySize: 21 valueSize: 35 sequence: -1 headerKeys: [] key: {"type":"0","data":{"transactionalId":"c1-0"}} payload: {"version":"1","data":{"producerId":2000,"producerEpoch":1,"transactionTimeoutMs":10000,"transactionStatus":0,"transactionPartitions":null,"transactionLastUpdateTimestampMs":1796114450979,"transactionStartTimestampMs":-1}}"#;
        let text = format!(
            "Dumping /s/kafka/node-1/data/__transaction_state-7/00000000000000000000.log\n\
             Log starting offset: 0\n{line}\n\
             | offset: 10 CreateTime: 1796114450990 keySize: 21 valueSize: -1 sequence: -1 headerKeys: [] key: {{\"type\":\"0\",\"data\":{{\"transactionalId\":\"c1-0\"}}}} payload: <DELETE>\n\
             Dumping /s/kafka/node-2/data/__transaction_state-7/00000000000000000000.log\n{line}\n"
        );
        assert_eq!(
            parse_txn_log(&text),
            [TxnLogRecord {
                t_ms: 1_796_114_450_979,
                transactional_id: "c1-0".into(),
                generation: (2000, 1),
                state: TxnState::Empty,
            }]
        );
    }

    #[test]
    fn control_batches_of_a_deep_dump_become_markers_and_data_batches_do_not() {
        let text = "Dumping /s/kafka/node-3/data/c1-order-status-0/00000000000000000000.log\n\
            baseOffset: 0 lastOffset: 0 count: 1 baseSequence: 0 lastSequence: 0 producerId: 2000 producerEpoch: 0 partitionLeaderEpoch: 0 isTransactional: true isControl: false deleteHorizonMs: OptionalLong.empty position: 0 CreateTime: 1796114431764 size: 888 magic: 2 compresscodec: lz4 crc: 582123808 isvalid: true\n\
            | offset: 0 CreateTime: 1796114431764 keySize: 36 valueSize: 800 sequence: 0 headerKeys: []\n\
            baseOffset: 1 lastOffset: 1 count: 1 baseSequence: -1 lastSequence: -1 producerId: 2000 producerEpoch: 0 partitionLeaderEpoch: 0 isTransactional: true isControl: true deleteHorizonMs: OptionalLong.empty position: 888 CreateTime: 1796114433631 size: 78 magic: 2 compresscodec: none crc: 1953288113 isvalid: true\n\
            | offset: 1 CreateTime: 1796114433631 keySize: 4 valueSize: 6 sequence: -1 headerKeys: [] endTxnMarker: COMMIT coordinatorEpoch: 0\n\
            baseOffset: 7 lastOffset: 7 count: 1 baseSequence: -1 lastSequence: -1 producerId: 2000 producerEpoch: 2 partitionLeaderEpoch: 0 isTransactional: true isControl: true deleteHorizonMs: OptionalLong.empty position: 3419 CreateTime: 1796114453724 size: 78 magic: 2 compresscodec: none crc: 2602880225 isvalid: true\n\
            | offset: 7 CreateTime: 1796114453724 keySize: 4 valueSize: 6 sequence: -1 headerKeys: [] endTxnMarker: ABORT coordinatorEpoch: 0\n";
        assert_eq!(
            parse_markers(text),
            [
                Marker {
                    partition: "c1-order-status-0".into(),
                    offset: 1,
                    t_ms: 1_796_114_433_631,
                    generation: (2000, 0),
                    commit: true,
                },
                Marker {
                    partition: "c1-order-status-0".into(),
                    offset: 7,
                    t_ms: 1_796_114_453_724,
                    generation: (2000, 2),
                    commit: false,
                },
            ]
        );
    }

    #[test]
    fn a_zombie_whose_last_commit_landed_just_before_sigstop_was_fenced() {
        let (log, markers) = zombie_then_replacement();
        let v = judge(&TIMES, &log, &markers, None, Some((2000, 2)));
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!(
            (v.zombie, v.replacement),
            (Some((2000, 1)), Some((2000, 2)))
        );
    }

    #[test]
    fn a_commit_of_the_zombies_epoch_after_sigcont_fails() {
        let (mut log, mut markers) = zombie_then_replacement();
        log.push(record(30_100, 1, TxnState::PrepareCommit));
        markers.push(marker(30_150, 1, true));
        let v = judge(&TIMES, &log, &markers, None, Some((2000, 2)));
        assert_eq!(v.problems.len(), 2, "{:?}", v.problems);
        assert!(v.problems[0].contains("accepted 1 commits of producer 2000 epoch 1"));
        assert!(v.problems[1].contains("1 COMMIT markers"));
    }

    #[test]
    fn the_coordinators_abort_of_the_zombies_open_transaction_is_not_a_fence_of_the_replacement() {
        use TxnState::*;
        let (mut log, mut markers) = zombie_then_replacement();
        // The zombie was stopped inside a transaction: the replacement's InitProducerId
        // makes the coordinator abort it with a bumped epoch, then hands out the next one.
        log.retain(|r| r.generation.1 < 2);
        log.push(record(10_005, 1, Ongoing));
        log.extend([
            record(25_500, 2, PrepareAbort),
            record(25_600, 2, CompleteAbort),
            record(26_000, 3, Empty),
            record(27_100, 3, PrepareCommit),
        ]);
        markers.retain(|m| m.generation.1 < 2);
        markers.extend([marker(25_550, 2, false), marker(27_120, 3, true)]);
        let v = judge(&TIMES, &log, &markers, None, Some((2000, 3)));
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!(v.replacement, Some((2000, 3)));
    }

    #[test]
    fn a_zombie_stopped_before_it_initialised_fences_its_replacement_when_it_wakes() {
        use TxnState::*;
        let (mut log, mut markers) = zombie_then_replacement();
        // Stopped 1 s into its start, before its InitProducerId: epoch 1 is its
        // predecessor's, and it initialises epoch 3 as soon as it wakes.
        let times = ZombieTimes {
            started: Some(9_000),
            gone: None,
            ..TIMES
        };
        log.push(record(30_005, 3, Empty));
        markers.push(marker(30_150, 3, false));
        let v = judge(&times, &log, &markers, None, Some((2000, 3)));
        let all = v.problems.join(" | ");
        assert!(
            all.contains("producer 2000 epoch 3 began by an InitProducerId 5005 ms after the replacement started, 5 ms after SIGCONT"),
            "{all}"
        );
        assert!(
            all.contains("1 markers of a generation above the replacement's"),
            "{all}"
        );
        assert!(
            all.contains("the coordinator holds producer 2000 epoch 3"),
            "{all}"
        );
        assert!(
            v.facts[0].starts_with("the zombie had not initialised transactions when it was stopped 1000 ms after its start"),
            "{:?}",
            v.facts
        );
    }

    #[test]
    fn a_fence_the_replacement_logs_after_the_script_stalled_it_is_not_the_zombies() {
        let log = "2026-12-01T11:07:17.647916Z  INFO order_saga::processor: processor started\n\
                   2026-12-01T11:07:37.952743Z ERROR librdkafka: TXNERR: This instance has been fenced by a newer instance\n";
        let stalled_at = log_time_ms("2026-12-01T11:07:22.700000Z x").expect("time");
        assert_eq!(replacement_fenced_line(log, Some(stalled_at)), None);
        assert!(replacement_fenced_line(log, None).is_some());
        let later = log_time_ms("2026-12-01T11:07:40.000000Z x").expect("time");
        assert!(replacement_fenced_line(log, Some(later)).is_some());
    }

    #[test]
    fn a_replacement_whose_log_says_it_was_fenced_with_no_generation_of_its_own_fails() {
        let (log, markers) = zombie_then_replacement();
        let v = judge(
            &TIMES,
            &log,
            &markers,
            Some("ERROR order_saga: order-saga failed error=\"processor: fenced: another instance started\""),
            Some((2000, 2)),
        );
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].starts_with("the replacement's log says it was fenced"));
    }

    #[test]
    fn an_epoch_that_begins_while_the_zombie_is_awake_fences_the_replacement() {
        use TxnState::*;
        let (mut log, mut markers) = zombie_then_replacement();
        // Even committed with: in the zombie's waking moments the broker cannot tell who
        // initialised it.
        log.extend([record(30_100, 3, Empty), record(30_150, 3, PrepareCommit)]);
        markers.push(marker(30_160, 3, true));
        let v = judge(&TIMES, &log, &markers, None, Some((2000, 3)));
        assert!(
            v.problems[0].contains("while the zombie was awake: the replacement was fenced"),
            "{:?}",
            v.problems
        );
    }

    /// The seed-7 run: a broker bounce timed out the replacement's messages, librdkafka
    /// bumped its epoch to abort, and the replacement left the group before it committed.
    #[test]
    fn an_epoch_that_begins_after_the_zombie_is_gone_is_the_replacements_own() {
        let (mut log, mut markers) = zombie_then_replacement();
        log.push(record(40_000, 3, TxnState::Empty));
        markers.push(marker(40_010, 2, false));
        let times = ZombieTimes {
            replacement_end: Some(40_600),
            ..TIMES
        };
        let v = judge(&times, &log, &markers, None, Some((2000, 4)));
        assert_eq!(v.problems, Vec::<String>::new());
        assert!(
            v.facts
                .iter()
                .any(|f| f.starts_with("the replacement moved on to producer 2000 epoch 3 itself")),
            "{:?}",
            v.facts
        );
    }

    #[test]
    fn a_fence_the_replacement_brought_on_itself_after_the_zombie_was_gone_is_not_the_zombies() {
        use TxnState::*;
        let (mut log, mut markers) = zombie_then_replacement();
        // Its transaction outlived the timeout during a broker outage: the coordinator
        // aborted it with the next epoch, and the replacement's next call was fenced.
        log.extend([record(45_000, 2, Ongoing), record(56_000, 3, PrepareAbort)]);
        markers.push(marker(56_010, 3, false));
        let times = ZombieTimes {
            replacement_end: Some(56_500),
            ..TIMES
        };
        let v = judge(
            &times,
            &log,
            &markers,
            Some("ERROR librdkafka: Fatal error: Local: This instance has been fenced by a newer instance"),
            None,
        );
        assert_eq!(v.problems, Vec::<String>::new());
    }

    #[test]
    fn an_epoch_begun_after_the_replacement_was_killed_is_its_successors() {
        use TxnState::*;
        let (mut log, mut markers) = zombie_then_replacement();
        log.extend([record(35_100, 3, Empty), record(35_500, 3, PrepareCommit)]);
        markers.push(marker(35_510, 3, true));
        let times = ZombieTimes {
            replacement_end: Some(35_000),
            ..TIMES
        };
        let v = judge(&times, &log, &markers, None, Some((2000, 3)));
        assert_eq!(v.problems, Vec::<String>::new());
    }

    #[test]
    fn a_replacement_that_never_initialised_fails_rather_than_passes_unseen() {
        let (mut log, markers) = zombie_then_replacement();
        log.retain(|r| r.generation.1 < 2);
        let v = judge(&TIMES, &log, &markers, None, None);
        assert!(
            v.problems[0].contains("never got an epoch of its own"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn the_zombies_progress_counter_counts_a_commit_logged_after_sigcont() {
        let log = "2026-12-01T07:00:04.500000Z  INFO order_saga::processor::metrics: processor progress records_in=7242 txn_committed=119 txn_aborted=0\n\
                   2026-12-01T07:00:26.100000Z  INFO order_saga::processor::metrics: processor counters at failure records_in=7352 txn_committed=120 txn_aborted=0\n\
                   2026-12-01T07:00:26.200000Z ERROR order_saga: order-saga failed error=\"processor: this instance was out of its group\"\n";
        let replaced = log_time_ms("2026-12-01T07:00:20.000000Z x").unwrap();
        let p = zombie_progress(log, replaced);
        assert_eq!(p.commits_after, Some(1));
        assert_eq!(
            p.ended.as_deref(),
            Some("\"processor: this instance was out of its group\"")
        );
    }
}
