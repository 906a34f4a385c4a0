//! The contract between the Orbit host and its plugins.
//!
//! Two halves live here, and only here, so that host and plugins share exactly one definition
//! of everything that crosses a library boundary:
//!
//! * [`ffi`]: the `abi_stable` types: the root module every plugin library exports, the
//!   `#[sabi_trait]` objects for sources, transforms and sinks, the record, positions and errors.
//!   The host uses these directly.
//! * The SDK ([`Source`], [`Transform`], [`Sink`], [`PluginBuilder`], [`export_plugin!`]): plain
//!   Rust traits that a plugin author implements. The SDK adapts them to the FFI types, turns
//!   panics into errors, parses config as JSON with unknown keys refused, and forwards the
//!   plugin's `tracing` events to the host's log.
//!
//! A plugin is one `cdylib` crate:
//!
//! ```ignore
//! use orbit_plugin_api::{export_plugin, PluginBuilder};
//! export_plugin!(PluginBuilder::new("my-plugin", env!("CARGO_PKG_VERSION")).sink::<MySink>("my-sink"));
//! ```
//!
//! See docs/PLUGINS.md in the repository for a complete example.

pub mod coerce;
mod error;
pub mod ffi;
mod logging;
mod record;
pub mod redact;
#[cfg(feature = "runtime")]
mod runtime;
mod sdk;
pub mod template;

pub use error::{ConfigError, ErrorKind, PluginError};
pub use ffi::{Header, Position, Record};
pub use record::SourceBatch;
#[cfg(feature = "runtime")]
pub use runtime::runtime;
#[doc(hidden)]
pub use sdk::{__ext_module, __ext_v2_module, __root_module, __ROOT_MODULE_LOADER_NAME};
pub use sdk::{
    write_by_parts, Metrics, PipelinedSink, PluginBuilder, Sink, SinkContext, Source,
    SourceContext, Transform, TransformContext, TransformOutput, WriteOutcome,
};
pub use template::Template;

/// Re-exported so that [`export_plugin!`] works without the plugin naming `abi_stable` itself.
#[doc(hidden)]
pub use abi_stable;

/// The `tracing` the SDK forwards to the host; plugins may use it or depend on `tracing` 0.1.
pub use tracing;

/// The version of this crate. It is also the version abi_stable compares when the host loads a
/// library: a plugin built against an incompatible plugin-api (0.x: another minor version) is
/// refused with both versions named.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
