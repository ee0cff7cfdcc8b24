//! `order-saga health` against a real processor (with its sink) on the local stack: the
//! exec probe Kubernetes runs, seeing a live process, a stopped one and a resumed one.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Runs `order-saga health` on the heartbeat files of `base`; returns (exit 0, stdout).
fn probe(base: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .arg("health")
        .args(args)
        .env("ORDER_SAGA_HEARTBEAT_FILE", base)
        .output()
        .expect("run order-saga health");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line expected, got {stdout:?}"
    );
    (out.status.success(), stdout)
}

/// Probes until the verdict is `want` or `within` passes; returns the last stdout.
fn wait_for(base: &Path, args: &[&str], want: bool, within: Duration) -> String {
    let until = Instant::now() + within;
    loop {
        let (ok, line) = probe(base, args);
        if ok == want || Instant::now() >= until {
            assert_eq!(ok, want, "probe {args:?} still says {line:?}");
            return line;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proc.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_processor_that_is_stopped_and_resumed() {
    let prefix = random_prefix();
    let dir = std::env::temp_dir().join(format!("{prefix}heartbeat"));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("hb");
    let base_str = base.to_str().unwrap().to_string();
    let sink_group = format!("{prefix}sink");
    let config = config(
        &prefix,
        &[
            "--heartbeat-file",
            &base_str,
            "--sink-group",
            &sink_group,
            "--static-membership",
        ],
    );
    create_topics(&config).await;

    let both = ["--component", "processor", "--component", "sink"];
    let (ok, line) = probe(&base, &both);
    assert!(!ok, "nothing runs yet: {line}");
    assert!(line.contains("no heartbeat file"), "{line}");

    let mut processor = spawn(&config, "p0", &["run"]);
    let ready: Vec<&str> = [&both[..], &["--readiness"]].concat();
    let line = wait_for(&base, &ready, true, Duration::from_secs(90));
    assert!(line.starts_with("ready: processor beat"), "{line}");
    assert!(line.contains("sink beat"), "{line}");
    // Without --component, the probe finds both files by itself.
    let (ok, line) = probe(&base, &["--readiness"]);
    assert!(ok, "{line}");

    let limit = ["--liveness-timeout-ms", "3000"];
    let (ok, line) = probe(&base, &limit);
    assert!(ok, "{line}");

    // A stopped process is the purest hang: nothing iterates, nothing beats.
    signal(&processor, "-STOP");
    let stopped_at = Instant::now();
    let line = wait_for(&base, &limit, false, Duration::from_secs(10));
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(2),
        "liveness failed after only {:?}: {line}",
        stopped_at.elapsed()
    );
    assert!(
        line.starts_with("unhealthy: ") && line.contains("made no progress for"),
        "{line}"
    );
    assert!(line.contains("(limit 3 s"), "{line}");
    // A longer limit still tolerates the pause.
    let (ok, line) = probe(&base, &["--liveness-timeout-ms", "600000"]);
    assert!(ok, "{line}");

    signal(&processor, "-CONT");
    let line = wait_for(&base, &limit, true, Duration::from_secs(10));
    assert!(line.starts_with("healthy: "), "{line}");

    assert_eq!(processor.terminate(Duration::from_secs(60)), Some(0));
    let (ok, line) = probe(&base, &ready);
    assert!(!ok, "a stopped processor is not ready: {line}");
    assert!(line.contains("not ready (lifecycle stopped)"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}
