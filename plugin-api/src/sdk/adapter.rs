//! The author's traits adapted to the FFI trait objects. Every call from the host runs inside
//! [`guard`], so a panic in plugin code comes back as an error of kind `Panicked`.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RVec},
};

use super::{
    parse_config, Sink, SinkContext, Source, SourceContext, Transform, TransformContext,
    TransformOutput,
};
use crate::error::PluginError;
use crate::ffi::ext::PipelinedSinkFfi_TO;
use crate::ffi::{
    PipelinedSinkBox, PipelinedSinkFfi, PollOutput, Position, Record, SinkBox, SinkFfi, SinkFfi_TO,
    SourceBox, SourceContextFfi, SourceFfi, SourceFfi_TO, StageContextFfi, TransformBox,
    TransformFfi, TransformFfi_TO, TransformOutputFfi, WriteOutcomeFfi,
};
use crate::record::SourceBatch;

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub(super) fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // This library has its own copy of std and so its own panic hook. Record where the
        // panic happened for the error message and log it through the host instead of printing
        // to stderr.
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
        }));
    });
}

pub(super) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let msg = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    };
    match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
        Some(loc) => format!("plugin panicked at {loc}: {msg}"),
        None => format!("plugin panicked: {msg}"),
    }
}

pub(super) fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => {
            let message = panic_message(payload);
            tracing::error!("{message}");
            RResult::RErr(PluginError::panicked(message))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Adapters from the author's traits to the FFI trait objects

struct SourceAdapter<S>(S);

impl<S: Source> SourceFfi for SourceAdapter<S> {
    fn poll(&mut self, max_records: u32, max_wait_ms: u64) -> RResult<PollOutput, PluginError> {
        guard(|| {
            self.0
                .poll(max_records as usize, Duration::from_millis(max_wait_ms))
                .map(SourceBatch::into_output)
        })
    }
    fn ack(&mut self, positions: RSlice<'_, Position>) -> RResult<(), PluginError> {
        guard(|| self.0.ack(positions.as_slice()))
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
}

struct TransformAdapter<T>(T);

impl<T: Transform> TransformFfi for TransformAdapter<T> {
    fn process(&mut self, batch: RSlice<'_, Record>) -> RResult<TransformOutputFfi, PluginError> {
        guard(|| {
            let mut out = TransformOutput {
                inner: TransformOutputFfi {
                    records: RVec::with_capacity(batch.len()),
                    failures: RVec::new(),
                },
            };
            self.0.process(batch.as_slice(), &mut out)?;
            Ok(out.inner)
        })
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
}

struct SinkAdapter<S>(S);

impl<S: Sink> SinkFfi for SinkAdapter<S> {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError> {
        guard(|| self.0.write(batch.as_slice()).map(|o| o.inner))
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
}

/// A sink that writes one batch at a time, as the [`crate::ffi::PluginExt`] root module
/// creates it.
impl<S: Sink> PipelinedSinkFfi for SinkAdapter<S> {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError> {
        guard(|| self.0.write(batch.as_slice()).map(|o| o.inner))
    }
    fn close(&mut self) -> RResult<(), PluginError> {
        guard(|| self.0.close())
    }
    fn max_in_flight(&self) -> u32 {
        1
    }
    fn begin_write(&mut self, _batch: RSlice<'_, Record>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::fatal(
            "this sink writes one batch at a time: begin_write is not supported",
        ))
    }
    fn finish_write(&mut self, _wait_ms: u64) -> RResult<ROption<WriteOutcomeFfi>, PluginError> {
        RResult::RErr(PluginError::fatal(
            "this sink writes one batch at a time: finish_write is not supported",
        ))
    }
}

pub(super) fn open_source<S: Source>(ctx: SourceContextFfi) -> Result<SourceBox, PluginError> {
    let config: S::Config = parse_config(&ctx.config)?;
    S::validate(&config)?;
    let source = S::open(
        config,
        SourceContext {
            pipeline: ctx.pipeline.into_string(),
            stage: ctx.stage.into_string(),
            offsets: ctx.offsets.into_vec(),
        },
    )?;
    Ok(SourceFfi_TO::from_value(SourceAdapter(source), TD_Opaque))
}

pub(super) fn open_transform<T: Transform>(
    ctx: StageContextFfi,
) -> Result<TransformBox, PluginError> {
    let config: T::Config = parse_config(&ctx.config)?;
    T::validate(&config)?;
    let transform = T::open(
        config,
        TransformContext {
            pipeline: ctx.pipeline.into_string(),
            stage: ctx.stage.into_string(),
        },
    )?;
    Ok(TransformFfi_TO::from_value(
        TransformAdapter(transform),
        TD_Opaque,
    ))
}

pub(super) fn sink_context(ctx: StageContextFfi) -> SinkContext {
    SinkContext {
        pipeline: ctx.pipeline.into_string(),
        stage: ctx.stage.into_string(),
    }
}

fn open_adapter<S: Sink>(ctx: StageContextFfi) -> Result<SinkAdapter<S>, PluginError> {
    let config: S::Config = parse_config(&ctx.config)?;
    S::validate(&config)?;
    Ok(SinkAdapter(S::open(config, sink_context(ctx))?))
}

pub(super) fn open_sink<S: Sink>(ctx: StageContextFfi) -> Result<SinkBox, PluginError> {
    Ok(SinkFfi_TO::from_value(open_adapter::<S>(ctx)?, TD_Opaque))
}

pub(super) fn open_sink_ext<S: Sink>(
    ctx: StageContextFfi,
) -> Result<PipelinedSinkBox, PluginError> {
    Ok(PipelinedSinkFfi_TO::from_value(
        open_adapter::<S>(ctx)?,
        TD_Opaque,
    ))
}
