//! The SDK: plain Rust traits for plugin authors and the adapters that expose them through the
//! stable ABI. Every entry point from the host runs inside `catch_unwind`, so a panic in plugin
//! code comes back as an error of kind `Panicked` instead of aborting the host.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, PluginError};
use crate::ffi::{
    ComponentInfo, ComponentKind, HostContext, Manifest, PluginModule, PluginModuleRef, PollOutput,
    Position, Record, RecordFailureFfi, SinkBox, SinkFfi, SinkFfi_TO, SourceBox, SourceContextFfi,
    SourceFfi, SourceFfi_TO, StageContextFfi, TransformBox, TransformFfi, TransformFfi_TO,
    TransformOutputFfi, WriteOutcomeFfi,
};
use crate::record::SourceBatch;

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
}

/// What a transform is given when it opens.
#[derive(Debug, Clone)]
pub struct TransformContext {
    pub pipeline: String,
    pub stage: String,
}

/// What a sink is given when it opens.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub pipeline: String,
    pub stage: String,
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

// ---------------------------------------------------------------------------------------------
// Panic handling

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
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

fn panic_message(payload: Box<dyn Any + Send>) -> String {
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

fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
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

// ---------------------------------------------------------------------------------------------
// The plugin registry behind the root module

type ValidateFn = fn(&str) -> Result<(), ConfigError>;

enum Factory {
    Source(fn(SourceContextFfi) -> Result<SourceBox, PluginError>),
    Transform(fn(StageContextFfi) -> Result<TransformBox, PluginError>),
    Sink(fn(StageContextFfi) -> Result<SinkBox, PluginError>),
}

impl Factory {
    fn kind(&self) -> ComponentKind {
        match self {
            Factory::Source(_) => ComponentKind::Source,
            Factory::Transform(_) => ComponentKind::Transform,
            Factory::Sink(_) => ComponentKind::Sink,
        }
    }
}

struct Component {
    name: &'static str,
    description: &'static str,
    validate: ValidateFn,
    factory: Factory,
}

/// Describes a plugin library: its name, version and components. Pass it to
/// [`crate::export_plugin!`].
pub struct PluginBuilder {
    name: &'static str,
    version: &'static str,
    components: Vec<Component>,
}

fn validate_with<C: DeserializeOwned>(
    json: &str,
    check: fn(&C) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let config: C = parse_config(json)?;
    check(&config)
}

fn open_source<S: Source>(ctx: SourceContextFfi) -> Result<SourceBox, PluginError> {
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

fn open_transform<T: Transform>(ctx: StageContextFfi) -> Result<TransformBox, PluginError> {
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

fn open_sink<S: Sink>(ctx: StageContextFfi) -> Result<SinkBox, PluginError> {
    let config: S::Config = parse_config(&ctx.config)?;
    S::validate(&config)?;
    let sink = S::open(
        config,
        SinkContext {
            pipeline: ctx.pipeline.into_string(),
            stage: ctx.stage.into_string(),
        },
    )?;
    Ok(SinkFfi_TO::from_value(SinkAdapter(sink), TD_Opaque))
}

impl PluginBuilder {
    /// `name` is the plugin family (`kafka`); `version` normally `env!("CARGO_PKG_VERSION")`.
    pub fn new(name: &'static str, version: &'static str) -> Self {
        PluginBuilder {
            name,
            version,
            components: Vec::new(),
        }
    }

    pub fn source<S: Source>(mut self, name: &'static str, description: &'static str) -> Self {
        self.components.push(Component {
            name,
            description,
            validate: |json| validate_with::<S::Config>(json, S::validate),
            factory: Factory::Source(open_source::<S>),
        });
        self
    }

    pub fn transform<T: Transform>(
        mut self,
        name: &'static str,
        description: &'static str,
    ) -> Self {
        self.components.push(Component {
            name,
            description,
            validate: |json| validate_with::<T::Config>(json, T::validate),
            factory: Factory::Transform(open_transform::<T>),
        });
        self
    }

    pub fn sink<S: Sink>(mut self, name: &'static str, description: &'static str) -> Self {
        self.components.push(Component {
            name,
            description,
            validate: |json| validate_with::<S::Config>(json, S::validate),
            factory: Factory::Sink(open_sink::<S>),
        });
        self
    }

    fn find(&self, kind: ComponentKind, name: &str) -> Result<&Component, PluginError> {
        self.components
            .iter()
            .find(|c| c.name == name && c.factory.kind() == kind)
            .ok_or_else(|| {
                PluginError::config(format!(
                    "plugin `{}` has no {kind} named `{name}`",
                    self.name
                ))
            })
    }
}

static PLUGIN: OnceLock<PluginBuilder> = OnceLock::new();

fn plugin() -> &'static PluginBuilder {
    PLUGIN
        .get()
        .expect("the root module is initialised before any call")
}

extern "C" fn ffi_manifest() -> Manifest {
    let p = plugin();
    Manifest {
        name: RString::from(p.name),
        version: RString::from(p.version),
        api_version: RString::from(crate::API_VERSION),
        components: p
            .components
            .iter()
            .map(|c| ComponentInfo {
                name: RString::from(c.name),
                kind: c.factory.kind(),
                description: RString::from(c.description),
            })
            .collect(),
        #[cfg(feature = "__layout_mismatch_for_tests")]
        layout_probe: 0,
    }
}

extern "C" fn ffi_init(host: HostContext) {
    install_panic_hook();
    crate::logging::install(host, plugin().name);
}

extern "C" fn ffi_validate(
    kind: ComponentKind,
    name: RStr<'_>,
    config: RStr<'_>,
) -> RResult<(), ConfigError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let component = plugin()
            .find(kind, name.as_str())
            .map_err(|e| ConfigError::new("", e.message()))?;
        (component.validate)(config.as_str())
    }));
    match result {
        Ok(r) => r.into(),
        Err(payload) => RResult::RErr(ConfigError::new("", panic_message(payload))),
    }
}

