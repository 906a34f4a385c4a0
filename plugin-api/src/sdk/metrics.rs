//! [`Metrics`]: a plugin's own gauges and counters, sent to the host as values (see
//! [`crate::ffi::metrics`]).

use std::sync::{Arc, OnceLock};

use abi_stable::std_types::{RSlice, RStr};

use crate::ffi::{MetricKind, MetricLabel, MetricSample, MetricsHost};

static HOST: OnceLock<MetricsHost> = OnceLock::new();

/// Called by the host (through [`crate::ffi::PluginExtV2::init_metrics`]) once after loading.
pub(super) extern "C" fn ffi_init_metrics(host: MetricsHost) {
    let _ = HOST.set(host);
}

/// Reports the stage's own metrics to the host, which shows them on `/metrics` as
/// `orbit_plugin_<plugin>_<name>` with the stage's labels (`pipeline`, `component_id`,
/// `component_kind`, `component_type`) and the labels given here. Cheap to clone and to call
/// from any thread; a host that does not collect plugin metrics ignores the calls.
///
/// Names and label names are `[a-zA-Z_][a-zA-Z0-9_]*`; the host drops (and warns once about)
/// a series whose name is not, whose label repeats a stage label, or past 1,000 series per
/// stage. Keep label values few (a partition, a table), never per record.
///
/// ```ignore
/// let metrics = ctx.metrics();
/// metrics.gauge_with("consumer_lag", "Records behind the partition's end", &[("topic", "t"), ("partition", "0")], 42.0);
/// metrics.counter("reconnects", "Connections re-established", 3.0);
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    pipeline: Arc<str>,
    stage: Arc<str>,
    plugin: &'static str,
}

impl Metrics {
    pub(crate) fn new(pipeline: &str, stage: &str) -> Self {
        Metrics {
            pipeline: pipeline.into(),
            stage: stage.into(),
            plugin: super::registry::plugin_name(),
        }
    }

    /// Sets a gauge to `value`.
    pub fn gauge(&self, name: &str, help: &str, value: f64) {
        self.send(MetricKind::Gauge, name, help, &[], value);
    }

    /// Sets the gauge of one label set to `value`.
    pub fn gauge_with(&self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.send(MetricKind::Gauge, name, help, labels, value);
    }

    /// Reports a counter's running total (kept by the plugin; it must never go back within
    /// the process). The host adds the `_total` suffix: leave it out of `name`.
    pub fn counter(&self, name: &str, help: &str, total: f64) {
        self.send(MetricKind::Counter, name, help, &[], total);
    }

    /// Reports the running total of one label set of a counter.
    pub fn counter_with(&self, name: &str, help: &str, labels: &[(&str, &str)], total: f64) {
        self.send(MetricKind::Counter, name, help, labels, total);
    }

    fn send(&self, kind: MetricKind, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        let Some(host) = HOST.get() else {
            return;
        };
        let name = name.strip_suffix("_total").unwrap_or(name);
        let labels: Vec<MetricLabel<'_>> = labels
            .iter()
            .map(|(n, v)| MetricLabel {
                name: RStr::from_str(n),
                value: RStr::from_str(v),
            })
            .collect();
        (host.report)(&MetricSample {
            pipeline: RStr::from_str(&self.pipeline),
            stage: RStr::from_str(&self.stage),
            plugin: RStr::from_str(self.plugin),
            name: RStr::from_str(name),
            help: RStr::from_str(help),
            kind,
            value: v,
            labels: RSlice::from_slice(&labels),
        });
    }
}
