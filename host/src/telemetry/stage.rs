//! What the host counts around one stage: flow (records in and out), policy events and the
//! stage's condition, for the policy-events log line, `/metrics` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use orbit_plugin_api::{ErrorKind, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::families::{batch_histogram, duration_histogram};
use super::labels::{ErrorLabels, StageLabels};

/// The circuit breaker's state as `orbit_circuit_breaker_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerGauge {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerGauge::Closed => "closed",
            BreakerGauge::HalfOpen => "half-open",
            BreakerGauge::Open => "open",
        }
    }
}

/// One stage's counters. Exported ones are prometheus-client handles registered under the
/// stage's labels (the same handles for every run of the pipeline in this process, so counters
/// never go back); the others feed the log line at the end of a run.
#[derive(Debug)]
pub struct StageMetrics {
    pub labels: StageLabels,
    pub received: Counter,
    pub sent: Counter,
    pub sent_bytes: Counter,
    pub discarded_intentional: Counter,
    pub discarded_unintentional: Counter,
    pub dead_lettered: Counter,
    pub retries: Counter,
    pub restarts: Counter,
    pub breaker: Gauge,
    pub rate_limit_wait_seconds: Counter<f64, AtomicU64>,
    pub call_duration: Histogram,
    pub batch_records: Histogram,
    pub in_flight_batches: Gauge,
    errors: Family<ErrorLabels, Counter>,
    // Log-line only.
    pub calls: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub rate_limit_waits: AtomicU64,
    pub rate_limit_dropped: AtomicU64,
    pub timeouts: AtomicU64,
    pub panics: AtomicU64,
    /// A sink's most batches in flight at once.
    pub in_flight_max: AtomicU64,
    /// Records a sink wrote again only to keep their partition's order after a failure.
    pub order_resent: AtomicU64,
    /// The last failure of a call, for `/status`.
    last_error: Mutex<Option<String>>,
}

impl Default for StageMetrics {
    /// Handles that no registry exports (tests, tools).
    fn default() -> Self {
        StageMetrics::unregistered(StageLabels::default())
    }
}

impl StageMetrics {
    pub(super) fn unregistered(labels: StageLabels) -> Self {
        StageMetrics {
            labels,
            received: Counter::default(),
            sent: Counter::default(),
            sent_bytes: Counter::default(),
            discarded_intentional: Counter::default(),
            discarded_unintentional: Counter::default(),
            dead_lettered: Counter::default(),
            retries: Counter::default(),
            restarts: Counter::default(),
            breaker: Gauge::default(),
            rate_limit_wait_seconds: Counter::default(),
            call_duration: duration_histogram(),
            batch_records: batch_histogram(),
            in_flight_batches: Gauge::default(),
            errors: Family::default(),
            calls: AtomicU64::new(0),
            breaker_opened: AtomicU64::new(0),
            rate_limit_waits: AtomicU64::new(0),
            rate_limit_dropped: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            in_flight_max: AtomicU64::new(0),
            order_resent: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(super) fn registered(
        labels: StageLabels,
        f: &super::families::Families,
        errors: Family<ErrorLabels, Counter>,
    ) -> Self {
        let l = &labels;
        StageMetrics {
            received: owned(&f.received, l),
            sent: owned(&f.sent, l),
            sent_bytes: owned(&f.sent_bytes, l),
            discarded_intentional: owned(&f.discarded, &l.discarded(true)),
            discarded_unintentional: owned(&f.discarded, &l.discarded(false)),
            dead_lettered: owned(&f.dead_lettered, l),
            retries: owned(&f.retries, l),
            restarts: owned(&f.restarts, l),
            breaker: owned(&f.breaker, l),
            rate_limit_wait_seconds: owned(&f.rate_limit_wait, l),
            call_duration: owned(&f.call_duration, l),
            batch_records: owned(&f.batch_records, l),
            in_flight_batches: if l.component_kind == "source" {
                owned(&f.in_flight, l)
            } else {
                Gauge::default()
            },
            errors,
            ..StageMetrics::unregistered(labels)
        }
    }

    /// A batch handed to the stage.
    pub fn received(&self, records: usize) {
        if records == 0 {
            return;
        }
        self.received.inc_by(records as u64);
        self.batch_records.observe(records as f64);
    }

    /// Records the stage passed on (a source, a transform) or wrote (a sink).
    pub fn sent<'a>(&self, records: impl IntoIterator<Item = &'a Record>) {
        let (mut n, mut bytes) = (0u64, 0u64);
        for r in records {
            n += 1;
            bytes += r.value().len() as u64;
        }
        self.sent.inc_by(n);
        self.sent_bytes.inc_by(bytes);
    }

    /// One failed call or record, by what failed.
    pub fn error(&self, kind: ErrorKind, timed_out: bool) {
        let error_type = if timed_out {
            "timed_out"
        } else {
            error_type(kind)
        };
        self.errors
            .get_or_create(&ErrorLabels {
                stage: self.labels.clone(),
                error_type: error_type.to_string(),
            })
            .inc();
    }

    pub fn call(&self, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.call_duration.observe(took.as_secs_f64());
    }

    pub fn breaker_state(&self) -> BreakerGauge {
        match self.breaker.get() {
            1 => BreakerGauge::HalfOpen,
            2 => BreakerGauge::Open,
            _ => BreakerGauge::Closed,
        }
    }

    pub fn set_last_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().expect("last error") = Some(error.to_string());
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("last error").clone()
    }
}

/// Every `error_type` label value.
pub(super) const ERROR_TYPES: [&str; 6] = [
    "retriable",
    "rejected",
    "config",
    "fatal",
    "panicked",
    "timed_out",
];

/// The handle for `labels` (a function, so that the family's read guard is released before the
/// next handle is made: two guards in one expression deadlock on a new label set).
fn owned<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Retriable => "retriable",
        ErrorKind::Rejected => "rejected",
        ErrorKind::Config => "config",
        ErrorKind::Fatal => "fatal",
        ErrorKind::Panicked => "panicked",
    }
}
