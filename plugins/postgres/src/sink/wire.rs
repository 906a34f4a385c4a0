//! How a run of rows travels to the server: one array parameter per column, which the
//! statement unnests (`INSERT ... SELECT ... FROM unnest($1::int4[], $2::text[]) AS r(...)`).
//! A column goes in binary when its type and the run's JSON values allow (integers, float8,
//! booleans, text, json): the server only copies the values. Anything else goes as text cast
//! by the server to the column's type (`$3::text[]::numeric[]`), which is the type's own input
//! function, the same that reads the value from JSON. Runs that touch an array or composite
//! column, whose JSON form has no text cast, go through `json_populate_recordset` instead.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use crate::catalog::Column;

/// How one column's values travel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Wire {
    Int2,
    Int4,
    Int8,
    Float8,
    Bool,
    /// Binary text; a column of any string type (the insert converts text to it).
    Text,
    Json,
    Jsonb,
    /// Text, cast to the column's type by the server.
    Cast,
}

/// A column's values as one statement parameter.
pub type Param<'a> = Box<dyn ToSql + Sync + 'a>;

impl Wire {
    /// How a column of this type travels when its values allow.
    fn preferred(type_oid: u32) -> Wire {
        match type_oid {
            21 => Wire::Int2,
            23 => Wire::Int4,
            20 => Wire::Int8,
            701 => Wire::Float8,
            16 => Wire::Bool,
            // text, varchar, bpchar, name
            25 | 1043 | 1042 | 19 => Wire::Text,
            114 => Wire::Json,
            3802 => Wire::Jsonb,
            _ => Wire::Cast,
        }
    }

    /// Whether `value` can travel this way (NULL always can).
    fn carries(self, value: &Value) -> bool {
        let int = |n: &serde_json::Number, min: i64, max: i64| {
            n.as_i64().is_some_and(|i| (min..=max).contains(&i))
        };
        match (self, value) {
            (_, Value::Null) => true,
            (Wire::Int2, Value::Number(n)) => int(n, i16::MIN.into(), i16::MAX.into()),
            (Wire::Int4, Value::Number(n)) => int(n, i32::MIN.into(), i32::MAX.into()),
            (Wire::Int8, Value::Number(n)) => n.as_i64().is_some(),
            (Wire::Float8, Value::Number(_)) | (Wire::Bool, Value::Bool(_)) => true,
            (Wire::Int2 | Wire::Int4 | Wire::Int8 | Wire::Float8 | Wire::Bool, _) => false,
            (Wire::Text | Wire::Json | Wire::Jsonb | Wire::Cast, _) => true,
        }
    }

    /// The parameter as the statement declares it.
    pub fn param_type(self, column: &Column) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Wire::Int2 => "int2[]",
            Wire::Int4 => "int4[]",
            Wire::Int8 => "int8[]",
            Wire::Float8 => "float8[]",
            Wire::Bool => "bool[]",
            Wire::Text => "text[]",
            Wire::Json => "json[]",
            Wire::Jsonb => "jsonb[]",
            Wire::Cast => return Cow::Owned(format!("text[]::{}[]", column.sql_type)),
        })
    }

    /// The values of `name` in `rows` (absent = NULL) as this wire's array.
    fn array<'a>(self, name: &str, rows: &[&'a Map<String, Value>]) -> Param<'a> {
        let values = rows.iter().map(|r| r.get(name).unwrap_or(&Value::Null));
        let int = |v: &Value| v.as_i64().unwrap_or_default();
        match self {
            Wire::Int2 => Box::new(opt(values, |v| int(v) as i16)),
            Wire::Int4 => Box::new(opt(values, |v| int(v) as i32)),
            Wire::Int8 => Box::new(opt(values, int)),
            Wire::Float8 => Box::new(opt(values, |v| v.as_f64().unwrap_or_default())),
            Wire::Bool => Box::new(opt(values, |v| v.as_bool().unwrap_or_default())),
            Wire::Json | Wire::Jsonb => Box::new(opt(values, |v| v)),
            Wire::Text | Wire::Cast => Box::new(opt(values, |v| match v {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            })),
        }
    }
}

fn opt<'a, T>(
    values: impl Iterator<Item = &'a Value>,
    f: impl Fn(&'a Value) -> T,
) -> Vec<Option<T>> {
    values
        .map(|v| if v.is_null() { None } else { Some(f(v)) })
        .collect()
}

/// How each of `columns` travels for these rows; `None` when one of them has no text cast
/// (an array or composite column), so the run goes as JSON.
pub fn wires(columns: &[&Column], rows: &[&Map<String, Value>]) -> Option<Vec<Wire>> {
    columns
        .iter()
        .map(|c| {
            if c.structured {
                return None;
            }
            let wire = Wire::preferred(c.type_oid);
            let fits = rows
                .iter()
                .all(|r| wire.carries(r.get(&c.name).unwrap_or(&Value::Null)));
            Some(if fits { wire } else { Wire::Cast })
        })
        .collect()
}

/// One array parameter per column, in order.
pub fn params<'a>(
    columns: &[&Column],
    wires: &[Wire],
    rows: &[&'a Map<String, Value>],
) -> Vec<Param<'a>> {
    columns
        .iter()
        .zip(wires)
        .map(|(c, w)| w.array(&c.name, rows))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(name: &str, type_oid: u32, structured: bool) -> Column {
        Column {
            name: name.into(),
            type_oid,
            sql_type: "t".into(),
            structured,
        }
    }

    fn rows(values: &[Value]) -> Vec<Map<String, Value>> {
        values
            .iter()
            .map(|v| v.as_object().expect("an object").clone())
            .collect()
    }

    #[test]
    fn a_column_goes_binary_only_when_every_value_fits() {
        let (id, small, name, at) = (
            column("id", 23, false),
            column("small", 21, false),
            column("name", 25, false),
            column("at", 1184, false),
        );
        let cols = [&id, &small, &name, &at];
        let data = rows(&[
            json!({"id": 1, "small": 2, "name": "a", "at": "2024-01-01T00:00:00Z"}),
            json!({"id": null, "small": 40000, "name": 7}),
        ]);
        let refs: Vec<&Map<String, Value>> = data.iter().collect();
        // 40000 does not fit int2: the server reads it as text and says it is out of range.
        assert_eq!(
            wires(&cols, &refs),
            Some(vec![Wire::Int4, Wire::Cast, Wire::Text, Wire::Cast])
        );
        let data = rows(&[json!({"id": "12"}), json!({"id": 1.5})]);
        let refs: Vec<&Map<String, Value>> = data.iter().collect();
        assert_eq!(wires(&[&id], &refs), Some(vec![Wire::Cast]));
        let list = column("tags", 1009, true);
        assert_eq!(wires(&[&id, &list], &refs), None);
    }
}
