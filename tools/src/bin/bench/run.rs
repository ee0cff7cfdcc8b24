//! One bench invocation: every phase on its own topics, then the results.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use order_saga::config::Config;
use order_saga::saga::Policy;

use crate::args::{BenchArgs, Phase};
use crate::chart::{self, Series};
use crate::copier;
use crate::fixtures::{self, OutputTemplates};
use crate::procfs;
use crate::report::{Conditions, Results, AT_LEAST_ONCE};
use crate::restore;
use crate::saga;
use crate::txn;

/// The configuration of one phase: its own topics, group and transactional id.
fn phase_config(base: &Config, prefix: &str, app: &str) -> Config {
    let mut c = base.clone();
    c.topic_prefix = prefix.to_string();
    c.application_id = format!("{prefix}{app}");
    c.instance_id = "0".into();
    c
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn utc_now() -> String {
    let secs = order_saga_tools::load::now_millis() / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

async fn delete_topics(config: &Config, prefixes: &[String]) {
    let c = order_saga::kafka::clients::admin(config, "order-saga-bench-admin");
    let Ok(admin) = c.create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let names: Vec<String> = prefixes
        .iter()
        .flat_map(|p| order_saga::topics::Topics::new(p).all())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(&refs, &opts).await {
        Ok(results) => {
            let failed = results.iter().filter(|r| r.is_err()).count();
            println!(
                "deleted the run's topics ({} of {})",
                names.len() - failed,
                names.len()
            );
        }
        Err(e) => println!("could not delete the run's topics: {e}"),
    }
}

pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let base = format!("{}bench-{run_id}-", config.topic_prefix);
    let log_dir = args.out_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let needs_bin = args.runs(Phase::Saga) || args.runs(Phase::Restore);
    if needs_bin && !args.bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            args.bin.display()
        );
    }
    if args.runs(Phase::Saga) && !args.tools_bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --workspace)",
            args.tools_bin.display()
        );
    }
    let codec = order_saga::cli::codec(&config)?;

    let mut results = Results {
        conditions: Conditions {
            run_id: run_id.clone(),
            started_at: utc_now(),
            git_commit: git_commit(),
            orders: args.orders,
            copier_orders: args.copier_orders(),
            paced_orders: args.paced_orders(),
            sink_orders: args.sink_orders(),
            restore_records: args.restore_records,
            partitions: args.partitions,
            commit_interval_ms: config.commit_interval_ms,
            cores: procfs::cores(),
            loadavg_start: procfs::loadavg(),
            ..Conditions::default()
        },
        at_least_once: AT_LEAST_ONCE.into(),
        ..Results::default()
    };
    println!(
        "bench {run_id}: {} orders, commit interval {} ms, {} partitions, {} cores, load average {:.2}",
        args.orders,
        config.commit_interval_ms,
        args.partitions,
        results.conditions.cores,
        results.conditions.loadavg_start.unwrap_or(0.0)
    );
    let mut prefixes = Vec::new();

    if args.runs(Phase::Txn) {
        let prefix = format!("{base}txn-");
        let cfg = phase_config(&config, &prefix, "txn");
        prefixes.push(prefix);
        match run_txn(&cfg, &args).await {
            Ok(r) => results.txn = Some(r),
            Err(e) => {
                println!("[txn] failed: {e:#}");
                results.errors.push(format!("txn: {e:#}"));
            }
        }
    }
    if args.runs(Phase::Copier) {
        let prefix = format!("{base}copy-");
        prefixes.push(prefix.clone());
        let cfg = phase_config(&config, &prefix, "copier");
        match run_copier(&cfg, &args, &codec, &run_id).await {
            Ok(r) => results.copier = Some(r),
            Err(e) => {
                println!("[copier] failed: {e:#}");
                results.errors.push(format!("copier: {e:#}"));
            }
        }
    }
    if args.runs(Phase::Saga) {
        let prefix = format!("{base}saga-");
        prefixes.push(prefix.clone());
        let ctx = saga::Ctx {
            config: phase_config(&config, &prefix, "order"),
            args: &args,
            codec: codec.clone(),
            run_id: &run_id,
            log_dir: &log_dir,
        };
        match saga::run(&ctx).await {
            Ok(r) => results.saga = Some(r),
            Err(e) => {
                println!("[saga] failed: {e:#}");
                results.errors.push(format!("saga: {e:#}"));
            }
        }
    }
    if args.runs(Phase::Restore) && args.restore_records > 0 {
        let prefix = format!("{base}restore-");
        prefixes.push(prefix.clone());
        let cfg = phase_config(&config, &prefix, "order");
        match restore::run(&cfg, &args, &codec, &run_id, &log_dir).await {
            Ok(r) => results.restore = Some(r),
            Err(e) => {
                println!("[restore] failed: {e:#}");
                results.errors.push(format!("restore: {e:#}"));
            }
        }
    }
    if let (Some(c), Some(s)) = (&results.copier, &results.saga) {
        if c.records_per_s > 0.0 {
            results.ratio = Some(s.records_per_s / c.records_per_s);
        }
    }
    results.conditions.loadavg_end = procfs::loadavg();
    results.conditions.note = format!(
        "Every process (Kafka, the registry, PostgreSQL, the processor, the simulator, the sink and \
         the bench itself) shares this machine's {} cores.",
        results.conditions.cores
    );
    results.evaluate();
    if !args.keep_topics {
        delete_topics(&config, &prefixes).await;
    }
    write_outputs(&args, &results)?;
    if !results.errors.is_empty() {
        bail!("{} phase(s) failed; see above", results.errors.len());
    }
    Ok(())
}

