//! Liveness and readiness without an HTTP server: heartbeat files and `order-saga health`.
//!
//! Each long-running component (the processor, the sink) owns a [`Heartbeat`] and calls
//! [`Heartbeat::beat`] on every iteration of its loop. With `--heartbeat-file PATH`, the
//! component writes `PATH.<component>` (e.g. `/run/order-saga/heartbeat.processor` and
//! `/run/order-saga/heartbeat.sink` beside it), atomically (a temporary file renamed over
//! it), at most about once a second or at once when its lifecycle or readiness changes:
//!
//! ```json
//! {"component":"processor","pid":7,"lifecycle":"running","ready":true,"beat_ms":1764567890123}
//! ```
//!
//! `order-saga health` (a Kubernetes exec probe) reads the files and exits 0 or 1 with a
//! one-line reason on stdout. Liveness fails when a file is missing or garbled, or its
//! last beat is older than `--liveness-timeout-ms`: a loop that stops iterating (a
//! deadlock, a stopped process, a call that never returns) stops beating. With
//! `--readiness` it also fails unless every component says `ready` (processor: running
//! and every assigned partition restored; sink: running, PostgreSQL reachable and every
//! partition positioned).
//!
//! The verdict is a pure function of file contents, clock and limit ([`judge`]), so it is
//! tested without processes; `tests/health.rs` checks it against a stopped processor.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How often an unchanged heartbeat is rewritten.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// What a heartbeat file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub component: String,
    pub pid: u32,
    pub lifecycle: String,
    pub ready: bool,
    /// Wall-clock time of the last beat, in milliseconds since the Unix epoch.
    pub beat_ms: u64,
}

struct Last {
    written: Option<Instant>,
    lifecycle: String,
    ready: bool,
    /// The last write failed; logged once, not on every beat.
    failing: bool,
}

/// One component's heartbeat file. Without a path every call is a no-op.
pub struct Heartbeat {
    path: Option<PathBuf>,
    component: &'static str,
    last: Mutex<Last>,
}

/// The file a component writes for the configured heartbeat path.
pub fn component_path(base: &Path, component: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(component);
    PathBuf::from(name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Heartbeat {
    /// A heartbeat for `component`, written to `<path>.<component>`. A file left by an
    /// earlier process is removed, so its beats never vouch for this one.
    pub fn new(path: Option<PathBuf>, component: &'static str) -> Self {
        let path = path
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| component_path(&p, component));
        if let Some(p) = &path {
            let _ = std::fs::remove_file(p);
        }
        Heartbeat {
            path,
            component,
            last: Mutex::new(Last {
                written: None,
                lifecycle: String::new(),
                ready: false,
                failing: false,
            }),
        }
    }

    /// A heartbeat that writes nothing.
    pub fn disabled(component: &'static str) -> Self {
        Self::new(None, component)
    }

    /// The file this heartbeat writes, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Records that the component's loop went round. Cheap unless a write is due.
    pub fn beat(&self, lifecycle: &str, ready: bool) {
        let Some(path) = &self.path else { return };
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let changed = last.lifecycle != lifecycle || last.ready != ready;
        if !changed && last.written.is_some_and(|t| t.elapsed() < WRITE_EVERY) {
            return;
        }
        let beat = Beat {
            component: self.component.to_string(),
            pid: std::process::id(),
            lifecycle: lifecycle.to_string(),
            ready,
            beat_ms: now_ms(),
        };
        match write_atomically(path, &beat) {
            Ok(()) => {
                last.failing = false;
                last.written = Some(Instant::now());
                last.lifecycle.clear();
                last.lifecycle.push_str(lifecycle);
                last.ready = ready;
            }
            Err(e) => {
                if !last.failing {
                    warn!(path = %path.display(), error = %e, "cannot write heartbeat file");
                }
                last.failing = true;
                // Try again in a second, not on every iteration.
                last.written = Some(Instant::now());
            }
        }
    }
}

fn write_atomically(path: &Path, beat: &Beat) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec(beat).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    // A rename replaces the file in one step: a probe reads the old beat or the new one,
    // never half of one.
    std::fs::rename(&tmp, path)
}

