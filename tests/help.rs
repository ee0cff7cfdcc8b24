//! Each command's `--help` lists what that command reads: the groups of settings it
//! does not use stay out of it.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run order-saga");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

const PROCESSOR: &[&str] = &[
    "--commit-interval-ms",
    "--step-timeout-ms",
    "--state-retention-ms",
];
const KAFKA: &[&str] = &["--bootstrap", "--kafka-security-protocol", "--topic-prefix"];
const DATABASE: &[&str] = &["--database-url", "--database-password-file"];
const REGISTRY: &[&str] = &["--registry-url", "--registry-ca-file"];

fn assert_lists(text: &str, flags: &[&str]) {
    for flag in flags {
        assert!(text.contains(flag), "{flag} missing:\n{text}");
    }
}

fn assert_omits(text: &str, flags: &[&str]) {
    for flag in flags {
        assert!(!text.contains(flag), "{flag} listed:\n{text}");
    }
}

#[test]
fn run_help_lists_every_group() {
    let text = help(&["run"]);
    for group in [PROCESSOR, KAFKA, DATABASE, REGISTRY] {
        assert_lists(&text, group);
    }
    assert_lists(
        &text,
        &["--sink-group", "--otlp-endpoint", "--heartbeat-file"],
    );
}

#[test]
fn sink_help_has_no_processor_setting() {
    let text = help(&["sink"]);
    assert_lists(&text, KAFKA);
    assert_lists(&text, DATABASE);
    assert_lists(&text, &["--sink-group"]);
    assert_omits(&text, PROCESSOR);
}

#[test]
fn database_commands_list_only_the_database_and_logging() {
    for command in [&["migrate"][..], &["status"], &["report"]] {
        let text = help(command);
        assert_lists(&text, DATABASE);
        assert_lists(&text, &["--log-format"]);
        assert_omits(&text, KAFKA);
        assert_omits(&text, REGISTRY);
        assert_omits(&text, PROCESSOR);
    }
}

#[test]
fn schemas_and_create_topics_list_only_what_they_connect_to() {
    let schemas = help(&["schemas", "register"]);
    assert_lists(&schemas, REGISTRY);
    assert_omits(&schemas, KAFKA);
    assert_omits(&schemas, DATABASE);
    let topics = help(&["create-topics"]);
    assert_lists(&topics, KAFKA);
    assert_lists(&topics, &["--partitions"]);
    assert_omits(&topics, REGISTRY);
    assert_omits(&topics, DATABASE);
    assert_omits(&topics, PROCESSOR);
}

#[test]
fn health_help_lists_the_heartbeat_and_nothing_that_connects() {
    let text = help(&["health"]);
    assert_lists(&text, &["--heartbeat-file", "--liveness-timeout-ms"]);
    assert_omits(&text, KAFKA);
    assert_omits(&text, DATABASE);
    assert_omits(&text, &["--log-format"]);
}

#[test]
fn the_tools_are_no_commands_of_the_service() {
    let out = Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .args(["load", "--help"])
        .output()
        .expect("run order-saga");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
