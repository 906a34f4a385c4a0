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