/// What a probe concludes about one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy { component: String, age_ms: u64 },
    Unhealthy(String),
}

/// The probe's decision for one heartbeat file: `contents` is `None` when the file is
/// missing. Pure, for tests.
pub fn judge(
    name: &str,
    contents: Option<&[u8]>,
    now_ms: u64,
    liveness_timeout_ms: u64,
    readiness: bool,
) -> Verdict {
    let Some(bytes) = contents else {
        return Verdict::Unhealthy(format!("{name}: no heartbeat file"));
    };
    let beat: Beat = match serde_json::from_slice(bytes) {
        Ok(b) => b,
        Err(e) => return Verdict::Unhealthy(format!("{name}: heartbeat file unreadable: {e}")),
    };
    let age_ms = now_ms.saturating_sub(beat.beat_ms);
    if age_ms > liveness_timeout_ms {
        return Verdict::Unhealthy(format!(
            "{} made no progress for {} s (limit {} s, lifecycle {})",
            beat.component,
            age_ms / 1000,
            liveness_timeout_ms / 1000,
            beat.lifecycle
        ));
    }
    if readiness && !(beat.ready && beat.lifecycle == "running") {
        return Verdict::Unhealthy(format!(
            "{} not ready (lifecycle {})",
            beat.component, beat.lifecycle
        ));
    }
    Verdict::Healthy {
        component: beat.component,
        age_ms,
    }
}

/// `order-saga health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Liveness fails when a component's last beat is older than this, in milliseconds.
    #[arg(
        long,
        env = "ORDER_SAGA_LIVENESS_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1_000..=3_600_000)
    )]
    pub liveness_timeout_ms: u64,

    /// Also fail unless every component is running and ready (partitions restored).
    #[arg(long)]
    pub readiness: bool,

    /// A component that must be beating (processor, sink); repeatable. Without it, every
    /// `<heartbeat-file>.*` present is checked, and at least one must be.
    #[arg(long = "component", value_name = "NAME")]
    pub components: Vec<String>,
}

/// Checks the heartbeat files of `base`; returns whether healthy and the one-line reason.
pub fn check(base: Option<&Path>, args: &HealthArgs) -> (bool, String) {
    let Some(base) = base.filter(|p| !p.as_os_str().is_empty()) else {
        return (
            false,
            "unhealthy: no --heartbeat-file (env ORDER_SAGA_HEARTBEAT_FILE) configured".into(),
        );
    };
    let components = if args.components.is_empty() {
        present_components(base)
    } else {
        args.components.clone()
    };
    if components.is_empty() {
        return (
            false,
            format!("unhealthy: no heartbeat file {}.*", base.display()),
        );
    }
    let now = now_ms();
    let mut fine = Vec::new();
    for component in &components {
        let path = component_path(base, component);
        let contents = std::fs::read(&path).ok();
        match judge(
            component,
            contents.as_deref(),
            now,
            args.liveness_timeout_ms,
            args.readiness,
        ) {
            Verdict::Unhealthy(reason) => return (false, format!("unhealthy: {reason}")),
            Verdict::Healthy { component, age_ms } => {
                fine.push(format!("{component} beat {age_ms} ms ago"))
            }
        }
    }
    let what = if args.readiness { "ready" } else { "healthy" };
    (true, format!("{what}: {}", fine.join(", ")))
}

