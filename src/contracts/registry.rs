//! A small client for the Confluent-compatible schema-registry REST API, and the two
//! administrative operations `order-saga schemas register` and `order-saga schemas check`.
//!
//! Written against Apicurio Registry 3's `/apis/ccompat/v7` as well as Confluent's API;
//! the differences that matter are noted where they are handled.
//!
//! Security: https with extra trusted roots from `--registry-ca-file` (reqwest on
//! native-tls, i.e. the system OpenSSL also used by Kafka and PostgreSQL), and basic auth
//! or a bearer token read from files. A base URL with credentials in it is refused rather
//! than redacted: every error message names the URL, and a URL that is never allowed to
//! hold a password cannot leak one.
//!
//! `schema_registry_converter` 6.0.0 was evaluated to carry the connection instead. Its
//! `SrSettingsBuilder` could: it has `set_basic_authorization`, `set_token_authorization`,
//! `set_timeout`, and `build_with(reqwest::ClientBuilder)` for our own TLS roots, on the
//! same reqwest 0.13. What we would lose: its errors (`SRCError`: text plus a retriable
//! flag) drop the registry's `error_code`, which the codec needs to tell an unknown schema
//! id (40403, a poison record) from an outage; it has no `PUT /config/{subject}` for
//! `schemas register`; its compatibility call checks all versions without `verbose`, so
//! `schemas check` could no longer print the registry's reasons; a bad header value
//! panics (`unwrap` in `build_client`); and it needs Rust 1.88 (this crate: 1.85). So this
//! client stays, with reqwest's `native-tls` feature.

use std::time::Duration;

use apache_avro::Schema;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::compat::backward_problems;
use super::schemas::{SchemaError, Schemas};
use crate::security::{redact_url, Credentials, RegistryAuth};

/// The compatibility level every subject of ours gets: a new schema must read data
/// written with every earlier version.
pub const COMPATIBILITY: &str = "BACKWARD_TRANSITIVE";

const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent's error code for "subject not found", which Apicurio's ccompat API uses too.
pub const SUBJECT_NOT_FOUND: i64 = 40401;
/// Confluent's error code for "schema not found" (unknown id, or a lookup that matches no
/// version), which Apicurio's ccompat API uses too.
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The base URL is not a URL.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No answer: connection refused, timeout, or the body could not be read.
    #[error("schema registry at {url} unreachable: {source}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A 5xx, 408 or 429 answer: the registry is there but cannot serve now.
    #[error("schema registry at {url} unavailable ({status}): {message}")]
    Unavailable {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// A 401 or 403 answer: our credentials are missing, wrong or not enough. Counted as
    /// transient, so records are retried rather than dead-lettered while it lasts;
    /// start-up checks for it and stops (see [`RegistryError::access_failure`]).
    #[error(
        "schema registry at {url} refused our credentials ({status}): check \
         --registry-username and --registry-password-file, or --registry-token-file"
    )]
    Unauthorized {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A 404 answer: no such subject, version or schema id.
    #[error("not found at {url} (error code {}): {message}", error_code.map_or("none".to_owned(), |c| c.to_string()))]
    NotFound {
        /// The request URL.
        url: String,
        /// The registry's error code, e.g. 40401 subject not found.
        error_code: Option<i64>,
        /// The registry's message.
        message: String,
    },
    /// Any other 4xx answer: e.g. 409 incompatible schema, 422 invalid schema, 401.
    #[error("schema registry refused {url} ({status}, error code {}): {message}", error_code.map_or("none".to_owned(), |c| c.to_string()))]
    Rejected {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error code.
        error_code: Option<i64>,
        /// The registry's message.
        message: String,
    },
    /// A 2xx answer whose body is not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    InvalidResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A local schema failed to load.
    #[error(transparent)]
    LocalSchema(#[from] SchemaError),
}

impl RegistryError {
    /// The same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. }
                | RegistryError::Unavailable { .. }
                | RegistryError::Unauthorized { .. }
        )
    }

    /// Credentials refused or the TLS certificate not trusted: waiting cannot fix either,
    /// so start-up stops on it. The plain reason, or `None` for any other error.
    pub fn access_failure(&self) -> Option<String> {
        match self {
            RegistryError::Unauthorized { .. } => Some(self.to_string()),
            RegistryError::Unreachable { url, source } => {
                let mut chain = Vec::new();
                let mut cause: Option<&dyn std::error::Error> = Some(source);
                while let Some(c) = cause {
                    chain.push(c.to_string());
                    cause = c.source();
                }
                let text = chain.join(": ");
                (text.contains("certificate") || text.contains("SSL") || text.contains("TLS"))
                    .then(|| format!("TLS with the schema registry at {url} failed: {text}"))
            }
            _ => None,
        }
    }

    /// A 404 answer with the registry's error code `code`. A 404 without a code is not
    /// the registry speaking (e.g. a wrong base URL) and never matches.
    pub fn is_not_found(&self, code: i64) -> bool {
        matches!(self, RegistryError::NotFound { error_code: Some(c), .. } if *c == code)
    }

    /// The Confluent error code of the answer, if any.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            RegistryError::NotFound { error_code, .. }
            | RegistryError::Rejected { error_code, .. } => *error_code,
            _ => None,
        }
    }
}

