//! From `order-status` records to the columns of the sink's three statements.
//!
//! Pure data handling, no I/O: a record becomes an [`OrderRow`], rows gather in a
//! [`Batch`] with the next offset of each partition, and [`Batch::columns`] folds the
//! batch into one row per order (its latest version) plus one history entry per
//! `(order, version)`. The fold is what lets a single `INSERT … ON CONFLICT DO UPDATE`
//! take the whole batch: PostgreSQL refuses to update one row twice in one statement.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use serde::Deserialize;

use crate::contracts::{AddressRecord, ItemRecord, OrderStatusRecord};
use crate::saga::{Millis, Status, StatusTime};

/// When an order reached each status after `CREATED` (whose time is `created_at`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusTimes {
    pub reserved: Option<Millis>,
    pub paid: Option<Millis>,
    pub shipping_scheduled: Option<Millis>,
    pub completed: Option<Millis>,
    pub failed: Option<Millis>,
    pub canceled: Option<Millis>,
}

impl StatusTimes {
    fn slot(&mut self, status: Status) -> Option<&mut Option<Millis>> {
        match status {
            Status::Created => None,
            Status::Reserved => Some(&mut self.reserved),
            Status::Paid => Some(&mut self.paid),
            Status::ShippingScheduled => Some(&mut self.shipping_scheduled),
            Status::Completed => Some(&mut self.completed),
            Status::Failed => Some(&mut self.failed),
            Status::Canceled => Some(&mut self.canceled),
        }
    }

    /// Records `at` for `status` unless a time is already known: an order reaches each
    /// status once, and the first source consulted is the most authoritative.
    fn set_if_absent(&mut self, status: Status, at: Millis) {
        if let Some(slot) = self.slot(status) {
            slot.get_or_insert(at);
        }
    }

    /// Fills the statuses this one does not know from `older`.
    fn fill_from(&mut self, older: &StatusTimes) {
        for (mine, theirs) in [
            (&mut self.reserved, older.reserved),
            (&mut self.paid, older.paid),
            (&mut self.shipping_scheduled, older.shipping_scheduled),
            (&mut self.completed, older.completed),
            (&mut self.failed, older.failed),
            (&mut self.canceled, older.canceled),
        ] {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }
}

/// The part of the processor's saga state (the `saga_state` JSON) the table needs.
///
/// Deliberately not the whole `saga::OrderState`: the rest (commands, tasks, deadlines)
/// may change shape without the table caring, and parsing it would only cost time.
#[derive(Deserialize)]
struct SagaTimes {
    #[serde(default)]
    created_at: Option<Millis>,
    #[serde(default)]
    status_times: Vec<StatusTime>,
}

/// One `orders` row as one `order-status` record describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub status: Status,
    pub version: i64,
    pub total_minor: i64,
    pub currency: String,
    /// JSON array of `{"sku", "quantity", "unit_price_minor"}`.
    pub items: String,
    /// JSON object `{"recipient", "street", "city", "postal_code", "country"}`.
    pub shipping_address: Option<String>,
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub times: StatusTimes,
}

/// Why a record cannot become a row. The record is skipped: it came from our own
/// processor, so this is a bug to log, not something retrying would fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    #[error("status is not one this version knows: {0}")]
    UnknownStatus(String),
    #[error("version {0} is not positive")]
    BadVersion(i64),
    #[error("could not write {field} as JSON: {reason}")]
    Json { field: &'static str, reason: String },
}

/// A row, and whether the record's `saga_state` had to be ignored (the status times then
/// come from the record alone).
#[derive(Debug)]
pub struct Converted {
    pub row: OrderRow,
    pub saga_state_error: Option<String>,
}

/// PostgreSQL refuses NUL in `text` and `\u0000` in `jsonb`; one such character in a
/// record would otherwise fail every retry of its batch.
fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn json<T: serde::Serialize>(field: &'static str, value: &T) -> Result<String, RowError> {
    serde_json::to_string(value).map_err(|e| RowError::Json {
        field,
        reason: e.to_string(),
    })
}

