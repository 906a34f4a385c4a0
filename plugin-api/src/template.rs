//! Templates over a record, for names computed per record: a routing key `orders.{status}`, a
//! topic `{stream}`, a URL `https://x/{tenant}/events`.
//!
//! Placeholders: `{stream}`, `{partition}`, `{key}` (the record key as UTF-8), and any other
//! name is a dotted path into the record's JSON value (`{customer.id}`). A string field is
//! inserted as is; any other JSON value as its JSON text.

use crate::error::ConfigError;
use crate::ffi::Record;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Stream,
    Key,
    Partition,
    Field(Vec<String>),
}

/// A parsed template. Parse it once (in `validate` and `open`), render it per record.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `key` names the config key in errors (`routing_key`, `topic`).
    pub fn parse(key: &str, text: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let end = rest[start..].find('}').ok_or_else(|| {
                ConfigError::new(key, "unterminated `{`: close the placeholder with `}`")
            })?;
            let name = rest[start + 1..start + end].trim();
            parts.push(match name {
                "stream" => Part::Stream,
                "key" => Part::Key,
                "partition" => Part::Partition,
                "" => {
                    return Err(ConfigError::new(
                        key,
                        "empty `{}`: name a field, e.g. `{status}`",
                    ))
                }
                field => Part::Field(field.split('.').map(str::to_string).collect()),
            });
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The text when the template has no placeholder.
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Whether rendering needs the record's value parsed as JSON.
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The literal text before the first placeholder, if the template starts with one.
    pub fn leading_text(&self) -> Option<&str> {
        match self.parts.first() {
            Some(Part::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The template with every placeholder replaced by `placeholder`, for checking the shape of
    /// what it renders (a URL, a topic name) at validation time.
    pub fn sample(&self, placeholder: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                _ => placeholder,
            })
            .collect()
    }

    /// Renders the template for one record. The error says which field is missing or that the
    /// value is not JSON; callers usually reject the record with it.
    pub fn render(&self, r: &Record) -> Result<String, String> {
        self.render_encoded(r, |value, out| out.push_str(value))
    }

    /// [`Template::render`] with every substituted value passed through `encode` (literal text
    /// is kept as written), e.g. percent-encoding for a URL.
    pub fn render_encoded(
        &self,
        r: &Record,
        encode: impl Fn(&str, &mut String),
    ) -> Result<String, String> {
        if let Some(t) = self.as_static() {
            return Ok(t.to_string());
        }
        let doc: Option<serde_json::Value> = if self.reads_fields() {
            Some(
                serde_json::from_slice(r.value())
                    .map_err(|e| format!("the template needs a JSON value: {e}"))?,
            )
        } else {
            None
        };
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Stream => encode(&r.stream, &mut out),
                Part::Partition => encode(&r.partition.to_string(), &mut out),
                Part::Key => encode(
                    &String::from_utf8_lossy(r.key().unwrap_or_default()),
                    &mut out,
                ),
                Part::Field(path) => {
                    let v = field(doc.as_ref().expect("parsed above"), path).ok_or_else(|| {
                        format!("the template's field `{}` is missing", path.join("."))
                    })?;
                    match v {
                        serde_json::Value::String(s) => encode(s, &mut out),
                        other => encode(&other.to_string(), &mut out),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The value at a dotted path in a JSON document.
pub fn field<'a>(doc: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(doc, |v, k| v.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_and_metadata() {
        let t = Template::parse("routing_key", "orders.{status}.{stream}").unwrap();
        let r = Record::new(r#"{"status":"paid"}"#).with_position("in", 0, vec![1]);
        assert_eq!(t.render(&r).unwrap(), "orders.paid.in");
        let missing = Record::new(r#"{"x":1}"#);
        assert!(t.render(&missing).unwrap_err().contains("status"));
        let nested = Template::parse("topic", "t-{a.b}-{key}").unwrap();
        let r = Record::new(r#"{"a":{"b":7}}"#).with_key("k");
        assert_eq!(nested.render(&r).unwrap(), "t-7-k");
    }

    #[test]
    fn static_templates_and_errors() {
        let t = Template::parse("topic", "plain").unwrap();
        assert_eq!(t.as_static(), Some("plain"));
        assert_eq!(t.render(&Record::new("not json")).unwrap(), "plain");
        assert_eq!(
            Template::parse("topic", "a.{").unwrap_err().path.as_str(),
            "topic"
        );
        assert!(Template::parse("topic", "{}").is_err());
    }
}
