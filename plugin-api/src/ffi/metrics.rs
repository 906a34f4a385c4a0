//! Plugin metrics (plugin-api 0.1.2): a plugin's own gauges and counters (consumer lag,
//! replication-slot lag, queue depth) reported to the host as values.
//!
//! Each library has its own copy of every global, so a metrics recorder installed in the host
//! is not the one a plugin would see. Instead the host hands each library a callback once,
//! through the [`PluginExtV2`] root module exported under [`EXT_V2_SYMBOL`], and the SDK's
//! `Metrics` handle calls it with one [`MetricSample`] per update. The host keeps the last value
//! of each series and shows it on `/metrics` under the stage's labels.
//!
//! A library built against 0.1.0 or 0.1.1 has no such symbol: the host simply has no plugin
//! metrics from it. A library whose host never calls `init_metrics` (an older host) drops its
//! samples.

// The `#[sabi_trait]`-free root module still expands to impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RSlice, RStr},
    StableAbi,
};

/// The symbol of the [`PluginExtV2`] root module's header.
pub const EXT_V2_SYMBOL: &str = "orbit_plugin_ext_v2";

/// How the host shows a series.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that goes up and down (lag, depth); the last reported value is shown.
    Gauge = 0,
    /// A running total that only grows (the plugin keeps the total and reports it whole);
    /// shown with the `_total` suffix.
    Counter = 1,
}

/// One label of a plugin series, beside the stage's own labels.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct MetricLabel<'a> {
    pub name: RStr<'a>,
    pub value: RStr<'a>,
}

/// One update of one series, as the SDK sends it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct MetricSample<'a> {
    /// The stage that reports it (from the instance's context).
    pub pipeline: RStr<'a>,
    pub stage: RStr<'a>,
    /// The plugin family (`kafka`): the series is `orbit_plugin_<plugin>_<name>`.
    pub plugin: RStr<'a>,
    pub name: RStr<'a>,
    pub help: RStr<'a>,
    pub kind: MetricKind,
    pub value: f64,
    pub labels: RSlice<'a, MetricLabel<'a>>,
}

/// What the host gives a library for its metrics.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct MetricsHost {
    /// Records one sample. Cheap (a map update behind a lock); never blocks on I/O.
    pub report: extern "C" fn(&MetricSample<'_>),
}

/// The capabilities a library built against plugin-api 0.1.2 or later adds beside
/// [`super::PluginExt`]. The next capability is a new root module under `…_v3`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginExtV2Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginExtV2 {
    /// Called by the host once, right after loading, before any instance is created.
    #[sabi(last_prefix_field)]
    pub init_metrics: extern "C" fn(MetricsHost),
}

impl RootModule for PluginExtV2Ref {
    declare_root_module_statics! {PluginExtV2Ref}
    const BASE_NAME: &'static str = "orbit_plugin_ext_v2";
    const NAME: &'static str = "orbit_plugin_ext_v2";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
