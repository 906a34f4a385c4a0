//! Sinks that keep several batches in flight: the host begins the next batch before the
//! previous one is confirmed (Kafka keeps producing while delivery reports are pending, a
//! RabbitMQ channel keeps publishing while confirms are pending).

use std::time::Duration;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice},
};

use super::adapter::{guard, sink_context};
use super::{parse_config, Sink, WriteOutcome};
use crate::error::PluginError;
use crate::ffi::ext::PipelinedSinkFfi_TO;
use crate::ffi::{
    PipelinedSinkBox, PipelinedSinkFfi, Record, SinkBox, SinkFfi, SinkFfi_TO, StageContextFfi,
    WriteOutcomeFfi,
};

/// A [`Sink`] that accepts the next batch before the previous one is confirmed. Register it with
/// [`crate::PluginBuilder::pipelined_sink`].
///
/// The host calls `begin_write` for up to `min(MAX_IN_FLIGHT, sink.max_in_flight)` batches, then
/// `finish_write` for the oldest, and so on: batches finish in the order they began. The
/// contract:
/// * `begin_write` starts the batch (produce, publish, send) and returns without waiting for a
///   confirmation; it may block for backpressure. Records of a batch go out after those of
///   every earlier batch wherever the sink promises order (a partition, a queue).
/// * `finish_write(wait)` answers for the **oldest** unfinished batch: `Ok(Some(outcome))` once
///   it is durably accepted (indices in the outcome are into that batch, as for
///   [`Sink::write`]), `Ok(None)` if that is not known within `wait` (nothing is lost: the host
///   asks again), `Err` if the batch failed as a whole.
/// * An `Err` from `begin_write` fails that batch as a whole; earlier batches stay in flight and
///   are still finished.
/// * `write` is never called while batches are in flight; [`write_by_parts`] implements it.
/// * `close` may be called with batches in flight: drop them. The host resends them (their
///   positions were never acknowledged).
/// * As for every sink, one call at a time.
pub trait PipelinedSink: Sink {
    /// The most batches this sink holds begun and unfinished.
    const MAX_IN_FLIGHT: usize = 64;

    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError>;

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError>;
}

/// [`Sink::write`] for a pipelined sink: begins the batch and waits for it to finish.
pub fn write_by_parts<S: PipelinedSink>(
    sink: &mut S,
    batch: &[Record],
) -> Result<WriteOutcome, PluginError> {
    sink.begin_write(batch)?;
    loop {
        if let Some(outcome) = sink.finish_write(Duration::from_secs(1))? {
            return Ok(outcome);
        }
    }
}

struct PipelinedSinkAdapter<S>(S);

impl<S: PipelinedSink> SinkFfi for PipelinedSinkAdapter<S> {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError> {
        guard(|| self.0.write(batch.as_slice()).map(|o| o.inner))
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
}

impl<S: PipelinedSink> PipelinedSinkFfi for PipelinedSinkAdapter<S> {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError> {
        guard(|| self.0.write(batch.as_slice()).map(|o| o.inner))
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
    fn max_in_flight(&self) -> u32 {
        S::MAX_IN_FLIGHT.clamp(1, u32::MAX as usize) as u32
    }
    fn begin_write(&mut self, batch: RSlice<'_, Record>) -> RResult<(), PluginError> {
        guard(|| self.0.begin_write(batch.as_slice()))
    }
    fn finish_write(&mut self, wait_ms: u64) -> RResult<ROption<WriteOutcomeFfi>, PluginError> {
        guard(|| {
            let outcome = self.0.finish_write(Duration::from_millis(wait_ms))?;
            Ok(outcome.map(|o| o.inner).into())
        })
    }
}

fn open<S: PipelinedSink>(ctx: StageContextFfi) -> Result<PipelinedSinkAdapter<S>, PluginError> {
    let config: S::Config = parse_config(&ctx.config)?;
    S::validate(&config)?;
    Ok(PipelinedSinkAdapter(S::open(config, sink_context(ctx))?))
}

/// For a host that knows only [`crate::ffi::PluginModule`]: `write` and `close`.
pub(super) fn open_pipelined_sink<S: PipelinedSink>(
    ctx: StageContextFfi,
) -> Result<SinkBox, PluginError> {
    Ok(SinkFfi_TO::from_value(open::<S>(ctx)?, TD_Opaque))
}

pub(super) fn open_pipelined_sink_ext<S: PipelinedSink>(
    ctx: StageContextFfi,
) -> Result<PipelinedSinkBox, PluginError> {
    Ok(PipelinedSinkFfi_TO::from_value(open::<S>(ctx)?, TD_Opaque))
}
