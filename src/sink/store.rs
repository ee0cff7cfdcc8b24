//! The sink's PostgreSQL side: stored offsets, and one transaction per batch.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};

use super::batch::{rfc3339_millis, Batch};
use crate::db;

/// How long one statement sequence may take before the connection is given up on. A
/// hung server must not hold the batch (and the consumer loop) forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The channel of the change feed.
pub const NOTIFY_CHANNEL: &str = "order_status_changed";

/// Above this many partitions the payload leaves the offsets out, to stay far below
/// PostgreSQL's 8000-byte limit on a notification payload.
const NOTIFY_MAX_PARTITIONS: usize = 256;

/// A failure to talk to PostgreSQL. All of them are retried: the sink cannot tell a
/// restarting server from a broken one, and retrying loses nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migrations: {0}")]
    Migrate(#[from] db::DbError),
    #[error("postgres did not answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// The error with its causes, `a: b: c`: the driver's own messages ("db error",
    /// "error creating a new object") say little without what lies beneath.
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let more = e.to_string();
            if !text.ends_with(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = e.source();
        }
        text
    }

    /// A refused login or failed certificate check, which no retry fixes.
    pub fn access_failure(&self) -> Option<String> {
        match self {
            StoreError::Postgres(e)
            | StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => db::access_failure(e),
            StoreError::Migrate(db::DbError::Postgres(e)) => db::access_failure(e),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error, for the logs.
    pub fn code(&self) -> Option<&str> {
        match self {
            StoreError::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// What came of committing a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Rows and offsets are in; `orders` rows inserted or updated, `history` rows added.
    Done {
        orders: u64,
        history: u64,
        notified: bool,
    },
    /// The stored offset of some partition was not the one this batch continues from:
    /// another sink (a zombie, or the next owner after a rebalance we have not seen yet)
    /// wrote it, or someone reset it. Nothing was written.
    Conflict,
}

/// The `sink_offsets` compare-and-set: every partition's row must still hold the offset
/// the batch started from (or be absent if the batch started from the beginning).
/// Partitions are handled in order so two writers lock rows in the same order.
const CLAIM_OFFSETS: &str = "\
WITH input AS (
    SELECT * FROM unnest($3::int4[], $4::int8[], $5::int8[]) AS i(partition, expected, next_offset)
), moved AS (
    UPDATE sink_offsets s SET next_offset = i.next_offset, updated_at = now()
    FROM input i
    WHERE s.consumer_group = $1 AND s.topic = $2 AND s.partition = i.partition
      AND i.expected IS NOT NULL AND s.next_offset = i.expected
    RETURNING s.partition
), created AS (
    INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset)
    SELECT $1, $2, i.partition, i.next_offset FROM input i
    WHERE i.expected IS NULL
    ORDER BY i.partition
    ON CONFLICT (consumer_group, topic, partition) DO NOTHING
    RETURNING partition
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM created)";

/// The `orders` upsert of a folded batch: one row per order, applied only over an older
/// version. Status times already known are kept when the newer record lacks them.
const UPSERT_ORDERS: &str = "\
INSERT INTO orders AS o (order_id, customer_id, status, version, total_minor, currency, items,
    shipping_address, reason, created_at, updated_at, reserved_at, paid_at,
    shipping_scheduled_at, completed_at, failed_at, canceled_at)
SELECT u.order_id, u.customer_id, u.status, u.version, u.total_minor, u.currency,
    u.items::jsonb, u.shipping_address::jsonb, u.reason,
    'epoch'::timestamptz + u.created_at * interval '1 millisecond',
    'epoch'::timestamptz + u.updated_at * interval '1 millisecond',
    'epoch'::timestamptz + u.reserved_at * interval '1 millisecond',
    'epoch'::timestamptz + u.paid_at * interval '1 millisecond',
    'epoch'::timestamptz + u.shipping_scheduled_at * interval '1 millisecond',
    'epoch'::timestamptz + u.completed_at * interval '1 millisecond',
    'epoch'::timestamptz + u.failed_at * interval '1 millisecond',
    'epoch'::timestamptz + u.canceled_at * interval '1 millisecond'
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[],
    $15::int8[], $16::int8[], $17::int8[])
    AS u(order_id, customer_id, status, version, total_minor, currency, items, shipping_address,
         reason, created_at, updated_at, reserved_at, paid_at, shipping_scheduled_at,
         completed_at, failed_at, canceled_at)
