//! PostgreSQL: connecting with retry, and the schema migrations of `migrations/`.

use std::time::Duration;

use thiserror::Error;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use crate::retry::Backoff;

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
}

/// Connects to `url`, retrying with backoff until `give_up_after` has passed.
///
/// The connection task is spawned on the current runtime; it ends when the client drops.
pub async fn connect(url: &str, give_up_after: Duration) -> Result<Client, DbError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        warn!(error = %e, "postgres connection closed");
                    }
                });
                return Ok(client);
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
