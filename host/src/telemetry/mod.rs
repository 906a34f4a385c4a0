//! What a host knows about its pipelines while they run: per-stage counters and conditions
//! ([`StageMetrics`]), pipeline states, and their Prometheus encoding.
//!
//! It sits below `policy` and `pipeline` (they count into it) and knows neither; `admin`
//! serves it and `supervisor` sets pipeline states. Handles are created once per
//! (pipeline, stage) and reused by every run of that pipeline in the process, so counters
//! never go back when a pipeline restarts.

mod families;
mod labels;
mod plugin;
mod stage;
mod state;

pub use labels::StageLabels;
pub use plugin::{report as report_plugin_metric, store as plugin_metrics, PluginMetrics};
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
    /// Shared with the [`plugin::PluginCollector`], which shows plugin series of these stages.
    stages: Arc<Mutex<HashMap<StageLabels, Arc<StageMetrics>>>>,
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
        let stages = Arc::new(Mutex::new(HashMap::new()));
        registry.register_collector(Box::new(plugin::PluginCollector {
            stages: stages.clone(),
        }));
        Telemetry {
            inner: Arc::new(Inner {
                registry,
                families,
                stages,
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
        plugin::store().remove_pipeline(pipeline);
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
    use abi_stable::std_types::RSlice;
    use orbit_plugin_api::ffi::{MetricKind, MetricLabel, MetricSample};

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

    fn sample<'a>(
        pipeline: &'a str,
        name: &'a str,
        kind: MetricKind,
        labels: &'a [MetricLabel<'a>],
        value: f64,
    ) -> MetricSample<'a> {
        MetricSample {
            pipeline: pipeline.into(),
            stage: "sink".into(),
            plugin: "my-plugin".into(),
            name: name.into(),
            help: "What it \\ means\nreally".into(),
            kind,
            value,
            labels: RSlice::from_slice(labels),
        }
    }

    #[test]
    fn plugin_series_appear_under_their_stage_labels_and_leave_with_the_pipeline() {
        let t = Telemetry::new();
        t.stage(labels("plugged"));
        let part = [
            MetricLabel {
                name: "partition".into(),
                value: "0".into(),
            },
            MetricLabel {
                name: "topic".into(),
                value: "a\"b".into(),
            },
        ];
        report_plugin_metric(&sample("plugged", "lag", MetricKind::Gauge, &part, 7.0));
        report_plugin_metric(&sample("plugged", "lag", MetricKind::Gauge, &part, 3.0));
        report_plugin_metric(&sample("plugged", "sent", MetricKind::Counter, &[], 12.0));
        // Refused: a repeated stage label, a bad name, a kind that changed.
        let bad = [MetricLabel {
            name: "pipeline".into(),
            value: "x".into(),
        }];
        report_plugin_metric(&sample("plugged", "dup", MetricKind::Gauge, &bad, 1.0));
        report_plugin_metric(&sample("plugged", "bad-name", MetricKind::Gauge, &[], 1.0));
        report_plugin_metric(&sample("plugged", "sent", MetricKind::Gauge, &[], 1.0));
        // A stage this host does not know is not shown.
        report_plugin_metric(&sample("elsewhere", "lag", MetricKind::Gauge, &[], 1.0));

        let text = t.encode();
        let stage =
            r#"pipeline="plugged",component_id="sink",component_kind="sink",component_type="file""#;
        let lag =
            format!(r#"orbit_plugin_my_plugin_lag{{{stage},partition="0",topic="a\"b"}} 3.0"#);
        assert!(text.contains(&lag), "{lag}\n{text}");
        assert!(
            text.contains("# TYPE orbit_plugin_my_plugin_sent counter"),
            "{text}"
        );
        let sent = format!("orbit_plugin_my_plugin_sent_total{{{stage}}} 12.0");
        assert!(text.contains(&sent), "{text}");
        assert!(!text.contains("_dup") && !text.contains("bad"), "{text}");
        assert!(!text.contains("elsewhere"), "{text}");
        // The text stays parseable: the help's newline is escaped.
        assert!(text.contains("What it \\\\ means\\nreally"), "{text}");

        t.remove_pipeline("plugged");
        assert!(!t.encode().contains("orbit_plugin_"), "{}", t.encode());
    }

    #[test]
    fn a_stage_reports_at_most_its_share_of_series() {
        let t = Telemetry::new();
        t.stage(labels("capped"));
        let values: Vec<String> = (0..plugin::MAX_SERIES_PER_STAGE + 5)
            .map(|i| i.to_string())
            .collect();
        for v in &values {
            let l = [MetricLabel {
                name: "n".into(),
                value: v.as_str().into(),
            }];
            report_plugin_metric(&sample("capped", "many", MetricKind::Gauge, &l, 1.0));
        }
        let shown = t.encode().matches("orbit_plugin_my_plugin_many{").count();
        assert_eq!(shown, plugin::MAX_SERIES_PER_STAGE);
        t.remove_pipeline("capped");
    }
}
