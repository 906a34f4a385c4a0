//! A record's JSON object as a row of the table, its values left as the record's own JSON text
//! (nothing parsed into a tree, nothing copied): the wire reads each value once, as its column
//! needs it.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::table::{Table, BYTEA_OID};

/// A JSON object's members in order, the values unparsed.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The members of the JSON object `json`; `Err` says whether it is not JSON or not an object.
    pub fn parse(json: &'a [u8]) -> Result<Members<'a>, String> {
        serde_json::from_slice(json).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => "the value is not a JSON object".to_string(),
            _ => format!("the value is not JSON: {e}"),
        })
    }

    /// The last member named `name` (the one a JSON parser keeps).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    members.push((k, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

/// A member name, borrowed from the record unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Name)
    }
}

/// One value of a row.
#[derive(Clone, Debug)]
pub enum Field<'a> {
    /// As the record holds it.
    Json(&'a RawValue),
    /// Converted for its column (bytea given as base64, in PostgreSQL's hex form).
    Text(String),
}

impl PartialEq for Field<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Field::Json(a), Field::Json(b)) => a.get() == b.get(),
            (Field::Text(a), Field::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Field<'_> {
    pub fn is_null(&self) -> bool {
        matches!(self, Field::Json(r) if r.get() == "null")
    }

    /// The JSON text of the value.
    pub fn json(&self) -> Cow<'_, str> {
        match self {
            Field::Json(r) => Cow::Borrowed(r.get()),
            Field::Text(s) => Cow::Owned(serde_json::to_string(s).expect("a string serializes")),
        }
    }

    /// The value as text: a JSON string's contents, any other value's JSON text.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Field::Json(r) => {
                let raw = r.get();
                match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
                    Some(_) => Cow::Owned(serde_json::from_str(raw).expect("a JSON string")),
                    None => Cow::Borrowed(raw),
                }
            }
            Field::Text(s) => Cow::Borrowed(s),
        }
    }
}

/// A row: (column index, value), in the table's column order, each column at most once.
pub type Row<'a> = Vec<(u16, Field<'a>)>;

/// The members as a row of the table: unknown fields refused (or dropped), bytea given as
/// base64 turned into PostgreSQL's hex input; a member named twice counts once, the last.
pub fn row<'a>(
    table: &Table,
    members: Members<'a>,
    ignore_unknown: bool,
) -> Result<Row<'a>, String> {
    let mut out: Row<'a> = Vec::with_capacity(members.0.len());
    let mut unknown = Vec::new();
    for (name, value) in members.0 {
        let Some((i, col)) = table.column(&name) else {
            unknown.push(name);
            continue;
        };
        let s = value.get();
        let field = if col.type_oid == BYTEA_OID && s.starts_with('"') && !s.starts_with("\"\\\\x")
        {
            let text: String = serde_json::from_str(s).expect("a JSON string");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| {
                    format!("column `{name}` is bytea and its value is not base64: {e}")
                })?;
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("\\x");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            Field::Text(hex)
        } else {
            Field::Json(value)
        };
        out.push((i, field));
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(format!(
            "field(s) {} are not columns of {}; add the columns, drop the fields with a transform, or set ignore_unknown_fields: true",
            unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", "),
            table.quoted
        ));
    }
    if out.is_empty() {
        return Err(format!(
            "no field of the record is a column of {}",
            table.quoted
        ));
    }
    if !out.windows(2).all(|w| w[0].0 < w[1].0) {
        // Stable: of a column named twice, the later copy ends up first after the reverse.
        out.sort_by_key(|f| f.0);
        out.reverse();
        out.dedup_by_key(|f| f.0);
        out.reverse();
    }
    Ok(out)
}