impl OrderRow {
    /// The row of `record`, with the status times from its `saga_state` where present.
    pub fn from_record(record: OrderStatusRecord) -> Result<Converted, RowError> {
        let status = record
            .status()
            .map_err(|_| RowError::UnknownStatus(format!("{:?}", record.status)))?;
        if record.version <= 0 {
            return Err(RowError::BadVersion(record.version));
        }
        let (saga, saga_state_error) = match record.saga_state.as_deref() {
            None => (None, None),
            Some(text) => match serde_json::from_str::<SagaTimes>(text) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let mut times = StatusTimes::default();
        if let Some(saga) = &saga {
            for st in &saga.status_times {
                times.set_if_absent(st.status, st.at);
            }
        }
        // A record without saga state still tells when its own status was reached.
        times.set_if_absent(status, record.updated_at);
        let created_at = record
            .created_at
            .or_else(|| saga.as_ref().and_then(|s| s.created_at))
            .unwrap_or(record.updated_at);
        let items: Vec<ItemRecord> = record
            .items
            .into_iter()
            .map(|i| ItemRecord {
                sku: no_nul(i.sku),
                ..i
            })
            .collect();
        let address = record.shipping_address.map(|a| AddressRecord {
            recipient: no_nul(a.recipient),
            street: no_nul(a.street),
            city: no_nul(a.city),
            postal_code: no_nul(a.postal_code),
            country: no_nul(a.country),
        });
        let row = OrderRow {
            order_id: no_nul(record.order_id),
            customer_id: no_nul(record.customer_id),
            status,
            version: record.version,
            total_minor: record.total_minor,
            currency: no_nul(record.currency),
            items: json("items", &items)?,
            shipping_address: address
                .as_ref()
                .map(|a| json("shipping_address", a))
                .transpose()?,
            reason: record.reason.map(no_nul),
            created_at,
            updated_at: record.updated_at,
            times,
        };
        Ok(Converted {
            row,
            saga_state_error,
        })
    }
}

/// A record of the batch that carries a row.
#[derive(Debug)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub row: OrderRow,
}

impl OrderRow {
    /// The row as one JSON object, for a person reading a rejected record: every field,
    /// the status times as epoch milliseconds. Characters outside ASCII are escaped, so
    /// the text is accepted by a database of any encoding even when one of them is what
    /// PostgreSQL refused in the row itself.
    pub fn to_json(&self) -> String {
        let nested = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
        };
        let t = &self.times;
        let value = serde_json::json!({
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "status": self.status.as_str(),
            "version": self.version,
            "total_minor": self.total_minor,
            "currency": self.currency,
            "items": nested(&self.items),
            "shipping_address": self.shipping_address.as_deref().map(nested),
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "reserved_at": t.reserved,
            "paid_at": t.paid,
            "shipping_scheduled_at": t.shipping_scheduled,
            "completed_at": t.completed,
            "failed_at": t.failed,
            "canceled_at": t.canceled,
        });
        ascii_json(&value.to_string())
    }
}

