//! The sink's PostgreSQL side: stored offsets, and one transaction per batch.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Statement, Transaction};

use super::batch::{rfc3339_millis, Batch, Columns, Entry, HistoryColumns, OrderColumns};
use super::isolate::Bisect;
use crate::db::{self, PgErrorClass};
use crate::saga::Millis;

/// How long one statement sequence may take before the connection is given up on. A
/// hung server must not hold the batch (and the consumer loop) forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the search for the rows PostgreSQL refuses may take: one transaction of up
/// to about `2 log2(n)` statements per bad row. Well within `max.poll.interval.ms`.
const ISOLATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The channel of the change feed.
pub const NOTIFY_CHANNEL: &str = "order_status_changed";

/// Above this many partitions the payload leaves the offsets out, to stay far below
/// PostgreSQL's 8000-byte limit on a notification payload.
const NOTIFY_MAX_PARTITIONS: usize = 256;

/// A failure to write to PostgreSQL. A batch that fails is retried, unless PostgreSQL
/// refused it for its data ([`StoreError::class`]): then the rows it refuses are set
/// aside and the rest written, in [`Store::commit`] itself.
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

    /// Whether retrying could help, or the batch holds rows PostgreSQL refuses.
    pub fn class(&self) -> PgErrorClass {
        match self {
            StoreError::Postgres(e) => db::classify(e),
            _ => PgErrorClass::Retry,
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

/// A record whose row PostgreSQL refused, now in `order_status_rejects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub order_id: String,
    pub version: i64,
    /// The SQLSTATE of the refusal, e.g. `22008`.
    pub sqlstate: String,
    /// PostgreSQL's message: names the problem, not the values.
    pub reason: String,
    /// PostgreSQL's DETAIL, which may quote the row: for the table, not the logs.
    pub detail: Option<String>,
    pub constraint: Option<String>,
}

impl Rejected {
    fn new(entry: &Entry, error: &tokio_postgres::Error) -> Rejected {
        let db = error.as_db_error();
        Rejected {
            partition: entry.partition,
            offset: entry.offset,
            order_id: entry.row.order_id.clone(),
            version: entry.row.version,
            sqlstate: error
                .code()
                .map(|c| c.code().to_owned())
                .unwrap_or_default(),
            reason: db.map_or_else(|| error.to_string(), |d| d.message().to_owned()),
            detail: db.and_then(|d| d.detail()).map(str::to_owned),
            constraint: db.and_then(|d| d.constraint()).map(str::to_owned),
        }
    }
}

/// How a batch PostgreSQL refused for its data was written after all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The SQLSTATE the whole batch failed with.
    pub sqlstate: String,
    /// Slices tried, each in a savepoint of the one transaction.
    pub tries: u32,
    /// Refused records found in `order_status_rejects` already (a replay).
    pub known: usize,
}

/// What came of committing a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Rows and offsets are in; `orders` rows inserted or updated, `history` rows added.
    Done {
        orders: u64,
        history: u64,
        /// The latest `updated_at` among the rows written.
        newest: Option<Millis>,
        /// Records set aside in `order_status_rejects` by this commit (a record already
        /// there from an earlier replay is not listed again).
        rejected: Vec<Rejected>,
        /// Set when the batch as a whole was refused for its data.
        isolation: Option<Isolation>,
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

/// Rejected records, once per record: a replay of the changelog finds them again and adds
/// nothing. Returns the ones added.
const INSERT_REJECTS: &str = "\
INSERT INTO order_status_rejects (consumer_group, topic, partition, record_offset, order_id,
    version, sqlstate, reason, detail, constraint_name, record)
SELECT $1, $2, r.partition, r.record_offset, r.order_id, r.version, r.sqlstate, r.reason,
    r.detail, r.constraint_name, r.record
