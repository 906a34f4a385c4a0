//! Pipeline files: the YAML schema, environment interpolation and error positions.
//!
//! Loading is text → `${VAR}` substitution → serde_yaml into [`PipelineSpec`] (unknown keys are
//! errors) → semantic checks. Every error is a [`Diagnostic`] naming file, line, column and key.

mod diagnostic;
mod file;
mod interpolate;
pub mod limits;
mod locate;

use std::time::Duration;

use serde::Deserialize;

/// The most records a batch may hold: the host and every plugin allocate for a batch.
pub const MAX_BATCH_RECORDS: usize = 1_000_000;
/// The most batches queued between two stages.
pub const MAX_BATCH_BUFFER: usize = 10_000;
/// The most batches a sink may hold in flight (`sink.max_in_flight`).
pub const MAX_SINK_IN_FLIGHT: usize = 64;
/// The window when `sink.max_in_flight` is not set (and the plugin supports one); see
/// docs/BENCHMARKS.md for the measurement behind it.
pub const DEFAULT_SINK_IN_FLIGHT: usize = 4;

pub use diagnostic::Diagnostic;
pub use file::PipelineFile;
pub use interpolate::InterpolationError;
pub use locate::KeyPositions;

/// One pipeline file, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// What the host does when the whole pipeline fails.
    #[serde(default)]
    pub restart: PipelineRestartSpec,
}

/// Restarting a pipeline that failed, from its stored offsets, after a back-off that doubles
/// up to `max_backoff` (and starts over once it has run for `max_backoff`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRestartSpec {
    #[serde(default)]
    pub on_failure: bool,
    #[serde(
        default = "PipelineRestartSpec::default_backoff",
        with = "humantime_serde"
    )]
    pub backoff: Duration,
    #[serde(
        default = "PipelineRestartSpec::default_max_backoff",
        with = "humantime_serde"
    )]
    pub max_backoff: Duration,
}

impl PipelineRestartSpec {
    fn default_backoff() -> Duration {
        Duration::from_secs(1)
    }
    fn default_max_backoff() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for PipelineRestartSpec {
    fn default() -> Self {
        PipelineRestartSpec {
            on_failure: false,
            backoff: Self::default_backoff(),
            max_backoff: Self::default_max_backoff(),
        }
    }
}

/// A source, transform or sink: which plugin component, its config, its policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Sink only: the most batches the sink holds begun and not yet confirmed. The effective
    /// window is the smaller of this and what the plugin supports (1 for a sink that writes
    /// one batch at a time).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsSpec {
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Any sink plugin; required with `tolerance: all`.
    #[serde(default)]
    pub dead_letter: Option<StageSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    #[serde(default)]
    pub policy: PolicySpec,
}

/// The policies around one stage. Every field is optional so that a stage's own policy can be
/// merged over the pipeline's `defaults.policy`, key by key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub records_per_second: Option<f64>,
    pub batches_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub on_limit: Option<OnLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
