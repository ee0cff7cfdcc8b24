//! Reading orders back from the PostgreSQL order-status table: `order-saga status <id>`
//! and `order-saga report`.
//!
//! Every number of one report comes from a single statement, so it describes one
//! snapshot even while the sink is writing. Times are printed in UTC.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;
use tracing::info;

use crate::saga::Status;

/// Flags of `order-saga report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// List orders in flight that have not changed for this many seconds as stuck.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stuck_after_s: u64,
    /// Wait until at least N orders exist and every one of them is terminal, then print.
    #[arg(long, value_name = "N")]
    pub wait_for: Option<u64>,
    /// How long --wait-for waits before it gives up (printing the report and failing).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only orders created at or after this time (Unix epoch milliseconds), e.g. one run's
    /// orders in a table that keeps every earlier run's.
    #[arg(long, value_name = "EPOCH_MS", default_value_t = 0)]
    pub since_ms: i64,
}

/// Why a report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected data from PostgreSQL: {0}")]
    Data(String),
    /// `--wait-for` ran out of time; the report was printed anyway.
    #[error(
        "gave up after {waited_s} s waiting for {wanted} orders, all terminal: \
         {orders} orders, {terminal} terminal"
    )]
    WaitTimedOut {
        wanted: u64,
        orders: u64,
        terminal: u64,
        waited_s: u64,
    },
}

/// Create → terminal latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The numbers of a report, from one snapshot of `orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// All orders.
    pub orders: u64,
    /// Orders per status, every status present (zero if none).
    pub by_status: BTreeMap<String, u64>,
    /// Orders COMPLETED, FAILED or CANCELED.
    pub terminal: u64,
    /// Orders not yet terminal.
    pub in_flight: u64,
    /// From `created_at` to the first terminal time (`completed_at`, `failed_at` or
    /// `canceled_at`) over terminal orders; `None` without any.
    pub latency_ms: Option<Latency>,
    /// Terminal orders divided by the seconds from the earliest `created_at` to the
    /// latest terminal time among them; `None` without any or over a zero span.
    pub orders_per_s: Option<f64>,
    /// Seconds since the longest-unchanged order in flight last changed.
    pub oldest_in_flight_s: Option<f64>,
}

impl Summary {
    /// Orders with `status`.
    pub fn count(&self, status: Status) -> u64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }
}

/// An order in flight that has not changed for a while.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StuckOrder {
    pub order_id: String,
    pub status: String,
    pub version: i64,
    pub updated_at: String,
    pub stalled_s: f64,
    pub reason: Option<String>,
}

/// The stuck orders of a report: the first `limit` and how many there are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stuck {
    pub after_s: u64,
    pub total: u64,
    pub orders: Vec<StuckOrder>,
}

/// How many stuck orders a report lists.
const STUCK_LIMIT: i64 = 20;

/// `timestamptz` as `2026-11-25T10:15:00.123Z`, independent of the session's time zone.
fn utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

const TERMINAL: &str = "('COMPLETED', 'FAILED', 'CANCELED')";

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The report's numbers over every order, from one statement (one snapshot).
pub async fn summary(client: &Client) -> Result<Summary, ReportError> {
    summary_since(client, 0).await
}

