//! PostgreSQL: connecting with retry, and the schema migrations of `migrations/`.

use std::time::Duration;

use thiserror::Error;
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::retry::Backoff;
use crate::security::Security;

pub mod classify;
pub mod tls;

pub use classify::{classify, PgErrorClass};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// An arbitrary but fixed key: every instance takes the same advisory lock, so two
/// instances that start together apply the migrations one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_725f_6d67; // "order_mg"

#[derive(Debug, Error)]
pub enum DbError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("could not reach PostgreSQL within {waited:?}: {last}")]
    Unreachable { waited: Duration, last: String },
    #[error(transparent)]
    Settings(#[from] tls::TlsSettingsError),
    /// Retrying cannot help: wrong password, refused role, failed TLS verification.
    #[error("PostgreSQL at {target} refused the connection: {reason}")]
    Access { target: String, reason: String },
}

/// A connection error that retrying cannot fix: authentication (SQLSTATE class 28) or
/// TLS (untrusted certificate, wrong host name, TLS required but not offered).
pub fn access_failure(e: &tokio_postgres::Error) -> Option<String> {
    if let Some(db) = e.as_db_error() {
        if db.code().code().starts_with("28") {
            return Some(format!("{} ({})", db.message(), db.code().code()));
        }
        return None;
    }
    let text = e.to_string();
    // tokio-postgres found the settings unusable (e.g. the server asks for a password and
    // none was given): no retry changes that.
    if text.starts_with("invalid configuration") {
        let source = std::error::Error::source(e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        return Some(format!("{text}{source}"));
    }
    let source = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    (text.contains("TLS") || text.contains("certificate") || source.contains("certificate")).then(
        || {
            if source.is_empty() {
                text
            } else {
                format!("{text}: {source}")
            }
        },
    )
}

/// Where a configuration connects, for messages: hosts and ports, never credentials.
pub fn target(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .zip(pg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "{} (user {}, database {})",
        hosts.join(","),
        pg.get_user().unwrap_or("?"),
        pg.get_dbname().unwrap_or("?")
    )
}

/// Connects to `url` without TLS settings beyond the URL's own; see [`connect_secured`].
pub async fn connect(url: &str, give_up_after: Duration) -> Result<Client, DbError> {
    connect_secured(url, &Security::default(), give_up_after).await
}

/// Connects to `url` with `security`'s password file and root certificate, retrying with
/// backoff until `give_up_after` has passed while the server is unreachable. A refused
/// login or a failed certificate check ends at once: waiting cannot fix either.
///
/// The connection task is spawned on the current runtime; it ends when the client drops.
pub async fn connect_secured(
    url: &str,
    security: &Security,
    give_up_after: Duration,
) -> Result<Client, DbError> {
    let (pg, tls, _) = tls::connection(url, security)?;
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match pg.connect(tls.clone()).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        warn!(error = %e, "postgres connection closed");
                    }
                });
                return Ok(client);
            }
            Err(e) if access_failure(&e).is_some() => {
                return Err(DbError::Access {
                    target: target(&pg),
                    reason: access_failure(&e).unwrap_or_default(),
                })
            }
            Err(e) if started.elapsed() < give_up_after => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "postgres unreachable");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(DbError::Unreachable {
                    waited: started.elapsed(),
                    last: e.to_string(),
                })
            }
        }
    }
}

/// Applies every migration not yet applied, under a session advisory lock.
///
/// Refinery takes no lock of its own, so two instances starting at once could both try
/// to apply the same version; the lock makes the second wait and then find nothing to do.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, DbError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = embedded::migrations::runner().run_async(client).await;
    // Unlock even when the run failed, so a retry in this session is not blocked by us.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    unlock?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    info!(applied = applied.len(), "migrations up to date");
    Ok(applied)
}