/// `json` with every character outside ASCII written as `\uXXXX` (a surrogate pair above
/// U+FFFF). Valid JSON stays valid: such characters can only occur inside strings.
fn ascii_json(json: &str) -> String {
    if json.is_ascii() {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    let mut units = [0u16; 2];
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The records consumed since the last commit, and how far each partition got.
///
/// Skipped records (tombstones, undecodable values) carry no row but still move their
/// partition's offset, so they are not read again after the commit.
#[derive(Debug, Default)]
pub struct Batch {
    /// In the order taken, so a contiguous slice keeps every partition's (and so every
    /// order's) records in changelog order.
    rows: Vec<Entry>,
    /// Per partition: the offset after the last record taken, and how many were taken.
    partitions: BTreeMap<i32, (i64, usize)>,
    records: usize,
}

impl Batch {
    /// Takes the record at `offset` of `partition`; `row` is `None` for a skipped record.
    pub fn push(&mut self, partition: i32, offset: i64, row: Option<OrderRow>) {
        let entry = self.partitions.entry(partition).or_insert((offset + 1, 0));
        entry.0 = entry.0.max(offset + 1);
        entry.1 += 1;
        self.records += 1;
        if let Some(row) = row {
            self.rows.push(Entry {
                partition,
                offset,
                row,
            });
        }
    }

    /// Records taken, skipped ones included.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Per partition in the batch, the offset of the next record to read.
    pub fn next_offsets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().map(|(p, (next, _))| (*p, *next))
    }

    /// Forgets the records of `partition` (revoked: its next owner reads them again from
    /// the offset stored in PostgreSQL). Returns how many were dropped.
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let Some((_, count)) = self.partitions.remove(&partition) else {
            return 0;
        };
        self.rows.retain(|e| e.partition != partition);
        self.records -= count;
        count
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.partitions.clear();
        self.records = 0;
    }

    /// The latest `updated_at` among the batch's rows.
    pub fn max_updated_at(&self) -> Option<Millis> {
        self.max_updated_at_of(0..self.rows.len())
    }

    /// The latest `updated_at` among the rows at `range` (indexes into the rows, which
    /// leave out skipped records).
    pub fn max_updated_at_of(&self, range: Range<usize>) -> Option<Millis> {
        self.rows
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(|e| e.row.updated_at)
            .max()
    }

    /// How many records of the batch carry a row.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The row at `index`, with where its record came from.
    pub fn entry(&self, index: usize) -> Option<&Entry> {
        self.rows.get(index)
    }

    /// The statement columns of the batch: `orders` folded to the latest version per
    /// order (with status times merged from every version seen), `order_status_history`
    /// one entry per `(order, version)`.
    pub fn columns(&self) -> Columns<'_> {
        self.columns_of(0..self.rows.len())
    }

    /// [`Batch::columns`] of the rows at `range` alone.
    pub fn columns_of(&self, range: Range<usize>) -> Columns<'_> {
        let mut latest: Vec<(&OrderRow, StatusTimes)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut history = HistoryColumns::default();
        let mut seen: HashSet<(&str, i64)> = HashSet::new();
        for Entry { row, .. } in self.rows.get(range).unwrap_or_default() {
            if seen.insert((row.order_id.as_str(), row.version)) {
                history.order_id.push(&row.order_id);
                history.version.push(row.version);
                history.status.push(row.status.as_str());
                history.reason.push(row.reason.as_deref());
                history.changed_at.push(row.updated_at);
            }
            match index.get(row.order_id.as_str()) {
                None => {
                    index.insert(&row.order_id, latest.len());
                    latest.push((row, row.times));
                }
                Some(&i) => {
                    let (kept, times) = &mut latest[i];
                    // `>=`: of two records with one version, the later one wins, as it
                    // would in the compacted topic.
                    if row.version >= kept.version {
                        let mut merged = row.times;
                        merged.fill_from(times);
                        *kept = row;
                        *times = merged;
                    } else {
                        times.fill_from(&row.times);
                    }
                }
            }
        }
        let mut orders = OrderColumns::default();
        for (row, times) in latest {
            orders.push(row, times);
        }
        Columns { orders, history }
    }
}

/// One array per `orders` column, for `unnest`.
#[derive(Debug, Default)]
pub struct OrderColumns<'a> {
    pub order_id: Vec<&'a str>,
    pub customer_id: Vec<&'a str>,
    pub status: Vec<&'static str>,
    pub version: Vec<i64>,
    pub total_minor: Vec<i64>,
    pub currency: Vec<&'a str>,
    pub items: Vec<&'a str>,
    pub shipping_address: Vec<Option<&'a str>>,
    pub reason: Vec<Option<&'a str>>,
    pub created_at: Vec<Millis>,
    pub updated_at: Vec<Millis>,
    pub reserved_at: Vec<Option<Millis>>,
    pub paid_at: Vec<Option<Millis>>,
    pub shipping_scheduled_at: Vec<Option<Millis>>,
    pub completed_at: Vec<Option<Millis>>,
    pub failed_at: Vec<Option<Millis>>,
    pub canceled_at: Vec<Option<Millis>>,
}