FROM unnest($3::int4[], $4::int8[], $5::text[], $6::int8[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::text[])
    AS r(partition, record_offset, order_id, version, sqlstate, reason, detail,
         constraint_name, record)
ON CONFLICT (consumer_group, topic, partition, record_offset) DO NOTHING
RETURNING partition, record_offset";

/// One savepoint name for every slice: each is released or rolled back before the next.
const SAVEPOINT: &str = "SAVEPOINT isolate";
const RELEASE: &str = "RELEASE SAVEPOINT isolate";
const ROLL_BACK: &str = "ROLLBACK TO SAVEPOINT isolate; RELEASE SAVEPOINT isolate";

/// The prepared statements of a commit, on one connection.
struct Statements {
    claim: Statement,
    upsert: Statement,
    insert: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(client: &Object) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            claim: client.prepare_cached(CLAIM_OFFSETS).await?,
            upsert: client.prepare_cached(UPSERT_ORDERS).await?,
            insert: client.prepare_cached(INSERT_HISTORY).await?,
            notify: client.prepare_cached(NOTIFY).await?,
        })
    }
}

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
    timed_for(CALL_TIMEOUT, fut).await
}

/// Runs `fut` with a time limit of `limit`.
async fn timed_for<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
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
    ///
    /// When PostgreSQL refuses the batch for its data, a second transaction writes the
    /// same offsets, every row it accepts and, in `order_status_rejects`, every record
    /// whose row it refuses on its own (see [`super::isolate`]). Any other failure leaves
    /// everything as it was, for a retry of the whole batch.
    pub async fn commit(
        &self,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Commit, StoreError> {
        let mut client = timed(async { Ok(self.pool.get().await?) }).await?;
        let mut outcome = timed(self.commit_on(&mut client, batch, expected)).await;
        if let Err(e) = &outcome {
            if e.class() == PgErrorClass::Data {
                let sqlstate = e.code().unwrap_or_default().to_owned();
                outcome = timed_for(
                    ISOLATE_TIMEOUT,
                    self.isolate_on(&mut client, batch, expected, sqlstate),
                )
                .await;
            }
        }
        if outcome.is_err() {
            discard(client);
        }
        outcome
    }

    async fn commit_on(
        &self,
        client: &mut Object,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Commit, StoreError> {
        let st = Statements::prepare(client).await?;
        let tx = client.transaction().await?;
        if !self.claim(&tx, &st, batch, expected).await? {
            tx.rollback().await?;
            return Ok(Commit::Conflict);
        }
        let cols = batch.columns();
        let orders = upsert(&tx, &st, &cols.orders).await?;
        let history = insert(&tx, &st, &cols.history).await?;
        let newest = batch.max_updated_at();
        let notified = self
            .notify(&tx, &st, orders, history, 0, newest, batch)
            .await?;
        tx.commit().await?;
        Ok(Commit::Done {
            orders,
            history,
            newest,
            rejected: Vec::new(),
            isolation: None,
            notified,
        })
    }

    /// The commit of a batch refused for its data: every slice [`Bisect`] plans runs in a
    /// savepoint; a row that fails alone for its data is set aside.
    async fn isolate_on(
        &self,
        client: &mut Object,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
        sqlstate: String,
    ) -> Result<Commit, StoreError> {
        let st = Statements::prepare(client).await?;
        let rejects = client.prepare_cached(INSERT_REJECTS).await?;
        let tx = client.transaction().await?;
        // A deferred constraint an operator added would otherwise fail only at COMMIT,
        // after every slice had passed.
        tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
        if !self.claim(&tx, &st, batch, expected).await? {
            tx.rollback().await?;
            return Ok(Commit::Conflict);
        }
        let mut plan = Bisect::after_failure(batch.row_count());
        let (mut orders, mut history, mut newest, mut tries) = (0, 0, None, 0u32);
        let mut refused = Vec::new();
        while let Some(slice) = plan.next_slice() {
            tries += 1;
            match try_slice(&tx, &st, &batch.columns_of(slice.clone())).await? {
                Ok((o, h)) => {
                    orders += o;
                    history += h;
                    newest = newest.max(batch.max_updated_at_of(slice.clone()));
                    plan.succeeded(slice);
                }
                Err(e) if db::classify(&e) == PgErrorClass::Data => {
                    if let Some(entry) = plan.failed(slice).and_then(|i| batch.entry(i)) {
                        refused.push((Rejected::new(entry, &e), entry.row.to_json()));
                    }
                }
                // Not the data after all (the server is going away, a deadlock): the whole
                // batch is retried.
                Err(e) => return Err(e.into()),
            }
        }
        let refused_count = refused.len();
        let rejected = self.set_aside(&tx, &rejects, refused).await?;
        let known = refused_count - rejected.len();
        let notified = self
            .notify(&tx, &st, orders, history, rejected.len(), newest, batch)
            .await?;
        tx.commit().await?;
        Ok(Commit::Done {
            orders,
            history,
            newest,
            rejected,
            isolation: Some(Isolation {
                sqlstate,
                tries,
                known,
            }),
            notified,
        })
    }

    /// The `sink_offsets` compare-and-set of the batch; false if another writer moved
    /// them.
    async fn claim(
        &self,
        tx: &Transaction<'_>,
        st: &Statements,
        batch: &Batch,
        expected: &BTreeMap<i32, Option<i64>>,
    ) -> Result<bool, StoreError> {
        let mut partitions = Vec::new();
        let mut expects = Vec::new();
        let mut nexts = Vec::new();
        for (p, next) in batch.next_offsets() {
            partitions.push(p);
            expects.push(expected.get(&p).copied().flatten());
            nexts.push(next);
        }
        // Offsets first: a writer that lost the partition stops here, before it has
        // touched (and locked) any order row.
        let claimed: i64 = tx
            .query_one(
                &st.claim,
                &[&self.group, &self.topic, &partitions, &expects, &nexts],
            )
            .await?
            .try_get(0)?;
        Ok(claimed == partitions.len() as i64)
    }

    /// Inserts the refused records into `order_status_rejects`; returns those not there
    /// before.
    async fn set_aside(
        &self,
        tx: &Transaction<'_>,
        stmt: &Statement,
        refused: Vec<(Rejected, String)>,
    ) -> Result<Vec<Rejected>, StoreError> {
        if refused.is_empty() {
            return Ok(Vec::new());
        }
        let mut partition = Vec::new();
        let mut offset = Vec::new();
        let mut order_id = Vec::new();
        let mut version = Vec::new();
        let mut sqlstate = Vec::new();
        let mut reason = Vec::new();
        let mut detail = Vec::new();
        let mut constraint = Vec::new();
        let mut record = Vec::new();
        for (r, json) in &refused {
            partition.push(r.partition);
            offset.push(r.offset);
            order_id.push(r.order_id.as_str());
            version.push(r.version);
            sqlstate.push(r.sqlstate.as_str());
            reason.push(r.reason.as_str());
            detail.push(r.detail.as_deref());
            constraint.push(r.constraint.as_deref());
            record.push(json.as_str());
        }
        let added: std::collections::BTreeSet<(i32, i64)> = tx
            .query(
                stmt,
                &[
                    &self.group,
                    &self.topic,
                    &partition,
                    &offset,
                    &order_id,
                    &version,
                    &sqlstate,
                    &reason,
                    &detail,
                    &constraint,
                    &record,
                ],
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(refused
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| added.contains(&(r.partition, r.offset)))
            .collect())
    }

    /// Sends the change-feed notification when the batch changed anything; returns
    /// whether it did.
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        tx: &Transaction<'_>,
        st: &Statements,
        orders: u64,
        history: u64,
        rejected: usize,
        newest: Option<Millis>,
        batch: &Batch,
    ) -> Result<bool, StoreError> {
        // Nothing new (a replay): no one needs waking.
        if orders == 0 && history == 0 && rejected == 0 {
            return Ok(false);
        }
        let written = Written {
            orders,
            history,
            rejected,
            newest,
        };
        let payload = notify_payload(&written, &self.topic, batch);
        tx.query_one(&st.notify, &[&NOTIFY_CHANNEL, &payload])
            .await?;
        Ok(true)
    }
}

