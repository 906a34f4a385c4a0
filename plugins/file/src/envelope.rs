//! How a sink renders a record as one line.

use base64::Engine as _;
use orbit_plugin_api::Record;
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The record's value bytes as they are.
    #[default]
    Value,
    /// A JSON object with value, key, headers, timestamp and position, lossless: bytes that are
    /// not UTF-8 are written as `{"base64": "…"}`.
    Envelope,
}

fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

pub fn render(format: Format, r: &Record, out: &mut Vec<u8>) {
    match format {
        Format::Value => out.extend_from_slice(r.value()),
        Format::Envelope => {
            let mut headers = Map::new();
            for h in r.headers.iter() {
                headers.insert(h.name.to_string(), bytes(&h.value));
            }
            let v = json!({
                "key": r.key().map(bytes),
                "value": bytes(r.value()),
                "headers": headers,
                "timestamp_ms": r.timestamp_ms.into_option(),
                "stream": r.stream.as_str(),
                "partition": r.partition,
                "offset": base64::engine::general_purpose::STANDARD.encode(&r.offset),
            });
            serde_json::to_writer(&mut *out, &v).expect("writing JSON to a Vec");
        }
    }
    out.push(b'\n');
}

fn unbytes(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(s.clone().into_bytes()),
        Value::Object(o) => match o.get("base64").and_then(Value::as_str) {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("`{what}`: bad base64: {e}")),
            None => Err(format!(
                "`{what}`: expected a string or {{\"base64\": ...}}"
            )),
        },
        _ => Err(format!(
            "`{what}`: expected a string or {{\"base64\": ...}}"
        )),
    }
}

/// Reads one line as the envelope sink writes it: key, value, headers and timestamp come back;
/// the position is the reader's own.
pub fn parse(line: &[u8]) -> Result<Record, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let o = v.as_object().ok_or("expected a JSON object")?;
    let value = o.get("value").ok_or("`value` is missing")?;
    let mut r = Record::new(unbytes(value, "value")?);
    if let Some(k) = o.get("key").filter(|k| !k.is_null()) {
        r = r.with_key(unbytes(k, "key")?);
    }
    if let Some(ts) = o.get("timestamp_ms").and_then(Value::as_i64) {
        r = r.with_timestamp_ms(ts);
    }
    match o.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                r.push_header(name.as_str(), unbytes(value, name)?);
            }
        }
        Some(_) => return Err("`headers`: expected an object".into()),
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_key_headers_timestamp_and_binary() {
        let r = Record::new(vec![0xff, 0x00, b'a'])
            .with_key("k1")
            .with_header("h", "v")
            .with_header("bin", vec![0xfe])
            .with_timestamp_ms(42);
        let mut line = Vec::new();
        render(Format::Envelope, &r, &mut line);
        line.pop();
        let back = parse(&line).unwrap();
        assert_eq!(back.value(), r.value());
        assert_eq!(back.key(), Some(&b"k1"[..]));
        assert_eq!(back.header("h"), Some(&b"v"[..]));
        assert_eq!(back.header("bin"), Some(&[0xfe][..]));
        assert_eq!(back.timestamp_ms.into_option(), Some(42));
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"key":"x"}"#).unwrap_err().contains("value"));
    }
}