fn present_components(base: &Path) -> Vec<String> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(stem) = base.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{stem}.");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
        .filter(|c| !c.is_empty() && !c.ends_with(".tmp"))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(lifecycle: &str, ready: bool, beat_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&Beat {
            component: "processor".into(),
            pid: 1,
            lifecycle: lifecycle.into(),
            ready,
            beat_ms,
        })
        .unwrap()
    }

    #[test]
    fn a_fresh_beat_is_alive() {
        let v = judge(
            "processor",
            Some(&beat("running", false, 10_000)),
            12_000,
            30_000,
            false,
        );
        assert_eq!(
            v,
            Verdict::Healthy {
                component: "processor".into(),
                age_ms: 2_000
            }
        );
    }

    #[test]
    fn a_beat_older_than_the_timeout_fails_liveness_saying_for_how_long() {
        let v = judge(
            "processor",
            Some(&beat("running", true, 1_000)),
            43_000,
            30_000,
            false,
        );
        assert_eq!(
            v,
            Verdict::Unhealthy(
                "processor made no progress for 42 s (limit 30 s, lifecycle running)".into()
            )
        );
    }

    #[test]
    fn a_beat_exactly_at_the_timeout_is_still_alive() {
        let v = judge(
            "processor",
            Some(&beat("running", true, 0)),
            30_000,
            30_000,
            false,
        );
        assert!(matches!(v, Verdict::Healthy { .. }), "{v:?}");
    }

    #[test]
    fn a_missing_file_fails() {
        let v = judge("sink", None, 1, 30_000, false);
        assert_eq!(v, Verdict::Unhealthy("sink: no heartbeat file".into()));
    }

    #[test]
    fn a_garbled_file_fails_naming_the_component() {
        let v = judge("sink", Some(b"{\"component\":"), 1, 30_000, false);
        match v {
            Verdict::Unhealthy(r) => {
                assert!(r.starts_with("sink: heartbeat file unreadable"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readiness_needs_ready_and_running() {
        let not_ready = judge(
            "processor",
            Some(&beat("running", false, 5)),
            10,
            30_000,
            true,
        );
        assert_eq!(
            not_ready,
            Verdict::Unhealthy("processor not ready (lifecycle running)".into())
        );
        let draining = judge(
            "processor",
            Some(&beat("draining", true, 5)),
            10,
            30_000,
            true,
        );
        assert!(matches!(draining, Verdict::Unhealthy(_)), "{draining:?}");
        let ready = judge(
            "processor",
            Some(&beat("running", true, 5)),
            10,
            30_000,
            true,
        );
        assert!(matches!(ready, Verdict::Healthy { .. }), "{ready:?}");
    }

    #[test]
    fn readiness_also_needs_a_fresh_beat() {
        let v = judge(
            "processor",
            Some(&beat("running", true, 0)),
            60_000,
            30_000,
            true,
        );
        assert!(
            matches!(&v, Verdict::Unhealthy(r) if r.contains("no progress")),
            "{v:?}"
        );
    }

    #[test]
    fn a_clock_step_backwards_counts_as_fresh() {
        let v = judge(
            "processor",
            Some(&beat("running", true, 50_000)),
            10_000,
            30_000,
            false,
        );
        assert!(matches!(v, Verdict::Healthy { age_ms: 0, .. }), "{v:?}");
    }

    #[test]
    fn beats_are_written_beside_each_other_and_checked_together() {
        let dir = std::env::temp_dir().join(format!("order-saga-health-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("heartbeat");
        let processor = Heartbeat::new(Some(base.clone()), "processor");
        let sink = Heartbeat::new(Some(base.clone()), "sink");
        let args = HealthArgs {
            liveness_timeout_ms: 30_000,
            readiness: true,
            components: vec![],
        };
        assert!(!check(Some(&base), &args).0, "no files yet");
        processor.beat("running", true);
        sink.beat("running", false);
        let (ok, line) = check(Some(&base), &args);
        assert!(!ok);
        assert_eq!(line, "unhealthy: sink not ready (lifecycle running)");
        // A change of readiness is written at once, not after the one-second pause.
        sink.beat("running", true);
        let (ok, line) = check(Some(&base), &args);
        assert!(ok, "{line}");
        assert!(line.starts_with("ready: processor beat"), "{line}");
        let only_missing = HealthArgs {
            components: vec!["processor".into(), "simulator".into()],
            ..args
        };
        assert_eq!(
            check(Some(&base), &only_missing),
            (false, "unhealthy: simulator: no heartbeat file".to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_path_nothing_is_written_and_the_probe_fails() {
        let h = Heartbeat::disabled("processor");
        h.beat("running", true);
        assert!(h.path().is_none());
        let args = HealthArgs {
            liveness_timeout_ms: 30_000,
            readiness: false,
            components: vec![],
        };
        let (ok, line) = check(None, &args);
        assert!(!ok);
        assert!(line.contains("ORDER_SAGA_HEARTBEAT_FILE"), "{line}");
    }
}
