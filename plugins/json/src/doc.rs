//! A JSON object edited in place: the fields a transform does not touch keep their bytes.
//!
//! A record's value is parsed one level deep into (name, raw JSON text) pairs; only the objects
//! an edit path goes through are parsed further, and only they are written again. A number is
//! never read into an `f64` and written back, so `12345678901234567890123`, `1e2` or
//! `0.1000000000000000055511151231257827` come out exactly as they came in.

use indexmap::IndexMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// One field's value as JSON text: borrowed from the record, or written by an edit.
#[derive(Clone)]
pub enum Raw<'a> {
    Borrowed(&'a RawValue),
    Owned(Box<RawValue>),
}

impl Raw<'_> {
    pub fn text(&self) -> &str {
        match self {
            Raw::Borrowed(r) => r.get(),
            Raw::Owned(r) => r.get(),
        }
    }

    fn into_owned(self) -> Raw<'static> {
        match self {
            Raw::Borrowed(r) => Raw::Owned(r.to_owned()),
            Raw::Owned(r) => Raw::Owned(r),
        }
    }

    /// What kind of JSON value this is, for messages: `an object`, `a number`, ….
    fn kind(&self) -> &'static str {
        match self.text().trim_start().as_bytes().first() {
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }
    }

    fn is_object(&self) -> bool {
        self.text().trim_start().starts_with('{')
    }
}

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Raw::Borrowed(r) => r.serialize(s),
            Raw::Owned(r) => r.serialize(s),
        }
    }
}

/// The fields of one object, in the order written.
pub type Fields<'a> = IndexMap<String, Raw<'a>>;

/// Why a value cannot be edited as an object.
pub enum ParseError {
    NotJson(String),
    NotAnObject,
}

/// The fields of the object `text`; nested values stay raw.
pub fn parse(text: &str) -> Result<Fields<'_>, ParseError> {
    match serde_json::from_str::<IndexMap<String, &RawValue>>(text) {
        Ok(m) => Ok(m.into_iter().map(|(k, v)| (k, Raw::Borrowed(v))).collect()),
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(ParseError::NotAnObject),
        Err(e) => Err(ParseError::NotJson(e.to_string())),
    }
}

/// The object written back as compact JSON (raw values verbatim).
pub fn write(fields: &Fields<'_>, out: &mut Vec<u8>) {
    serde_json::to_writer(out, fields).expect("raw JSON values and string keys always serialize");
}

fn owned(fields: &Fields<'_>) -> Raw<'static> {
    let text = serde_json::to_string(fields).expect("raw JSON values always serialize");
    Raw::Owned(RawValue::from_string(text).expect("an object written by serde_json is JSON"))
}

/// An object nested in a field (already known to be an object).
fn nested<'a>(raw: &'a Raw<'_>) -> Fields<'a> {
    match parse(raw.text()) {
        Ok(f) => f,
        // The text came out of serde_json's own parser as a whole object value.
        Err(_) => unreachable!("a raw value that starts with `{{` is an object"),
    }
}

/// The value at `path` (dot-separated), parsed: for conditions.
pub fn get(fields: &Fields<'_>, path: &str) -> Option<Value> {
    let (head, rest) = match path.split_once('.') {
        None => return serde_json::from_str(fields.get(path)?.text()).ok(),
        Some(split) => split,
    };
    let child = fields.get(head)?;
    if !child.is_object() {
        return None;
    }
    get(&nested(child), rest)
}

/// Takes the value at `path` out (with the objects above it rewritten); `None` when there is
/// none.
pub fn remove<'a>(fields: &mut Fields<'a>, path: &str) -> Option<Raw<'a>> {
    let Some((head, rest)) = path.split_once('.') else {
        return fields.shift_remove(path);
    };
    let child = fields.get(head)?;
    if !child.is_object() {
        return None;
    }
    let mut inner = nested(child);
    let removed = remove(&mut inner, rest)?.into_owned();
    let rewritten = owned(&inner);
    fields.insert(head.to_string(), rewritten);
    Some(removed)
}

