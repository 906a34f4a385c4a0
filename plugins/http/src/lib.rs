//! The `http` plugin library: an `http` sink (webhooks, reqwest over rustls), an `http` source
//! (an axum server receiving records) and an `sse` sink (records streamed to clients as
//! server-sent events), on the library's own tokio runtime. Keys: docs/CONFIG.md.
//!
//! # `http` sink
//! * **Transient failure**: a refused connection, a timeout, or a status in `retry_on`
//!   (default 408, 429, 5xx) fails the records of that request as retriable; `Retry-After`
//!   (seconds or an HTTP date) becomes the host's retry-after, so the next attempt waits at
//!   least that long. When every request of a batch failed that way the batch fails as a whole
//!   (it counts towards the circuit breaker); otherwise only the failed requests' records are
//!   retried, as a smaller batch. The plugin never retries by itself.
//! * **Permanent failure**: any other non-2xx status rejects the request's records with the
//!   status and the first 512 bytes of the response body in the message; with
//!   `errors.tolerance: all` they go to the dead-letter sink. A value that cannot be framed
//!   (not JSON for `json_array`, a newline for `ndjson`) or a URL template that cannot be
//!   filled is rejected the same way, before anything is sent. A 413 to a request of several
//!   records is not a verdict on them: they are retried as retriable failures and from then on
//!   requests carry at most half as many records (logged); a 413 for a single record rejects it.
//! * **Batches in flight**: the sink sends the next batch's requests without waiting for the
//!   answers to the previous batch's, up to the host's `sink.max_in_flight` batches (default 4;
//!   `1` writes one batch at a time). `concurrency` is **sink-wide**: it bounds the requests in
//!   flight of all those batches together, not of each batch, so a wider window does not add
//!   load on the receiver. Requests take their turn in order (batch after batch, and within a
//!   batch), but with `concurrency` above 1 they overlap and may arrive and be answered in any
//!   order; only `concurrency: 1` sends them one at a time, in that order.
//! * **Duplicates**: a request whose answer was lost (timeout after the server processed it)
//!   or whose records are retried after a partial failure may be delivered again. The window is
//!   the records of the batches in flight when the failure happened (at most `max_in_flight`
//!   batches): the host resends the failed records and, so that the last copies stay in order,
//!   the later records of the same source partition.
//! * **Dedup key**: with `body: per_record`, the `X-Orbit-Record-Id` header:
//!   `stream/partition/hex(offset)` of the record's source position, the same on every
//!   retry and different for every record. Batched bodies are regrouped on retry, so dedup there on an id inside the values
//!   (e.g. `seq` from `generate`). `X-Orbit-Timestamp` is the signing time, not a key.
//! * **Signature**: `X-Orbit-Timestamp` is the Unix time in seconds as decimal text and
//!   `X-Orbit-Signature` is `v1=` followed by the lower-case hex of
//!   HMAC-SHA256(secret, timestamp + "." + body), where body is the uncompressed request body
//!   as sent (before `gzip`). Receivers recompute it, compare in constant time, and refuse
//!   timestamps older than a few minutes (replay protection). Each retry is signed afresh.
//! * Secrets (bearer token, basic password, HMAC secret, header values) never appear in logs or
//!   errors; URLs are shown with their password replaced by `***`.
//!
//! # `http` source
//! * **Transient failure**: when the pipeline cannot take a request (queue full, shutting
//!   down, not delivered within `delivery_timeout`, no room in `max_buffered_bytes` within
//!   `read_timeout`, more than `max_connections` connections) the client gets 503 with
//!   `Retry-After` and should send the request again.
//! * **Permanent failure**: a malformed body gets 400 with the reason (line and column) and
//!   nothing of it is ingested; too large a body 413 (a `Content-Length` over `max_body_bytes`
//!   before a byte is read); a body not received within `read_timeout` 408.
//! * **Authorization** is decided from the headers: a missing or wrong token gets 401 at once
//!   and the connection is closed, its body never read. `Bearer` is matched in any case, the
//!   token compared in constant time; refusals are logged at warn with the client's address
//!   and the reason, never the token, at most one line per 10 s (counting the others).
//! * **Duplicates**: with `ack_mode: delivered`, 200 means every record of the request was
//!   written (or dead-lettered); a 503 after a delivery timeout or at shutdown may come for
//!   records that are still delivered, so a client resending gets duplicates of that request.
//!   With `ack_mode: accepted`, 202 means buffered: records still queued when the host stops
//!   are lost.
//! * **Dedup key**: supply one in the body (or in a header copied with `headers:`, e.g.
//!   `x-request-id`); positions (`http`/0/sequence) are per host, not per client.
//!
//! # `sse` sink
//! * **Transient/permanent failure**: none reach the pipeline: `write` hands the events to each
//!   client's queue and to the replay buffer and returns. SSE is best effort.
//! * A client whose queue (`client_buffer`) is full is disconnected and counted
//!   (`SSE client too slow`, `dropped_clients_total`); it may reconnect with `Last-Event-ID`
//!   and gets the missed events still in the replay buffer (the last `replay_buffer` events).
//!   Events older than that are gone for it.
//! * **Duplicates**: none from the sink; a client that reconnects with an older id gets the
//!   events after that id again. **Dedup key**: the event `id` (increasing, per sink instance:
//!   ids restart at 1 when the host restarts).

mod auth;
mod body;
mod connections;
mod ingest;
mod server;
pub mod sink;
pub mod source;
pub mod sse;
mod throttle;
mod trim;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("http", env!("CARGO_PKG_VERSION"))
    .pipelined_sink::<sink::HttpSink>("http", "delivers batches to a webhook (POST/PUT, signed)")
    .source::<source::HttpSource>("http", "receives JSON / NDJSON over HTTP")
    .sink::<sse::SseSink>("sse", "streams records to clients as server-sent events"));
