//! Pipeline files: the YAML schema, environment interpolation and error positions.
//!
//! Loading is text → `${VAR}` substitution → serde_yaml into [`PipelineSpec`] (unknown keys are
//! errors) → semantic checks. Every error is a [`Diagnostic`] naming file, line, column and key.

mod diagnostic;
mod interpolate;
pub mod limits;
mod locate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The most records a batch may hold: the host and every plugin allocate for a batch.
pub const MAX_BATCH_RECORDS: usize = 1_000_000;
/// The most batches queued between two stages.
pub const MAX_BATCH_BUFFER: usize = 10_000;

pub use diagnostic::Diagnostic;
pub use interpolate::{interpolate, Interpolated, InterpolationError};
pub use locate::KeyPositions;

/// One pipeline file, as the user wrote it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique per host; names the offset file and every log line and metric.
    pub name: String,
    pub source: StageSpec,
    #[serde(default)]
    pub transforms: Vec<StageSpec>,
    pub sink: StageSpec,
    #[serde(default)]
    pub batch: BatchSpec,
    #[serde(default)]
    pub offsets: OffsetsSpec,
    #[serde(default)]
    pub errors: ErrorsSpec,
    /// Pipeline-wide defaults merged under each stage's own `policy:`.
    #[serde(default)]
    pub defaults: DefaultsSpec,
}

/// A source, transform or sink: which plugin component, its config, its policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The component name (`kafka`, `file`, `json`); its kind follows from the position.
    pub plugin: String,
    /// A name for logs and metrics; defaults to the position (`source`, `transforms[0]`, `sink`).
    #[serde(default)]
    pub name: Option<String>,
    /// Handed to the plugin as JSON; the plugin checks it.
    #[serde(default)]
    pub config: serde_yaml::Value,
    #[serde(default)]
    pub policy: PolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// The most records one plugin call carries.
    #[serde(default = "BatchSpec::default_max_records")]
    pub max_records: usize,
    /// How long a source may wait to fill a batch.
    #[serde(default = "BatchSpec::default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Batches buffered between two stages; with one batch inside each stage this bounds the
    /// records in flight (and so memory, and the duplicate window after a crash).
    #[serde(default = "BatchSpec::default_buffer")]
    pub buffer: usize,
}

impl BatchSpec {
    fn default_max_records() -> usize {
        1000
    }
    fn default_max_wait() -> Duration {
        Duration::from_millis(20)
    }
    fn default_buffer() -> usize {
        2
    }
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_records: Self::default_max_records(),
            max_wait: Self::default_max_wait(),
            buffer: Self::default_buffer(),
        }
    }
}

/// How acknowledged source positions reach the offset file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetsSpec {
    /// The offset file is written at most this often (and always when the pipeline stops);
    /// `0s` writes after every acknowledgement. After a crash, up to this much of delivered
    /// input is read again.
    #[serde(
        default = "OffsetsSpec::default_flush_interval",
        with = "humantime_serde"
    )]
    pub flush_interval: Duration,
}

impl OffsetsSpec {
    fn default_flush_interval() -> Duration {
        Duration::from_secs(1)
    }
}

impl Default for OffsetsSpec {
    fn default() -> Self {
        OffsetsSpec {
            flush_interval: Self::default_flush_interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// Stop the pipeline on the first record that cannot be delivered.
    #[default]
    None,
    /// Send such records to the dead-letter sink and go on.
    All,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsSpec {
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Any sink plugin; required with `tolerance: all`.
    #[serde(default)]
    pub dead_letter: Option<StageSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    #[serde(default)]
    pub policy: PolicySpec,
}

/// The policies around one stage. Every field is optional so that a stage's own policy can be
/// merged over the pipeline's `defaults.policy`, key by key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub circuit_breaker: Option<BreakerSpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub restart: Option<RestartSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    pub multiplier: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    pub failure_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub open_for: Option<Duration>,
    pub half_open_max_calls: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    Wait,
    Drop,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub records_per_second: Option<f64>,
    pub batches_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub on_limit: Option<OnLimit>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub max_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff: Option<Duration>,
}

/// Where a stage sits in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRole {
    Source,
    Transform(usize),
    Sink,
    DeadLetter,
}

impl StageRole {
    /// The key path of the stage in the pipeline file.
    pub fn key_path(self) -> String {
        match self {
            StageRole::Source => "source".into(),
            StageRole::Transform(i) => format!("transforms[{i}]"),
            StageRole::Sink => "sink".into(),
            StageRole::DeadLetter => "errors.dead_letter".into(),
        }
    }
}

impl PipelineSpec {
    /// Every stage with its role, in data-flow order, the dead-letter sink last.
    pub fn stages(&self) -> Vec<(StageRole, &StageSpec)> {
        let mut v = vec![(StageRole::Source, &self.source)];
        v.extend(
            self.transforms
                .iter()
                .enumerate()
                .map(|(i, t)| (StageRole::Transform(i), t)),
        );
        v.push((StageRole::Sink, &self.sink));
        if let Some(d) = &self.errors.dead_letter {
            v.push((StageRole::DeadLetter, d));
        }
        v
    }

    /// The name a stage goes by in logs: its `name:` or its position.
    pub fn stage_name(role: StageRole, spec: &StageSpec) -> String {
        spec.name.clone().unwrap_or_else(|| role.key_path())
    }
}

/// A parsed pipeline file, kept with what is needed to point at its keys later.
#[derive(Debug)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub spec: PipelineSpec,
    interpolated: Interpolated,
    positions: KeyPositions,
}

