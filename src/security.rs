//! Connection security of every client the binary makes: Kafka (TLS, SASL, mTLS, and the
//! pass-through of other librdkafka properties), PostgreSQL (password file, root
//! certificate) and the schema registry (CA file, basic auth, bearer token); and the
//! redaction that keeps passwords, tokens and URL credentials out of logs and errors.
//!
//! Secrets are only ever named by file, never given as values: a value in a flag or an
//! environment variable ends up in shell histories, `ps` output and crash reports.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use rdkafka::ClientConfig;
use serde::Serialize;

use crate::config::ConfigError;

/// librdkafka properties the exactly-once design sets itself; a pass-through value would
/// silently break transactions, fencing, co-partitioning or the read_committed contract.
pub const OWNED_KAFKA_PROPERTIES: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "isolation.level",
    "enable.idempotence",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partitioner",
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "bootstrap.servers",
];

/// librdkafka properties that have a first-class setting (the flag in the pair), which is
/// validated at start-up and keeps secrets in files.
pub const FIRST_CLASS_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "--kafka-security-protocol"),
    ("sasl.mechanism", "--kafka-sasl-mechanism"),
    ("sasl.mechanisms", "--kafka-sasl-mechanism"),
    ("sasl.username", "--kafka-sasl-username"),
    ("sasl.password", "--kafka-sasl-password-file"),
    ("ssl.ca.location", "--kafka-ssl-ca-file"),
    ("ssl.certificate.location", "--kafka-ssl-cert-file"),
    ("ssl.key.location", "--kafka-ssl-key-file"),
    (
        "ssl.endpoint.identification.algorithm",
        "--kafka-ssl-endpoint-identification",
    ),
];

const PROTOCOLS: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Security of every connection: each part is flattened into the commands that open that
/// kind of connection, so a command's `--help` shows only the secrets it needs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Security {
    #[serde(flatten)]
    pub kafka: KafkaSecurity,
    #[serde(flatten)]
    pub database: DatabaseSecurity,
    #[serde(flatten)]
    pub registry: RegistrySecurity,
}

/// TLS and SASL of the Kafka clients, and the pass-through of other librdkafka properties.
#[derive(Clone, Args, Serialize)]
pub struct KafkaSecurity {
    /// Kafka security protocol.
    #[arg(
        long = "kafka-security-protocol",
        env = "ORDER_SAGA_KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: String,

    /// SASL mechanism (with sasl_plaintext or sasl_ssl).
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "ORDER_SAGA_KAFKA_SASL_MECHANISM",
        default_value = ""
    )]
    pub kafka_sasl_mechanism: String,

    /// SASL user name.
    #[arg(
        long = "kafka-sasl-username",
        env = "ORDER_SAGA_KAFKA_SASL_USERNAME",
        default_value = ""
    )]
    pub kafka_sasl_username: String,

    /// File holding the SASL password (trailing newline ignored).
    #[arg(
        long = "kafka-sasl-password-file",
        env = "ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE",
        default_value = ""
    )]
    pub kafka_sasl_password_file: String,

    /// PEM file of the CA(s) that sign the brokers' certificates; empty = system store.
    #[arg(
        long = "kafka-ssl-ca-file",
        env = "ORDER_SAGA_KAFKA_SSL_CA_FILE",
        default_value = ""
    )]
    pub kafka_ssl_ca_file: String,

    /// PEM client certificate, for brokers that require mutual TLS.
    #[arg(
        long = "kafka-ssl-cert-file",
        env = "ORDER_SAGA_KAFKA_SSL_CERT_FILE",
        default_value = ""
    )]
    pub kafka_ssl_cert_file: String,

    /// PEM private key of the client certificate.
    #[arg(
        long = "kafka-ssl-key-file",
        env = "ORDER_SAGA_KAFKA_SSL_KEY_FILE",
        default_value = ""
    )]
    pub kafka_ssl_key_file: String,

    /// Check the broker's host name against its certificate: https, or none.
    #[arg(
        long = "kafka-ssl-endpoint-identification",
        env = "ORDER_SAGA_KAFKA_SSL_ENDPOINT_IDENTIFICATION",
        default_value = "https"
    )]
    pub kafka_ssl_endpoint_identification: String,

    /// Extra librdkafka property key=value for every client; repeatable. In the
    /// environment: newline- or ';'-separated.
    #[arg(
        long = "kafka-property",
        env = "ORDER_SAGA_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub kafka_property: Vec<String>,
}

