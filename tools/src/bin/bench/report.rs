//! The results: JSON, a markdown table, and the targets with met/missed.

use std::fmt::Write as _;

use serde::Serialize;

use crate::copier::CopierResult;
use crate::restore::RestoreResult;
use crate::saga::SagaResult;
use crate::txn::TxnResult;

pub const AT_LEAST_ONCE: &str =
    "not measured: order-saga has no at-least-once mode (exactly-once transactions only)";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Conditions {
    pub run_id: String,
    pub started_at: String,
    pub git_commit: Option<String>,
    pub orders: u64,
    pub copier_orders: u64,
    pub paced_orders: u64,
    pub sink_orders: u64,
    pub restore_records: u64,
    pub partitions: i32,
    pub commit_interval_ms: u64,
    pub cores: usize,
    pub loadavg_start: Option<f64>,
    pub loadavg_end: Option<f64>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub figure: String,
    pub target: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub conditions: Conditions,
    pub txn: Option<TxnResult>,
    pub copier: Option<CopierResult>,
    pub saga: Option<SagaResult>,
    /// Processor records/s ÷ copier records/s.
    pub ratio: Option<f64>,
    pub restore: Option<RestoreResult>,
    pub at_least_once: String,
    pub errors: Vec<String>,
    pub targets: Vec<Target>,
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

impl Results {
    /// The targets of the latency and throughput work, each beside this run's figure.
    /// Timed figures are reported, never asserted: they depend on the machine's load.
    pub fn evaluate(&mut self) {
        fn target(name: &str, figure: Option<String>, aim: &str, met: Option<bool>) -> Target {
            Target {
                name: name.into(),
                figure: figure.unwrap_or_else(|| "-".into()),
                target: aim.into(),
                met,
            }
        }
        let mut t = Vec::new();
        let saga = self.saga.as_ref();
        let paced = saga.and_then(|s| s.paced.as_ref());
        let rate = paced.and_then(|p| p.target_rate).unwrap_or(0.0);
        for (name, aim_ms, pick) in [
            ("paced p50 create → COMPLETED", 150.0, 0usize),
            ("paced p99 create → COMPLETED", 400.0, 1),
        ] {
            let v = paced.map(|p| [p.latency_ms.p50, p.latency_ms.p99][pick]);
            t.push(target(
                name,
                v.map(|v| format!("{v:.0} ms at {rate:.0} orders/s")),
                &format!("≤ {aim_ms:.0} ms at 1,000 orders/s"),
                v.map(|v| v <= aim_ms && rate >= 1000.0),
            ));
        }
        let sat = saga.map(|s| s.saturated.orders_per_s);
        t.push(target(
            "saturated orders/s end to end",
            sat.map(|v| match self.ratio {
                Some(r) => format!("{v:.0} ({} of the copier's records/s)", pct(r)),
                None => format!("{v:.0}"),
            }),
            "≥ 8,000",
            sat.map(|v| v >= 8000.0),
        ));
        let cpu = saga.map(|s| s.cpu_s_per_1000_orders);
        t.push(target(
            "processor CPU per 1,000 orders",
            cpu.map(|v| format!("{v:.3} s")),
            "≤ 0.05 s",
            cpu.map(|v| v <= 0.05),
        ));
        let rss = saga.map(|s| s.peak_rss_mib);
        t.push(target(
            "processor peak RSS (saturated and paced)",
            rss.map(|v| format!("{v:.0} MiB")),
            "≤ 64 MiB",
            rss.map(|v| v <= 64.0),
        ));
        let r = self.restore.as_ref();
        t.push(target(
            "restore speed",
            r.map(|r| format!("{:.0} records/s", r.records_per_s)),
            "≥ 500,000 records/s",
            r.map(|r| r.records_per_s >= 500_000.0),
        ));
        let per_order = r.filter(|r| r.orders_kept > 0).map(|r| {
            (r.rss_after_mib - r.rss_before_mib).max(0.0) * 1_048_576.0 / r.orders_kept as f64
        });
        t.push(target(
            "memory per order in flight (RSS growth ÷ orders restored)",
            per_order.map(|v| format!("{v:.0} bytes")),
            "≤ 500 bytes",
            per_order.map(|v| v <= 500.0),
        ));
        let lag = saga
            .and_then(|s| s.sink.as_ref())
            .map(|s| s.lag_after_last_record_ms);
        t.push(target(
            "sink lag after the last record",
            lag.map(|l| format!("{l:.0} ms")),
            "< 1 s",
            lag.map(|l| l < 1000.0),
        ));
        self.targets = t;
    }

    pub fn markdown(&self) -> String {
        let c = &self.conditions;
        let mut m = String::new();
        let _ = writeln!(m, "# order-saga benchmark {}\n", c.run_id);
        let _ = writeln!(
            m,
            "{} · commit {} · {} orders (copier {}, paced {}, sink {}) · {} restore records · {} partitions · \
             commit interval {} ms · {} cores · load average {} at start, {} at end\n",
            c.started_at,
            c.git_commit.as_deref().unwrap_or("?"),
            c.orders,
            c.copier_orders,
            c.paced_orders,
            c.sink_orders,
            c.restore_records,
            c.partitions,
            c.commit_interval_ms,
            c.cores,
            c.loadavg_start.map(|l| format!("{l:.2}")).unwrap_or_else(|| "?".into()),
            c.loadavg_end.map(|l| format!("{l:.2}")).unwrap_or_else(|| "?".into()),
        );
        if !c.note.is_empty() {
            let _ = writeln!(m, "{}\n", c.note);
        }
        let _ = writeln!(
            m,
            "## Targets\n\n| target | figure | aim | |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            let _ = writeln!(m, "| {} | {} | {} | {met} |", t.name, t.figure, t.target);
        }
        let _ = writeln!(m, "\n## Figures\n\n| figure | value |\n|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(m, "| {k} | {v} |");
        };
        if let Some(x) = &self.txn {
            row(
                "commit floor: one transaction of one record to each of N partitions + offsets (p50 / p99)",
                format!(
                    "{:.1} / {:.1} ms (N = {}, {} transactions; commit alone {:.1} / {:.1} ms)",
                    x.hop_ms.p50,
                    x.hop_ms.p99,
                    x.partitions_touched,
                    x.transactions,
                    x.commit_ms.p50,
                    x.commit_ms.p99
                ),
            );
        }
        if let Some(cp) = &self.copier {
            row(
                "copier (the limit): records/s in + out",
                format!(
                    "{:.0} ({} in + {} out in {:.2} s, {} transactions)",
                    cp.records_per_s, cp.records_in, cp.records_out, cp.seconds, cp.transactions
                ),
            );
            row(
                "copier CPU per 1,000 orders (the bench process)",
                format!("{:.2} s", cp.cpu_s_per_1000_orders),
            );
            row(
                "copier record sizes",
                format!(
                    "{:.0} B in, {} B out per order",
                    cp.bytes_in_per_order, cp.bytes_out_per_order
                ),
            );
        }
        if let Some(s) = &self.saga {
            let sat = &s.saturated;
            row(
                "processor, saturated: orders/s end to end",
                format!(
                    "{:.0} ({} of {} completed in {:.2} s)",
                    sat.orders_per_s, sat.completed_decoded, sat.orders, sat.window_s
                ),
            );
            row(
                "processor, saturated: steady orders/s (10th to 90th percentile of completions)",
                format!("{:.0}", sat.steady_orders_per_s),
            );
            row(
                "processor, saturated: pipeline fill (time to the 10th percentile of completions)",
                format!("{} of the window", pct(s.pipeline_fill_share)),
            );
            row(
                "processor, saturated: records/s in + out",
                format!(
                    "{:.0} ({} records, {})",
                    s.records_per_s, s.records, s.records_source
                ),
            );
            if let Some(r) = self.ratio {
                row("processor ÷ copier records/s", pct(r));
            }
            row(
                "latency, saturated (p50 / p95 / p99 / max)",
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} ms",
                    sat.latency_ms.p50, sat.latency_ms.p95, sat.latency_ms.p99, sat.latency_ms.max
                ),
            );
            if let Some(p) = &s.paced {
                row(
                    "latency, paced (p50 / p95 / p99 / max)",
                    format!(
                        "{:.0} / {:.0} / {:.0} / {:.0} ms at {:.0} orders/s ({} of {} completed)",
                        p.latency_ms.p50,
                        p.latency_ms.p95,
                        p.latency_ms.p99,
                        p.latency_ms.max,
                        p.target_rate.unwrap_or(0.0),
                        p.completed_decoded,
                        p.orders
                    ),
                );
                for h in &p.hops_ms {
                    row(
                        &format!("paced hop {} (p50 / p95 / p99)", h.hop),
                        format!("{:.0} / {:.0} / {:.0} ms", h.ms.p50, h.ms.p95, h.ms.p99),
                    );
                }
            }
            let window = s.saturated.window_s;
            if s.transactions > 0 && window > 0.0 {
                row(
                    "processor transactions, saturated",
                    format!(
                        "{} ({:.0} ms each on average, {:.0} records each); processor CPU {:.0} % of one core over the window",
                        s.transactions,
                        window * 1000.0 / s.transactions as f64,
                        s.records as f64 / s.transactions as f64,
                        s.cpu_s / window * 100.0
                    ),
                );
            }
            row(
                "simulated services CPU per 1,000 orders",
                format!("{:.2} s", s.simulator_cpu_s_per_1000_orders),
            );
            row(
                "broker CPU per 1,000 orders",
                match s.broker_cpu_s_per_1000_orders {
                    Some(v) => format!("{v:.2} s"),
                    None => "not measured (no --broker-pids)".into(),
                },
            );
            row(
                "processor CPU per 1,000 orders",
                format!("{:.2} s", s.cpu_s_per_1000_orders),
            );
            row(
                "processor peak RSS (VmHWM)",
                format!(
                    "{:.0} MiB (at end {:.0} MiB)",
                    s.peak_rss_mib, s.rss_end_mib
                ),
            );
            if let Some(b) = s.machine_busy_share {
                row("machine CPU busy during the saturated run", pct(b));
            }
            if let Some(k) = &s.sink {
                row(
                    "sink catch-up (fresh group)",
                    format!(
                        "{:.0} records/s ({} records in {:.2} s)",
                        k.catch_up_records_per_s, k.backlog_records, k.catch_up_s
                    ),
                );
                row(
                    "sink lag at top rate",
                    format!(
                        "{:.0} ms after the last order-status record; at most {} offsets behind ({} orders)",
                        k.lag_after_last_record_ms, k.max_lag_offsets, k.live_orders
                    ),
                );
                row(
                    "sink rows",
                    format!(
                        "{} of {} orders, {} COMPLETED",
                        k.rows, k.rows_expected, k.rows_completed
                    ),
                );
            }
            if let Some(e) = &s.sink_error {
                row("sink", format!("failed: {e}"));
            }
        }
        if let Some(r) = &self.restore {
            row(
                "restore",
                format!(
                    "{:.0} records/s ({} records in {:.2} s; {:.2} s from start to restored)",
                    r.records_per_s, r.records_restored, r.restore_seconds, r.wall_to_restored_s
                ),
            );
            row(
                "restore memory (RSS before / peak / after)",
                format!(
                    "{:.0} / {:.0} / {:.0} MiB, {} of {} orders kept ({:.0} B per record)",
                    r.rss_before_mib,
                    r.rss_peak_mib,
                    r.rss_after_mib,
                    r.orders_kept,
                    r.records_written,
                    r.avg_record_bytes
                ),
            );
        }
        row("at-least-once mode", self.at_least_once.clone());
        for e in &self.errors {
            row("error", e.replace('|', "\\|").replace('\n', " "));
        }
        let _ = writeln!(m, "\n![latency and throughput](latest.png)");
        m
    }
}
