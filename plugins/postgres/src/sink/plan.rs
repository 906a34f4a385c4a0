//! A record → the row operations it asks for, checked against the table: the record's JSON
//! object is a row (insert, upsert), or a `postgres_cdc` change event (cdc). Whatever is wrong
//! with a record is found here, before the database sees it, and rejects that record alone.

use base64::Engine;
use serde_json::{Map, Value};

use super::config::Mode;
use super::table::{Kind, Table, BYTEA_OID};
use crate::cdc::types::UNCHANGED_TOAST;

/// One row operation: the columns it names, in the table's column order.
#[derive(Debug, PartialEq)]
pub struct Op {
    pub kind: Kind,
    pub row: Map<String, Value>,
    /// The columns `row` names, as indices into the table's columns, in table order.
    pub cols: Vec<u16>,
}

impl Op {
    fn new(kind: Kind, row: Map<String, Value>, table: &Table) -> Op {
        let mut cols: Vec<u16> = row
            .keys()
            .filter_map(|name| table.column(name).map(|(i, _)| i))
            .collect();
        cols.sort_unstable();
        Op { kind, row, cols }
    }

    /// The key's values as text, to tell two operations on the same row apart.
    pub fn key_text(&self, table: &Table) -> String {
        let key: Vec<&Value> = table
            .key
            .iter()
            .map(|k| self.row.get(k).unwrap_or(&Value::Null))
            .collect();
        serde_json::to_string(&key).unwrap_or_default()
    }
}

/// The operations for one record, or why the record is refused.
pub fn plan(
    mode: Mode,
    table: &Table,
    ignore_unknown: bool,
    value: &[u8],
) -> Result<Vec<Op>, String> {
    let json: Value =
        serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
    let Value::Object(obj) = json else {
        return Err("the value is not a JSON object".into());
    };
    match mode {
        Mode::Insert => Ok(vec![Op::new(
            Kind::Insert,
            row(table, obj, ignore_unknown)?,
            table,
        )]),
        Mode::Upsert => {
            let row = row(table, obj, ignore_unknown)?;
            require_key(table, &row)?;
            Ok(vec![Op::new(Kind::Upsert, row, table)])
        }
        Mode::Cdc => change(table, obj, ignore_unknown),
    }
}

fn change(
    table: &Table,
    mut event: Map<String, Value>,
    ignore_unknown: bool,
) -> Result<Vec<Op>, String> {
    let operation = match event.get("operation") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(
                "not a change event: no `operation` (mode cdc applies postgres_cdc events)".into(),
            )
        }
    };
    let mut values = |field: &str| -> Result<Option<Map<String, Value>>, String> {
        match event.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => {
                let m = m
                    .into_iter()
                    .filter(|(_, v)| v.as_str() != Some(UNCHANGED_TOAST))
                    .collect();
                row(table, m, ignore_unknown).map(Some)
            }
            Some(_) => Err(format!("`{field}` is not a JSON object")),
        }
    };
    let new = values("new_values")?;
    let old = values("old_values")?;
    let key_of = |m: &Map<String, Value>| -> Map<String, Value> {
        table
            .key
            .iter()
            .filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    };
    match operation.as_str() {
        "insert" | "read" | "update" => {
            let new = new.ok_or_else(|| format!("a `{operation}` event without `new_values`"))?;
            require_key(table, &new)?;
            let mut ops = Vec::new();
            if let Some(old) = old.as_ref().map(key_of).filter(|k| !k.is_empty()) {
                if old != key_of(&new) {
                    require_key(table, &old)?;
                    ops.push(Op::new(Kind::Delete, old, table));
                }
            }
            ops.push(Op::new(Kind::Upsert, new, table));
            Ok(ops)
        }
        "delete" => {
            let old = old.ok_or("a `delete` event without `old_values`")?;
            let key = key_of(&old);
            require_key(table, &key)?;
            Ok(vec![Op::new(Kind::Delete, key, table)])
        }
        "truncate" => Ok(vec![Op::new(Kind::Truncate, Map::new(), table)]),
        other => Err(format!(
            "unknown operation `{other}` (expected insert, update, delete, truncate or read)"
        )),
    }
}