/// The report's numbers over the orders created at or after `since_ms` (epoch ms).
pub async fn summary_since(client: &Client, since_ms: i64) -> Result<Summary, ReportError> {
    let sql = format!(
        "WITH o AS (
            SELECT status, created_at, updated_at,
                   CASE WHEN status IN {TERMINAL}
                        THEN COALESCE(LEAST(completed_at, failed_at, canceled_at), updated_at)
                   END AS done_at
            FROM orders WHERE created_at >= to_timestamp($1::float8 / 1000)),
         counts AS (SELECT status, count(*) AS n FROM o GROUP BY status),
         t AS (
            SELECT count(*) AS n,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP
                       (ORDER BY extract(epoch FROM done_at - created_at)::float8 * 1000) AS pct,
                   max(extract(epoch FROM done_at - created_at)::float8 * 1000) AS max_ms,
                   extract(epoch FROM max(done_at) - min(created_at))::float8 AS span_s
            FROM o WHERE done_at IS NOT NULL),
         f AS (
            SELECT count(*) AS n,
                   extract(epoch FROM now() - min(updated_at))::float8 AS oldest_s
            FROM o WHERE done_at IS NULL)
         SELECT (SELECT coalesce(jsonb_object_agg(status, n), '{{}}'::jsonb) FROM counts)::text,
                t.n, t.pct, t.max_ms, t.span_s, f.n, f.oldest_s
         FROM t, f"
    );
    let row = client.query_one(&sql, &[&(since_ms as f64)]).await?;
    let counts: String = row.try_get(0)?;
    let counts: BTreeMap<String, u64> =
        serde_json::from_str(&counts).map_err(|e| ReportError::Data(e.to_string()))?;
    let mut by_status: BTreeMap<String, u64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    by_status.extend(counts);
    let terminal = to_u64(row.try_get(1)?);
    let pct: Option<Vec<f64>> = row.try_get(2)?;
    let max_ms: Option<f64> = row.try_get(3)?;
    let span_s: Option<f64> = row.try_get(4)?;
    let in_flight = to_u64(row.try_get(5)?);
    let oldest_in_flight_s: Option<f64> = row.try_get(6)?;
    let latency_ms = match (pct.as_deref(), max_ms) {
        (Some([p50, p95, p99]), Some(max)) => Some(Latency {
            p50: *p50,
            p95: *p95,
            p99: *p99,
            max,
        }),
        _ => None,
    };
    let orders_per_s = span_s.filter(|s| *s > 0.0).map(|s| terminal as f64 / s);
    Ok(Summary {
        orders: by_status.values().sum(),
        by_status,
        terminal,
        in_flight,
        latency_ms,
        orders_per_s,
        oldest_in_flight_s,
    })
}

/// Orders in flight (the `orders_in_flight` view) unchanged for more than `after_s`
/// seconds, longest-unchanged first, at most `limit`; and how many there are.
pub async fn stuck_orders(client: &Client, after_s: u64, limit: i64) -> Result<Stuck, ReportError> {
    let sql = format!(
        "SELECT order_id, status, version, {}, extract(epoch FROM stalled_for)::float8, reason,
                count(*) OVER ()
         FROM orders_in_flight
         WHERE stalled_for > make_interval(secs => $1::float8)
         ORDER BY updated_at, order_id
         LIMIT $2",
        utc("updated_at")
    );
    let rows = client.query(&sql, &[&(after_s as f64), &limit]).await?;
    let mut total = 0;
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        total = to_u64(row.try_get(6)?);
        orders.push(StuckOrder {
            order_id: row.try_get(0)?,
            status: row.try_get(1)?,
            version: row.try_get(2)?,
            updated_at: row.try_get(3)?,
            stalled_s: row.try_get(4)?,
            reason: row.try_get(5)?,
        });
    }
    Ok(Stuck {
        after_s,
        total,
        orders,
    })
}

/// Prints the order `order_id` and its history (by version); false if there is no such
/// order.
pub async fn print_order(client: &Client, order_id: &str) -> Result<bool, ReportError> {
    let times = [
        "created_at",
        "updated_at",
        "reserved_at",
        "paid_at",
        "shipping_scheduled_at",
        "completed_at",
        "failed_at",
        "canceled_at",
    ];
    let sql = format!(
        "SELECT order_id, customer_id, status, version, total_minor, currency, items::text,
                shipping_address::text, reason, {}
         FROM orders WHERE order_id = $1",
        times.iter().map(|c| utc(c)).collect::<Vec<_>>().join(", ")
    );
    let Some(row) = client.query_opt(&sql, &[&order_id]).await? else {
        return Ok(false);
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("order_id", row.try_get(0)?),
        ("customer_id", row.try_get(1)?),
        ("status", row.try_get(2)?),
        ("version", row.try_get::<_, i64>(3)?.to_string()),
        (
            "total_minor",
            format!(
                "{} {}",
                row.try_get::<_, i64>(4)?,
                row.try_get::<_, String>(5)?
            ),
        ),
        ("items", row.try_get(6)?),
        ("shipping_address", dash(row.try_get(7)?)),
        ("reason", dash(row.try_get(8)?)),
    ];
    for (i, name) in times.iter().enumerate() {
        fields.push((name, dash(row.try_get(9 + i)?)));
    }
    let history_sql = format!(
        "SELECT version, status, {}, reason FROM order_status_history
         WHERE order_id = $1 ORDER BY version",
        utc("changed_at")
    );
    let mut history = Vec::new();
    for h in client.query(&history_sql, &[&order_id]).await? {
        history.push([
            h.try_get::<_, i64>(0)?.to_string(),
            h.try_get(1)?,
            h.try_get(2)?,
            dash(h.try_get(3)?),
        ]);
    }
    write_out(&format_order(&fields, &history))?;
    Ok(true)
}