/// The PostgreSQL password file and root certificate.
#[derive(Clone, Debug, Default, Args, Serialize)]
pub struct DatabaseSecurity {
    /// File holding the PostgreSQL password; used when the URL carries none.
    #[arg(
        long = "database-password-file",
        env = "ORDER_SAGA_DATABASE_PASSWORD_FILE",
        default_value = ""
    )]
    pub database_password_file: String,

    /// PEM root certificate(s) for PostgreSQL TLS; `sslrootcert` in the URL wins.
    #[arg(
        long = "database-ssl-root-cert",
        env = "ORDER_SAGA_DATABASE_SSL_ROOT_CERT",
        default_value = ""
    )]
    pub database_ssl_root_cert: String,
}

/// The schema registry's CA file and credentials.
#[derive(Clone, Debug, Default, Args, Serialize)]
pub struct RegistrySecurity {
    /// PEM CA file for an https registry; empty = system store.
    #[arg(
        long = "registry-ca-file",
        env = "ORDER_SAGA_REGISTRY_CA_FILE",
        default_value = ""
    )]
    pub registry_ca_file: String,

    /// Registry basic-auth user name (with --registry-password-file).
    #[arg(
        long = "registry-username",
        env = "ORDER_SAGA_REGISTRY_USERNAME",
        default_value = ""
    )]
    pub registry_username: String,

    /// File holding the registry basic-auth password.
    #[arg(
        long = "registry-password-file",
        env = "ORDER_SAGA_REGISTRY_PASSWORD_FILE",
        default_value = ""
    )]
    pub registry_password_file: String,

    /// File holding a registry bearer token (instead of basic auth).
    #[arg(
        long = "registry-token-file",
        env = "ORDER_SAGA_REGISTRY_TOKEN_FILE",
        default_value = ""
    )]
    pub registry_token_file: String,
}

impl Default for KafkaSecurity {
    /// Plaintext Kafka, no files: what the flags' defaults give.
    fn default() -> Self {
        KafkaSecurity {
            kafka_security_protocol: "plaintext".to_string(),
            kafka_sasl_mechanism: String::new(),
            kafka_sasl_username: String::new(),
            kafka_sasl_password_file: String::new(),
            kafka_ssl_ca_file: String::new(),
            kafka_ssl_cert_file: String::new(),
            kafka_ssl_key_file: String::new(),
            kafka_ssl_endpoint_identification: "https".to_string(),
            kafka_property: Vec::new(),
        }
    }
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only file names and public settings are held, except in pass-through properties,
        // whose values may be secrets (ssl.key.password, oauth client secrets, ...).
        let props: Vec<String> = self
            .kafka_properties()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", redact_property(&k, &v)))
            .collect();
        f.debug_struct("KafkaSecurity")
            .field("kafka_security_protocol", &self.kafka_security_protocol)
            .field("kafka_sasl_mechanism", &self.kafka_sasl_mechanism)
            .field("kafka_sasl_username", &self.kafka_sasl_username)
            .field("kafka_sasl_password_file", &self.kafka_sasl_password_file)
            .field("kafka_ssl_ca_file", &self.kafka_ssl_ca_file)
            .field("kafka_ssl_cert_file", &self.kafka_ssl_cert_file)
            .field("kafka_ssl_key_file", &self.kafka_ssl_key_file)
            .field(
                "kafka_ssl_endpoint_identification",
                &self.kafka_ssl_endpoint_identification,
            )
            .field("kafka_property", &props)
            .finish()
    }
}

impl fmt::Debug for crate::config::Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bootstrap", &self.bootstrap)
            .field("application_id", &self.application_id)
            .field("instance_id", &self.instance_id)
            .field("registry_url", &redact_url(&self.registry_url))
            .field("database_url", &redact_url(&self.database_url))
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("state_retention_ms", &self.state_retention_ms)
            .field("dedup_window_ms", &self.dedup_window_ms)
            .field("max_orders_in_memory", &self.max_orders_in_memory)
            .field("step_timeout_ms", &self.step_timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("sink_group", &self.sink_group)
            .field("stats_interval_s", &self.stats_interval_s)
            .field("topic_prefix", &self.topic_prefix)
            .field("log_format", &self.log_format)
            .field("security", &self.security)
            .finish_non_exhaustive()
    }
}

