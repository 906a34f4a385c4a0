//! What a host knows about its pipelines while they run: per-stage counters and conditions
//! ([`StageMetrics`]), pipeline states, and their Prometheus encoding.
//!
//! It sits below `policy` and `pipeline` (they count into it) and knows neither; `admin`
//! serves it and `supervisor` sets pipeline states. Handles are created once per
//! (pipeline, stage) and reused by every run of that pipeline in the process, so counters
//! never go back when a pipeline restarts.

mod families;
mod labels;
mod stage;
mod state;

pub use labels::StageLabels;
pub use stage::{BreakerGauge, StageMetrics};
pub use state::PipelineState;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

use families::Families;
use labels::PipelineLabels;

/// The metrics of one host. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    families: Families,
    stages: Mutex<HashMap<StageLabels, Arc<StageMetrics>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let families = Families::new();
        let mut registry = Registry::default();
        families.register(&mut registry);
        Telemetry {
            inner: Arc::new(Inner {
                registry,
                families,
                stages: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The handles of one stage (the same ones on every call with the same labels).
    pub fn stage(&self, labels: StageLabels) -> Arc<StageMetrics> {
        let mut stages = self.inner.stages.lock().expect("stages");
        stages
            .entry(labels.clone())
            .or_insert_with(|| {
                Arc::new(StageMetrics::registered(
                    labels,
                    &self.inner.families,
                    self.inner.families.errors.clone(),
                ))
            })
            .clone()
    }

    /// Sets `orbit_pipeline_state`: 1 for `state`, 0 for every other state.
    pub fn set_pipeline_state(&self, pipeline: &str, state: PipelineState) {
        for s in PipelineState::ALL {
            let labels = PipelineLabels {
                pipeline: pipeline.to_string(),
                state: s.as_str().to_string(),
            };
            let g = self.inner.families.pipeline_state.get_or_create(&labels);
            g.set(i64::from(s == state));
        }
    }

    /// Forgets a pipeline that no longer exists (removed by a reload): its series leave
    /// `/metrics`.
    pub fn remove_pipeline(&self, pipeline: &str) {
        let f = &self.inner.families;
        for s in PipelineState::ALL {
            f.pipeline_state.remove(&PipelineLabels {
                pipeline: pipeline.to_string(),
                state: s.as_str().to_string(),
            });
        }
        let mut stages = self.inner.stages.lock().expect("stages");
        stages.retain(|l, _| {
            if l.pipeline != pipeline {
                return true;
            }
            f.received.remove(l);
            f.sent.remove(l);
            f.sent_bytes.remove(l);
            f.discarded.remove(&l.discarded(true));
            f.discarded.remove(&l.discarded(false));
            f.dead_lettered.remove(l);
            f.retries.remove(l);
            f.restarts.remove(l);
            f.breaker.remove(l);
            f.rate_limit_wait.remove(l);
            f.call_duration.remove(l);
            f.batch_records.remove(l);
            f.in_flight.remove(l);
            for error_type in stage::ERROR_TYPES {
                f.errors.remove(&labels::ErrorLabels {
                    stage: l.clone(),
                    error_type: error_type.to_string(),
                });
            }
            false
        });
    }

    /// Everything in the Prometheus text format (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pipeline: &str) -> StageLabels {
        StageLabels {
            pipeline: pipeline.into(),
            component_id: "sink".into(),
            component_kind: "sink".into(),
            component_type: "file".into(),
        }
    }

    #[test]
    fn a_stage_gets_the_same_handles_every_run_and_they_are_encoded() {
        let t = Telemetry::new();
        let first = t.stage(labels("p"));
        first.received(10);
        first.error(orbit_plugin_api::ErrorKind::Retriable, false);
        let again = t.stage(labels("p"));
        again.received(5);
        assert_eq!(
            first.received.get(),
            15,
            "counters never go back on a restart"
        );
        t.set_pipeline_state("p", PipelineState::Running);
        let text = t.encode();
        let line = r#"orbit_component_received_events_total{pipeline="p",component_id="sink",component_kind="sink",component_type="file"} 15"#;
        assert!(text.contains(line), "{text}");
        assert!(text.contains(r#"error_type="retriable"} 1"#), "{text}");
        assert!(text.contains(r#"orbit_pipeline_state{pipeline="p",state="RUNNING"} 1"#));
        assert!(text.contains(r#"orbit_pipeline_state{pipeline="p",state="FAILED"} 0"#));
        assert!(text.contains("orbit_batch_records_bucket{"), "{text}");

        t.remove_pipeline("p");
        let text = t.encode();
        assert!(!text.contains(r#"pipeline="p""#), "{text}");
    }
}
