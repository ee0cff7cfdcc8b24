//! Each tool's `--help` lists what that tool reads and nothing of the processor's or the
//! sink's settings.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga-tools"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run order-saga-tools");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn load_help_lists_only_what_load_reads() {
    let text = help(&["load"]);
    for wanted in [
        "--orders",
        "--rate",
        "--bootstrap",
        "--topic-prefix",
        "--registry-url",
        "--kafka-security-protocol",
        "--application-id",
        "--stats-interval-s",
        "--log-format",
    ] {
        assert!(text.contains(wanted), "{wanted} missing:\n{text}");
    }
    for unwanted in [
        "--commit-interval-ms",
        "--step-timeout-ms",
        "--state-retention-ms",
        "--sink-group",
        "--database-url",
        "--otlp-endpoint",
        "--heartbeat-file",
    ] {
        assert!(!text.contains(unwanted), "{unwanted} listed:\n{text}");
    }
}

#[test]
fn simulate_help_lists_its_behaviour_and_no_database_setting() {
    let text = help(&["simulate"]);
    assert!(text.contains("--fail-rate"), "{text}");
    assert!(text.contains("--bootstrap"), "{text}");
    assert!(!text.contains("--database-url"), "{text}");
    assert!(!text.contains("--commit-interval-ms"), "{text}");
}

#[test]
fn a_setting_of_another_command_is_refused_not_ignored() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga-tools"))
        .args(["load", "--commit-interval-ms", "5", "--help"])
        .output()
        .expect("run order-saga-tools");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--commit-interval-ms"), "{err}");
}
