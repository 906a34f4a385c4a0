//! `--log-format json`: one JSON object per line with `timestamp`, `level`, `message`, the
//! event's own fields and those of every span it happened in (`pipeline`, `stage`, `plugin`),
//! flattened, so a log shipper indexes them without parsing text.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; pair it with `JsonFields` so span fields are recorded as JSON.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Map::new();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        obj.insert("timestamp".into(), Value::String(now.to_string()));
        let level = event.metadata().level().as_str();
        obj.insert("level".into(), Value::String(level.into()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields.as_str()) {
                    obj.extend(m);
                }
            }
        }
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        for (k, v) in fields {
            match obj.get(&k) {
                // The span names the stage's component; a plugin's own events name its library.
                Some(span_value) if *span_value != v && k == "plugin" => {
                    obj.insert("library".into(), v);
                }
                Some(span_value) if *span_value != v && k != "message" => {
                    obj.insert(format!("event_{k}"), v);
                }
                _ => {
                    obj.insert(k, v);
                }
            }
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}
