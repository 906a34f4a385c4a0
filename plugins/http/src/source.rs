//! `http` source: an axum server that turns request bodies (a JSON object, a JSON array or
//! NDJSON) into records. All-or-nothing per request; with `ack_mode: delivered` the answer waits
//! until the host acknowledged the request's records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header;
use axum::routing::post;
use axum::Router;
use orbit_plugin_api::{
    runtime, ConfigError, PluginError, Position, Source, SourceBatch, SourceContext,
};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::auth::{BearerToken, FailedLogins};
use crate::body::Budget;
use crate::ingest::{ingest, sequence_of, Queue, Shared, SEQUENCES};
use crate::server::{self, Server, TlsFiles};
use crate::trim;

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
    /// Time to receive a request's headers, then again its body.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    read_timeout: Duration,
    /// Connections open at once, at most.
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Bytes of requests held at once (bodies being received, records queued); default
    /// [`DEFAULT_MAX_BUFFERED`] or `max_body_bytes` if larger.
    #[serde(default)]
    max_buffered_bytes: Option<usize>,
}

const DEFAULT_MAX_BUFFERED: usize = 64 * 1024 * 1024;

impl Config {
    fn max_buffered(&self) -> usize {
        self.max_buffered_bytes
            .unwrap_or(DEFAULT_MAX_BUFFERED.max(self.max_body_bytes))
    }
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
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    256
}

pub struct HttpSource {
    shared: Arc<Shared>,
    server: Option<Server>,
    /// Since when no body is in flight and nothing is queued (see [`trim`]).
    idle_since: Option<Instant>,
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
        ConfigError::check_range("max_connections", config.max_connections, 1..=100_000)?;
        ConfigError::check_range(
            "max_buffered_bytes",
            config.max_buffered(),
            config.max_body_bytes..=1 << 40,
        )?;
        if config.read_timeout.is_zero() || config.read_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "read_timeout",
                "must be more than 0 and at most 1h, e.g. `10s`",
            ));
        }
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
                held: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            token: config.token.as_deref().map(BearerToken::new),
            failed_logins: FailedLogins::default(),
            max_body: config.max_body_bytes,
            read_timeout: config.read_timeout,
            budget: Budget::new(config.max_buffered()),
            received: AtomicUsize::new(0),
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
            .with_state(shared.clone());
        let limits = server::Limits {
            max_connections: Some(config.max_connections),
            header_timeout: Some(config.read_timeout),
            retry_after: config.retry_after,
            connection_buffer: Some(64 * 1024),
        };
        let server = server::start(
            "http source",
            &config.address,
            config.tls.as_ref(),
            router,
            limits,
        )?;
        tracing::info!(pipeline = %ctx.pipeline, path = %config.path, "http source ready");
        Ok(HttpSource {
            shared,
            server: Some(server),
            idle_since: None,
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let deadline = Instant::now() + max_wait;
        loop {
            {
                let mut q = self.shared.queue.lock().expect("queue lock");
                if !q.records.is_empty() {
                    let n = q.records.len().min(max_records.max(1));
                    let last = sequence_of(&q.records[n - 1]);
                    let mut batch = SourceBatch::with_capacity(n);
                    for r in q.records.drain(..n) {
                        batch.push(r);
                    }
                    // The records are the host's now: their share of the budget is free.
                    while q.held.front().is_some_and(|(l, _)| *l <= last) {
                        q.held.pop_front();
                    }
                    self.idle_since = None;
                    return Ok(batch);
                }
            }
            let now = Instant::now();
            if !self.shared.budget.idle() {
                self.idle_since = None;
            } else if self.idle_since.is_none() {
                self.idle_since = Some(now);
            }
            let received = self.shared.received.load(Ordering::Relaxed);
            if trim::due(received, self.idle_since, now) {
                self.shared.received.fetch_sub(received, Ordering::Relaxed);
                trim::give_back();
            }
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
            q.held.clear();
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
        self.shared.failed_logins.flush();
        Ok(())
    }
}
