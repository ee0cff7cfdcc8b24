//! Builds every PostgreSQL connection's settings: the URL's `sslmode` (including
//! `verify-ca` and `verify-full`, which tokio-postgres does not parse itself) and
//! `sslrootcert`, the root-certificate and password-file settings, and the OpenSSL
//! connector that enforces them.

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode as PgSslMode;

use crate::security::{read_secret, redact_url, Security};

/// libpq's `sslmode` values this program honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it; the certificate is not checked (libpq's meaning).
    Prefer,
    /// TLS or nothing; the certificate is not checked (libpq's meaning).
    Require,
    /// TLS, with a certificate signed by the root certificate; any host name.
    VerifyCa,
    /// TLS, with a certificate signed by the root certificate and naming the host.
    VerifyFull,
}

/// Why the connection settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingsError {
    #[error("invalid PostgreSQL URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("PostgreSQL root certificate {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("PostgreSQL password file {path}: {reason}")]
    PasswordFile { path: String, reason: String },
    #[error("PostgreSQL TLS setup: {0}")]
    Tls(String),
}

/// Removes `sslmode` and `sslrootcert` from a URL or key=value connection string and
/// returns them (percent-decoded), so tokio-postgres parses the rest.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    if url.contains("://") {
        let Some((head, query)) = url.split_once('?') else {
            return (url.to_string(), None, None);
        };
        let mut kept = Vec::new();
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("sslmode", v)) => mode = Some(percent_decode(v)),
                Some(("sslrootcert", v)) => root = Some(percent_decode(v)),
                _ => kept.push(kv),
            }
        }
        let rest = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        (rest, mode, root)
    } else {
        let mut kept = Vec::new();
        for kv in url.split_whitespace() {
            match kv.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
                Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
                _ => kept.push(kv),
            }
        }
        (kept.join(" "), mode, root)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `url` parses, `sslmode` included, without reading any file.
pub fn check_url(url: &str) -> Result<(), TlsSettingsError> {
    let (rest, mode, _) = take_tls_params(url);
    parse_mode(url, mode.as_deref())?;
    rest.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| TlsSettingsError::Url {
            url: redact_url(url),
            reason: e.to_string(),
        })
}

fn parse_mode(url: &str, mode: Option<&str>) -> Result<SslMode, TlsSettingsError> {
    Ok(match mode {
        None | Some("prefer") | Some("allow") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(TlsSettingsError::Url {
                url: redact_url(url),
                reason: format!(
                    "sslmode={other}: allowed are disable, prefer, require, verify-ca, verify-full"
                ),
            })
        }
    })
}

/// The connection settings and TLS connector for `url` under `security`: the one function
/// every PostgreSQL connection of the program is built with.
pub fn connection(
    url: &str,
    security: &Security,
) -> Result<(tokio_postgres::Config, MakeTlsConnector, SslMode), TlsSettingsError> {
    let (rest, mode, url_root) = take_tls_params(url);
    let mode = parse_mode(url, mode.as_deref())?;
    let mut pg: tokio_postgres::Config =
        rest.parse()
            .map_err(|e: tokio_postgres::Error| TlsSettingsError::Url {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
    pg.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });
    if pg.get_password().is_none() {
        if let Some(path) = security.database_password_file() {
            let password = read_secret(&path.to_string_lossy()).map_err(|e| {
                TlsSettingsError::PasswordFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            pg.password(password);
        }
    }
    let root = url_root.or_else(|| {
        (!security.database.database_ssl_root_cert.is_empty())
            .then(|| security.database.database_ssl_root_cert.clone())
    });
    let mut builder = SslConnector::builder(SslMethod::tls())
        .map_err(|e| TlsSettingsError::Tls(e.to_string()))?;
    match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            if let Some(path) = &root {
                builder
                    .set_ca_file(path)
                    .map_err(|e| TlsSettingsError::RootCert {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
            }
            builder.set_verify(SslVerifyMode::PEER);
        }
        _ => builder.set_verify(SslVerifyMode::NONE),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if mode != SslMode::VerifyFull {
        connector.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok((pg, connector, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_and_the_root_certificate_are_taken_out_of_the_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        );
        assert_eq!(rest, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, _) = take_tls_params("host=h user=u sslmode=verify-ca");
        assert_eq!(rest, "host=h user=u");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
    }

    #[test]
    fn an_unknown_sslmode_is_refused_without_echoing_the_password() {
        let security = Security::default();
        let e = connection("postgres://u:pw@h/db?sslmode=always", &security)
            .err()
            .unwrap();
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn a_missing_root_certificate_is_named() {
        let security = Security::default();
        let e = connection(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &security,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
