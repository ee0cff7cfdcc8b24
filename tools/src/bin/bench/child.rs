//! `order-saga` child processes with JSON logs, and reading those logs as they grow.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use order_saga::config::Config;

/// A running `order-saga <command>`; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: LogTail,
    /// Lines read after the one a wait returned: the next wait looks at them first.
    unseen: std::collections::VecDeque<Value>,
}

impl Proc {
    /// Starts `bin args…` on the topics and group of `config`, logging JSON to `log_path`.
    pub fn spawn(
        bin: &Path,
        name: &str,
        config: &Config,
        args: &[&str],
        extra_env: &[(&str, String)],
        log_path: PathBuf,
    ) -> anyhow::Result<Proc> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .envs(config.env_vars())
            .env("ORDER_SAGA_STATS_INTERVAL_S", "1")
            .env("ORDER_SAGA_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,rdkafka=warn");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file")?)
            .stderr(file)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with cargo build --release)",
                    bin.display()
                )
            })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: LogTail::new(log_path),
            unseen: std::collections::VecDeque::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited early ({status}); end of {}:\n{}",
                self.name,
                self.log.path.display(),
                self.log.last_lines(15)
            );
        }
        Ok(())
    }

    /// Waits until a log line satisfies `pred`, returning it. Lines after it that came in
    /// the same read are kept for the next wait, so that two lines logged together can be
    /// waited for one after the other.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_until(&format!("no '{what}'"), timeout, |me| {
            while let Some(v) = me.unseen.pop_front() {
                if pred(&v) {
                    return Some(v);
                }
            }
            None
        })
        .await
    }

    /// Waits until `n` lines of the whole log so far, the ones already looked at
    /// included, satisfy `pred`.
    pub async fn wait_for_count(
        &mut self,
        what: &str,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<()> {
        self.wait_until(&format!("fewer than {n} '{what}'"), timeout, |me| {
            (me.log.lines.iter().filter(|v| pred(v)).count() >= n).then_some(())
        })
        .await
    }

    /// Reads what the log has gained and asks `found`, until it answers, the process
    /// ends or `timeout` passes (then fails with `missing` and the log's last lines).
    async fn wait_until<T>(
        &mut self,
        missing: &str,
        timeout: Duration,
        mut found: impl FnMut(&mut Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let until = Instant::now() + timeout;
        loop {
            self.unseen.extend(self.log.poll());
            if let Some(v) = found(self) {
                return Ok(v);
            }
            self.check_alive()?;
            if Instant::now() > until {
                bail!(
                    "{}: {missing} within {timeout:?}; end of {}:\n{}",
                    self.name,
                    self.log.path.display(),
                    self.log.last_lines(15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill ends a process: nothing is drained or left.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` (SIGKILL after that). Returns the exit code.
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A log file read incrementally, one JSON object per line.
pub struct LogTail {
    pub path: PathBuf,
    offset: u64,
    partial: String,
    /// Every parsed line so far.
    pub lines: Vec<Value>,
}

impl LogTail {
    pub fn new(path: PathBuf) -> Self {
        LogTail {
            path,
            offset: 0,
            partial: String::new(),
            lines: Vec::new(),
        }
    }

    /// Lines added since the last call (also kept in `lines`).
    pub fn poll(&mut self) -> Vec<Value> {
        let mut fresh = Vec::new();
        let Ok(mut f) = File::open(&self.path) else {
            return fresh;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return fresh;
        }
        let mut buf = String::new();
        if let Ok(n) = f.read_to_string(&mut buf) {
            self.offset += n as u64;
        }
        self.partial.push_str(&buf);
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                fresh.push(v);
            }
        }
        self.lines.extend(fresh.iter().cloned());
        fresh
    }

    pub fn last_lines(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The `message` of a JSON log line.
pub fn message(v: &Value) -> &str {
    v.get("message").and_then(Value::as_str).unwrap_or("")
}

pub fn field_u64(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

pub fn field_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| {
        x.as_f64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

/// Seconds since the Unix epoch of a log line's RFC 3339 UTC `timestamp`
/// (`2026-11-25T10:15:00.123456Z`), by the civil-from-days algorithm.
pub fn timestamp_s(v: &Value) -> Option<f64> {
    let ts = v.get("timestamp")?.as_str()?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}