/// The value of a property whose key suggests a secret, hidden.
pub fn redact_property(key: &str, value: &str) -> String {
    let k = key.to_ascii_lowercase();
    if ["password", "secret", "token", "jaas", ".pem", "key"]
        .iter()
        .any(|s| k.contains(s))
    {
        "(hidden)".to_string()
    } else {
        value.to_string()
    }
}

/// `url` with any password (and user name) of its authority replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return format!("{scheme}://{authority}{}", redact_query(tail));
    };
    let host = &authority[at + 1..];
    let user = authority[..at].split(':').next().unwrap_or("");
    format!("{scheme}://{user}:***@{host}{}", redact_query(tail))
}

/// Hides `password=` in a connection URL's query string.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// Reads a secret from `path`: the whole file without its trailing line break.
pub fn read_secret(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn err(key: &'static str, env: &'static str, value: impl ToString, allowed: &str) -> ConfigError {
    ConfigError {
        key,
        env,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// A file setting must name a readable file; a secret one must also not be empty.
fn check_file(
    key: &'static str,
    env: &'static str,
    path: &str,
    secret: bool,
) -> Result<(), ConfigError> {
    match std::fs::read(Path::new(path)) {
        Ok(bytes) if secret && bytes.iter().all(u8::is_ascii_whitespace) => Err(err(
            key,
            env,
            path,
            "a file holding the secret; this one is empty",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(err(key, env, path, &format!("a readable file ({e})"))),
    }
}

impl Security {
    /// Checks every security setting; files are read once here so a typo stops start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.database.validate()?;
        self.registry.validate()
    }

    /// Applies the Kafka settings to a client's configuration.
    pub fn apply_kafka(&self, c: &mut ClientConfig) {
        self.kafka.apply_kafka(c);
    }

    /// The registry client's security: CA, and basic auth or a token, read from files.
    pub fn registry_auth(&self) -> std::io::Result<RegistryAuth> {
        self.registry.registry_auth()
    }

    /// The PostgreSQL password file, if one is set.
    pub fn database_password_file(&self) -> Option<PathBuf> {
        self.database.database_password_file()
    }
}

impl KafkaSecurity {
    /// The pass-through properties as pairs; entries may hold several lines.
    pub fn kafka_properties(&self) -> Vec<(String, String)> {
        self.kafka_property
            .iter()
            .flat_map(|e| e.split(['\n', ';']))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    }

    fn protocol(&self) -> String {
        self.kafka_security_protocol.trim().to_ascii_lowercase()
    }

    fn uses_sasl(&self) -> bool {
        self.protocol().starts_with("sasl_")
    }

    fn uses_tls(&self) -> bool {
        matches!(self.protocol().as_str(), "ssl" | "sasl_ssl")
    }

    /// Checks the Kafka settings; files are read once here so a typo stops start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const P: (&str, &str) = (
            "--kafka-security-protocol",
            "ORDER_SAGA_KAFKA_SECURITY_PROTOCOL",
        );
        const M: (&str, &str) = ("--kafka-sasl-mechanism", "ORDER_SAGA_KAFKA_SASL_MECHANISM");
        const U: (&str, &str) = ("--kafka-sasl-username", "ORDER_SAGA_KAFKA_SASL_USERNAME");
        const W: (&str, &str) = (
            "--kafka-sasl-password-file",
            "ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE",
        );
        if !PROTOCOLS.contains(&self.protocol().as_str()) {
            return Err(err(
                P.0,
                P.1,
                &self.kafka_security_protocol,
                "plaintext, ssl, sasl_plaintext or sasl_ssl",
            ));
        }
        let mechanism = self.kafka_sasl_mechanism.trim().to_ascii_uppercase();
        if self.uses_sasl() {
            if !MECHANISMS.contains(&mechanism.as_str()) {
                return Err(err(
                    M.0,
                    M.1,
                    &self.kafka_sasl_mechanism,
                    "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with a sasl_ protocol)",
                ));
            }
            if self.kafka_sasl_username.trim().is_empty() {
                return Err(err(
                    U.0,
                    U.1,
                    "",
                    "a user name (required with a sasl_ protocol)",
                ));
            }
            if self.kafka_sasl_password_file.is_empty() {
                return Err(err(
                    W.0,
                    W.1,
                    "",
                    "a file holding the password (required with a sasl_ protocol)",
                ));
            }
            check_file(W.0, W.1, &self.kafka_sasl_password_file, true)?;
        } else {
            for (key, env, value) in [
                (M.0, M.1, &self.kafka_sasl_mechanism),
                (U.0, U.1, &self.kafka_sasl_username),
                (W.0, W.1, &self.kafka_sasl_password_file),
            ] {
                if !value.is_empty() {
                    return Err(err(
                        key,
                        env,
                        value,
                        "empty unless --kafka-security-protocol is sasl_plaintext or sasl_ssl",
                    ));
                }
            }
        }
        let tls_files = [
            (
                "--kafka-ssl-ca-file",
                "ORDER_SAGA_KAFKA_SSL_CA_FILE",
                &self.kafka_ssl_ca_file,
            ),
            (
                "--kafka-ssl-cert-file",
                "ORDER_SAGA_KAFKA_SSL_CERT_FILE",
                &self.kafka_ssl_cert_file,
            ),
            (
                "--kafka-ssl-key-file",
                "ORDER_SAGA_KAFKA_SSL_KEY_FILE",
                &self.kafka_ssl_key_file,
            ),
        ];
        for (key, env, value) in tls_files {
            if value.is_empty() {
                continue;
            }
            if !self.uses_tls() {
                return Err(err(
                    key,
                    env,
                    value,
                    "empty unless --kafka-security-protocol is ssl or sasl_ssl",
                ));
            }
            check_file(key, env, value, false)?;
        }
        if self.kafka_ssl_cert_file.is_empty() != self.kafka_ssl_key_file.is_empty() {
            return Err(err(
                "--kafka-ssl-key-file",
                "ORDER_SAGA_KAFKA_SSL_KEY_FILE",
                &self.kafka_ssl_key_file,
                "given together with --kafka-ssl-cert-file (both or neither)",
            ));
        }
        if !matches!(
            self.kafka_ssl_endpoint_identification.as_str(),
            "https" | "none"
        ) {
            return Err(err(
                "--kafka-ssl-endpoint-identification",
                "ORDER_SAGA_KAFKA_SSL_ENDPOINT_IDENTIFICATION",
                &self.kafka_ssl_endpoint_identification,
                "https or none",
            ));
        }
        const KP: (&str, &str) = ("--kafka-property", "ORDER_SAGA_KAFKA_PROPERTIES");
        for (key, value) in self.kafka_properties() {
            let shown = format!("{key}={}", redact_property(&key, &value));
            if key.is_empty() || value.is_empty() || key.contains(char::is_whitespace) {
                return Err(err(
                    KP.0,
                    KP.1,
                    shown,
                    "key=value, e.g. socket.timeout.ms=30000",
                ));
            }
            if OWNED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                return Err(err(
                    KP.0,
                    KP.1,
                    shown,
                    &format!(
                        "any librdkafka property except those the exactly-once design sets \
                         itself ({})",
                        OWNED_KAFKA_PROPERTIES.join(", ")
                    ),
                ));
            }
            if let Some((_, flag)) = FIRST_CLASS_KAFKA_PROPERTIES
                .iter()
                .find(|(k, _)| *k == key.as_str())
            {
                return Err(err(
                    KP.0,
                    KP.1,
                    shown,
                    &format!("{key} has its own setting: use {flag}"),
                ));
            }
        }
        Ok(())
    }

    /// Applies the Kafka settings to a client's configuration.
    pub fn apply_kafka(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol());
        if self.uses_sasl() {
            c.set(
                "sasl.mechanism",
                self.kafka_sasl_mechanism.trim().to_ascii_uppercase(),
            )
            .set("sasl.username", self.kafka_sasl_username.trim());
            // Validated at start-up; re-read per client so a rotated file is picked up by
            // clients made later. Should it vanish meanwhile, the broker refuses the login
            // and that failure is reported like any wrong password.
            match read_secret(&self.kafka_sasl_password_file) {
                Ok(password) => {
                    c.set("sasl.password", password);
                }
                Err(e) => tracing::error!(
                    file = %self.kafka_sasl_password_file,
                    error = %e,
                    "kafka sasl password file unreadable"
                ),
            }
        }
        if self.uses_tls() {
            if !self.kafka_ssl_ca_file.is_empty() {
                c.set("ssl.ca.location", &self.kafka_ssl_ca_file);
            }
            if !self.kafka_ssl_cert_file.is_empty() {
                c.set("ssl.certificate.location", &self.kafka_ssl_cert_file)
                    .set("ssl.key.location", &self.kafka_ssl_key_file);
            }
            c.set(
                "ssl.endpoint.identification.algorithm",
                &self.kafka_ssl_endpoint_identification,
            );
        }
        for (key, value) in self.kafka_properties() {
            c.set(key, value);
        }
    }
}