async fn upsert(
    tx: &Transaction<'_>,
    st: &Statements,
    o: &OrderColumns<'_>,
) -> Result<u64, tokio_postgres::Error> {
    if o.is_empty() {
        return Ok(0);
    }
    tx.execute(
        &st.upsert,
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
    .await
}

async fn insert(
    tx: &Transaction<'_>,
    st: &Statements,
    h: &HistoryColumns<'_>,
) -> Result<u64, tokio_postgres::Error> {
    if h.is_empty() {
        return Ok(0);
    }
    tx.execute(
        &st.insert,
        &[&h.order_id, &h.version, &h.status, &h.reason, &h.changed_at],
    )
    .await
}

/// Writes one slice in a savepoint. The outer error means the transaction is lost; the
/// inner one is the slice's own failure, already rolled back to the savepoint.
async fn try_slice(
    tx: &Transaction<'_>,
    st: &Statements,
    cols: &Columns<'_>,
) -> Result<Result<(u64, u64), tokio_postgres::Error>, tokio_postgres::Error> {
    // Sent together, answered in order: one round trip instead of three. After a failed
    // upsert the insert fails too ("transaction aborted"); the upsert's error is the one
    // that tells why.
    let (saved, orders, history) = futures::join!(
        tx.batch_execute(SAVEPOINT),
        upsert(tx, st, &cols.orders),
        insert(tx, st, &cols.history),
    );
    saved?;
    match (orders, history) {
        (Ok(o), Ok(h)) => {
            tx.batch_execute(RELEASE).await?;
            Ok(Ok((o, h)))
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            tx.batch_execute(ROLL_BACK).await?;
            Ok(Err(e))
        }
    }
}

/// What a commit wrote, for the change feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub orders: u64,
    pub history: u64,
    pub rejected: usize,
    pub newest: Option<Millis>,
}

