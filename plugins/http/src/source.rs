//! `http` source: an axum server that turns request bodies (a JSON object, a JSON array or
//! NDJSON) into records. All-or-nothing per request; with `ack_mode: delivered` the answer waits
//! until the host acknowledged the request's records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use orbit_plugin_api::{
    runtime, ConfigError, PluginError, Position, Record, Source, SourceBatch, SourceContext,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{oneshot, Notify};

use crate::server::{self, Server, TlsFiles};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// 200 once the host acknowledged every record of the request (written by the sink).
    #[default]
    Delivered,
    /// 202 once the records are in the source's queue.
    Accepted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_address")]
    address: String,
    #[serde(default = "default_path")]
    path: String,
    /// Requests must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    token: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default)]
    ack_mode: AckMode,
    /// `delivered` mode: how long a request waits for its records to be delivered.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    delivery_timeout: Duration,
    /// Records buffered between the server and the pipeline, at most.
    #[serde(default = "default_queue")]
    queue_records: usize,
    /// The `Retry-After` sent with a 503.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    retry_after: Duration,
    /// HTTP request headers copied into record headers (names lower-cased).
    #[serde(default)]
    headers: Vec<String>,
    /// The stream name records carry.
    #[serde(default = "default_stream")]
    stream: String,
    #[serde(default)]
    tls: Option<TlsFiles>,
}

fn default_address() -> String {
    "127.0.0.1:8080".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue() -> usize {
    10_000
}
fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}
fn default_stream() -> String {
    "http".into()
}

/// Record sequence numbers (the records' positions), unique in the process: an instance that
/// replaces another (after a panic or a timeout) continues after every number handed out
/// before, so an acknowledgement of an earlier instance's records can never answer a request
/// of this one. They start after the last acknowledged one, so stored positions keep growing.
static SEQUENCES: AtomicU64 = AtomicU64::new(0);

struct Queue {
    records: VecDeque<Record>,
    /// Requests waiting for delivery: (last sequence number, answer), in sequence order.
    pending: VecDeque<(u64, oneshot::Sender<()>)>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    token: Option<String>,
    ack_mode: AckMode,
    delivery_timeout: Duration,
    capacity: usize,
    retry_after: Duration,
    headers: Vec<String>,
    stream: String,
}

pub struct HttpSource {
    shared: Arc<Shared>,
    server: Option<Server>,
}