impl DatabaseSecurity {
    /// Checks that the files named exist and a password file is not empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, env, value, secret) in [
            (
                "--database-password-file",
                "ORDER_SAGA_DATABASE_PASSWORD_FILE",
                &self.database_password_file,
                true,
            ),
            (
                "--database-ssl-root-cert",
                "ORDER_SAGA_DATABASE_SSL_ROOT_CERT",
                &self.database_ssl_root_cert,
                false,
            ),
        ] {
            if !value.is_empty() {
                check_file(key, env, value, secret)?;
            }
        }
        Ok(())
    }

    /// The PostgreSQL password file, if one is set.
    pub fn database_password_file(&self) -> Option<PathBuf> {
        (!self.database_password_file.is_empty())
            .then(|| PathBuf::from(&self.database_password_file))
    }
}

impl RegistrySecurity {
    /// Checks the files named and that one way of authenticating is chosen, not two.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, env, value, secret) in [
            (
                "--registry-ca-file",
                "ORDER_SAGA_REGISTRY_CA_FILE",
                &self.registry_ca_file,
                false,
            ),
            (
                "--registry-password-file",
                "ORDER_SAGA_REGISTRY_PASSWORD_FILE",
                &self.registry_password_file,
                true,
            ),
            (
                "--registry-token-file",
                "ORDER_SAGA_REGISTRY_TOKEN_FILE",
                &self.registry_token_file,
                true,
            ),
        ] {
            if !value.is_empty() {
                check_file(key, env, value, secret)?;
            }
        }
        if self.registry_username.is_empty() != self.registry_password_file.is_empty() {
            return Err(err(
                "--registry-password-file",
                "ORDER_SAGA_REGISTRY_PASSWORD_FILE",
                &self.registry_password_file,
                "given together with --registry-username (both or neither)",
            ));
        }
        if !self.registry_token_file.is_empty() && !self.registry_username.is_empty() {
            return Err(err(
                "--registry-token-file",
                "ORDER_SAGA_REGISTRY_TOKEN_FILE",
                &self.registry_token_file,
                "empty when --registry-username is set (basic auth or a token, not both)",
            ));
        }
        Ok(())
    }

    /// The registry client's security: CA, and basic auth or a token, read from files.
    pub fn registry_auth(&self) -> std::io::Result<RegistryAuth> {
        let ca_pem = if self.registry_ca_file.is_empty() {
            None
        } else {
            Some(std::fs::read(&self.registry_ca_file)?)
        };
        let credentials = if !self.registry_username.is_empty() {
            Some(Credentials::Basic {
                username: self.registry_username.clone(),
                password: read_secret(&self.registry_password_file)?,
            })
        } else if !self.registry_token_file.is_empty() {
            Some(Credentials::Bearer(read_secret(&self.registry_token_file)?))
        } else {
            None
        };
        Ok(RegistryAuth {
            ca_pem,
            credentials,
        })
    }
}

