//! How a run of rows travels to the server: one array parameter per column, which the
//! statement unnests (`INSERT ... SELECT ... FROM unnest($1::int4[], $2::text[]) AS r(...)`).
//! A column goes in binary when its type and the run's JSON values allow (integers, float8,
//! booleans, text, json): the server only copies the values. Anything else goes as text cast
//! by the server to the column's type (`$3::text[]::numeric[]`), which is the type's own input
//! function, the same that reads the value from JSON. Runs that touch an array or composite
//! column, whose JSON form has no text cast, go through `json_populate_recordset` instead.

use std::borrow::Cow;
use std::error::Error;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, WrongType};

use super::row::{Field, Row};
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
type Param<'a> = Box<dyn ToSql + Sync + 'a>;

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
    fn carries(self, value: &Field) -> bool {
        if value.is_null() {
            return true;
        }
        let Field::Json(raw) = value else {
            return matches!(self, Wire::Text | Wire::Cast);
        };
        let raw = raw.get();
        match self {
            Wire::Int2 => raw.parse::<i16>().is_ok(),
            Wire::Int4 => raw.parse::<i32>().is_ok(),
            Wire::Int8 => raw.parse::<i64>().is_ok(),
            Wire::Float8 => float(raw).is_some(),
            Wire::Bool => raw == "true" || raw == "false",
            Wire::Text | Wire::Json | Wire::Jsonb | Wire::Cast => true,
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

    /// The type of the array parameter.
    fn array_type(self) -> Type {
        match self {
            Wire::Int2 => Type::INT2_ARRAY,
            Wire::Int4 => Type::INT4_ARRAY,
            Wire::Int8 => Type::INT8_ARRAY,
            Wire::Float8 => Type::FLOAT8_ARRAY,
            Wire::Bool => Type::BOOL_ARRAY,
            Wire::Text | Wire::Cast => Type::TEXT_ARRAY,
            Wire::Json => Type::JSON_ARRAY,
            Wire::Jsonb => Type::JSONB_ARRAY,
        }
    }

    /// The values of the run's `j`th column as this wire's array (checked by `carries`).
    fn array<'a>(self, j: usize, rows: &[&'a Row<'a>]) -> Param<'a> {
        let values = rows.iter().map(move |r| &r[j].1);
        let raw = |f: &'a Field<'a>| match f {
            Field::Json(r) => r.get(),
            Field::Text(s) => s.as_str(),
        };
        match self {
            Wire::Int2 => Box::new(opt(values, |f| raw(f).parse::<i16>().unwrap_or_default())),
            Wire::Int4 => Box::new(opt(values, |f| raw(f).parse::<i32>().unwrap_or_default())),
            Wire::Int8 => Box::new(opt(values, |f| raw(f).parse::<i64>().unwrap_or_default())),
            Wire::Float8 => Box::new(opt(values, |f| float(raw(f)).unwrap_or_default())),
            Wire::Bool => Box::new(opt(values, |f| raw(f) == "true")),
            Wire::Json | Wire::Jsonb => Box::new(opt(values, |f| RawJson(raw(f)))),
            Wire::Text | Wire::Cast => Box::new(opt(values, Field::text)),
        }
    }
}

/// A JSON number as float8, when it is one exactly as the server would read it: JSON has no
/// NaN or infinity, and a number beyond float8's range (`1e400`, `1e-400`) goes as text for
/// the server to refuse, rather than as infinity or zero.
fn float(raw: &str) -> Option<f64> {
    if !raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    let f: f64 = raw.parse().ok()?;
    let mantissa = raw.split(['e', 'E']).next().unwrap_or(raw);
    let zero = !mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    (f.is_finite() && (f != 0.0 || zero)).then_some(f)
}

fn opt<'a, T>(
    values: impl Iterator<Item = &'a Field<'a>>,
    f: impl Fn(&'a Field<'a>) -> T,
) -> Vec<Option<T>> {
    values
        .map(|v| if v.is_null() { None } else { Some(f(v)) })
        .collect()
}

/// JSON text as a json or jsonb value, sent as it is.
#[derive(Debug)]
struct RawJson<'a>(&'a str);