ON CONFLICT (order_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id,
    status = EXCLUDED.status,
    version = EXCLUDED.version,
    total_minor = EXCLUDED.total_minor,
    currency = EXCLUDED.currency,
    items = EXCLUDED.items,
    shipping_address = EXCLUDED.shipping_address,
    reason = EXCLUDED.reason,
    created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at,
    reserved_at = COALESCE(EXCLUDED.reserved_at, o.reserved_at),
    paid_at = COALESCE(EXCLUDED.paid_at, o.paid_at),
    shipping_scheduled_at = COALESCE(EXCLUDED.shipping_scheduled_at, o.shipping_scheduled_at),
    completed_at = COALESCE(EXCLUDED.completed_at, o.completed_at),
    failed_at = COALESCE(EXCLUDED.failed_at, o.failed_at),
    canceled_at = COALESCE(EXCLUDED.canceled_at, o.canceled_at)
WHERE o.version < EXCLUDED.version";

const INSERT_HISTORY: &str = "\
INSERT INTO order_status_history (order_id, version, status, reason, changed_at)
SELECT h.order_id, h.version, h.status, h.reason,
    'epoch'::timestamptz + h.changed_at * interval '1 millisecond'
FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[])
    AS h(order_id, version, status, reason, changed_at)
ON CONFLICT (order_id, version) DO NOTHING";

const LOAD_OFFSETS: &str = "\
SELECT partition, next_offset FROM sink_offsets
WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::int4[])";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The PostgreSQL side of one sink: its group, its topic, and a small connection pool
/// that replaces broken connections.
pub struct Store {
    pool: Pool,
    group: String,
    topic: String,
}

/// Runs `fut` with [`CALL_TIMEOUT`].
async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout(CALL_TIMEOUT)))
}

/// Keeps a connection that failed out of the pool: after an error its state (an open
/// transaction, a half-read reply, a dead socket) is not worth trusting.
fn discard(client: Object) {
    drop(Object::take(client));
}

