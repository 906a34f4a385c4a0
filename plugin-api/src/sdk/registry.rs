//! The plugin registry behind the root module: [`PluginBuilder`], the `extern "C"` functions of
//! [`PluginModule`], and [`crate::export_plugin!`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::std_types::{RResult, RStr, RString};
use serde::de::DeserializeOwned;

use super::adapter::open_sink_ext;
use super::adapter::{
    guard, install_panic_hook, open_sink, open_source, open_transform, panic_message,
};
use super::pipelined::{open_pipelined_sink, open_pipelined_sink_ext};
use super::{parse_config, PipelinedSink, Sink, Source, Transform};
use crate::error::{ConfigError, PluginError};
use crate::ffi::{
    ComponentInfo, ComponentKind, HostContext, Manifest, PipelinedSinkBox, PluginExt, PluginExtRef,
    PluginExtV2, PluginExtV2Ref, PluginModule, PluginModuleRef, SinkBox, SourceBox,
    SourceContextFfi, StageContextFfi, TransformBox,
};

type ValidateFn = fn(&str) -> Result<(), ConfigError>;

/// The sink as [`PluginModule::create_sink`] and as [`PluginExt::create_sink`] make it.
type SinkMakers = (
    fn(StageContextFfi) -> Result<SinkBox, PluginError>,
    fn(StageContextFfi) -> Result<PipelinedSinkBox, PluginError>,
);

enum Factory {
    Source(fn(SourceContextFfi) -> Result<SourceBox, PluginError>),
    Transform(fn(StageContextFfi) -> Result<TransformBox, PluginError>),
    Sink(SinkMakers),
}

impl Factory {
    fn kind(&self) -> ComponentKind {
        match self {
            Factory::Source(_) => ComponentKind::Source,
            Factory::Transform(_) => ComponentKind::Transform,
            Factory::Sink(..) => ComponentKind::Sink,
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
            factory: Factory::Sink((open_sink::<S>, open_sink_ext::<S>)),
        });
        self
    }

    /// Registers a sink that keeps several batches in flight (see [`PipelinedSink`]).
    pub fn pipelined_sink<S: PipelinedSink>(
        mut self,
        name: &'static str,
        description: &'static str,
    ) -> Self {
        self.components.push(Component {
            name,
            description,
            validate: |json| validate_with::<S::Config>(json, S::validate),
            factory: Factory::Sink((open_pipelined_sink::<S>, open_pipelined_sink_ext::<S>)),
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

/// The plugin family's name (`"plugin"` before the root module is initialised, as in a
/// plugin's own unit tests).
pub(super) fn plugin_name() -> &'static str {
    PLUGIN.get().map_or("plugin", |p| p.name)
}

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

/// Both makers of the sink component `name`, for [`PluginModule::create_sink`] and
/// [`PluginExt::create_sink`].
fn sink_makers(name: RStr<'_>) -> Result<&'static SinkMakers, PluginError> {
    match &plugin().find(ComponentKind::Sink, name.as_str())?.factory {
        Factory::Sink(makers) => Ok(makers),
        _ => unreachable!("find checks the kind"),
    }
}

extern "C" fn ffi_create_sink(
    name: RStr<'_>,
    ctx: StageContextFfi,
) -> RResult<SinkBox, PluginError> {
    guard(|| (sink_makers(name)?.0)(ctx))
}

extern "C" fn ffi_ext_create_sink(
    name: RStr<'_>,
    ctx: StageContextFfi,
) -> RResult<PipelinedSinkBox, PluginError> {
    guard(|| (sink_makers(name)?.1)(ctx))
}

/// Used by [`crate::export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub fn __ext_module(build: impl FnOnce() -> PluginBuilder) -> PluginExtRef {
    PLUGIN.get_or_init(build);
    abi_stable::prefix_type::PrefixTypeTrait::leak_into_prefix(PluginExt {
        create_sink: ffi_ext_create_sink,
    })
}

/// Used by [`crate::export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub fn __ext_v2_module(build: impl FnOnce() -> PluginBuilder) -> PluginExtV2Ref {
    PLUGIN.get_or_init(build);
    abi_stable::prefix_type::PrefixTypeTrait::leak_into_prefix(PluginExtV2 {
        init_metrics: super::metrics::ffi_init_metrics,
    })
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
        $crate::__export_module!(
            "_1as_0lib_1header_0root_bmodule_bloader",
            __ORBIT_PLUGIN_LIB_HEADER,
            $crate::ffi::PluginModuleRef,
            $crate::__root_module(|| $builder)
        );
        // The capabilities added after plugin-api 0.1.0, each under a symbol of its own (see
        // `ffi::ext`, `ffi::metrics`): a host looks them up and falls back when a library
        // lacks one.
        $crate::__export_module!(
            "orbit_plugin_ext_v1",
            __ORBIT_PLUGIN_EXT_HEADER,
            $crate::ffi::PluginExtRef,
            $crate::__ext_module(|| $builder)
        );
        $crate::__export_module!(
            "orbit_plugin_ext_v2",
            __ORBIT_PLUGIN_EXT_V2_HEADER,
            $crate::ffi::PluginExtV2Ref,
            $crate::__ext_v2_module(|| $builder)
        );
    };
}

/// One root module's `LibHeader` static under `symbol`, checked by layout when loaded. Used by
/// [`export_plugin!`]; not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_module {
    ($symbol:literal, $static:ident, $module:ty, $make:expr) => {
        #[export_name = $symbol]
        pub static $static: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(|| $make)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$module>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The symbol `export_plugin!` exports; a test checks it against abi_stable's.
#[doc(hidden)]
pub const __ROOT_MODULE_LOADER_NAME: &str = "_1as_0lib_1header_0root_bmodule_bloader";
