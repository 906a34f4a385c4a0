//! The metric families of a host, registered once; stages take handles from them.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::labels::{DiscardLabels, ErrorLabels, PipelineLabels, StageLabels};

type Hist = fn() -> Histogram;

/// Call durations: 50 µs to about 100 s.
pub(super) fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 11))
}

/// Records per batch: 1 to 65,536.
pub(super) fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

#[derive(Clone)]
pub(super) struct Families {
    pub received: Family<StageLabels, Counter>,
    pub sent: Family<StageLabels, Counter>,
    pub sent_bytes: Family<StageLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub discarded: Family<DiscardLabels, Counter>,
    pub dead_lettered: Family<StageLabels, Counter>,
    pub retries: Family<StageLabels, Counter>,
    pub restarts: Family<StageLabels, Counter>,
    pub breaker: Family<StageLabels, Gauge>,
    pub rate_limit_wait: Family<StageLabels, Counter<f64, AtomicU64>>,
    pub call_duration: Family<StageLabels, Histogram, Hist>,
    pub batch_records: Family<StageLabels, Histogram, Hist>,
    pub in_flight: Family<StageLabels, Gauge>,
    pub pipeline_state: Family<PipelineLabels, Gauge>,
}

impl Families {
    pub(super) fn new() -> Self {
        Families {
            received: Family::default(),
            sent: Family::default(),
            sent_bytes: Family::default(),
            errors: Family::default(),
            discarded: Family::default(),
            dead_lettered: Family::default(),
            retries: Family::default(),
            restarts: Family::default(),
            breaker: Family::default(),
            rate_limit_wait: Family::default(),
            call_duration: Family::new_with_constructor(duration_histogram as Hist),
            batch_records: Family::new_with_constructor(batch_histogram as Hist),
            in_flight: Family::default(),
            pipeline_state: Family::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        let p = r.sub_registry_with_prefix("orbit");
        p.register(
            "component_received_events",
            "Records handed to the stage",
            self.received.clone(),
        );
        p.register(
            "component_sent_events",
            "Records the stage passed on (source, transform) or wrote (sink)",
            self.sent.clone(),
        );
        p.register_with_unit(
            "component_sent_event",
            "Bytes of record values the stage passed on or wrote",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        p.register(
            "component_errors",
            "Failed calls and failed records, by error type",
            self.errors.clone(),
        );
        p.register(
            "component_discarded_events",
            "Records dropped: intentional by a transform or `on_limit: drop`",
            self.discarded.clone(),
        );
        p.register(
            "dead_letter_events",
            "Records the stage failed that went to the dead-letter sink",
            self.dead_lettered.clone(),
        );
        p.register(
            "retries",
            "Calls retried after a retriable failure",
            self.retries.clone(),
        );
        p.register(
            "restarts",
            "Plugin instances recreated after a panic or a timeout",
            self.restarts.clone(),
        );
        p.register(
            "circuit_breaker_state",
            "0 closed, 1 half-open, 2 open",
            self.breaker.clone(),
        );
        p.register_with_unit(
            "rate_limit_wait",
            "Time calls waited for the rate limit",
            Unit::Seconds,
            self.rate_limit_wait.clone(),
        );
        p.register_with_unit(
            "stage_call_duration",
            "Duration of plugin calls",
            Unit::Seconds,
            self.call_duration.clone(),
        );
        p.register(
            "batch_records",
            "Records per batch handed to a stage",
            self.batch_records.clone(),
        );
        p.register(
            "source_in_flight_batches",
            "Batches polled and not yet acknowledged",
            self.in_flight.clone(),
        );
        p.register(
            "pipeline_state",
            "1 for the pipeline's current state, 0 for the others",
            self.pipeline_state.clone(),
        );
    }
}
