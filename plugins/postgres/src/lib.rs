//! The `postgres` plugin library: a `postgres_cdc` source (change data capture by logical
//! replication) and a `postgres` sink (insert, upsert, or apply change events), one cdylib.
//!
//! Delivery (README.md has the whole story):
//! * **Source**: the position is the change's commit LSN and its index in the transaction. The
//!   slot is confirmed (the flush LSN the server keeps) only up to the furthest position all of
//!   whose records the host acknowledged, so after a crash the server sends again everything not
//!   delivered; changes at or before the stored offsets are skipped. Duplicates are limited to
//!   the records in flight at the crash.
//! * **Sink**: one transaction per batch: the batch is written or not at all. A record the
//!   database refuses is rejected alone (dead-lettered); a lost connection fails the batch as
//!   retriable. Upsert and cdc modes are idempotent, so a batch written twice is harmless.

mod catalog;
mod cdc;
mod client;
mod sink;

pub use cdc::decode;
pub use cdc::types;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("postgres", env!("CARGO_PKG_VERSION"))
    .source::<cdc::PgCdcSource>(
        "postgres_cdc",
        "captures inserts, updates, deletes and truncates by logical replication (pgoutput)"
    )
    .pipelined_sink::<sink::PgSink>(
        "postgres",
        "writes rows: insert, upsert, or apply change events"
    ));
