//! The `http` plugin library: an `http` sink (webhooks, reqwest), an `http` source (an axum
//! server receiving records) and an `sse` sink (records streamed to clients as server-sent
//! events), on the library's own tokio runtime.

mod server;
pub mod sink;
pub mod source;
pub mod sse;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("http", env!("CARGO_PKG_VERSION"))
    .sink::<sink::HttpSink>("http", "delivers batches to a webhook (POST/PUT, signed)")
    .source::<source::HttpSource>("http", "receives JSON / NDJSON over HTTP")
    .sink::<sse::SseSink>("sse", "streams records to clients as server-sent events"));
