//! `sse` sink: serves written records as server-sent events. `write` hands events to the
//! connected clients' bounded queues and to a bounded replay buffer and returns at once; a
//! client whose queue is full is disconnected and counted, never waited for.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, StreamExt as _};
use orbit_plugin_api::{ConfigError, PluginError, Record, Sink, SinkContext, WriteOutcome};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::{self, Server, TlsFiles};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_address")]
    address: String,
    #[serde(default = "default_path")]
    path: String,
    /// Events kept for clients that reconnect with `Last-Event-ID`.
    #[serde(default = "default_replay")]
    replay_buffer: usize,
    /// Events queued per client; a client that falls this far behind is disconnected.
    #[serde(default = "default_client_buffer")]
    client_buffer: usize,
    /// Interval of keep-alive comments on idle connections.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default)]
    tls: Option<TlsFiles>,
}

fn default_address() -> String {
    "127.0.0.1:8081".into()
}
fn default_path() -> String {
    "/events".into()
}
fn default_replay() -> usize {
    10_000
}
fn default_client_buffer() -> usize {
    1_000
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}

struct Event {
    id: u64,
    data: String,
    /// The value's top-level fields, when it is a JSON object (for filters).
    fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `?table=users,orders&operation=insert`: every key must match one of its values.
#[derive(Debug, Default, Clone)]
struct Filter(Vec<(String, Vec<String>)>);

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(fields) = &e.fields else {
            return false;
        };
        self.0.iter().all(|(key, allowed)| match fields.get(key) {
            Some(serde_json::Value::String(s)) => allowed.iter().any(|a| a == s),
            Some(serde_json::Value::Null) | None => false,
            Some(other) => {
                let s = other.to_string();
                allowed.contains(&s)
            }
        })
    }
}

struct Client {
    tx: mpsc::Sender<Arc<Event>>,
    filter: Filter,
}

struct Hub {
    next_id: u64,
    replay: VecDeque<Arc<Event>>,
    replay_cap: usize,
    client_buffer: usize,
    clients: Vec<Client>,
    dropped: u64,
    closed: bool,
}

pub struct SseSink {
    hub: Arc<Mutex<Hub>>,
    server: Option<Server>,
}

impl Sink for SseSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        server::validate_listen(&config.address, config.tls.as_ref())?;
        server::validate_path(&config.path)?;
        ConfigError::check_range("client_buffer", config.client_buffer, 1..=1_000_000)?;
        ConfigError::check_range("replay_buffer", config.replay_buffer, 0..=10_000_000)?;
        if config.keep_alive.is_zero() {
            return Err(ConfigError::new(
                "keep_alive",
                "must be more than 0, e.g. `15s`",
            ));
        }
        Ok(())
    }

    fn open(config: Config, ctx: SinkContext) -> Result<Self, PluginError> {
        let hub = Arc::new(Mutex::new(Hub {
            next_id: first_event_id(),
            replay: VecDeque::with_capacity(config.replay_buffer.min(100_000)),
            replay_cap: config.replay_buffer,
            client_buffer: config.client_buffer,
            clients: Vec::new(),
            dropped: 0,
            closed: false,
        }));
        let keep_alive = config.keep_alive;
        let router = Router::new()
            .route(&config.path, get(subscribe))
            .with_state((hub.clone(), keep_alive));
        let server = server::start(
            "sse sink",
            &config.address,
            config.tls.as_ref(),
            router,
            server::Limits::default(),
        )?;
        tracing::info!(pipeline = %ctx.pipeline, path = %config.path, "sse sink ready");
        Ok(SseSink {
            hub,
            server: Some(server),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        // Parse outside the lock: it is the only per-record cost.
        let mut prepared: Vec<(String, Option<serde_json::Map<String, serde_json::Value>>)> = batch
            .iter()
            .map(|r| {
                let fields = match serde_json::from_slice::<serde_json::Value>(r.value()) {
                    Ok(serde_json::Value::Object(m)) => Some(m),
                    _ => None,
                };
                (String::from_utf8_lossy(r.value()).into_owned(), fields)
            })
            .collect();
        let mut hub = self.hub.lock().expect("hub lock");
        let mut dropped_now = 0usize;
        for (data, fields) in prepared.drain(..) {
            let id = hub.next_id;
            hub.next_id += 1;
            let event = Arc::new(Event { id, data, fields });
            if hub.replay_cap > 0 {
                if hub.replay.len() == hub.replay_cap {
                    hub.replay.pop_front();
                }
                hub.replay.push_back(event.clone());
            }
            hub.clients.retain(|c| {
                if !c.filter.matches(&event) {
                    return !c.tx.is_closed();
                }
                match c.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped_now += 1;
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
        if dropped_now > 0 {
            hub.dropped += dropped_now as u64;
            tracing::warn!(
                dropped_now,
                dropped_clients_total = hub.dropped,
                client_buffer = hub.client_buffer,
                "SSE client too slow: its queue is full; disconnected it (it may reconnect with Last-Event-ID)"
            );
        }
        Ok(WriteOutcome::ok())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        let dropped = {
            let mut hub = self.hub.lock().expect("hub lock");
            hub.closed = true;
            // Ends every client's stream once it has what was queued for it.
            hub.clients.clear();
            hub.dropped
        };
        tracing::info!(dropped_clients_total = dropped, "sse sink closing");
        if let Some(mut s) = self.server.take() {
            s.shutdown(Duration::from_secs(2));
        }
        Ok(())
    }
}

/// Event ids go on from one run to the next: a run's first id is the time its sink opened, in
/// microseconds since the Unix epoch, and each event adds one. A client that resumes with an id
/// from an earlier run therefore gets every event of this run still in the replay buffer (ids
/// that restarted at 1 made it skip as many new events as it had seen before). This holds while
/// a run sends fewer events than the microseconds until the next one starts (a million a
/// second, sustained) and the clock does not go back.
fn first_event_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .max(1)
}

async fn subscribe(
    State((hub, keep_alive)): State<(Arc<Mutex<Hub>>, Duration)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let mut last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut filter = Filter::default();
    for (k, v) in params {
        if k == "last_event_id" {
            last_event_id.get_or_insert(v);
            continue;
        }
        let values: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
        match filter.0.iter_mut().find(|(key, _)| *key == k) {
            // `?a=1&a=2` is the same as `?a=1,2`.
            Some((_, list)) => list.extend(values),
            None => filter.0.push((k, values)),
        }
    }
    let last = match last_event_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID `{s}` is not an event id (a number)"),
                )
                    .into_response()
            }
        },
    };
    let (replay, rx) = {
        let mut h = hub.lock().expect("hub lock");
        if h.closed {
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
        }
        let replay: Vec<Arc<Event>> = match last {
            Some(last) => {
                if h.replay
                    .front()
                    .is_some_and(|e| e.id > last.saturating_add(1))
                {
                    tracing::info!(
                        last_event_id = last,
                        oldest = h.replay.front().map(|e| e.id),
                        "SSE client resumes from before the replay buffer; events in between are gone"
                    );
                }
                h.replay
                    .iter()
                    .filter(|e| e.id > last && filter.matches(e))
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let (tx, rx) = mpsc::channel(h.client_buffer);
        h.clients.push(Client {
            tx,
            filter: filter.clone(),
        });
        (replay, rx)
    };
    let events = stream::iter(replay)
        .chain(ReceiverStream::new(rx))
        .map(|e| Ok::<_, Infallible>(SseEvent::default().id(e.id.to_string()).data(&e.data)));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}
