//! The SDK: plain Rust traits for plugin authors and the adapters that expose them through the
//! stable ABI. Every entry point from the host runs inside `catch_unwind`, so a panic in plugin
//! code comes back as an error of kind `Panicked` instead of aborting the host.
//!
//! * this file: what an author implements (the traits, their contexts and outputs);
//! * [`pipelined`]: the opt-in for sinks that keep several batches in flight;
//! * `adapter`: the author's traits turned into the FFI trait objects, panics into errors;
//! * `registry`: [`PluginBuilder`] and the root module behind [`crate::export_plugin!`].

mod adapter;
mod metrics;
mod pipelined;
mod registry;

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, PluginError};
use crate::ffi::{Position, Record, RecordFailureFfi, TransformOutputFfi, WriteOutcomeFfi};
use crate::record::SourceBatch;

pub use metrics::Metrics;
pub use pipelined::{write_by_parts, PipelinedSink};
pub use registry::{
    __ext_module, __ext_v2_module, __root_module, PluginBuilder, __ROOT_MODULE_LOADER_NAME,
};

/// What a source is given when it opens.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub pipeline: String,
    pub stage: String,
    /// The last acknowledged position per stream partition, as stored by the host. Resume after
    /// it: the records at these positions were delivered.
    pub offsets: Vec<Position>,
}

impl SourceContext {
    /// The stored offset bytes of one stream partition, if any.
    pub fn offset(&self, stream: &str, partition: i32) -> Option<&[u8]> {
        self.offsets
            .iter()
            .find(|p| p.stream.as_str() == stream && p.partition == partition)
            .map(|p| p.offset.as_slice())
    }

    /// This stage's own metrics (see [`Metrics`]).
    pub fn metrics(&self) -> Metrics {
        Metrics::new(&self.pipeline, &self.stage)
    }
}

/// What a transform is given when it opens.
#[derive(Debug, Clone)]
pub struct TransformContext {
    pub pipeline: String,
    pub stage: String,
}

impl TransformContext {
    /// This stage's own metrics (see [`Metrics`]).
    pub fn metrics(&self) -> Metrics {
        Metrics::new(&self.pipeline, &self.stage)
    }
}

/// What a sink is given when it opens.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub pipeline: String,
    pub stage: String,
}

impl SinkContext {
    /// This stage's own metrics (see [`Metrics`]).
    pub fn metrics(&self) -> Metrics {
        Metrics::new(&self.pipeline, &self.stage)
    }
}

/// A source of records. The host calls it from one thread at a time; calls may block.
pub trait Source: Send + Sized + 'static {
    /// The `config:` block, deserialized with `#[serde(deny_unknown_fields)]` on your struct.
    type Config: DeserializeOwned;

    /// Semantic checks beyond what serde does. Must not connect anywhere.
    fn validate(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Opens the source and resumes after `ctx.offsets`.
    fn open(config: Self::Config, ctx: SourceContext) -> Result<Self, PluginError>;

    /// Returns up to `max_records` records: what is ready now, or, when nothing is, the first
    /// ones to arrive within `max_wait` (return as soon as there are some; do not wait to fill
    /// the batch). The host passes a zero `max_wait` while earlier batches are in flight: take
    /// what is ready and return. Batches grow while the pipeline is busy because the host polls
    /// less often then (group commit), not because a poll lingers. An empty batch is fine; call
    /// [`SourceBatch::end_of_stream`] when there will never be more. A source that can get
    /// nothing until earlier records are acknowledged (a broker's prefetch credit used up)
    /// returns an empty batch at once: the host then waits for its in-flight batches.
    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError>;

    /// Every record up to and including these positions was delivered (written, dead-lettered
    /// or deliberately dropped). Commit them to your system if it keeps its own offsets.
    /// Positions arrive in order per partition.
    fn ack(&mut self, _positions: &[Position]) -> Result<(), PluginError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// What a transform produces for one batch.
#[derive(Debug, Default)]
pub struct TransformOutput {
    inner: TransformOutputFfi,
}

impl TransformOutput {
    /// Emits a record. Records not emitted and not failed are dropped on purpose and count as
    /// delivered.
    pub fn push(&mut self, record: Record) {
        self.inner.records.push(record);
    }

    /// The input record at `index` cannot be processed. With `ErrorKind::Rejected` it is
    /// dead-lettered (or stops the pipeline, per `errors.tolerance`).
    pub fn fail(&mut self, index: usize, error: PluginError) {
        self.inner.failures.push(RecordFailureFfi {
            index: index as u64,
            error,
        });
    }

    pub fn len(&self) -> usize {
        self.inner.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }
}

/// Changes, filters or enriches records a batch at a time.
pub trait Transform: Send + Sized + 'static {
    type Config: DeserializeOwned;

    fn validate(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    fn open(config: Self::Config, ctx: TransformContext) -> Result<Self, PluginError>;

    /// Processes one batch. Return `Err` only when the whole batch failed (the host retries a
    /// retriable error with the same batch); report a bad record with [`TransformOutput::fail`].
    fn process(&mut self, batch: &[Record], out: &mut TransformOutput) -> Result<(), PluginError>;

    fn close(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// What a sink reports for one batch: every record not rejected here was durably accepted.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    inner: WriteOutcomeFfi,
}

impl WriteOutcome {
    /// Every record was written.
    pub fn ok() -> Self {
        Self::default()
    }

    /// The record at `index` was not written, for the given reason.
    pub fn fail(&mut self, index: usize, error: PluginError) {
        self.inner.failures.push(RecordFailureFfi {
            index: index as u64,
            error,
        });
    }
}

/// Writes records somewhere. `write` returns only once the records are durably accepted by
/// the destination (flushed, confirmed): the host acknowledges the source after it.
pub trait Sink: Send + Sized + 'static {
    type Config: DeserializeOwned;

    fn validate(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    fn open(config: Self::Config, ctx: SinkContext) -> Result<Self, PluginError>;

    /// Writes one batch. Never return `Ok` for records that were not written: report them with
    /// [`WriteOutcome::fail`], or return `Err` if the whole batch failed.
    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError>;

    fn close(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Config parsing

/// Deserializes a component's JSON config into `C`, naming the path of the offending key.
/// Strings holding numbers or booleans are accepted where `C` asks for one (a `${VAR}` in the
/// pipeline file is always a string): see [`crate::coerce`].
pub(crate) fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ConfigError::new(String::new(), format!("the config is not JSON: {e}")))?;
    crate::coerce::from_value(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string())
    })
}