/// Puts `value` at `path`, creating the objects on the way; refuses to replace a value that is
/// not an object by one that is (`a.b` where `a` is `5`): that would lose `a` silently.
pub fn insert<'a>(fields: &mut Fields<'a>, path: &str, value: Raw<'a>) -> Result<(), String> {
    insert_at(fields, path, 0, value)
}

fn insert_at<'a>(
    fields: &mut Fields<'a>,
    path: &str,
    from: usize,
    value: Raw<'a>,
) -> Result<(), String> {
    let here = &path[from..];
    let Some((head, _)) = here.split_once('.') else {
        fields.insert(here.to_string(), value);
        return Ok(());
    };
    let below = from + head.len() + 1;
    let rewritten = match fields.get(head) {
        None => {
            let mut inner = Fields::new();
            insert_at(&mut inner, path, below, value)?;
            owned(&inner)
        }
        Some(child) if child.is_object() => {
            let mut inner = nested(child);
            insert_at(&mut inner, path, below, value)?;
            owned(&inner)
        }
        Some(child) => {
            return Err(format!(
                "cannot write `{path}`: `{}` is {}, not an object (its value is kept; \
                 rename or drop it first to replace it)",
                &path[..below - 1],
                child.kind()
            ))
        }
    };
    fields.insert(head.to_string(), rewritten);
    Ok(())
}

/// A value from the configuration, as raw JSON.
pub fn from_config(v: &Value) -> Raw<'static> {
    Raw::Owned(RawValue::from_string(v.to_string()).expect("a serde_json value serializes to JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(doc: &str, f: impl FnOnce(&mut Fields<'_>)) -> String {
        let mut fields = parse(doc).ok().unwrap();
        f(&mut fields);
        let mut out = Vec::new();
        write(&fields, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_values_keep_their_bytes() {
        let doc = r#"{"big":12345678901234567890123,"neg":-9223372036854775809,"p":0.1000000000000000055511151231257827,"e":1e2,"n":{"x":1.50,"y":[1e400, 2]},"s":"\u00e9"}"#;
        let out = edit(doc, |f| {
            insert(f, "added", from_config(&Value::from(1))).unwrap();
            insert(f, "n.z", from_config(&Value::from("z"))).unwrap();
        });
        assert_eq!(
            out,
            r#"{"big":12345678901234567890123,"neg":-9223372036854775809,"p":0.1000000000000000055511151231257827,"e":1e2,"n":{"x":1.50,"y":[1e400, 2],"z":"z"},"s":"\u00e9","added":1}"#
        );
    }

    #[test]
    fn a_scalar_is_never_replaced_by_an_object() {
        let mut f = parse(r#"{"a":5}"#).ok().unwrap();
        let e = insert(&mut f, "a.b", from_config(&Value::from(1))).unwrap_err();
        assert!(e.contains("`a` is a number, not an object"), "{e}");
        let mut f = parse(r#"{"a":{"b":"s"}}"#).ok().unwrap();
        let e = insert(&mut f, "a.b.c", from_config(&Value::from(1))).unwrap_err();
        assert!(e.contains("`a.b` is a string"), "{e}");
    }

    #[test]
    fn remove_and_get_follow_paths() {
        let out = edit(r#"{"a":{"b":1e2,"c":2},"d":3}"#, |f| {
            assert_eq!(get(f, "a.c"), Some(Value::from(2)));
            let b = remove(f, "a.b").unwrap();
            assert_eq!(b.text(), "1e2");
            assert!(remove(f, "d.x").is_none());
            assert!(remove(f, "nope").is_none());
            insert(f, "x.y", b).unwrap();
        });
        assert_eq!(out, r#"{"a":{"c":2},"d":3,"x":{"y":1e2}}"#);
    }

    #[test]
    fn not_json_and_not_an_object_are_told_apart() {
        assert!(matches!(parse("nope"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse("{\"a\":"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse("[1]"), Err(ParseError::NotAnObject)));
        assert!(matches!(parse("12"), Err(ParseError::NotAnObject)));
    }
}
