//! The `kafka` plugin library: a `kafka` source (consumer group, offsets committed only for
//! delivered records) and a `kafka` sink (idempotent producer, a batch succeeds only when every
//! delivery report is in), on rdkafka with librdkafka built in. librdkafka's own threads do the
//! I/O; the library needs no async runtime.
//!
//! Delivery:
//! * **Sink**: `write` returns after librdkafka reported every message of the batch, with
//!   `acks=all` and the idempotent producer by default. A per-message error is a per-record
//!   failure: retriable (timeouts, leader changes, unknown topic) or rejected (message too
//!   large, invalid record) by its error code. A fatal producer error (idempotence state lost,
//!   e.g. a broker that forgot the producer id) drops the producer; the next call builds a new
//!   one. Duplicates: a batch retried after a partial success sends its delivered messages
//!   again; within one producer session the idempotent producer removes broker-side retries.
//!   Dedup key: the record key (`key_field` chooses one) plus the source position in the
//!   `orbit.position` header if enabled.
//! * **Source**: offsets are stored only when the host acknowledges a position (written,
//!   dead-lettered or dropped on purpose) and committed by librdkafka every `commit_interval`,
//!   on partition revocation and on close. After a crash, records after the last commit are
//!   read again: duplicates are at most one `commit_interval` of acknowledged records plus the
//!   records in flight. When the host is slow the source stops fetching (pauses its partitions)
//!   once `buffer` records wait, instead of buffering without bound.
//!
//! Secrets (`sasl.password`, `ssl.key.password`, any property whose name holds `password`,
//! `secret` or `token`) are masked wherever the configuration is logged.

mod client;
mod sink;
mod source;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("kafka", env!("CARGO_PKG_VERSION"))
    .source::<source::KafkaSource>("kafka", "consumer group; commits only delivered offsets")
    .pipelined_sink::<sink::KafkaSink>(
        "kafka",
        "idempotent producer; waits for every delivery report"
    ));