/// The JSON object as a row of the table: unknown fields refused (or dropped), bytea given as
/// base64 turned into PostgreSQL's hex input.
fn row(
    table: &Table,
    mut obj: Map<String, Value>,
    ignore_unknown: bool,
) -> Result<Map<String, Value>, String> {
    let mut unknown = Vec::new();
    for (name, value) in obj.iter_mut() {
        let Some((_, col)) = table.column(name) else {
            unknown.push(name.clone());
            continue;
        };
        if col.type_oid != BYTEA_OID {
            continue;
        }
        if let Value::String(s) = value {
            if !s.starts_with("\\x") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| {
                        format!("column `{name}` is bytea and its value is not base64: {e}")
                    })?;
                let mut hex = String::with_capacity(2 + bytes.len() * 2);
                hex.push_str("\\x");
                for b in bytes {
                    hex.push_str(&format!("{b:02x}"));
                }
                *s = hex;
            }
        }
    }
    if !unknown.is_empty() {
        if !ignore_unknown {
            return Err(format!(
                "field(s) {} are not columns of {}; add the columns, drop the fields with a transform, or set ignore_unknown_fields: true",
                unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", "),
                table.quoted
            ));
        }
        obj.retain(|name, _| table.column(name).is_some());
    }
    if obj.is_empty() {
        return Err(format!(
            "no field of the record is a column of {}",
            table.quoted
        ));
    }
    Ok(obj)
}

fn require_key(table: &Table, row: &Map<String, Value>) -> Result<(), String> {
    if table.key.is_empty() {
        return Err(format!(
            "{} has no primary key: give `key:` (the columns that identify a row)",
            table.quoted
        ));
    }
    let missing: Vec<&String> = table
        .key
        .iter()
        .filter(|k| row.get(*k).is_none_or(Value::is_null))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("the key column(s) {missing:?} have no value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Table {
        Table::for_test(&[("id", 23), ("v", 25), ("raw", BYTEA_OID)], &["id"])
    }

    fn ops(mode: Mode, value: Value) -> Result<Vec<(Kind, Value)>, String> {
        let planned = plan(mode, &table(), false, value.to_string().as_bytes())?;
        Ok(planned
            .into_iter()
            .map(|o| (o.kind, Value::Object(o.row)))
            .collect())
    }

    #[test]
    fn change_events_become_row_operations() {
        let ev = |op: &str, new: Value, old: Value| json!({"operation": op, "new_values": new, "old_values": old});
        assert_eq!(
            ops(
                Mode::Cdc,
                ev("read", json!({"id": 1, "v": "a"}), Value::Null)
            ),
            Ok(vec![(Kind::Upsert, json!({"id": 1, "v": "a"}))])
        );
        // A key change deletes the old row first.
        assert_eq!(
            ops(
                Mode::Cdc,
                ev("update", json!({"id": 2, "v": "a"}), json!({"id": 1}))
            ),
            Ok(vec![
                (Kind::Delete, json!({"id": 1})),
                (Kind::Upsert, json!({"id": 2, "v": "a"}))
            ])
        );
        // An unchanged TOAST value is left out: the column keeps its value.
        assert_eq!(
            ops(
                Mode::Cdc,
                ev(
                    "update",
                    json!({"id": 1, "v": UNCHANGED_TOAST}),
                    json!({"id": 1})
                )
            ),
            Ok(vec![(Kind::Upsert, json!({"id": 1}))])
        );
        // A delete by the old key, whatever else the old row holds.
        assert_eq!(
            ops(
                Mode::Cdc,
                ev("delete", Value::Null, json!({"id": 3, "v": "x"}))
            ),
            Ok(vec![(Kind::Delete, json!({"id": 3}))])
        );
        assert_eq!(
            ops(Mode::Cdc, ev("truncate", Value::Null, Value::Null)),
            Ok(vec![(Kind::Truncate, json!({}))])
        );
        assert!(ops(Mode::Cdc, ev("merge", Value::Null, Value::Null))
            .unwrap_err()
            .contains("unknown operation"));
        assert!(ops(Mode::Cdc, json!({"id": 1}))
            .unwrap_err()
            .contains("not a change event"));
        assert!(ops(Mode::Cdc, ev("delete", Value::Null, Value::Null)).is_err());
    }

    #[test]
    fn rows_are_checked_against_the_table() {
        assert_eq!(
            ops(Mode::Insert, json!({"id": 1, "raw": "AP8Q"})),
            Ok(vec![(Kind::Insert, json!({"id": 1, "raw": "\\x00ff10"}))]),
            "bytea given as base64 goes in as hex"
        );
        let e = ops(Mode::Insert, json!({"id": 1, "colour": "red"})).unwrap_err();
        assert!(
            e.contains("`colour`") && e.contains("ignore_unknown_fields"),
            "{e}"
        );
        assert!(ops(Mode::Upsert, json!({"v": "no key"}))
            .unwrap_err()
            .contains("key"));
        assert!(ops(Mode::Insert, json!([1, 2]))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(ops(Mode::Insert, json!({"id": 1, "raw": "not base64!"}))
            .unwrap_err()
            .contains("base64"));
        let t = table();
        let kept = plan(Mode::Insert, &t, true, br#"{"id":1,"colour":"red"}"#).unwrap();
        assert_eq!(Value::Object(kept[0].row.clone()), json!({"id": 1}));
    }
}
