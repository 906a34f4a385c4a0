//! `generate` source: synthetic records from a template, for demos, tests and benchmarks;
//! and `blackhole`, a sink that discards.
//!
//! ```yaml
//! source:
//!   plugin: generate
//!   config:
//!     count: 1000          # omit for an endless stream
//!     rate: 500            # records per second; omit for as fast as possible
//!     template: '{"seq":{{seq}},"ts":"{{timestamp}}"}'
//! ```
//!
//! Placeholders: `{{seq}}` (0, 1, 2, …), `{{timestamp}}` (RFC 3339, milliseconds, UTC),
//! `{{timestamp_ms}}` (milliseconds since the epoch). The offset is the sequence number, so a
//! restarted pipeline continues after the last acknowledged record and `count` is the total
//! over all runs.
//!
//! Delivery: nothing external can fail. Duplicates after a crash are the records generated
//! after the last stored offset; the dedup key is `seq`.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orbit_plugin_api::{
    export_plugin, ConfigError, PluginBuilder, PluginError, Record, Sink, SinkContext, Source,
    SourceBatch, SourceContext, WriteOutcome,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Total records to produce; none means endless.
    #[serde(default)]
    count: Option<u64>,
    /// Records per second; none means as fast as the pipeline takes them.
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default = "default_template")]
    template: String,
    /// The stream name records carry (and their offsets are stored under).
    #[serde(default = "default_stream")]
    stream: String,
}

fn default_template() -> String {
    r#"{"seq":{{seq}},"ts":"{{timestamp}}"}"#.to_string()
}

fn default_stream() -> String {
    "generate".to_string()
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Seq,
    Timestamp,
    TimestampMs,
}

fn parse_template(t: &str) -> Result<Vec<Part>, ConfigError> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| ConfigError::new("template", "unterminated `{{`"))?;
        parts.push(match after[..end].trim() {
            "seq" => Part::Seq,
            "timestamp" => Part::Timestamp,
            "timestamp_ms" => Part::TimestampMs,
            other => {
                return Err(ConfigError::new(
                    "template",
                    format!(
                        "unknown placeholder `{{{{{other}}}}}`; use {{{{seq}}}}, {{{{timestamp}}}} or {{{{timestamp_ms}}}}"
                    ),
                ))
            }
        });
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

pub struct Generate {
    parts: Vec<Part>,
    stream: String,
    next: u64,
    count: Option<u64>,
    rate: Option<f64>,
    started: Instant,
    emitted_this_run: u64,
}

impl Source for Generate {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        parse_template(&config.template)?;
        if let Some(r) = config.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err(ConfigError::new(
                    "rate",
                    "must be a positive number of records per second",
                ));
            }
        }
        Ok(())
    }

    fn open(config: Config, ctx: SourceContext) -> Result<Self, PluginError> {
        let next = match ctx.offset(&config.stream, 0) {
            Some(bytes) => {
                let arr: [u8; 8] = bytes.try_into().map_err(|_| {
                    PluginError::fatal("stored offset is not a generate sequence number")
                })?;
                u64::from_be_bytes(arr) + 1
            }
            None => 0,
        };
        Ok(Generate {
            parts: parse_template(&config.template)?,
            stream: config.stream,
            next,
            count: config.count,
            rate: config.rate,
            started: Instant::now(),
            emitted_this_run: 0,
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let remaining = self.count.map_or(u64::MAX, |c| c.saturating_sub(self.next));
        let mut n = (max_records as u64).min(remaining);
        if let Some(rate) = self.rate {
            // Pace to `rate`: how many records are due by now, waiting (up to max_wait) for
            // the next one when none is.
            let due = |elapsed: Duration| (elapsed.as_secs_f64() * rate) as u64 + 1;
            let mut allowed = due(self.started.elapsed()).saturating_sub(self.emitted_this_run);
            if allowed == 0 && n > 0 {
                let next_at = Duration::from_secs_f64(self.emitted_this_run as f64 / rate);
                let wait = next_at.saturating_sub(self.started.elapsed()).min(max_wait);
                std::thread::sleep(wait);
                allowed = due(self.started.elapsed()).saturating_sub(self.emitted_this_run);
            }
            n = n.min(allowed);
        }
        let mut batch = SourceBatch::with_capacity(n as usize);
        let now = SystemTime::now();
        let ts_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let ts = humantime::format_rfc3339_millis(now).to_string();
        let mut size_hint = 64;
        for _ in 0..n {
            let seq = self.next;
            let mut value = Vec::with_capacity(size_hint);
            for p in &self.parts {
                match p {
                    Part::Text(t) => value.extend_from_slice(t.as_bytes()),
                    Part::Seq => {
                        let _ = write!(value, "{seq}");
                    }
                    Part::Timestamp => value.extend_from_slice(ts.as_bytes()),
                    Part::TimestampMs => {
                        let _ = write!(value, "{ts_ms}");
                    }
                }
            }
            size_hint = value.len() + 8;
            batch.push(Record::new(value).with_timestamp_ms(ts_ms).with_position(
                self.stream.clone(),
                0,
                seq.to_be_bytes(),
            ));
            self.next += 1;
        }
        self.emitted_this_run += n;
        if self.count.is_some_and(|c| self.next >= c) {
            batch.end_of_stream();
        }
        Ok(batch)
    }
}

/// `blackhole` sink: accepts and discards every record (for benchmarks and for measuring a
/// source or transform alone). Logs the count when it closes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

pub struct Blackhole {
    received: u64,
}

impl Sink for Blackhole {
    type Config = BlackholeConfig;

    fn open(_config: BlackholeConfig, _ctx: SinkContext) -> Result<Self, PluginError> {
        Ok(Blackhole { received: 0 })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.received += batch.len() as u64;
        Ok(WriteOutcome::ok())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        tracing::info!(records = self.received, "blackhole discarded its records");
        Ok(())
    }
}

export_plugin!(PluginBuilder::new("generate", env!("CARGO_PKG_VERSION"))
    .source::<Generate>("generate", "synthetic records from a template")
    .sink::<Blackhole>("blackhole", "discards records (benchmarks)"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_templates() {
        assert_eq!(
            parse_template("a{{seq}}b{{ timestamp_ms }}").unwrap(),
            vec![
                Part::Text("a".into()),
                Part::Seq,
                Part::Text("b".into()),
                Part::TimestampMs
            ]
        );
        assert_eq!(
            parse_template("{{nope}}").unwrap_err().path.as_str(),
            "template"
        );
    }

    #[test]
    fn resumes_after_the_stored_offset_and_ends_at_count() {
        let ctx = SourceContext {
            pipeline: "p".into(),
            stage: "source".into(),
            offsets: vec![orbit_plugin_api::Position::new(
                "generate",
                0,
                6u64.to_be_bytes(),
            )],
        };
        let cfg: Config = serde_json::from_str(r#"{"count":10,"template":"{{seq}}"}"#).unwrap();
        let mut g = Generate::open(cfg, ctx).unwrap();
        let b = g.poll(100, Duration::from_millis(1)).unwrap();
        let values: Vec<&[u8]> = b.records().iter().map(|r| r.value()).collect();
        assert_eq!(values, vec![b"7" as &[u8], b"8", b"9"]);
        assert!(b.is_end_of_stream());
    }
}