impl<'a> OrderColumns<'a> {
    fn push(&mut self, row: &'a OrderRow, times: StatusTimes) {
        self.order_id.push(&row.order_id);
        self.customer_id.push(&row.customer_id);
        self.status.push(row.status.as_str());
        self.version.push(row.version);
        self.total_minor.push(row.total_minor);
        self.currency.push(&row.currency);
        self.items.push(&row.items);
        self.shipping_address.push(row.shipping_address.as_deref());
        self.reason.push(row.reason.as_deref());
        self.created_at.push(row.created_at);
        self.updated_at.push(row.updated_at);
        self.reserved_at.push(times.reserved);
        self.paid_at.push(times.paid);
        self.shipping_scheduled_at.push(times.shipping_scheduled);
        self.completed_at.push(times.completed);
        self.failed_at.push(times.failed);
        self.canceled_at.push(times.canceled);
    }

    pub fn is_empty(&self) -> bool {
        self.order_id.is_empty()
    }
}

/// One array per `order_status_history` column, for `unnest`.
#[derive(Debug, Default)]
pub struct HistoryColumns<'a> {
    pub order_id: Vec<&'a str>,
    pub version: Vec<i64>,
    pub status: Vec<&'static str>,
    pub reason: Vec<Option<&'a str>>,
    pub changed_at: Vec<Millis>,
}

impl HistoryColumns<'_> {
    pub fn is_empty(&self) -> bool {
        self.order_id.is_empty()
    }
}

/// The folded batch.
#[derive(Debug)]
pub struct Columns<'a> {
    pub orders: OrderColumns<'a>,
    pub history: HistoryColumns<'a>,
}

