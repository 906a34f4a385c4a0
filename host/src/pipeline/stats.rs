//! Counters of one pipeline, a periodic progress line and the closing summary.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Stats {
    polled: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Stats {
    pub fn record_polled(&self, n: usize) {
        self.polled.fetch_add(n as u64, Relaxed);
    }
    pub fn record_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Relaxed);
    }
    pub fn record_dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Relaxed);
    }
    pub fn record_dead_lettered(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Relaxed);
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        Summary {
            records_in: self.polled.load(Relaxed),
            records_out: self.written.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            elapsed,
        }
    }
}

/// What a pipeline did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub records_in: u64,
    pub records_out: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records in, {} written, {} dropped by transforms, {} dead-lettered in {:.2}s ({:.0} records/s)",
            self.records_in,
            self.records_out,
            self.dropped,
            self.dead_lettered,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

pub async fn log_progress(stats: Arc<Stats>, every: Duration) {
    let start = Instant::now();
    let mut last = stats.summary(Duration::ZERO);
    let mut last_at = start;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let s = stats.summary(now - start);
        let rate = (s.records_in - last.records_in) as f64 / (now - last_at).as_secs_f64();
        tracing::info!(
            records_in = s.records_in,
            written = s.records_out,
            dropped = s.dropped,
            dead_lettered = s.dead_lettered,
            "progress: {} in, {} written, {:.0} records/s",
            s.records_in,
            s.records_out,
            rate
        );
        last = s;
        last_at = now;
    }
}

/// One line per stage that had policy events, at the end of a run.
pub fn log_policy_events(id: &super::StageId, m: &crate::telemetry::StageMetrics) {
    let get = |a: &AtomicU64| a.load(Relaxed);
    let events = [
        ("retries", m.retries.get()),
        ("breaker_opened", get(&m.breaker_opened)),
        ("rate_limit_waits", get(&m.rate_limit_waits)),
        ("rate_limit_dropped", get(&m.rate_limit_dropped)),
        ("timeouts", get(&m.timeouts)),
        ("panics", get(&m.panics)),
        ("restarts", m.restarts.get()),
        ("order_resent", get(&m.order_resent)),
        ("in_flight_max", get(&m.in_flight_max)),
    ];
    // A window of one batch is no event.
    if events
        .iter()
        .all(|(k, n)| *n == 0 || (*k == "in_flight_max" && *n <= 1))
    {
        return;
    }
    let text: Vec<String> = events
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    tracing::info!(
        stage = %id.stage,
        plugin = %id.plugin,
        calls = get(&m.calls),
        "policy events: {}",
        text.join(" ")
    );
}