extern "C" fn ffi_create_source(
    name: RStr<'_>,
    ctx: SourceContextFfi,
) -> RResult<SourceBox, PluginError> {
    guard(
        || match &plugin().find(ComponentKind::Source, name.as_str())?.factory {
            Factory::Source(f) => f(ctx),
            _ => unreachable!("find checks the kind"),
        },
    )
}

extern "C" fn ffi_create_transform(
    name: RStr<'_>,
    ctx: StageContextFfi,
) -> RResult<TransformBox, PluginError> {
    guard(|| {
        match &plugin()
            .find(ComponentKind::Transform, name.as_str())?
            .factory
        {
            Factory::Transform(f) => f(ctx),
            _ => unreachable!("find checks the kind"),
        }
    })
}

extern "C" fn ffi_create_sink(
    name: RStr<'_>,
    ctx: StageContextFfi,
) -> RResult<SinkBox, PluginError> {
    guard(
        || match &plugin().find(ComponentKind::Sink, name.as_str())?.factory {
            Factory::Sink(f) => f(ctx),
            _ => unreachable!("find checks the kind"),
        },
    )
}

/// Used by [`crate::export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub fn __root_module(build: impl FnOnce() -> PluginBuilder) -> PluginModuleRef {
    PLUGIN.get_or_init(build);
    abi_stable::prefix_type::PrefixTypeTrait::leak_into_prefix(PluginModule {
        manifest: ffi_manifest,
        init: ffi_init,
        validate: ffi_validate,
        create_source: ffi_create_source,
        create_transform: ffi_create_transform,
        create_sink: ffi_create_sink,
    })
}

/// Exports a plugin library's root module. Call it once, at the crate root of a `cdylib`:
///
/// ```ignore
/// orbit_plugin_api::export_plugin!(
///     orbit_plugin_api::PluginBuilder::new("file", env!("CARGO_PKG_VERSION"))
///         .source::<FileSource>("file", "reads lines from a file")
///         .sink::<FileSink>("file", "appends lines to a file")
/// );
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($builder:expr) => {
        // What abi_stable's `#[export_root_module]` generates, spelled through `$crate` so that
        // a plugin crate needs no direct dependency on abi_stable.
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __ORBIT_PLUGIN_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(|| {
                    $crate::__root_module(|| $builder)
                })
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<
                    $crate::ffi::PluginModuleRef,
                >(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The symbol `export_plugin!` exports; a test checks it against abi_stable's.
#[doc(hidden)]
pub const __ROOT_MODULE_LOADER_NAME: &str = "_1as_0lib_1header_0root_bmodule_bloader";