/// The result of checking one schema against one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The subject checked.
    pub subject: String,
    /// Whether the registry would accept the schema as the subject's next version.
    pub compatible: bool,
    /// The subject has no versions yet: any valid schema is compatible.
    pub new_subject: bool,
    /// Plain-words reasons (empty when compatible), followed by any warnings.
    pub messages: Vec<String>,
}

/// The registry's JSON error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Debug, Deserialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    #[serde(rename = "compatibilityLevel", alias = "compatibility")]
    compatibility: Option<String>,
}

/// A client of one registry: an HTTP client, the API's base URL and its credentials.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    credentials: Option<Credentials>,
}

impl RegistryClient {
    /// A client for the API at `base_url`, e.g.
    /// `http://127.0.0.1:8080/apis/ccompat/v7`, with short timeouts so an unreachable
    /// registry is reported rather than waited for.
    pub fn new(base_url: &str) -> Result<Self, RegistryError> {
        Self::secured(base_url, &RegistryAuth::default())
    }

    /// A client for the API at `base_url` that trusts `auth`'s CA and sends its
    /// credentials with every request.
    pub fn secured(base_url: &str, auth: &RegistryAuth) -> Result<Self, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidUrl {
            url: redact_url(base_url),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15));
        if let Some(pem) = &auth.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| invalid(format!("registry CA file is not PEM: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("cannot build HTTP client: {e}")))?;
        let mut client = Self::with_client(http, base_url)?;
        client.credentials = auth.credentials.clone();
        Ok(client)
    }

    /// A client using `http`, for sharing a connection pool or custom settings.
    pub fn with_client(http: reqwest::Client, base_url: &str) -> Result<Self, RegistryError> {
        // Paths are appended segment by segment, so a trailing slash would make an empty one.
        let trimmed = base_url.trim().trim_end_matches('/');
        let base = Url::parse(trimmed).map_err(|e| RegistryError::InvalidUrl {
            url: redact_url(base_url),
            reason: e.to_string(),
        })?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(RegistryError::InvalidUrl {
                url: redact_url(base_url),
                reason: "credentials in the URL are refused; use --registry-username with \
                         --registry-password-file, or --registry-token-file"
                    .to_owned(),
            });
        }
        if base.cannot_be_a_base() {
            return Err(RegistryError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "not a base URL".to_owned(),
            });
        }
        Ok(Self {
            http,
            base,
            credentials: None,
        })
    }

    /// The API's base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<T, RegistryError> {
        let shown = url.to_string();
        let mut request = self
            .http
            .request(method, url)
            .header(ACCEPT, HeaderValue::from_static(SR_JSON));
        request = match &self.credentials {
            None => request,
            Some(Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(Credentials::Bearer(token)) => request.bearer_auth(token),
        };
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static(SR_JSON))
                .body(body.to_string());
        }
        let unreachable = |source| RegistryError::Unreachable {
            url: shown.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| RegistryError::InvalidResponse {
                url: shown.clone(),
                reason: format!("{e}; body: {}", excerpt(&text)),
            });
        }
        let (error_code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (
                body.error_code,
                body.message.unwrap_or_else(|| excerpt(&text)),
            ),
            Err(_) => (None, excerpt(&text)),
        };
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                url: shown,
                error_code,
                message,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                url: shown,
                status: status.as_u16(),
            },
            s if s.is_server_error()
                || s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                RegistryError::Unavailable {
                    url: shown,
                    status: s.as_u16(),
                    message,
                }
            }
            s => RegistryError::Rejected {
                url: shown,
                status: s.as_u16(),
                error_code,
                message,
            },
        })
    }

    /// The schema text registered under `id` (`GET /schemas/ids/{id}`). An unknown id is
    /// a [`RegistryError::NotFound`] with code [`SCHEMA_NOT_FOUND`].
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let url = self.url(&["schemas", "ids", &id.to_string()]);
        let shown = url.to_string();
        let body: SchemaBody = self.call(Method::GET, url, None).await?;
        // Confluent omits schemaType for Avro; anything else is not ours to decode.
        match body.schema_type.as_deref() {
            None | Some("AVRO") => Ok(body.schema),
            Some(other) => Err(RegistryError::InvalidResponse {
                url: shown,
                reason: format!("schema {id} is of type {other}, not AVRO"),
            }),
        }
    }

    /// The id of `schema` if it is registered under `subject` (`POST /subjects/{subject}`),
    /// `None` if the subject or the schema is not there.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let url = self.url(&["subjects", subject]);
        match self
            .call::<IdBody>(Method::POST, url, Some(schema_body(schema)))
            .await
        {
            Ok(body) => Ok(Some(body.id)),
            Err(e) if e.is_not_found(SUBJECT_NOT_FOUND) || e.is_not_found(SCHEMA_NOT_FOUND) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` under `subject` and returns its id
    /// (`POST /subjects/{subject}/versions`). Registering an already registered schema
    /// returns its existing id; an incompatible one is refused (409).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = self.url(&["subjects", subject, "versions"]);
        let body: IdBody = self
            .call(Method::POST, url, Some(schema_body(schema)))
            .await?;
        Ok(body.id)
    }

    /// Sets `subject`'s compatibility level (`PUT /config/{subject}`). Allowed before the
    /// subject has any version.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let url = self.url(&["config", subject]);
        let result: Result<serde_json::Value, RegistryError> = self
            .call(Method::PUT, url, Some(json!({ "compatibility": level })))
            .await;
        match result {
            Ok(_) => Ok(()),
            // Apicurio answers 409 when another client created the same rule a moment
            // earlier (two instances starting together); that is success if the level
            // that won is the one we wanted.
            Err(RegistryError::Rejected { status: 409, .. })
                if self.compatibility(subject).await?.as_deref() == Some(level) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `subject`'s own compatibility level (`GET /config/{subject}`), `None` if it has
    /// none set.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let url = self.url(&["config", subject]);
        match self.call::<ConfigBody>(Method::GET, url, None).await {
            Ok(body) => Ok(body.compatibility),
            // Apicurio answers a bare 404 for a subject without its own level.
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All subjects (`GET /subjects`).
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.call(Method::GET, self.url(&["subjects"]), None).await
    }

    /// The version numbers under `subject`, empty if it does not exist
    /// (`GET /subjects/{subject}/versions`).
    pub async fn versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        let url = self.url(&["subjects", subject, "versions"]);
        match self.call(Method::GET, url, None).await {
            Ok(versions) => Ok(versions),
            Err(e) if e.is_not_found(SUBJECT_NOT_FOUND) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The schema text of one version of `subject`.
    pub async fn version_schema(
        &self,
        subject: &str,
        version: i64,
    ) -> Result<String, RegistryError> {
        let url = self.url(&["subjects", subject, "versions", &version.to_string()]);
        let body: SchemaBody = self.call(Method::GET, url, None).await?;
        Ok(body.schema)
    }

    /// Whether `schema` could be registered as the next version of `subject`, in plain
    /// words.
    ///
    /// A subject without versions is new, so any valid schema is compatible. With the
    /// subject at BACKWARD_TRANSITIVE the registry decides
    /// (`POST /compatibility/subjects/{subject}/versions/latest?verbose=true`); Apicurio
    /// ignores `verbose` and gives no reasons, so reasons are then worked out locally
    /// against every registered version. With any other level (Apicurio enforces nothing
    /// until a rule is set) the registry's answer says nothing about the rule
    /// `register` will set, so the local BACKWARD_TRANSITIVE check decides, with a
    /// warning.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<CheckOutcome, RegistryError> {
        let mut outcome = CheckOutcome {
            subject: subject.to_owned(),
            compatible: true,
            new_subject: false,
            messages: Vec::new(),
        };
        let reader = match Schema::parse_str(schema) {
            Ok(reader) => reader,
            Err(e) => {
                outcome.compatible = false;
                outcome
                    .messages
                    .push(format!("not a valid Avro schema: {e}"));
                return Ok(outcome);
            }
        };
        // Apicurio answers "compatible" for a subject that does not exist, Confluent 404:
        // ask for the versions instead, which both answer alike.
        let versions = self.versions(subject).await?;
        if versions.is_empty() {
            outcome.new_subject = true;
            return Ok(outcome);
        }
        match self.compatibility(subject).await? {
            Some(level) if level == COMPATIBILITY => {
                let mut url =
                    self.url(&["compatibility", "subjects", subject, "versions", "latest"]);
                url.query_pairs_mut().append_pair("verbose", "true");
                let answer: CompatibilityBody = self
                    .call(Method::POST, url, Some(schema_body(schema)))
                    .await?;
                outcome.compatible = answer.is_compatible;
                outcome.messages = answer.messages;
                if !outcome.compatible && outcome.messages.is_empty() {
                    outcome.messages = self.local_reasons(subject, &versions, &reader).await?;
                    if outcome.messages.is_empty() {
                        outcome
                            .messages
                            .push("the registry refused the schema without giving a reason".into());
                    }
                }
            }
            level => {
                outcome.messages = self.local_reasons(subject, &versions, &reader).await?;
                outcome.compatible = outcome.messages.is_empty();
                outcome.messages.push(format!(
                    "warning: subject {subject} has compatibility {}, not {COMPATIBILITY}, so the \
                     registry would accept breaking changes; judged locally by \
                     {COMPATIBILITY} (`order-saga schemas register` sets it)",
                    level.as_deref().unwrap_or("unset")
                ));
            }
        }
        Ok(outcome)
    }

    /// Plain-words reasons why `reader` cannot read data written with some of `versions`
    /// of `subject` (BACKWARD_TRANSITIVE); empty if it can read them all.
    async fn local_reasons(
        &self,
        subject: &str,
        versions: &[i64],
        reader: &Schema,
    ) -> Result<Vec<String>, RegistryError> {
        let mut reasons = Vec::new();
        for &version in versions {
            let text = self.version_schema(subject, version).await?;
            let writer = match Schema::parse_str(&text) {
                Ok(writer) => writer,
                Err(e) => {
                    reasons.push(format!("version {version} cannot be parsed here: {e}"));
                    continue;
                }
            };
            for problem in backward_problems(&writer, reader) {
                reasons.push(format!("data written with version {version}: {problem}"));
            }
        }
        Ok(reasons)
    }

    /// Sets BACKWARD_TRANSITIVE on each local schema's subject (prefixed with
    /// `subject_prefix`, usually empty) and registers the schema. Returns each subject
    /// with its schema id. Idempotent.
    pub async fn register_all(
        &self,
        subject_prefix: &str,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        let schemas = Schemas::global()?;
        let mut registered = Vec::new();
        for local in schemas.iter() {
            let subject = format!("{subject_prefix}{}", local.subject());
            // Before the first version, so the subject is never without the rule.
            self.set_compatibility(&subject, COMPATIBILITY).await?;
            let id = self.register(&subject, local.source()).await?;
            registered.push((subject, id));
        }
        Ok(registered)
    }

    /// Checks each local schema against its subject (prefixed with `subject_prefix`,
    /// usually empty). A subject not registered yet is new and compatible.
    pub async fn check_all(
        &self,
        subject_prefix: &str,
    ) -> Result<Vec<CheckOutcome>, RegistryError> {
        let schemas = Schemas::global()?;
        let mut outcomes = Vec::new();
        for local in schemas.iter() {
            let subject = format!("{subject_prefix}{}", local.subject());
            outcomes.push(self.check(&subject, local.source()).await?);
        }
        Ok(outcomes)
    }
}

fn schema_body(schema: &str) -> serde_json::Value {
    json!({ "schema": schema, "schemaType": "AVRO" })
}

/// The start of a response body, for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// [`RegistryClient::register_all`] on the registry at `base_url`, unprefixed subjects.
pub async fn register_all(base_url: &str) -> Result<Vec<(String, u32)>, RegistryError> {
    RegistryClient::new(base_url)?.register_all("").await
}

/// [`register_all`] with `auth`.
pub async fn register_all_secured(
    base_url: &str,
    auth: &RegistryAuth,
) -> Result<Vec<(String, u32)>, RegistryError> {
    RegistryClient::secured(base_url, auth)?
        .register_all("")
        .await
}

/// [`check_all`] with `auth`.
pub async fn check_all_secured(
    base_url: &str,
    auth: &RegistryAuth,
) -> Result<Vec<CheckOutcome>, RegistryError> {
    RegistryClient::secured(base_url, auth)?.check_all("").await
}

/// [`RegistryClient::check_all`] on the registry at `base_url`, unprefixed subjects.
/// The check passes if every outcome is `compatible`.
pub async fn check_all(base_url: &str) -> Result<Vec<CheckOutcome>, RegistryError> {
    RegistryClient::new(base_url)?.check_all("").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_loses_its_trailing_slash_and_segments_are_encoded() {
        let client = RegistryClient::new("http://127.0.0.1:8080/apis/ccompat/v7/").unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:8080/apis/ccompat/v7");
        assert_eq!(
            client.url(&["subjects", "a b/c", "versions"]).as_str(),
            "http://127.0.0.1:8080/apis/ccompat/v7/subjects/a%20b%2Fc/versions"
        );
        let root = RegistryClient::new("http://localhost:8081").unwrap();
        assert_eq!(
            root.url(&["schemas", "ids", "7"]).as_str(),
            "http://localhost:8081/schemas/ids/7"
        );
        assert!(RegistryClient::new("not a url").is_err());
    }

    #[test]
    fn a_base_url_with_credentials_is_refused_without_echoing_the_password() {
        let e = RegistryClient::new("https://order:s3cret@registry.example.com/apis/ccompat/v7")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--registry-password-file"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), 301);
        assert_eq!(excerpt(" short "), "short");
    }
}