/// The change-feed payload; see the module docs of [`crate::sink`].
pub fn notify_payload(written: &Written, topic: &str, batch: &Batch) -> String {
    let mut payload = serde_json::Map::new();
    payload.insert("topic".into(), topic.into());
    payload.insert("orders".into(), written.orders.into());
    payload.insert("history".into(), written.history.into());
    // Only when there are some: most listeners never see the field.
    if written.rejected > 0 {
        payload.insert("rejected".into(), written.rejected.into());
    }
    if let Some(ms) = written.newest {
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
        let written = Written {
            orders: u64::MAX,
            history: u64::MAX,
            rejected: usize::MAX,
            newest: Some(i64::MAX),
        };
        let payload = notify_payload(&written, &"t".repeat(249), &batch);
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert!(!payload.contains("partitions"));
    }

    #[test]
    fn the_payload_names_topic_orders_history_and_next_offsets() {
        let mut batch = Batch::default();
        batch.push(0, 41, None);
        batch.push(2, 6, None);
        let written = Written {
            orders: 3,
            history: 5,
            ..Written::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&notify_payload(&written, "order-status", &batch)).unwrap();
        assert_eq!(v["topic"], "order-status");
        assert_eq!(v["orders"], 3);
        assert_eq!(v["history"], 5);
        assert_eq!(v["partitions"]["0"], 42);
        assert_eq!(v["partitions"]["2"], 7);
        assert!(v.get("max_updated_at").is_none());
        assert!(v.get("rejected").is_none(), "no field for nothing rejected");
    }

    #[test]
    fn the_payload_counts_rejected_rows_and_dates_only_the_rows_written() {
        let mut batch = Batch::default();
        batch.push(1, 9, None);
        let written = Written {
            orders: 1,
            history: 1,
            rejected: 2,
            newest: Some(0),
        };
        let v: serde_json::Value =
            serde_json::from_str(&notify_payload(&written, "order-status", &batch)).unwrap();
        assert_eq!(v["rejected"], 2);
        assert_eq!(v["max_updated_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["partitions"]["1"], 10);
    }
}
