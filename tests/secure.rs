//! Every connection secured, on the secured local stack (`STACK_SECURE=1 scripts/stack up`):
//! Kafka over SASL_SSL with SCRAM and ACLs, PostgreSQL with `sslmode=verify-full`, the
//! registry over https with basic auth. Settings come from `.stack/secure/env`; without it
//! every test fails (the secured stack is part of the test command, not optional).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{order, produce_orders, random_prefix, spawn, spawn_tool, Proc};
use order_saga::config::Config;
use order_saga::kafka::admin;

const WAIT: Duration = Duration::from_secs(120);
/// How long start-up may take to give up on credentials that cannot work.
const FAIL_FAST: Duration = Duration::from_secs(45);

fn stack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack/secure")
}

/// The secured stack's settings, from the env file its `up` writes.
fn stack_env() -> BTreeMap<String, String> {
    let path = stack_dir().join("env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the secured stack is not up: run `STACK_SECURE=1 scripts/stack up`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// The flags of the secured stack's settings, with `overrides` replacing any of them (by
/// environment variable name; an empty value drops the flag).
fn secured_args(prefix: &str, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut env = stack_env();
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let flags = [
        ("ORDER_SAGA_BOOTSTRAP", "--bootstrap"),
        (
            "ORDER_SAGA_KAFKA_SECURITY_PROTOCOL",
            "--kafka-security-protocol",
        ),
        ("ORDER_SAGA_KAFKA_SASL_MECHANISM", "--kafka-sasl-mechanism"),
        ("ORDER_SAGA_KAFKA_SASL_USERNAME", "--kafka-sasl-username"),
        (
            "ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE",
            "--kafka-sasl-password-file",
        ),
        ("ORDER_SAGA_KAFKA_SSL_CA_FILE", "--kafka-ssl-ca-file"),
        ("ORDER_SAGA_REGISTRY_URL", "--registry-url"),
        ("ORDER_SAGA_REGISTRY_CA_FILE", "--registry-ca-file"),
        ("ORDER_SAGA_REGISTRY_USERNAME", "--registry-username"),
        (
            "ORDER_SAGA_REGISTRY_PASSWORD_FILE",
            "--registry-password-file",
        ),
        ("ORDER_SAGA_DATABASE_URL", "--database-url"),
        (
            "ORDER_SAGA_DATABASE_PASSWORD_FILE",
            "--database-password-file",
        ),
    ];
    let mut args = vec![
        "test".to_string(),
        "--application-id".into(),
        format!("{prefix}order"),
        "--topic-prefix".into(),
        prefix.into(),
        "--sink-group".into(),
        format!("{prefix}sink"),
    ];
    for (var, flag) in flags {
        match env.get(var) {
            Some(v) if !v.is_empty() => {
                args.push(flag.to_string());
                args.push(v.clone());
            }
            _ => {}
        }
    }
    args
}

fn secured_config(prefix: &str, overrides: &[(&str, &str)]) -> Config {
    let config = match Config::try_parse_from(secured_args(prefix, overrides)) {
        Ok(config) => config,
        Err(e) => panic!("secured config does not parse: {e}"),
    };
    config.validate().expect("secured config validates");
    config
}

/// Topics for `prefix` on the secured broker, as the service principal.
async fn secured_topics() -> (String, Config) {
    let prefix = format!("sec-{}", random_prefix());
    let config = secured_config(&prefix, &[]);
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin::create_topics(&config, &refs, common::PARTITIONS)
        .await
        .expect("the service principal creates its prefixed topics over SASL_SSL");
    (prefix, config)
}

/// Waits for `proc` to exit on its own; returns its exit code and log.
fn exit_of(mut proc: Proc, within: Duration) -> (i32, String) {
    let started = Instant::now();
    let code = proc.wait_exit(within);
    let log = proc.log_text();
    match code {
        Some(code) => {
            eprintln!("exited {code} after {:?}", started.elapsed());
            (code, log)
        }
        None => panic!("still running after {within:?}; log:\n{log}"),
    }
}

fn secrets() -> Vec<String> {
    let dir = stack_dir().join("secrets");
    std::fs::read_dir(&dir)
        .expect("secrets dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 8)
        .collect()
}

fn write_temp(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("order-saga-secure-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).expect("temp file");
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_end_to_end_over_sasl_ssl_verified_postgres_tls_and_https_registry() {
    let (_prefix, config) = secured_topics().await;
    let codec = order_saga::cli::codec(&config).expect("https registry codec");
    let mut processor = spawn(&config, "p0", &["run"]);
    let mut simulator = spawn_tool(&config, "sim", &["simulate"]);
    let producer = common::producer(&config);
    let orders: Vec<_> = (0..5).map(order).collect();
    produce_orders(&producer, &config, &codec, &orders).await;
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();

    let db = order_saga::db::connect_secured(
        &config.database_url,
        &config.security,
        Duration::from_secs(30),
    )
    .await
    .expect("verify-full connection to PostgreSQL");
    let ssl: bool = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the connection is not encrypted");
    let deadline = Instant::now() + WAIT;
    let completed = loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND status = 'COMPLETED'",
                &[&ids],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == ids.len() as i64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let p_code = processor.terminate(Duration::from_secs(30));
    let s_code = simulator.terminate(Duration::from_secs(30));
    let logs = processor.log_text() + &simulator.log_text();
    assert_eq!(
        completed,
        ids.len() as i64,
        "orders COMPLETED in PostgreSQL; logs:\n{logs}"
    );
    assert_eq!(p_code, Some(0), "processor drains and exits 0");
    assert_eq!(s_code, Some(0), "simulator drains and exits 0");
    for secret in secrets() {
        assert!(!logs.contains(&secret), "a secret appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_ends_start_up_naming_the_servers_and_the_authentication_failure() {
    let (prefix, _) = secured_topics().await;
    let wrong = write_temp("not-the-password\n");
    let config = secured_config(&prefix, &[("ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE", &wrong)]);
    let (code, log) = exit_of(spawn(&config, "p0", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains(&config.bootstrap), "{log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_against_the_sasl_ssl_listener_is_told_the_protocol_is_wrong() {
    let (prefix, _) = secured_topics().await;
    let config = secured_config(
        &prefix,
        &[
            ("ORDER_SAGA_KAFKA_SECURITY_PROTOCOL", "plaintext"),
            ("ORDER_SAGA_KAFKA_SASL_MECHANISM", ""),
            ("ORDER_SAGA_KAFKA_SASL_USERNAME", ""),
            ("ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE", ""),
            ("ORDER_SAGA_KAFKA_SSL_CA_FILE", ""),
        ],
    );
    let (code, log) = exit_of(spawn(&config, "p0", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("--kafka-security-protocol"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_fails_naming_the_certificate_check() {
    let (prefix, _) = secured_topics().await;
    let other = stack_env()["STACK_SECURE_OTHER_CA_FILE"].clone();
    let config = secured_config(&prefix, &[("ORDER_SAGA_KAFKA_SSL_CA_FILE", &other)]);
    let (code, log) = exit_of(spawn(&config, "p0", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("certificate verify failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_principal_without_acls_is_refused_naming_the_missing_permission() {
    let (prefix, _) = secured_topics().await;
    let env = stack_env();
    let config = secured_config(
        &prefix,
        &[
            (
                "ORDER_SAGA_KAFKA_SASL_USERNAME",
                &env["STACK_SECURE_INTRUDER_USERNAME"],
            ),
            (
                "ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE",
                &env["STACK_SECURE_INTRUDER_PASSWORD_FILE"],
            ),
        ],
    );
    let (code, log) = exit_of(spawn(&config, "p0", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("not authorized"), "{log}");
    assert!(log.contains(&format!("on topic {prefix}")), "{log}");
    assert!(log.contains("user intruder"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_another_ca_fails_naming_the_certificate() {
    let env = stack_env();
    let url = env["ORDER_SAGA_DATABASE_URL"].replace(
        &env["ORDER_SAGA_KAFKA_SSL_CA_FILE"],
        &env["STACK_SECURE_OTHER_CA_FILE"],
    );
    let config = secured_config("sec-x-", &[("ORDER_SAGA_DATABASE_URL", &url)]);
    let (code, log) = exit_of(spawn(&config, "m", &["migrate"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("refused the connection"), "{log}");
    assert!(log.contains("certificate verify failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_postgres_password_from_the_file_ends_start_up_at_once() {
    let wrong = write_temp("wrong-pg-pw-51c2\n");
    let config = secured_config("sec-x-", &[("ORDER_SAGA_DATABASE_PASSWORD_FILE", &wrong)]);
    let (code, log) = exit_of(spawn(&config, "pw", &["migrate"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("password authentication failed for user \"order\" (28P01)"),
        "{log}"
    );
    assert!(!log.contains("wrong-pg-pw-51c2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_tls_is_refused_by_the_server() {
    let env = stack_env();
    let url = env["ORDER_SAGA_DATABASE_URL"].replace("sslmode=verify-full", "sslmode=disable");
    let config = secured_config("sec-x-", &[("ORDER_SAGA_DATABASE_URL", &url)]);
    let (code, log) = exit_of(spawn(&config, "m", &["migrate"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("no encryption"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_registry_password_is_refused_plainly() {
    let wrong = write_temp("wrong-registry-pw-7f3a\n");
    let config = secured_config("sec-x-", &[("ORDER_SAGA_REGISTRY_PASSWORD_FILE", &wrong)]);
    let (code, log) = exit_of(spawn(&config, "r", &["schemas", "check"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("refused our credentials (401)"), "{log}");
    assert!(log.contains("https://127.0.0.1"), "{log}");
    // The processor checks before it reads a record, rather than failing every record.
    let (code, log) = exit_of(spawn(&config, "r", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("refused our credentials (401)"), "{log}");
    assert!(!log.contains("wrong-registry-pw-7f3a"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_certificate_from_another_ca_is_refused_plainly() {
    let other = stack_env()["STACK_SECURE_OTHER_CA_FILE"].clone();
    let config = secured_config("sec-x-", &[("ORDER_SAGA_REGISTRY_CA_FILE", &other)]);
    let (code, log) = exit_of(spawn(&config, "rc", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("TLS with the schema registry"), "{log}");
    assert!(log.contains("certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_with_the_stack_client_properties_as_is_produces_and_consumes() {
    let (_, config) = secured_topics().await;
    let props = stack_env()["STACK_SECURE_CLIENT_PROPERTIES"].clone();
    let topic = config.topics().name(order_saga::topics::ORDER_DLQ);
    let payload = format!("hello-{}", uuid::Uuid::new_v4());
    let mut produce = Command::new("kcat")
        .args(["-F", &props, "-b", &config.bootstrap, "-t", &topic, "-P"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat (apt-get install kcat; scripts/test installs it)");
    {
        use std::io::Write;
        let stdin = produce.stdin.as_mut().expect("kcat stdin");
        writeln!(stdin, "{payload}").expect("write to kcat");
    }
    let status = produce.wait().expect("kcat producer");
    assert!(status.success(), "kcat producer failed");
    let out = Command::new("kcat")
        .args([
            "-F",
            &props,
            "-b",
            &config.bootstrap,
            "-t",
            &topic,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .expect("kcat consumer");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&payload),
        "kcat read {text:?}; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_secret_appears_in_any_log_of_the_secured_stack_or_of_the_processes_tests_started() {
    let mut files = Vec::new();
    for dir in [
        stack_dir().join("logs"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs"),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    assert!(
        files.iter().any(|f| f.ends_with("kafka.log")),
        "the secured broker's log is missing: {files:?}"
    );
    let secrets = secrets();
    assert!(
        secrets.len() >= 5,
        "secrets of the stack: {}",
        secrets.len()
    );
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret appears in {}",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_and_pass_through_properties_work_on_the_secured_listener() {
    let prefix = format!("sec-{}", random_prefix());
    let mut args = secured_args(
        &prefix,
        &[("ORDER_SAGA_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")],
    );
    args.extend(
        [
            "--kafka-property",
            "socket.keepalive.enable=true",
            "--kafka-property",
            "client.rack=rack-a",
        ]
        .map(String::from),
    );
    let config = match Config::try_parse_from(args) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    config.validate().expect("valid");
    let names = config.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin::create_topics(&config, &refs, 1)
        .await
        .expect("topics created over SCRAM-SHA-256");
    assert_eq!(
        admin::partition_counts(&config, &refs).expect("metadata"),
        vec![1; refs.len()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_is_accepted_and_without_one_refused() {
    let env = stack_env();
    let prefix = format!("sec-{}", random_prefix());
    let mtls = [
        (
            "ORDER_SAGA_BOOTSTRAP",
            env["STACK_SECURE_MTLS_BOOTSTRAP"].as_str(),
        ),
        ("ORDER_SAGA_KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("ORDER_SAGA_KAFKA_SASL_MECHANISM", ""),
        ("ORDER_SAGA_KAFKA_SASL_USERNAME", ""),
        ("ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE", ""),
    ];
    let mut args = secured_args(&prefix, &mtls);
    args.extend([
        "--kafka-ssl-cert-file".to_string(),
        env["STACK_SECURE_CLIENT_CERT_FILE"].clone(),
        "--kafka-ssl-key-file".to_string(),
        env["STACK_SECURE_CLIENT_KEY_FILE"].clone(),
    ]);
    let with_cert = match Config::try_parse_from(args) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    with_cert.validate().expect("valid");
    let names = with_cert.topics().all();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin::create_topics(&with_cert, &refs, 1)
        .await
        .expect("the certificate's principal (CN=order) creates its topics");

    let without_cert = secured_config(&prefix, &mtls);
    let (code, log) = exit_of(spawn(&without_cert, "p0", &["run", "--no-sink"]), FAIL_FAST);
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("security protocol ssl"), "{log}");
    assert!(
        log.contains("the broker refused our client certificate"),
        "{log}"
    );
}
