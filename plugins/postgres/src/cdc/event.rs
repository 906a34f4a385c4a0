//! A change → a record: key = the primary key as a JSON object, value = the change event
//! `{event_id, timestamp, operation, table, row_id, new_values, old_values, transaction_id,
//! lsn}`, headers `table`, `operation`, `lsn`; the record's stream is the table.

use std::borrow::Cow;

use orbit_plugin_api::Record;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::decode::{Col, OldKind, Relation};
use super::lsn::{fmt_lsn, Offset};
use super::types::{col_to_json, UNCHANGED_TOAST};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

pub fn pg_time_to_ms(micros: i64) -> i64 {
    micros.div_euclid(1000) + PG_EPOCH_MS
}

/// A row as (column, value) pairs in column order, written as a JSON object. Lighter than a
/// map: nothing hashed, and while streaming the names are borrowed from the relation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, Value)>);

impl Fields<'_> {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One change, before it becomes a record.
pub struct Change<'a> {
    pub table: &'a str,
    pub key: &'a [String],
    pub operation: &'static str,
    pub new: Option<Fields<'a>>,
    pub old: Option<Fields<'a>>,
    pub xid: Option<u32>,
    /// The change's own LSN (the event's `lsn`).
    pub lsn: u64,
    pub event_id: String,
    pub timestamp_ms: i64,
}

/// A tuple as a JSON object. `only_key`: the old key tuple of a DEFAULT replica identity,
/// whose non-key columns are empty and left out. Unchanged TOAST values are taken from
/// `fill` (the old row under REPLICA IDENTITY FULL) when it has them, else the placeholder.
pub fn values<'a>(
    rel: &'a Relation,
    cols: &[Col],
    only_key: bool,
    fill: Option<&Fields>,
) -> Fields<'a> {
    let mut m = Vec::with_capacity(cols.len());
    for (c, v) in rel.columns.iter().zip(cols) {
        if only_key && !c.is_key {
            continue;
        }
        let mut value = col_to_json(c.type_oid, v);
        if matches!(v, Col::Unchanged) {
            if let Some(old) = fill
                .and_then(|f| f.get(&c.name))
                .filter(|o| o.as_str() != Some(UNCHANGED_TOAST))
            {
                value = old.clone();
            }
        }
        m.push((Cow::Borrowed(c.name.as_str()), value));
    }
    Fields(m)
}

/// The old tuple of an update or delete.
pub fn old_values<'a>(rel: &'a Relation, old: &(OldKind, Vec<Col>)) -> Fields<'a> {
    values(rel, &old.1, old.0 == OldKind::Key, None)
}

/// The change event as it is written, field by field (no map built for it).
#[derive(serde::Serialize)]
struct Event<'a> {
    event_id: &'a str,
    timestamp: i64,
    operation: &'a str,
    table: &'a str,
    row_id: Option<&'a str>,
    new_values: Option<&'a Fields<'a>>,
    old_values: Option<&'a Fields<'a>>,
    transaction_id: Option<u32>,
    lsn: &'a str,
}

impl Change<'_> {
    pub fn into_record(self, offset: Offset) -> Record {
        let source = match (&self.new, &self.old) {
            (Some(n), _) if self.operation != "delete" => Some(n),
            (_, Some(o)) => Some(o),
            (Some(n), None) => Some(n),
            (None, None) => None,
        };
        let key: Option<Fields> = source.filter(|_| !self.key.is_empty()).map(|row| {
            Fields(
                self.key
                    .iter()
                    .map(|k| {
                        let v = row.get(k).cloned().unwrap_or(Value::Null);
                        (Cow::Borrowed(k.as_str()), v)
                    })
                    .collect(),
            )
        });
        let row_id = key.as_ref().map(|k| match k.0.as_slice() {
            [(_, Value::String(s))] => s.clone(),
            [(_, v)] => v.to_string(),
            many => Value::Array(many.iter().map(|(_, v)| v.clone()).collect()).to_string(),
        });
        let lsn = fmt_lsn(self.lsn);
        let event = Event {
            event_id: &self.event_id,
            timestamp: self.timestamp_ms,
            operation: self.operation,
            table: self.table,
            row_id: row_id.as_deref(),
            new_values: self.new.as_ref(),
            old_values: self.old.as_ref(),
            transaction_id: self.xid,
            lsn: &lsn,
        };
        let value = serde_json::to_vec(&event).expect("JSON values serialize");
        let mut record = Record::new(value)
            .with_timestamp_ms(self.timestamp_ms)
            .with_header("table", self.table)
            .with_header("operation", self.operation)
            .with_header("lsn", lsn)
            .with_position(self.table, 0, offset.encode());
        if let Some(k) = key {
            record = record.with_key(serde_json::to_vec(&k).expect("JSON values serialize"));
        }
        record
    }
}
