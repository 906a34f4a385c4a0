//! `http` sink: delivers batches to a webhook with reqwest (rustls), one pooled client per
//! instance. See the crate documentation for delivery semantics and the signature algorithm.
//!
//! This file holds the [`Sink`] implementation (`validate`, `open`, `write`); the rest is split
//! by stage: `config` parses the configuration into [`Settings`] once, `request` groups a
//! batch's records into requests and builds their bodies and headers, `send` sends them and
//! classifies the answers into written, retriable and rejected.

mod config;
mod request;
mod send;

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use orbit_plugin_api::{ConfigError, PluginError, Record, Sink, SinkContext, WriteOutcome};

use config::Settings;
pub use config::{Auth, BodyMode, Config, Method, Signature, StatusMatch};
pub use request::{redact, sign};
pub use send::parse_retry_after;

pub struct HttpSink {
    /// This sink's own single-threaded runtime, driven only inside `write` by the calling
    /// thread: the requests, their connections and timers all run on that one thread, with
    /// no hand-off to worker threads per response (which cost more than the request on a
    /// busy machine). Between writes nothing needs driving: idle pooled connections wait, and
    /// one the server closed meanwhile is noticed and replaced when next used.
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    settings: Settings,
    /// Most records per request: `max_batch_records`, halved each time the receiver answers
    /// 413 to a request of several records (kept for the life of the instance).
    chunk: AtomicUsize,
    stats: Stats,
}

/// Logged on close: how much was sent and how long `write` took in total.
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
            client,
            chunk: AtomicUsize::new(settings.max_batch_records.unwrap_or(usize::MAX)),
            settings,
            stats: Stats::default(),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::ok());
        }
        let started = std::time::Instant::now();
        let mut failed: Vec<(usize, PluginError)> = Vec::new();
        let requests = self.requests(batch, &mut failed);
        self.stats.writes += 1;
        self.stats.requests += requests.len() as u64;
        self.stats.records += batch.len() as u64;
        let any_ok = self.send_all(requests, &mut failed);
        self.stats.in_write += started.elapsed();
        send::outcome(failed, any_ok, batch.len())
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