/// How the registry client proves who it is, and whom it trusts.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    /// Extra trusted root certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    pub credentials: Option<Credentials>,
}

/// Registry credentials.
#[derive(Clone)]
pub enum Credentials {
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match &self.credentials {
            None => "none".to_string(),
            Some(Credentials::Basic { username, .. }) => format!("basic {username}:***"),
            Some(Credentials::Bearer(_)) => "bearer ***".to_string(),
        };
        f.debug_struct("RegistryAuth")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("credentials", &credentials)
            .finish()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            Credentials::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        security: KafkaSecurity,
    }

    fn parse(args: &[&str]) -> KafkaSecurity {
        let mut all = vec!["order-saga"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(cli) => cli.security,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn secret_file(text: &str) -> String {
        let path = std::env::temp_dir().join(format!("order-saga-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn plaintext_without_other_settings_is_the_default_and_valid() {
        let s = parse(&[]);
        assert_eq!(s.validate(), Ok(()));
        let mut c = ClientConfig::new();
        s.apply_kafka(&mut c);
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("sasl.password"), None);
    }

    #[test]
    fn sasl_ssl_with_scram_sets_every_librdkafka_key_and_reads_the_password_file() {
        let pw = secret_file("s3cret\n");
        let ca = secret_file("not checked here");
        let s = parse(&[
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "order",
            "--kafka-sasl-password-file",
            &pw,
            "--kafka-ssl-ca-file",
            &ca,
        ]);
        assert_eq!(s.validate(), Ok(()));
        let mut c = ClientConfig::new();
        s.apply_kafka(&mut c);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("ssl.ca.location"), Some(ca.as_str()));
        assert_eq!(
            c.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn sasl_without_a_mechanism_is_refused_naming_the_key_and_allowed_values() {
        let e = parse(&["--kafka-security-protocol", "sasl_ssl"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--kafka-sasl-mechanism");
        assert!(
            e.to_string().contains("ORDER_SAGA_KAFKA_SASL_MECHANISM"),
            "{e}"
        );
        assert!(e.to_string().contains("SCRAM-SHA-512"), "{e}");
    }

    #[test]
    fn an_unknown_protocol_is_refused() {
        let e = parse(&["--kafka-security-protocol", "tls"])
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "--kafka-security-protocol");
    }

    #[test]
    fn a_missing_password_file_is_refused_naming_the_file() {
        let e = parse(&[
            "--kafka-security-protocol",
            "sasl_plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password-file",
            "/nonexistent/pw",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "--kafka-sasl-password-file");
        assert!(e.to_string().contains("/nonexistent/pw"), "{e}");
    }

    #[test]
    fn properties_the_exactly_once_design_owns_are_refused_by_name() {
        for key in OWNED_KAFKA_PROPERTIES {
            let arg = format!("{key}=x");
            let e = parse(&["--kafka-property", &arg]).validate().unwrap_err();
            assert_eq!(e.key, "--kafka-property");
            assert!(e.to_string().contains("exactly-once"), "{e}");
        }
    }

    #[test]
    fn properties_with_a_first_class_setting_are_refused_without_echoing_secrets() {
        let e = parse(&["--kafka-property", "sasl.password=hunter2"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--kafka-sasl-password-file"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn other_properties_pass_through_from_flags_and_a_multi_line_variable() {
        let s = parse(&[
            "--kafka-property",
            "socket.timeout.ms=30000",
            "--kafka-property",
            "client.rack=a\nmessage.max.bytes=2000000",
        ]);
        assert_eq!(s.validate(), Ok(()));
        let mut c = ClientConfig::new();
        s.apply_kafka(&mut c);
        assert_eq!(c.get("socket.timeout.ms"), Some("30000"));
        assert_eq!(c.get("client.rack"), Some("a"));
        assert_eq!(c.get("message.max.bytes"), Some("2000000"));
    }

    #[test]
    fn the_configuration_debug_output_and_help_never_show_the_database_password() {
        #[derive(Parser)]
        struct Full {
            #[command(flatten)]
            config: crate::config::ConfigArgs,
        }
        let full = Full::try_parse_from([
            "order-saga",
            "--database-url",
            "postgres://order:pa55word@db:5432/order",
        ])
        .unwrap();
        let shown = format!("{:?}", full.config.into_config());
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(shown.contains("order:***@db:5432"), "{shown}");
        use clap::CommandFactory;
        let help = Full::command().render_long_help().to_string();
        assert!(!help.contains("order:order@"), "{help}");
        assert!(help.contains("order:***@localhost"), "{help}");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url("postgres://order:pw@127.0.0.1:5432/order?sslmode=require"),
            "postgres://order:***@127.0.0.1:5432/order?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw"),
            "postgres://h/db?user=u&password=***"
        );
        assert_eq!(redact_url("http://h:8080/x"), "http://h:8080/x");
    }
}
