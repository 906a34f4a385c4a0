//! Capabilities added after plugin-api 0.1.0, in a root module of their own, [`PluginExt`],
//! exported under the symbol [`EXT_SYMBOL`] by [`crate::export_plugin!`].
//!
//! A host looks the symbol up after loading [`super::PluginModule`]. A library built against
//! 0.1.0 has no such symbol: the host then creates its sinks through
//! [`super::PluginModule::create_sink`] and writes one batch at a time. (Growing the vtable of
//! [`super::SinkFfi`] instead would have made abi_stable refuse every such library.)

// The `#[sabi_trait]` expansion defines impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr},
    StableAbi,
};

use super::{PluginError, Record, StageContextFfi, WriteOutcomeFfi};

/// The symbol of the [`PluginExt`] root module's header.
pub const EXT_SYMBOL: &str = "orbit_plugin_ext_v1";

/// A sink as the host sees it through [`PluginExt::create_sink`]: [`super::SinkFfi`]'s `write`
/// and `close`, plus several batches in flight.
#[sabi_trait]
pub trait PipelinedSinkFfi: Send {
    fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError>;
    fn close(&mut self) -> RResult<(), PluginError>;
    /// How many batches this sink holds begun and unfinished; 1 means `write` only.
    fn max_in_flight(&self) -> u32;
    /// Starts writing a batch without waiting for it to be confirmed.
    fn begin_write(&mut self, batch: RSlice<'_, Record>) -> RResult<(), PluginError>;
    /// The oldest begun batch's outcome once it is confirmed, waiting up to `wait_ms`;
    /// `RNone` if it is not confirmed by then.
    #[sabi(last_prefix_field)]
    fn finish_write(&mut self, wait_ms: u64) -> RResult<ROption<WriteOutcomeFfi>, PluginError>;
}

pub type PipelinedSinkBox = PipelinedSinkFfi_TO<'static, RBox<()>>;

/// The capabilities a library built against plugin-api 0.1.1 or later adds to
/// [`super::PluginModule`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginExtRef)))]
#[sabi(missing_field(panic))]
pub struct PluginExt {
    /// Creates any sink component of the library (one that writes a batch at a time reports
    /// `max_in_flight` 1).
    #[sabi(last_prefix_field)]
    pub create_sink: extern "C" fn(
        name: RStr<'_>,
        ctx: StageContextFfi,
    ) -> RResult<PipelinedSinkBox, PluginError>,
}

impl RootModule for PluginExtRef {
    declare_root_module_statics! {PluginExtRef}
    const BASE_NAME: &'static str = "orbit_plugin_ext";
    const NAME: &'static str = "orbit_plugin_ext";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