impl ToSql for RawJson<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary form: a version byte, then the text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(Box::new(WrongType::new::<Self>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}

/// How each of `columns` travels for these rows; `None` when one of them has no text cast
/// (an array or composite column), so the run goes as JSON.
pub fn wires(columns: &[&Column], rows: &[&Row]) -> Option<Vec<Wire>> {
    columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            if c.structured {
                return None;
            }
            let wire = Wire::preferred(c.type_oid);
            let fits = rows.iter().all(|r| wire.carries(&r[j].1));
            Some(if fits { wire } else { Wire::Cast })
        })
        .collect()
}

/// One array parameter per column, in order, in the server's binary form.
pub fn encode(wires: &[Wire], rows: &[&Row]) -> Result<Vec<Encoded>, String> {
    wires
        .iter()
        .enumerate()
        .map(|(j, w)| Encoded::new(w.array(j, rows).as_ref(), &w.array_type()))
        .collect()
}

/// A statement parameter already in the server's binary form: encoded on the sink's thread,
/// sent from the connection's.
#[derive(Clone, Debug)]
pub struct Encoded(Bytes);

impl Encoded {
    pub fn new(value: &(dyn ToSql + Sync), ty: &Type) -> Result<Encoded, String> {
        let mut buf = BytesMut::new();
        value
            .to_sql_checked(ty, &mut buf)
            .map_err(|e| format!("encoding a {ty} parameter: {e}"))?;
        Ok(Encoded(buf.freeze()))
    }
}

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    /// The statement declares the type the value was encoded for.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

/// The rows as one JSON array of objects, for `json_populate_recordset`.
pub fn json_rows(columns: &[&Column], rows: &[&Row]) -> String {
    let mut out = String::from("[");
    for (n, row) in rows.iter().enumerate() {
        out.push_str(if n == 0 { "{" } else { ",{" });
        for (j, (c, (_, f))) in columns.iter().zip(row.iter()).enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(&c.name).expect("a string serializes"));
            out.push(':');
            out.push_str(&f.json());
        }
        out.push('}');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn column(name: &str, type_oid: u32, structured: bool) -> Column {
        Column {
            name: name.into(),
            type_oid,
            sql_type: "t".into(),
            structured,
        }
    }

    /// A row of the given JSON values, one per column.
    fn row(values: &[&'static str]) -> Row<'static> {
        values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let raw: &'static RawValue = serde_json::from_str(v).unwrap();
                (j as u16, Field::Json(raw))
            })
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
        let a = row(&["1", "2", r#""a""#, r#""2024-01-01T00:00:00Z""#]);
        let b = row(&["null", "40000", "7", "null"]);
        // 40000 does not fit int2: the server reads it as text and says it is out of range.
        assert_eq!(
            wires(&cols, &[&a, &b]),
            Some(vec![Wire::Int4, Wire::Cast, Wire::Text, Wire::Cast])
        );
        for other in [r#""12""#, "1.5", "1e2", "true"] {
            assert_eq!(
                wires(&[&id], &[&row(&[other])]),
                Some(vec![Wire::Cast]),
                "{other}"
            );
        }
        let f = column("f", 701, false);
        for (value, wire) in [
            ("1.5", Wire::Float8),
            ("-0.0e5", Wire::Float8),
            ("1e300", Wire::Float8),
            ("1e400", Wire::Cast),
            ("1e-400", Wire::Cast),
            (r#""NaN""#, Wire::Cast),
        ] {
            assert_eq!(wires(&[&f], &[&row(&[value])]), Some(vec![wire]), "{value}");
        }
        let list = column("tags", 1009, true);
        assert_eq!(wires(&[&id, &list], &[&row(&["1", "[1]"])]), None);
    }

    #[test]
    fn json_rows_keep_each_value_as_written() {
        let (id, doc) = (column("id", 23, false), column("doc", 1009, true));
        let a = row(&["1.50", r#"{"k": [1]}"#]);
        let b = vec![
            (0, Field::Text("\\x00".into())),
            (1, Field::Json(serde_json::from_str("null").unwrap())),
        ];
        assert_eq!(
            json_rows(&[&id, &doc], &[&a, &b]),
            r#"[{"id":1.50,"doc":{"k": [1]}},{"id":"\\x00","doc":null}]"#
        );
    }
}