/// `2024-11-25T11:15:33.123Z` for epoch milliseconds (UTC, proleptic Gregorian).
pub fn rfc3339_millis(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::StatusSymbol;
    use crate::saga::{Address, Item, OrderRequest, OrderState};

    fn record(order: &str, status: Status, version: i64, updated_at: Millis) -> OrderStatusRecord {
        OrderStatusRecord {
            order_id: order.into(),
            status: status.into(),
            version,
            customer_id: "c-1".into(),
            total_minor: 500,
            currency: "EUR".into(),
            reason: None,
            updated_at,
            created_at: Some(1_000),
            items: vec![ItemRecord {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 250,
            }],
            shipping_address: None,
            saga_state: None,
        }
    }

    fn row(order: &str, status: Status, version: i64, updated_at: Millis) -> OrderRow {
        match OrderRow::from_record(record(order, status, version, updated_at)) {
            Ok(c) => c.row,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_status_times_come_from_the_saga_state_when_it_is_there() {
        let request = OrderRequest {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![Item {
                sku: "S".into(),
                quantity: 1,
                unit_price_minor: 5,
            }],
            total_minor: 5,
            currency: "EUR".into(),
            shipping_address: Address {
                recipient: "Ada".into(),
                street: "Main St 1".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
            created_at: 900,
        };
        let mut state = OrderState::new(&request, Status::Created, None, 1_000);
        state.status = Status::Paid;
        state.version = 3;
        state.updated_at = 3_000;
        state.status_times.push(StatusTime {
            status: Status::Reserved,
            at: 2_000,
        });
        state.status_times.push(StatusTime {
            status: Status::Paid,
            at: 3_000,
        });
        let mut rec = record("o-1", Status::Paid, 3, 3_000);
        rec.created_at = None;
        rec.saga_state = serde_json::to_string(&state).ok();
        let converted = OrderRow::from_record(rec).unwrap();
        assert_eq!(converted.saga_state_error, None);
        let row = converted.row;
        assert_eq!(row.created_at, 900);
        assert_eq!(row.times.reserved, Some(2_000));
        assert_eq!(row.times.paid, Some(3_000));
        assert_eq!(row.times.completed, None);
    }

    #[test]
    fn a_record_without_saga_state_still_dates_its_own_status() {
        let row = row("o-1", Status::Completed, 5, 7_000);
        assert_eq!(row.times.completed, Some(7_000));
        assert_eq!(row.times.reserved, None);
    }

    #[test]
    fn unreadable_saga_state_is_reported_but_not_fatal() {
        let mut rec = record("o-1", Status::Reserved, 2, 2_000);
        rec.saga_state = Some("{not json".into());
        let converted = OrderRow::from_record(rec).unwrap();
        assert!(converted.saga_state_error.is_some());
        assert_eq!(converted.row.times.reserved, Some(2_000));
    }

    #[test]
    fn unknown_status_and_non_positive_versions_are_refused() {
        let mut rec = record("o-1", Status::Created, 1, 1);
        rec.status = StatusSymbol::Unknown;
        assert!(matches!(
            OrderRow::from_record(rec),
            Err(RowError::UnknownStatus(_))
        ));
        let rec = record("o-1", Status::Created, 0, 1);
        assert_eq!(
            OrderRow::from_record(rec).unwrap_err(),
            RowError::BadVersion(0)
        );
    }

    #[test]
    fn nul_characters_are_replaced_so_postgres_accepts_the_row() {
        let mut rec = record("o-1", Status::Failed, 2, 2);
        rec.reason = Some("bad\0reason".into());
        rec.items[0].sku = "S\0".into();
        let row = OrderRow::from_record(rec).unwrap().row;
        assert_eq!(row.reason.as_deref(), Some("bad\u{FFFD}reason"));
        assert!(!row.items.contains("\\u0000"), "{}", row.items);
    }

    #[test]
    fn a_row_as_json_is_ascii_and_reads_back_to_its_values() {
        let mut rec = record("o-\u{e9}\u{1F600}", Status::Failed, 4, 9_000);
        rec.reason = Some("caf\u{e9} \"closed\"".into());
        let row = OrderRow::from_record(rec).unwrap().row;
        let text = row.to_json();
        assert!(text.is_ascii(), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["order_id"], "o-\u{e9}\u{1F600}");
        assert_eq!(v["reason"], "caf\u{e9} \"closed\"");
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["version"], 4);
        assert_eq!(v["failed_at"], 9_000);
        assert_eq!(v["items"][0]["sku"], "SKU-1");
        assert!(v["shipping_address"].is_null());
    }

    #[test]
    fn the_fold_keeps_the_latest_version_and_every_time_seen() {
        let mut batch = Batch::default();
        batch.push(0, 10, Some(row("a", Status::Created, 1, 100)));
        batch.push(0, 11, Some(row("a", Status::Reserved, 2, 200)));
        batch.push(1, 5, Some(row("b", Status::Created, 1, 150)));
        batch.push(0, 12, Some(row("a", Status::Paid, 3, 300)));
        // A stale duplicate must neither win nor add a history entry.
        batch.push(0, 13, Some(row("a", Status::Reserved, 2, 200)));
        batch.push(1, 7, None);
        let cols = batch.columns();
        assert_eq!(cols.orders.order_id, vec!["a", "b"]);
        assert_eq!(cols.orders.version, vec![3, 1]);
        assert_eq!(cols.orders.status, vec!["PAID", "CREATED"]);
        assert_eq!(cols.orders.reserved_at, vec![Some(200), None]);
        assert_eq!(cols.orders.paid_at, vec![Some(300), None]);
        assert_eq!(cols.history.order_id.len(), 4);
        assert_eq!(batch.len(), 6);
        assert_eq!(
            batch.next_offsets().collect::<Vec<_>>(),
            vec![(0, 14), (1, 8)]
        );
        assert_eq!(batch.max_updated_at(), Some(300));
    }

    #[test]
    fn dropping_a_partition_forgets_its_records_and_offset() {
        let mut batch = Batch::default();
        batch.push(0, 1, Some(row("a", Status::Created, 1, 1)));
        batch.push(1, 1, Some(row("b", Status::Created, 1, 1)));
        batch.push(1, 2, None);
        assert_eq!(batch.drop_partition(1), 2);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.next_offsets().collect::<Vec<_>>(), vec![(0, 2)]);
        assert_eq!(batch.columns().orders.order_id, vec!["a"]);
        assert_eq!(batch.drop_partition(1), 0);
    }

    #[test]
    fn timestamps_are_formatted_as_utc_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_732_533_333_123),
            "2024-11-25T11:15:33.123Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
    }
}