impl PipelineFile {
    /// Reads, interpolates from the process environment, parses and checks a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile, Diagnostic> {
        let text = limits::read(path)?;
        Self::parse(path, &text, |name| std::env::var(name).ok())
    }

    /// As [`PipelineFile::load`], from text already read, with a given environment.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, Diagnostic> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let interpolated = interpolate(text, env).map_err(|e| Diagnostic {
            file: path.to_path_buf(),
            line: Some(e.line),
            column: Some(e.column),
            key: None,
            message: e.message,
            hint: e.hint,
        })?;
        limits::check_depth(path, &interpolated.text).map_err(|mut d| {
            if let (Some(line), Some(column)) = (d.line, d.column) {
                d.column = Some(interpolated.original_column(line, column));
            }
            d
        })?;
        let spec: PipelineSpec = serde_yaml::from_str(&interpolated.text).map_err(|e| {
            let (line, column) = match e.location() {
                Some(l) => (
                    Some(l.line()),
                    Some(interpolated.original_column(l.line(), l.column())),
                ),
                None => (None, None),
            };
            Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                key: None,
                message: diagnostic::strip_serde_yaml_location(&e.to_string()),
                hint: hint_for_yaml_error(&e.to_string()),
            }
        })?;
        let positions = KeyPositions::read(&interpolated.text);
        let file = PipelineFile {
            path: path.to_path_buf(),
            spec,
            interpolated,
            positions,
        };
        file.check()?;
        Ok(file)
    }

    /// A diagnostic pointing at `key` (a path such as `sink.config.url`).
    pub fn error_at(
        &self,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let pos = self.positions.find(key);
        Diagnostic {
            file: self.path.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| self.interpolated.original_column(p.0, p.1)),
            key: Some(key.to_string()),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Checks that serde cannot express.
    fn check(&self) -> Result<(), Diagnostic> {
        let s = &self.spec;
        if s.name.trim().is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.error_at(
                "name",
                format!("pipeline name `{}` is not usable", s.name),
                "use letters, digits, `-`, `_` and `.`: the name names the offset file",
            ));
        }
        if !(1..=MAX_BATCH_RECORDS).contains(&s.batch.max_records) {
            return Err(self.error_at(
                "batch.max_records",
                format!(
                    "`max_records` is {}: it must be from 1 to {MAX_BATCH_RECORDS}",
                    s.batch.max_records
                ),
                "a typical value is 500 to 5000",
            ));
        }
        if !(1..=MAX_BATCH_BUFFER).contains(&s.batch.buffer) {
            return Err(self.error_at(
                "batch.buffer",
                format!(
                    "`buffer` is {}: it must be from 1 to {MAX_BATCH_BUFFER}",
                    s.batch.buffer
                ),
                "it is the number of batches queued between two stages; 2 to 8 is plenty",
            ));
        }
        if s.errors.tolerance == Tolerance::All && s.errors.dead_letter.is_none() {
            return Err(self.error_at(
                "errors.tolerance",
                "`tolerance: all` needs a dead-letter sink",
                "add `errors.dead_letter: { plugin: file, config: { path: dlq.jsonl } }`",
            ));
        }
        Ok(())
    }
}

fn hint_for_yaml_error(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct the key; docs/CONFIG.md lists every key".into()
    } else if message.contains("missing field") {
        "add the key; docs/CONFIG.md lists every key".into()
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "correct the value's type; durations are written like 250ms, 10s or 5m".into()
    } else {
        "fix the YAML syntax at that position".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineFile, Diagnostic> {
        PipelineFile::parse(Path::new("p.yaml"), text, |n| {
            (n == "OUT").then(|| "out.txt".to_string())
        })
    }

    const GOOD: &str = "name: t\nsource:\n  plugin: generate\n  config: { count: 10 }\nsink:\n  plugin: file\n  config:\n    path: ${OUT}\n";

    #[test]
    fn parses_a_minimal_pipeline_with_defaults() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.spec.batch.max_records, 1000);
        assert_eq!(f.spec.batch.max_wait, Duration::from_millis(20));
        assert_eq!(f.spec.sink.config["path"].as_str(), Some("out.txt"));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e =
            parse(&GOOD.replace("  plugin: file\n", "  plugin: file\n  confg: 1\n")).unwrap_err();
        assert_eq!((e.line, e.column), (Some(7), Some(3)), "{e}");
        assert!(e.message.contains("unknown field `confg`"), "{e}");
    }

    #[test]
    fn malformed_yaml_names_the_position() {
        let e = parse("name: t\nsource: [\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn tolerance_all_needs_a_dead_letter_sink() {
        let e = parse(&format!("{GOOD}errors: {{ tolerance: all }}\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("errors.tolerance"));
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn sizes_past_their_bounds_are_refused_at_validation() {
        for (key, yaml) in [
            ("batch.buffer", "batch: { buffer: 18446744073709551615 }"),
            ("batch.max_records", "batch: { max_records: 4294967296 }"),
        ] {
            let e = parse(&format!("{GOOD}{yaml}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.to_string().contains("it must be from 1 to"), "{e}");
        }
    }

    #[test]
    fn bad_duration_is_an_error() {
        let e = parse(&format!("{GOOD}batch: {{ max_wait: soon }}\n")).unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
    }
}
