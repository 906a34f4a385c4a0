//! The `rabbitmq` plugin library: a `rabbitmq` source (consume from a queue, ack after
//! delivery) and a `rabbitmq` sink (publish with publisher confirms), on lapin. The sink runs on
//! the library's shared tokio runtime; each source instance has its own current-thread runtime
//! and one thread that drives it between host calls (`driver.rs`, docs/ARCHITECTURE.md).
//!
//! Delivery:
//! * **Sink**: a batch succeeds only when the broker confirmed every message in it. A nack is a
//!   retriable per-record failure (the host publishes those records again); a message returned
//!   as unroutable (`mandatory`) is a rejected record (dead-lettered with `tolerance: all`). A
//!   lost connection or channel fails the whole batch as retriable; the next call reconnects and
//!   the host retries the batch. Duplicates: a batch retried after a partial publish sends its
//!   confirmed messages again. Dedup key: the `message_id` property, set from the record key if
//!   it has one, else from the record's source position (`stream/partition/offset`).
//! * **Source**: a delivery is acked (`basic.ack`, `multiple` up to the highest contiguous tag)
//!   only after the host delivered its record (written, dead-lettered or dropped on purpose).
//!   After a crash or a lost connection, unacked messages are redelivered by the broker (with
//!   `amqp.redelivered: true`): duplicates are at most `prefetch` messages. Acks for deliveries
//!   of an earlier connection are ignored (their tags are void; the broker redelivers them).
//!   Dedup key: the `message_id` property when producers set one.
//!
//! Connection: `amqps://` with `tls.ca_file` for a private CA (system roots are always
//! trusted) and optionally `tls.cert_file`/`key_file` for a client certificate; credentials in
//! the URL or in `username`/`password`. Passwords never appear in logs or errors: URLs are
//! shown with the password replaced, and error texts are scrubbed of it.
//!
//! Source batching: a poll waits up to `batch.max_wait` for the first delivery (only when
//! nothing is awaiting acknowledgement), then fills the batch while deliveries keep coming. When
//! `prefetch` deliveries are unacknowledged the broker sends nothing more, so the poll returns
//! at once and the host polls again after its next completed batch (whose ack frees credit).

mod connection;
mod driver;
mod sink;
mod source;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("rabbitmq", env!("CARGO_PKG_VERSION"))
    .source::<source::RabbitSource>("rabbitmq", "consumes a queue; acks after delivery")
    .pipelined_sink::<sink::RabbitSink>("rabbitmq", "publishes with publisher confirms"));
