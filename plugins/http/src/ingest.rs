//! The `http` source's request handler: authorization from the headers, then the body within
//! its bounds (see [`crate::body`]), then its records into the source's queue, and the answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orbit_plugin_api::Record;
use tokio::sync::{oneshot, Notify};

use crate::auth::{BearerToken, FailedLogins};
use crate::body::{self, BodyError, Budget, Held};
use crate::source::AckMode;

/// What a queued record costs in the budget beyond its value and copied headers: the record
/// itself and its allocations (stream name, offset), roughly.
const RECORD_OVERHEAD: usize = 256;

/// Record sequence numbers (the records' positions), unique in the process: an instance that
/// replaces another (after a panic or a timeout) continues after every number handed out
/// before, so an acknowledgement of an earlier instance's records can never answer a request
/// of this one. They start after the last acknowledged one, so stored positions keep growing.
pub(crate) static SEQUENCES: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Queue {
    pub(crate) records: VecDeque<Record>,
    /// Requests waiting for delivery: (last sequence number, answer), in sequence order.
    pub(crate) pending: VecDeque<(u64, oneshot::Sender<()>)>,
    /// The budget requests hold for their queued records: (last sequence number, share), in
    /// sequence order; given back as `poll` hands the records on.
    pub(crate) held: VecDeque<(u64, Held)>,
    pub(crate) closed: bool,
}

pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) notify: Notify,
    pub(crate) token: Option<BearerToken>,
    pub(crate) failed_logins: FailedLogins,
    pub(crate) max_body: usize,
    pub(crate) read_timeout: Duration,
    pub(crate) budget: Budget,
    /// Body bytes received since memory was last given back (see [`crate::trim`]).
    pub(crate) received: AtomicUsize,
    pub(crate) ack_mode: AckMode,
    pub(crate) delivery_timeout: Duration,
    pub(crate) capacity: usize,
    pub(crate) retry_after: Duration,
    pub(crate) headers: Vec<String>,
    pub(crate) stream: String,
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

/// The sequence number a record of this source carries as its offset.
pub(crate) fn sequence_of(r: &Record) -> u64 {
    <[u8; 8]>::try_from(r.offset.as_slice()).map_or(0, u64::from_be_bytes)
}

/// An answer given before the body was read: the connection is closed after it, so the
/// unread body is never received.
fn early(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(crate) async fn ingest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // Authorization from the headers alone: a refused request's body is never read.
    if let Some(token) = &shared.token {
        if let Err(why) = token.check(&headers) {
            shared.failed_logins.record(peer, why);
            let mut r = answer(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return early(r);
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let received = body::receive(
        body,
        declared,
        shared.max_body,
        shared.read_timeout,
        &shared.budget,
    )
    .await;
    let (body, mut held) = match received {
        Ok(b) => b,
        Err(e) => return early(refused_body(&shared, e)),
    };
    shared.received.fetch_add(body.len(), Ordering::Relaxed);
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
    let values = match body::parse(&body, ndjson) {
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
    // The queued records' share of the budget: values, copied headers, the records themselves.
    let per_record = RECORD_OVERHEAD
        + copied
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>();
    let need = values
        .iter()
        .map(|v| v.get().len() + per_record)
        .fold(0usize, usize::saturating_add);
    if need > shared.budget.total() {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the {n} records of this body would take about {need} bytes in the queue, more than `max_buffered_bytes` ({}); send fewer records per request",
                shared.budget.total()
            ),
        );
    }
    if let Err(e) = shared.budget.try_grow(&mut held, need) {
        return refused_body(&shared, e);
    }
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
        drop(values);
        drop(body);
        held.keep(need);
        q.held.push_back((first + n as u64 - 1, held));
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

/// The answer to a body that was not received (see [`BodyError`]).
fn refused_body(shared: &Shared, e: BodyError) -> Response {
    match e {
        BodyError::TooLarge => answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than `max_body_bytes`; split it into smaller requests",
        ),
        BodyError::TimedOut => answer(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within `read_timeout` ({}); nothing was ingested",
                humantime::format_duration(shared.read_timeout)
            ),
        ),
        BodyError::Busy => unavailable(
            shared,
            format!(
                "the source holds `max_buffered_bytes` ({}) of requests already; retry later",
                shared.budget.total()
            ),
        ),
        BodyError::Broken(e) => answer(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}; nothing was ingested"),
        ),
    }
}
