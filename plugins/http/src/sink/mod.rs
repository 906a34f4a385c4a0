//! `http` sink: delivers batches to a webhook with reqwest (rustls), one pooled client per
//! instance. See the crate documentation for delivery semantics and the signature algorithm.
//!
//! This file holds the [`Sink`] and [`PipelinedSink`] implementations: `begin_write` builds a
//! batch's requests and spawns a task sending them on the sink's runtime, `finish_write` waits
//! for the oldest batch's task (driving the others meanwhile). Several batches may be in
//! flight (the host's `sink.max_in_flight`); `concurrency` bounds the requests of all of them
//! together. The rest is split by stage: `config` parses the configuration into [`Settings`]
//! once, `request` groups a batch's records into requests and builds their bodies and headers,
//! `send` sends them and classifies the answers into written, retriable and rejected.

mod config;
mod request;
mod send;

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbit_plugin_api::{
    write_by_parts, ConfigError, PipelinedSink, PluginError, Record, Sink, SinkContext,
    WriteOutcome,
};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

use config::Settings;
pub use config::{Auth, BodyMode, Config, Method, Signature, StatusMatch};
pub use request::{redact, sign};
pub use send::parse_retry_after;
use send::Sent;

pub struct HttpSink {
    /// This sink's own single-threaded runtime, driven only inside `begin_write` and
    /// `finish_write` by the calling thread: the requests of every batch in flight, their
    /// connections and timers all run on that one thread, with no hand-off to worker threads
    /// per response (which cost more than the request on a busy machine). Between calls
    /// nothing is driven: requests in flight wait (their `timeout` runs on), idle pooled
    /// connections wait, and one the server closed meanwhile is noticed and replaced when
    /// next used.
    rt: tokio::runtime::Runtime,
    inner: Arc<Inner>,
    /// Batches begun and not finished, oldest first.
    pending: VecDeque<PendingBatch>,
    stats: Stats,
}

/// What building and sending requests needs, shared with the tasks sending the batches.
struct Inner {
    client: reqwest::Client,
    settings: Settings,
    /// Most records per request: `max_batch_records`, halved each time the receiver answers
    /// 413 to a request of several records (kept for the life of the instance).
    chunk: AtomicUsize,
    /// `concurrency` permits for the whole sink: each request holds one while it is sent,
    /// whichever batch it belongs to, so batches in flight do not multiply the load.
    permits: Semaphore,
    /// Held by a batch's task while its requests take their permits: requests take them in
    /// the order their batches began (and, within a batch, in request order).
    line: Mutex<()>,
}

/// A batch begun: its requests are being sent by `handle`.
struct PendingBatch {
    len: usize,
    /// Records refused before anything was sent (URL, framing).
    failed_at_build: Vec<(usize, PluginError)>,
    handle: JoinHandle<Sent>,
}

/// Logged on close: how much was sent and how long `begin_write` and `finish_write` took in
/// total.
#[derive(Default)]
struct Stats {
    writes: u64,
    requests: u64,
    records: u64,
    failed_requests: u64,
    in_write: Duration,
}

impl Sink for HttpSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        Settings::parse(config).map(|_| ())
    }

    fn open(config: Config, ctx: SinkContext) -> Result<Self, PluginError> {
        let settings = Settings::parse(&config)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(format!("cannot create the sink's runtime: {e}")))?;
        let client = {
            let _guard = rt.enter();
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
                .pool_max_idle_per_host(settings.concurrency.max(1) * 2)
                .user_agent(concat!("orbit-http/", env!("CARGO_PKG_VERSION")))
                // A redirect would turn a POST into a bodyless GET whose 200 looks like
                // success: never follow one; a 3xx is a configuration error.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| PluginError::fatal(format!("cannot build the HTTP client: {e}")))?
        };
        tracing::info!(
            pipeline = %ctx.pipeline,
            url = %redact(&config.url),
            "http sink ready"
        );
        Ok(HttpSink {
            rt,
            inner: Arc::new(Inner {
                client,
                chunk: AtomicUsize::new(settings.max_batch_records.unwrap_or(usize::MAX)),
                permits: Semaphore::new(settings.concurrency.max(1)),
                line: Mutex::new(()),
                settings,
            }),
            pending: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }

    fn close(&mut self) -> Result<(), PluginError> {
        // Batches still in flight are not acknowledged: the host sends them again. Their
        // requests stop where they are (a request already received may be delivered twice).
        for batch in self.pending.drain(..) {
            batch.handle.abort();
        }
        Ok(())
    }
}

impl PipelinedSink for HttpSink {
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        let started = Instant::now();
        let mut failed_at_build = Vec::new();
        let requests = self.inner.requests(batch, &mut failed_at_build);
        if !batch.is_empty() {
            self.stats.writes += 1;
            self.stats.requests += requests.len() as u64;
            self.stats.records += batch.len() as u64;
        }
        let handle = self.rt.spawn(self.inner.clone().send_all(requests));
        self.pending.push_back(PendingBatch {
            len: batch.len(),
            failed_at_build,
            handle,
        });
        // Let the task start: it queues for its permits and sends what it may.
        self.rt.block_on(tokio::task::yield_now());
        self.stats.in_write += started.elapsed();
        Ok(())
    }

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        let Some(front) = self.pending.front_mut() else {
            return Ok(None);
        };
        let started = Instant::now();
        // Driving the runtime drives every batch in flight, not only the oldest. The timer is
        // made inside the runtime (it needs its time driver). On timeout the handle stays in
        // place, its task running: nothing is lost, the host asks again.
        let handle = &mut front.handle;
        let joined = self
            .rt
            .block_on(async { tokio::time::timeout(wait, handle).await });
        self.stats.in_write += started.elapsed();
        let Ok(joined) = joined else {
            return Ok(None);
        };
        let Some(batch) = self.pending.pop_front() else {
            return Ok(None);
        };
        match joined {
            Ok(sent) => {
                self.stats.failed_requests += sent.failed_requests;
                let mut failed = batch.failed_at_build;
                failed.extend(sent.failed);
                send::outcome(failed, sent.any_ok, batch.len).map(Some)
            }
            Err(e) => Err(PluginError::retriable(format!(
                "sending the batch's requests failed ({e}); the host retries"
            ))),
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        let s = &self.stats;
        if s.writes > 0 {
            tracing::info!(
                writes = s.writes,
                requests = s.requests,
                failed_requests = s.failed_requests,
                records = s.records,
                in_write_ms = s.in_write.as_millis() as u64,
                "http sink done"
            );
        }
    }
}

/// A sink opened (after `validate`) from a JSON config, for the tests of every part.
#[cfg(test)]
fn test_sink(config_json: &str) -> HttpSink {
    let config: Config = serde_json::from_str(config_json).unwrap();
    HttpSink::validate(&config).unwrap();
    HttpSink::open(
        config,
        SinkContext {
            pipeline: "p".into(),
            stage: "sink".into(),
        },
    )
    .unwrap()
}

#[cfg(test)]
mod tests;
