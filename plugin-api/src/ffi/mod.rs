//! Everything that crosses the boundary between the host and a plugin library.
//!
//! Only `#[repr(C)]` types deriving `StableAbi` live here, built from `RVec`/`RString`/`ROption`
//! and never from std's `Vec`/`String`/`Box`. When a library is loaded, abi_stable compares the
//! layout of every type reachable from [`PluginModule`] with the host's and refuses the library on
//! any difference, naming the type.
//!
//! Rules for changing this file without breaking plugins already built. abi_stable refuses a
//! library when a prefix type (the root module, a trait object's vtable) has *fewer* fields in
//! the library than in the host: a host built against a newer plugin-api would refuse every
//! older plugin if a field or method were added to a type reachable from [`PluginModule`]. So:
//! * nothing reachable from [`PluginModule`] changes within 0.1.x;
//! * a new capability is a new root module under a symbol of its own ([`ext`]: the
//!   `orbit_plugin_ext_v1` symbol; [`metrics`]: `orbit_plugin_ext_v2`), which the host looks up
//!   and uses when present, falling back when an older library does not export it. The next
//!   capability is a new symbol (`…_v3`), never a change to an existing one;
//! * a library built against a *newer* 0.1.x plugin-api may have more fields in a prefix type
//!   than the host (abi_stable accepts that), which is what `#[sabi(last_prefix_field)]` allows;
//! * any other change is a new plugin-api minor version (0.x) and old plugins are refused.

// The `#[sabi_trait]` expansion defines impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

pub use crate::error::{ConfigError, PluginError};

pub mod ext;
pub mod metrics;
pub use ext::{PipelinedSinkBox, PipelinedSinkFfi, PluginExt, PluginExtRef};
pub use metrics::{
    MetricKind, MetricLabel, MetricSample, MetricsHost, PluginExtV2, PluginExtV2Ref,
};

/// One record header: a name and raw bytes.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: RString,
    pub value: RVec<u8>,
}

/// A record as it travels from a source through transforms to a sink.
///
/// `stream`, `partition` and `offset` say where the record came from (a topic, queue, table or
/// file; its partition; the source's own opaque position bytes). Transforms keep them so that a
/// dead-lettered record can name its original position.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: ROption<RVec<u8>>,
    pub value: RVec<u8>,
    pub headers: RVec<Header>,
    /// Milliseconds since the Unix epoch, when the source knows it.
    pub timestamp_ms: ROption<i64>,
    pub stream: RString,
    pub partition: i32,
    pub offset: RVec<u8>,
}

/// A source position: the last offset consumed (or acknowledged) in one stream partition.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    pub stream: RString,
    pub partition: i32,
    pub offset: RVec<u8>,
}

/// What kind of component a library provides.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    Source = 0,
    Transform = 1,
    Sink = 2,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Source => "source",
            ComponentKind::Transform => "transform",
            ComponentKind::Sink => "sink",
        }
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ComponentInfo {
    pub name: RString,
    pub kind: ComponentKind,
    pub description: RString,
}

/// What a library says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Manifest {
    /// The plugin family, e.g. `kafka`.
    pub name: RString,
    /// The plugin's own version (its crate version).
    pub version: RString,
    /// The plugin-api version the library was built against.
    pub api_version: RString,
    pub components: RVec<ComponentInfo>,
    #[cfg(feature = "__layout_mismatch_for_tests")]
    pub layout_probe: u64,
}

/// A log event emitted by a plugin, forwarded to the host's `tracing` subscriber.
#[repr(C)]
#[derive(StableAbi)]
pub struct LogEvent<'a> {
    /// 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace.
    pub level: u8,
    pub plugin: RStr<'a>,
    pub target: RStr<'a>,
    pub message: RStr<'a>,
}

/// What the host gives a library once, right after loading it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    pub log: extern "C" fn(&LogEvent<'_>),
    /// The most verbose level the host will print (same numbering as [`LogEvent::level`]);
    /// the plugin filters on its side so disabled events cost nothing across the boundary.
    pub max_level: u8,
}

/// Given to a source when it is created.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SourceContextFfi {
    pub pipeline: RString,
    pub stage: RString,
    /// The component's `config:` as JSON text.
    pub config: RString,
    /// The last acknowledged position of each stream partition, from the host's offset store.
    pub offsets: RVec<Position>,
}

/// Given to a transform or sink when it is created.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct StageContextFfi {
    pub pipeline: RString,
    pub stage: RString,
    pub config: RString,
}

/// One record that a transform or sink could not handle, by its index in the input batch.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct RecordFailureFfi {
    pub index: u64,
    pub error: PluginError,
}

/// The result of one `poll`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct PollOutput {
    pub records: RVec<Record>,
    /// The position after this batch for every partition it touched. The host acknowledges
    /// these once every record of the batch is delivered. A batch may advance positions with no
    /// records (a source skipping input it does not turn into records).
    pub positions: RVec<Position>,
    /// The source has nothing more and never will (a bounded generator, a file read to its end
    /// without follow). The pipeline drains and stops.
    pub end_of_stream: bool,
}

/// The result of one `process`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct TransformOutputFfi {
    pub records: RVec<Record>,
    pub failures: RVec<RecordFailureFfi>,
}

/// The result of one `write`: records not listed were durably accepted.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct WriteOutcomeFfi {
    pub failures: RVec<RecordFailureFfi>,
}

#[sabi_trait]
pub trait SourceFfi: Send {
    fn poll(&mut self, max_records: u32, max_wait_ms: u64) -> RResult<PollOutput, PluginError>;
    fn ack(&mut self, positions: RSlice<'_, Position>) -> RResult<(), PluginError>;
    #[sabi(last_prefix_field)]
    fn close(&mut self) -> RResult<(), PluginError>;
}

#[sabi_trait]
pub trait TransformFfi: Send {
    fn process(&mut self, batch: RSlice<'_, Record>) -> RResult<TransformOutputFfi, PluginError>;
    #[sabi(last_prefix_field)]
    fn close(&mut self) -> RResult<(), PluginError>;
}

#[sabi_trait]
pub trait SinkFfi: Send {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError>;
    #[sabi(last_prefix_field)]
    fn close(&mut self) -> RResult<(), PluginError>;
}

pub type SourceBox = SourceFfi_TO<'static, RBox<()>>;
pub type TransformBox = TransformFfi_TO<'static, RBox<()>>;
pub type SinkBox = SinkFfi_TO<'static, RBox<()>>;

/// The root module every plugin library exports (through [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    pub manifest: extern "C" fn() -> Manifest,
    pub init: extern "C" fn(HostContext),
    /// Checks a component's config without connecting anywhere.
    pub validate: extern "C" fn(
        kind: ComponentKind,
        name: RStr<'_>,
        config: RStr<'_>,
    ) -> RResult<(), ConfigError>,
    pub create_source:
        extern "C" fn(name: RStr<'_>, ctx: SourceContextFfi) -> RResult<SourceBox, PluginError>,
    pub create_transform:
        extern "C" fn(name: RStr<'_>, ctx: StageContextFfi) -> RResult<TransformBox, PluginError>,
    #[sabi(last_prefix_field)]
    pub create_sink:
        extern "C" fn(name: RStr<'_>, ctx: StageContextFfi) -> RResult<SinkBox, PluginError>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "orbit_plugin";
    const NAME: &'static str = "orbit_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