async fn run_txn(cfg: &Config, args: &BenchArgs) -> anyhow::Result<txn::TxnResult> {
    let names = txn::topics(cfg);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    order_saga::kafka::admin::create_topics(cfg, &refs, args.partitions)
        .await
        .context("creating topics")?;
    println!(
        "[txn] {} transactions, each writing to {} partitions",
        args.txn_count,
        args.partitions * 2
    );
    let (c, partitions, count) = (cfg.clone(), args.partitions, args.txn_count);
    let r = tokio::task::spawn_blocking(move || txn::run(&c, partitions, count))
        .await
        .context("txn thread")??;
    println!(
        "[txn]   whole transaction p50 {:.1} ms, p99 {:.1} ms; send offsets p50 {:.1} ms, \
         p99 {:.1} ms; commit p50 {:.1} ms, p99 {:.1} ms",
        r.hop_ms.p50,
        r.hop_ms.p99,
        r.send_offsets_ms.p50,
        r.send_offsets_ms.p99,
        r.commit_ms.p50,
        r.commit_ms.p99
    );
    Ok(r)
}

async fn run_copier(
    cfg: &Config,
    args: &BenchArgs,
    codec: &Arc<order_saga::contracts::Codec>,
    run_id: &str,
) -> anyhow::Result<copier::CopierResult> {
    let names = cfg.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    order_saga::kafka::admin::create_topics(cfg, &refs, args.partitions)
        .await
        .context("creating topics")?;
    println!(
        "[copier] pre-filling {} input records ({} orders × 5)",
        args.copier_orders() * 5,
        args.copier_orders()
    );
    let started = std::time::Instant::now();
    let bytes_in = copier::prefill(cfg, codec, args.copier_orders(), run_id).await?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let now = order_saga_tools::load::now_millis();
    let mut rng = order_saga_tools::load::Rng::new(now as u64);
    let sample = fixtures::order(&mut rng, run_id, now);
    let templates =
        Arc::new(OutputTemplates::build(codec, &Policy::default(), &sample, now).await?);
    println!(
        "[copier] copying in transactions every {} ms",
        cfg.commit_interval_ms
    );
    let (c, orders, stall) = (
        cfg.clone(),
        args.copier_orders(),
        Duration::from_secs(args.stall_timeout_s),
    );
    let me = std::process::id();
    let cpu0 = procfs::read(me, 0.0);
    let mut result = tokio::task::spawn_blocking(move || {
        copier::copy(&c, templates, orders, stall, |i, o| {
            println!("[copier]   {i} in, {o} out")
        })
    })
    .await
    .context("copier thread")??;
    result.prefill_seconds = prefill_seconds;
    if let (Some(a), Some(b)) = (cpu0, procfs::read(me, 0.0)) {
        result.cpu_s_per_1000_orders = (b.cpu_s - a.cpu_s) / args.copier_orders() as f64 * 1000.0;
    }
    result.bytes_in_per_order = bytes_in;
    println!(
        "[copier]   {} in + {} out in {:.2} s = {:.0} records/s",
        result.records_in, result.records_out, result.seconds, result.records_per_s
    );
    Ok(result)
}

fn write_outputs(args: &BenchArgs, results: &Results) -> anyhow::Result<()> {
    let dir = &args.out_dir;
    let json = serde_json::to_string_pretty(results)?;
    let md = results.markdown();
    let png = dir.join("latest.png");
    let (label, latencies) = match &results.saga {
        Some(s) => match &s.paced {
            Some(p) if !p.latencies.is_empty() => (
                format!("paced {:.0}/s", p.target_rate.unwrap_or(0.0)),
                p.latencies.clone(),
            ),
            _ => ("saturated".to_string(), s.saturated.latencies.clone()),
        },
        None => ("none".to_string(), Vec::new()),
    };
    let copier_rates = results
        .copier
        .as_ref()
        .map(|c| {
            let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
                .chain(c.timeline.iter().map(|(t, n)| (*t, *n as f64)))
                .collect();
            chart::rates(&points, 0.5)
        })
        .unwrap_or_default();
    let processor_rates = results
        .saga
        .as_ref()
        .map(|s| s.timeline.clone())
        .unwrap_or_default();
    let mut series = Vec::new();
    if !copier_rates.is_empty() {
        series.push(Series {
            label: "copier (limit)",
            points: &copier_rates,
        });
    }
    if !processor_rates.is_empty() {
        series.push(Series {
            label: "processor, saturated",
            points: &processor_rates,
        });
    }
    let chart_ok = match chart::draw(&png, &label, &latencies, &series) {
        Ok(()) => true,
        Err(e) => {
            println!("chart not drawn: {e:#}");
            false
        }
    };
    for (name, body) in [
        ("latest.json", &json),
        ("latest.md", &md),
        (&format!("{}.json", results.conditions.run_id)[..], &json),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("\n{md}");
    println!(
        "results: {0}/latest.json, {0}/latest.md, {0}/latest.png (logs in {0}/logs)",
        dir.display()
    );
    if let Some(publish) = &args.publish_dir {
        std::fs::create_dir_all(publish)?;
        std::fs::write(publish.join("latest.md"), &md)?;
        if chart_ok {
            std::fs::copy(&png, publish.join("latest.png"))?;
        }
        println!(
            "published latest.md and latest.png to {}",
            publish.display()
        );
    }
    Ok(())
}