impl Source for HttpSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        server::validate_listen(&config.address, config.tls.as_ref())?;
        server::validate_path(&config.path)?;
        if matches!(&config.token, Some(t) if t.is_empty()) {
            return Err(ConfigError::new(
                "token",
                "is empty; set it (e.g. `token: ${INGEST_TOKEN}`) or remove it to accept requests without a token",
            ));
        }
        ConfigError::check_range("max_body_bytes", config.max_body_bytes, 1..=1 << 30)?;
        ConfigError::check_range("queue_records", config.queue_records, 1..=10_000_000)?;
        if config.delivery_timeout.is_zero() {
            return Err(ConfigError::new(
                "delivery_timeout",
                "must be more than 0, e.g. `30s`",
            ));
        }
        for (i, h) in config.headers.iter().enumerate() {
            header::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("headers[{i}]"),
                    format!("`{h}` is not a valid header name"),
                )
            })?;
        }
        if config.stream.is_empty() {
            return Err(ConfigError::new("stream", "must not be empty"));
        }
        Ok(())
    }

    fn open(config: Config, ctx: SourceContext) -> Result<Self, PluginError> {
        if let Some(acked) = ctx
            .offset(&config.stream, 0)
            .and_then(|o| <[u8; 8]>::try_from(o).ok())
        {
            SEQUENCES.fetch_max(
                u64::from_be_bytes(acked).saturating_add(1),
                Ordering::Relaxed,
            );
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                pending: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            token: config.token,
            ack_mode: config.ack_mode,
            delivery_timeout: config.delivery_timeout,
            capacity: config.queue_records,
            retry_after: config.retry_after,
            headers: config
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            stream: config.stream,
        });
        let router = Router::new()
            .route(&config.path, post(ingest))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .with_state(shared.clone());
        let server = server::start("http source", &config.address, config.tls.as_ref(), router)?;
        tracing::info!(pipeline = %ctx.pipeline, path = %config.path, "http source ready");
        Ok(HttpSource {
            shared,
            server: Some(server),
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let deadline = Instant::now() + max_wait;
        loop {
            {
                let mut q = self.shared.queue.lock().expect("queue lock");
                if !q.records.is_empty() {
                    let n = q.records.len().min(max_records.max(1));
                    let mut batch = SourceBatch::with_capacity(n);
                    for r in q.records.drain(..n) {
                        batch.push(r);
                    }
                    return Ok(batch);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(SourceBatch::default());
            }
            // A notification sent between the check above and here is kept as a permit.
            let wait = deadline - now;
            let notify = &self.shared.notify;
            // The timer is created inside the runtime: `timeout` needs its context.
            runtime().block_on(async move {
                let _ = tokio::time::timeout(wait, notify.notified()).await;
            });
        }
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        for p in positions {
            if p.stream.as_str() != self.shared.stream || p.partition != 0 {
                continue;
            }
            let Ok(bytes) = <[u8; 8]>::try_from(p.offset.as_slice()) else {
                continue;
            };
            let watermark = u64::from_be_bytes(bytes);
            let mut q = self.shared.queue.lock().expect("queue lock");
            while q
                .pending
                .front()
                .is_some_and(|(last, _)| *last <= watermark)
            {
                let (_, tx) = q.pending.pop_front().expect("front exists");
                let _ = tx.send(());
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        let (unpolled, waiting) = {
            let mut q = self.shared.queue.lock().expect("queue lock");
            q.closed = true;
            let waiting = q.pending.len();
            // Dropping the senders answers every waiting request with 503.
            q.pending.clear();
            (q.records.len(), waiting)
        };
        if waiting > 0 {
            tracing::info!(
                requests = waiting,
                "http source closing: answering waiting requests with 503"
            );
        }
        if unpolled > 0 && self.shared.ack_mode == AckMode::Accepted {
            tracing::warn!(
                records = unpolled,
                "http source closing with accepted (202) records not yet delivered; they are lost (use `ack_mode: delivered` to have clients resend)"
            );
        }
        if let Some(mut s) = self.server.take() {
            s.shutdown(Duration::from_secs(5));
        }
        Ok(())
    }
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message.into() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unavailable(shared: &Shared, message: String) -> Response {
    let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, message);
    let secs = shared.retry_after.as_secs().max(1).to_string();
    if let Ok(v) = HeaderValue::from_str(&secs) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant-time comparison: the token's length is not secret, its bytes are.
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn ingest(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(token) = &shared.token {
        if !authorized(token, &headers) {
            let mut r = answer(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body larger than `max_body_bytes`; split it into smaller requests".to_string()
            } else {
                rejection.body_text()
            };
            return answer(status, message);
        }
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                ct.as_str(),
                "application/x-ndjson"
                    | "application/ndjson"
                    | "application/jsonl"
                    | "application/x-jsonlines"
                    | "application/jsonlines"
            )
        })
        .unwrap_or(false);
    let values = match parse_body(&body, ndjson) {
        Ok(v) => v,
        Err(reason) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("{reason}; nothing was ingested"),
            )
        }
    };
    let n = values.len();
    if n == 0 {
        return answer(StatusCode::OK, "no records");
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let copied: Vec<(&str, &[u8])> = shared
        .headers
        .iter()
        .filter_map(|name| {
            headers
                .get(name.as_str())
                .map(|v| (name.as_str(), v.as_bytes()))
        })
        .collect();
    let waiter = {
        let mut q = shared.queue.lock().expect("queue lock");
        if q.closed {
            drop(q);
            return unavailable(&shared, "the pipeline is shutting down; retry later".into());
        }
        // A request larger than the queue is still taken when the queue is empty.
        if !q.records.is_empty() && q.records.len() + n > shared.capacity {
            let queued = q.records.len();
            drop(q);
            return unavailable(
                &shared,
                format!(
                    "the pipeline is behind ({} records queued, `queue_records` is {}); retry later",
                    queued, shared.capacity
                ),
            );
        }
        // Taken under the queue lock: this instance's records are queued in sequence order.
        let first = SEQUENCES.fetch_add(n as u64, Ordering::Relaxed);
        for (seq, raw) in (first..).zip(&values) {
            let mut r = Record::new(raw.get().as_bytes())
                .with_timestamp_ms(now_ms)
                .with_position(shared.stream.as_str(), 0, seq.to_be_bytes().to_vec());
            for (name, value) in &copied {
                r.push_header(*name, value.to_vec());
            }
            q.records.push_back(r);
        }
        let waiter = if shared.ack_mode == AckMode::Delivered {
            let (tx, rx) = oneshot::channel();
            q.pending.push_back((first + n as u64 - 1, tx));
            Some(rx)
        } else {
            None
        };
        drop(q);
        shared.notify.notify_one();
        waiter
    };
    let Some(rx) = waiter else {
        let body = serde_json::json!({ "status": 202, "accepted": n });
        return (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    };
    match tokio::time::timeout(shared.delivery_timeout, rx).await {
        Ok(Ok(())) => {
            let body = serde_json::json!({ "status": 200, "delivered": n });
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string())
                .into_response()
        }
        Ok(Err(_)) => unavailable(
            &shared,
            "the pipeline stopped before these records were delivered; retry (some may arrive twice)".into(),
        ),
        Err(_) => unavailable(
            &shared,
            format!(
                "the records were not delivered within {}; retry (some may arrive twice)",
                humantime::format_duration(shared.delivery_timeout)
            ),
        ),
    }
}

/// The JSON values of a body: one object, an array (its elements), or NDJSON / concatenated
/// JSON values (one record each). Errors name the line and column.
pub fn parse_body(body: &[u8], ndjson: bool) -> Result<Vec<&RawValue>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Err("empty body: send a JSON object, a JSON array or NDJSON".into());
    }
    if ndjson {
        // Strict NDJSON: one value per line, the error names the line.
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() {
                values.push(
                    serde_json::from_str::<&RawValue>(line)
                        .map_err(|e| format!("malformed NDJSON at line {}: {e}", i + 1))?,
                );
            }
        }
        return Ok(values);
    }
    let mut values = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
        values.push(v.map_err(|e| format!("malformed JSON: {e}"))?);
    }
    if values.len() == 1 && values[0].get().starts_with('[') {
        let v = values[0];
        return serde_json::from_str::<Vec<&RawValue>>(v.get())
            .map_err(|e| format!("malformed JSON array: {e}"));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::parse_body;

    fn texts(body: &str, ndjson: bool) -> Vec<String> {
        parse_body(body.as_bytes(), ndjson)
            .unwrap()
            .into_iter()
            .map(|v| v.get().to_string())
            .collect()
    }

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(texts(r#"{"a":1}"#, false), [r#"{"a":1}"#]);
        assert_eq!(
            texts(r#"[{"a":1}, {"a":2}]"#, false),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(
            texts("{\"a\":1}\n{\"a\":2}\n", false),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(
            texts("{\"a\":1}\n\n{\"a\":2}", true),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        // NDJSON keeps one-line arrays as one record each.
        assert_eq!(texts("[1,2]\n", true), ["[1,2]"]);
    }

    #[test]
    fn malformed_bodies_name_the_place() {
        let e = parse_body(b"{\"a\":1}\n{\"a\":", false).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_body(b"  ", false).unwrap_err().contains("empty body"));
        assert!(parse_body(b"{\"a\":\n1}", true)
            .unwrap_err()
            .contains("line 1"));
    }
}
