//! Inserts through `COPY … FROM STDIN` (text format): the fastest way into a table. The rows'
//! JSON values are rendered as PostgreSQL's text input (arrays as array literals, json as JSON
//! text), so the server parses each value once, with the same input functions an INSERT uses.

use bytes::Bytes;
use futures_util::SinkExt;
use orbit_plugin_api::PluginError;
use serde_json::Value;
use tokio_postgres::Client;

use super::plan::Op;
use super::table::Table;
use crate::client::{error, quote_ident};

/// One COPY of a run of inserts over the same columns.
pub async fn copy_rows(
    client: &Client,
    table: &Table,
    cols: &[String],
    ops: &[&Op],
    url: &str,
) -> Result<(), PluginError> {
    let mut buf = String::with_capacity(ops.len() * 64);
    let arrays: Vec<bool> = cols
        .iter()
        .map(|c| table.column(c).is_some_and(|c| c.is_array))
        .collect();
    for op in ops {
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            match op.row.get(c) {
                None | Some(Value::Null) => buf.push_str("\\N"),
                Some(v) => escape_into(&mut buf, &text(v, arrays[i])),
            }
        }
        buf.push('\n');
    }
    let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    let sql = format!("COPY {} ({}) FROM STDIN", table.quoted, list.join(", "));
    let fail = |e: tokio_postgres::Error| error(&e, &format!("writing to {}", table.quoted), url);
    let sink = client.copy_in::<_, Bytes>(&sql).await.map_err(fail)?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(buf)).await.map_err(fail)?;
    sink.finish().await.map_err(fail)?;
    Ok(())
}

/// A JSON value as PostgreSQL's text input for its column.
fn text(v: &Value, array_column: bool) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if array_column => array_literal(items),
        other => other.to_string(),
    }
}

/// `{1,"a b",NULL,{2,3}}`: every element quoted except NULL and nested arrays.
fn array_literal(items: &[Value]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => out.push_str(&array_literal(inner)),
            other => {
                let s = match other {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                };
                out.push('"');
                for ch in s.chars() {
                    if ch == '"' || ch == '\\' {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// COPY's text format: backslash, tab, newline and carriage return escaped.
fn escape_into(buf: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_copy_text() {
        assert_eq!(
            text(&json!(["a", "b \"c\"", null, [1, 2]]), true),
            r#"{"a","b \"c\"",NULL,{"1","2"}}"#
        );
        assert_eq!(
            text(&json!([1, 2]), false),
            "[1,2]",
            "a json column takes JSON"
        );
        assert_eq!(text(&json!({"k": 1}), false), r#"{"k":1}"#);
        assert_eq!(text(&json!(true), false), "true");
        let mut buf = String::new();
        escape_into(&mut buf, "a\tb\nc\\d\re");
        assert_eq!(buf, "a\\tb\\nc\\\\d\\re");
    }
}
