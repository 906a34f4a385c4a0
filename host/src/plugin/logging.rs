//! The host side of the plugin logging bridge: events a plugin emits arrive here and go to the
//! host's `tracing` subscriber, tagged with the plugin's name. They are emitted on the thread
//! that called into the plugin, so they sit inside the host's span for that stage.

use orbit_plugin_api::ffi::LogEvent;
use tracing::level_filters::LevelFilter;

pub(super) extern "C" fn host_log(ev: &LogEvent<'_>) {
    let plugin = ev.plugin.as_str();
    let target = ev.target.as_str();
    let message = ev.message.as_str();
    match ev.level {
        1 => tracing::error!(target: "orbit::plugin", plugin, plugin_target = target, "{message}"),
        2 => tracing::warn!(target: "orbit::plugin", plugin, plugin_target = target, "{message}"),
        3 => tracing::info!(target: "orbit::plugin", plugin, plugin_target = target, "{message}"),
        4 => tracing::debug!(target: "orbit::plugin", plugin, plugin_target = target, "{message}"),
        _ => tracing::trace!(target: "orbit::plugin", plugin, plugin_target = target, "{message}"),
    }
}

/// The most verbose level the host's subscriber lets through, in the bridge's numbering.
pub(super) fn max_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}