impl Store {
    /// A store for `group`'s position in `topic`. Connects lazily.
    pub fn new(
        url: &str,
        security: &crate::security::Security,
        group: &str,
        topic: &str,
    ) -> Result<Self, super::SinkError> {
        let (mut pg, tls, _) = db::tls::connection(url, security)
            .map_err(|e| super::SinkError::DatabaseUrl(e.to_string()))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("order-saga-sink");
        }
        pg.keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(2)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| super::SinkError::Pool(e.to_string()))?;
        Ok(Store {
            pool,
            group: group.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// Applies the migrations (idempotent, under an advisory lock).
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        timed(async {
            let mut client = self.pool.get().await?;
            match db::migrate(&mut client).await {
                Ok(applied) => Ok(applied),
                Err(e) => {
                    discard(client);
                    Err(e.into())
                }
            }
        })
        .await
    }

    /// The stored next offset of each of `partitions` that has one.
    pub async fn load_offsets(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, StoreError> {
        timed(async {
            let client = self.pool.get().await?;
            let result = async {
                let stmt = client.prepare_cached(LOAD_OFFSETS).await?;
                client
                    .query(&stmt, &[&self.group, &self.topic, &partitions])
                    .await
            }
            .await;
            match result {
                Ok(rows) => {
                    let mut offsets = BTreeMap::new();
                    for row in rows {
                        offsets.insert(row.try_get::<_, i32>(0)?, row.try_get::<_, i64>(1)?);
                    }
                    Ok(offsets)
                }
                Err(e) => {
                    discard(client);
                    Err(e.into())
                }
            }
        })
        .await
    }

    /// Writes `batch` in one transaction: the offsets (compare-and-set against
    /// `expected`, the stored offset each partition's records continue from, `None` for
    /// none stored), the folded `orders` upsert, the history rows, and a notification.
    pub async fn commit(
        &self,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Commit, StoreError> {
        timed(async {
            let mut client = self.pool.get().await?;
            match self.commit_on(&mut client, batch, expected).await {
                Ok(outcome) => Ok(outcome),
                Err(e) => {
                    discard(client);
                    Err(e)
                }
            }
        })
        .await
    }

    async fn commit_on(
        &self,
        client: &mut Object,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Commit, StoreError> {
        let claim = client.prepare_cached(CLAIM_OFFSETS).await?;
        let upsert = client.prepare_cached(UPSERT_ORDERS).await?;
        let insert = client.prepare_cached(INSERT_HISTORY).await?;
        let notify = client.prepare_cached(NOTIFY).await?;

        let mut partitions = Vec::new();
        let mut expects = Vec::new();
        let mut nexts = Vec::new();
        for (p, next) in batch.next_offsets() {
            partitions.push(p);
            expects.push(expected.get(&p).copied().flatten());
            nexts.push(next);
        }
        let cols = batch.columns();
        let o = &cols.orders;
        let h = &cols.history;

        let tx = client.transaction().await?;
        // Offsets first: a writer that lost the partition stops here, before it has
        // touched (and locked) any order row.
        let claimed: i64 = tx
            .query_one(
                &claim,
                &[&self.group, &self.topic, &partitions, &expects, &nexts],
            )
            .await?
            .try_get(0)?;
        if claimed != partitions.len() as i64 {
            tx.rollback().await?;
            return Ok(Commit::Conflict);
        }
        let orders = if o.is_empty() {
            0
        } else {
            tx.execute(
                &upsert,
                &[
                    &o.order_id,
                    &o.customer_id,
                    &o.status,
                    &o.version,
                    &o.total_minor,
                    &o.currency,
                    &o.items,
                    &o.shipping_address,
                    &o.reason,
                    &o.created_at,
                    &o.updated_at,
                    &o.reserved_at,
                    &o.paid_at,
                    &o.shipping_scheduled_at,
                    &o.completed_at,
                    &o.failed_at,
                    &o.canceled_at,
                ],
            )
            .await?
        };
        let history = if h.is_empty() {
            0
        } else {
            tx.execute(
                &insert,
                &[&h.order_id, &h.version, &h.status, &h.reason, &h.changed_at],
            )
            .await?
        };
        // Nothing new (a replay): no one needs waking.
        let notified = orders > 0 || history > 0;
        if notified {
            let payload = notify_payload(orders, history, &self.topic, batch);
            tx.query_one(&notify, &[&NOTIFY_CHANNEL, &payload]).await?;
        }
        tx.commit().await?;
        Ok(Commit::Done {
            orders,
            history,
            notified,
        })
    }
}

/// The change-feed payload; see the module docs of [`crate::sink`].
pub fn notify_payload(orders: u64, history: u64, topic: &str, batch: &Batch) -> String {
    let mut payload = serde_json::Map::new();
    payload.insert("topic".into(), topic.into());
    payload.insert("orders".into(), orders.into());
    payload.insert("history".into(), history.into());
    if let Some(ms) = batch.max_updated_at() {
        payload.insert("max_updated_at".into(), rfc3339_millis(ms).into());
    }
    let offsets: Vec<(i32, i64)> = batch.next_offsets().collect();
    if offsets.len() <= NOTIFY_MAX_PARTITIONS {
        let map: serde_json::Map<String, serde_json::Value> = offsets
            .into_iter()
            .map(|(p, next)| (p.to_string(), next.into()))
            .collect();
        payload.insert("partitions".into(), map.into());
    }
    serde_json::Value::Object(payload).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_stays_small_even_with_many_partitions() {
        let mut batch = Batch::default();
        for p in 0..10_000 {
            batch.push(p, i64::MAX - 1, None);
        }
        let payload = notify_payload(u64::MAX, u64::MAX, &"t".repeat(249), &batch);
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert!(!payload.contains("partitions"));
    }

    #[test]
    fn the_payload_names_topic_orders_history_and_next_offsets() {
        let mut batch = Batch::default();
        batch.push(0, 41, None);
        batch.push(2, 6, None);
        let v: serde_json::Value =
            serde_json::from_str(&notify_payload(3, 5, "order-status", &batch)).unwrap();
        assert_eq!(v["topic"], "order-status");
        assert_eq!(v["orders"], 3);
        assert_eq!(v["history"], 5);
        assert_eq!(v["partitions"]["0"], 42);
        assert_eq!(v["partitions"]["2"], 7);
        assert!(v.get("max_updated_at").is_none());
    }
}