fn dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

fn format_order(fields: &[(&str, String)], history: &[[String; 4]]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<22} {value}");
    }
    let _ = writeln!(out, "\nhistory ({} changes)", history.len());
    let header = [
        "version".to_owned(),
        "status".into(),
        "changed_at".into(),
        "reason".into(),
    ];
    out.push_str(&table(std::iter::once(&header).chain(history)));
    out
}

/// Left-aligned columns, two spaces apart, indented by two.
fn table<'a, const N: usize>(rows: impl Iterator<Item = &'a [String; N]> + Clone) -> String {
    let mut widths = [0usize; N];
    for row in rows.clone() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
}

fn write_out(text: &str) -> Result<(), ReportError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Waits (polling) until at least `wanted` orders exist and all are terminal; returns
/// the counts it saw last, and whether it got there before the timeout.
async fn wait_for(
    client: &Client,
    wanted: u64,
    since_ms: i64,
    timeout: Duration,
) -> Result<(u64, u64, bool), ReportError> {
    let started = tokio::time::Instant::now();
    let mut next_log = started + Duration::from_secs(10);
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE status IN {TERMINAL}) FROM orders
         WHERE created_at >= to_timestamp($1::float8 / 1000)"
    );
    loop {
        let row = client.query_one(&sql, &[&(since_ms as f64)]).await?;
        let orders = to_u64(row.try_get(0)?);
        let terminal = to_u64(row.try_get(1)?);
        if orders >= wanted && terminal == orders {
            return Ok((orders, terminal, true));
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(started) >= timeout {
            return Ok((orders, terminal, false));
        }
        if now >= next_log {
            info!(orders, terminal, wanted, "waiting for orders to finish");
            next_log = now + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints counts per status, create → terminal latency percentiles, throughput and stuck
/// orders; with `--wait-for`, first waits for the orders to finish.
pub async fn print_report(client: &Client, args: &ReportArgs) -> Result<(), ReportError> {
    let mut timed_out = None;
    if let Some(wanted) = args.wait_for {
        let (orders, terminal, done) = wait_for(
            client,
            wanted,
            args.since_ms,
            Duration::from_secs(args.timeout_s),
        )
        .await?;
        if !done {
            timed_out = Some(ReportError::WaitTimedOut {
                wanted,
                orders,
                terminal,
                waited_s: args.timeout_s,
            });
        }
    }
    let summary = summary_since(client, args.since_ms).await?;
    let stuck = stuck_orders(client, args.stuck_after_s, STUCK_LIMIT).await?;
    let text = if args.json {
        #[derive(Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            summary: &'a Summary,
            stuck: &'a Stuck,
        }
        let mut json = serde_json::to_string_pretty(&Report {
            summary: &summary,
            stuck: &stuck,
        })
        .map_err(|e| ReportError::Data(e.to_string()))?;
        json.push('\n');
        json
    } else {
        format_report(&summary, &stuck)
    };
    write_out(&text)?;
    match timed_out {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn format_report(s: &Summary, stuck: &Stuck) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:>10}", "orders", s.orders);
    for status in Status::ALL {
        let _ = writeln!(out, "  {:<22} {:>10}", status.as_str(), s.count(status));
    }
    let _ = writeln!(out, "{:<24} {:>10}", "terminal", s.terminal);
    let _ = writeln!(out, "{:<24} {:>10}", "in flight", s.in_flight);
    if let Some(oldest) = s.oldest_in_flight_s {
        let _ = writeln!(out, "  {:<22} {:>10.0}", "oldest unchanged (s)", oldest);
    }
    let _ = writeln!(
        out,
        "\ncreate -> terminal latency (ms, over terminal orders)"
    );
    match s.latency_ms {
        Some(l) => {
            for (name, v) in [
                ("p50", l.p50),
                ("p95", l.p95),
                ("p99", l.p99),
                ("max", l.max),
            ] {
                let _ = writeln!(out, "  {name:<22} {v:>10.1}");
            }
        }
        None => {
            let _ = writeln!(out, "  (no terminal orders)");
        }
    }
    let rate = s
        .orders_per_s
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let _ = writeln!(out, "\n{:<24} {:>10}", "orders/s", rate);
    let _ = writeln!(
        out,
        "  (terminal orders / (last terminal time - first created_at))"
    );
    let _ = writeln!(
        out,
        "\nstuck: {} in flight, unchanged for more than {} s{}",
        stuck.total,
        stuck.after_s,
        if stuck.total > stuck.orders.len() as u64 {
            format!(" (showing {})", stuck.orders.len())
        } else {
            String::new()
        }
    );
    if !stuck.orders.is_empty() {
        let header = [
            "order_id".to_owned(),
            "status".into(),
            "version".into(),
            "updated_at".into(),
            "stalled_s".into(),
            "reason".into(),
        ];
        let rows: Vec<[String; 6]> = stuck
            .orders
            .iter()
            .map(|o| {
                [
                    o.order_id.clone(),
                    o.status.clone(),
                    o.version.to_string(),
                    o.updated_at.clone(),
                    format!("{:.0}", o.stalled_s),
                    o.reason.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&table(std::iter::once(&header).chain(rows.iter())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        let mut by_status: BTreeMap<String, u64> = Status::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        by_status.insert("COMPLETED".into(), 7);
        by_status.insert("PAID".into(), 1);
        Summary {
            orders: 8,
            by_status,
            terminal: 7,
            in_flight: 1,
            latency_ms: Some(Latency {
                p50: 10.0,
                p95: 20.0,
                p99: 30.0,
                max: 40.0,
            }),
            orders_per_s: Some(3.5),
            oldest_in_flight_s: Some(90.0),
        }
    }

    #[test]
    fn the_text_report_lists_every_status_and_the_stuck_orders_in_columns() {
        let stuck = Stuck {
            after_s: 60,
            total: 21,
            orders: vec![StuckOrder {
                order_id: "o-1".into(),
                status: "PAID".into(),
                version: 3,
                updated_at: "2026-11-25T10:00:00.000Z".into(),
                stalled_s: 90.4,
                reason: None,
            }],
        };
        let text = format_report(&summary(), &stuck);
        for status in Status::ALL {
            assert!(text.contains(status.as_str()), "{text}");
        }
        assert!(
            text.contains("  COMPLETED                       7"),
            "{text}"
        );
        assert!(text.contains("p99"), "{text}");
        assert!(
            text.contains("  oldest unchanged (s)           90"),
            "{text}"
        );
        assert!(
            text.contains("21 in flight, unchanged for more than 60 s (showing 1)"),
            "{text}"
        );
        assert!(
            text.contains("  o-1       PAID    3        2026-11-25T10:00:00.000Z  90         -"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_table_reports_no_latency_instead_of_failing() {
        let mut s = summary();
        s.latency_ms = None;
        s.orders_per_s = None;
        let text = format_report(
            &s,
            &Stuck {
                after_s: 60,
                total: 0,
                orders: vec![],
            },
        );
        assert!(text.contains("(no terminal orders)"), "{text}");
        assert!(text.contains("stuck: 0 in flight"), "{text}");
    }

    #[test]
    fn the_order_view_aligns_fields_and_history() {
        let fields = vec![
            ("order_id", "o-1".to_owned()),
            ("status", "PAID".to_owned()),
        ];
        let history = vec![
            ["1".to_owned(), "CREATED".into(), "t1".into(), "-".into()],
            ["2".to_owned(), "RESERVED".into(), "t2".into(), "-".into()],
        ];
        let text = format_order(&fields, &history);
        assert!(
            text.starts_with("order_id               o-1\nstatus                 PAID\n"),
            "{text}"
        );
        assert!(text.contains("history (2 changes)"), "{text}");
        assert!(
            text.contains("  2        RESERVED  t2          -"),
            "{text}"
        );
    }
}
