//! A record → the row operations it asks for, checked against the table: the record's JSON
//! object is a row (insert, upsert), or a `postgres_cdc` change event (cdc). Whatever is wrong
//! with a record is found here, before the database sees it, and rejects that record alone.

use serde_json::value::RawValue;

use super::config::Mode;
use super::row::{row, Members, Row};
use super::table::{Kind, Table};
use crate::cdc::types::UNCHANGED_TOAST;

/// One row operation, its values borrowed from the record.
#[derive(Debug, PartialEq)]
pub struct Op<'a> {
    pub kind: Kind,
    pub row: Row<'a>,
}

impl Op<'_> {
    /// Whether `other` names the same columns.
    pub fn same_columns(&self, other: &Op) -> bool {
        self.row.len() == other.row.len()
            && self.row.iter().zip(&other.row).all(|(a, b)| a.0 == b.0)
    }

    /// The columns, as indices into the table's columns.
    pub fn columns(&self) -> Vec<u16> {
        self.row.iter().map(|f| f.0).collect()
    }

    /// The key's values as text, to tell two operations on the same row apart.
    pub fn key_text(&self, table: &Table) -> String {
        let mut text = String::new();
        for (i, f) in &self.row {
            if table.key_columns.contains(i) {
                text.push_str(&f.json());
                text.push('\0');
            }
        }
        text
    }
}

/// The operations for one record, or why the record is refused.
pub fn plan<'a>(
    mode: Mode,
    table: &Table,
    ignore_unknown: bool,
    value: &'a [u8],
) -> Result<Vec<Op<'a>>, String> {
    let members = Members::parse(value)?;
    match mode {
        Mode::Insert => Ok(vec![Op {
            kind: Kind::Insert,
            row: row(table, members, ignore_unknown)?,
        }]),
        Mode::Upsert => {
            let row = row(table, members, ignore_unknown)?;
            require_key(table, &row)?;
            Ok(vec![Op {
                kind: Kind::Upsert,
                row,
            }])
        }
        Mode::Cdc => change(table, members, ignore_unknown),
    }
}

fn change<'a>(
    table: &Table,
    event: Members<'a>,
    ignore_unknown: bool,
) -> Result<Vec<Op<'a>>, String> {
    let operation: String = event
        .get("operation")
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .ok_or("not a change event: no `operation` (mode cdc applies postgres_cdc events)")?;
    let values = |field: &str| -> Result<Option<Row<'a>>, String> {
        let Some(raw) = event.get(field).filter(|r| r.get() != "null") else {
            return Ok(None);
        };
        let mut members = Members::parse(raw.get().as_bytes())
            .map_err(|_| format!("`{field}` is not a JSON object"))?;
        members.0.retain(|(_, v)| !is_toast(v));
        row(table, members, ignore_unknown).map(Some)
    };
    let new = values("new_values")?;
    let old = values("old_values")?;
    let key_of = |r: &Row<'a>| -> Row<'a> {
        r.iter()
            .filter(|(i, _)| table.key_columns.contains(i))
            .cloned()
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
                    ops.push(Op {
                        kind: Kind::Delete,
                        row: old,
                    });
                }
            }
            ops.push(Op {
                kind: Kind::Upsert,
                row: new,
            });
            Ok(ops)
        }
        "delete" => {
            let old = old.ok_or("a `delete` event without `old_values`")?;
            let key = key_of(&old);
            require_key(table, &key)?;
            Ok(vec![Op {
                kind: Kind::Delete,
                row: key,
            }])
        }
        "truncate" => Ok(vec![Op {
            kind: Kind::Truncate,
            row: Row::new(),
        }]),
        other => Err(format!(
            "unknown operation `{other}` (expected insert, update, delete, truncate or read)"
        )),
    }
}

/// The placeholder `postgres_cdc` writes for an unchanged TOAST value.
fn is_toast(v: &RawValue) -> bool {
    v.get()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .is_some_and(|s| s == UNCHANGED_TOAST)
}

fn require_key(table: &Table, row: &Row) -> Result<(), String> {
    if table.key.is_empty() {
        return Err(format!(
            "{} has no primary key: give `key:` (the columns that identify a row)",
            table.quoted
        ));
    }
    let missing: Vec<&String> = table
        .key_columns
        .iter()
        .filter(|k| !row.iter().any(|(i, f)| i == *k && !f.is_null()))
        .map(|&k| &table.columns[k as usize].name)
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
    use crate::sink::row::Field;
    use crate::sink::table::BYTEA_OID;
    use serde_json::{json, Map, Value};

    fn table() -> Table {
        Table::for_test(&[("id", 23), ("v", 25), ("raw", BYTEA_OID)], &["id"])
    }

    fn ops(mode: Mode, value: Value) -> Result<Vec<(Kind, Value)>, String> {
        let t = table();
        let text = value.to_string();
        let planned = plan(mode, &t, false, text.as_bytes())?;
        Ok(planned
            .iter()
            .map(|o| (o.kind, as_json(&t, &o.row)))
            .collect())
    }

    fn as_json(t: &Table, row: &Row) -> Value {
        let mut m = Map::new();
        for (i, f) in row {
            let v = match f {
                Field::Json(r) => serde_json::from_str(r.get()).unwrap(),
                Field::Text(s) => Value::String(s.clone()),
            };
            m.insert(t.columns[*i as usize].name.clone(), v);
        }
        Value::Object(m)
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
        assert!(ops(Mode::Cdc, ev("insert", json!([1]), Value::Null))
            .unwrap_err()
            .contains("`new_values` is not a JSON object"));
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
        assert!(ops(Mode::Upsert, json!({"id": null, "v": "null key"}))
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
        assert_eq!(as_json(&t, &kept[0].row), json!({"id": 1}));
        let e = plan(Mode::Insert, &t, false, b"{\"id\":").unwrap_err();
        assert!(e.starts_with("the value is not JSON"), "{e}");
    }

    #[test]
    fn values_stay_as_the_record_wrote_them_and_the_last_of_a_repeated_field_counts() {
        let t = table();
        let value = br#"{"v":"first","id":1.50,"v":"a\"b","v\u0061":"x"}"#;
        // `v\u0061` is `va`: not a column.
        let e = plan(Mode::Insert, &t, false, value).unwrap_err();
        assert!(e.contains("`va`"), "{e}");
        let ops = plan(Mode::Insert, &t, true, value).unwrap();
        let row = &ops[0].row;
        assert_eq!(row.iter().map(|f| f.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(row[0].1.text(), "1.50");
        assert_eq!(row[1].1.text(), "a\"b");
        assert_eq!(row[1].1.json(), r#""a\"b""#);
    }
}
