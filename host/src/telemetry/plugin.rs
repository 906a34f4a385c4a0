//! Plugin metrics: the last value of every series a plugin reported through the SDK's
//! `Metrics` (see `orbit_plugin_api::ffi::metrics`), shown on `/metrics` as
//! `orbit_plugin_<plugin>_<name>` under the stage's labels.
//!
//! The callback a library is given ([`report`]) is a plain `extern "C" fn` without context, so
//! the values live in one store per process ([`store`]). Each [`super::Telemetry`] shows the
//! series of the stages it knows, resolving `(pipeline, stage)` to the stage's labels at scrape
//! time; a series whose stage it does not know is not shown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex};

use orbit_plugin_api::ffi::{MetricKind, MetricSample};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::labels::StageLabels;
use super::stage::StageMetrics;

/// Most series one stage may report; past it new series are dropped (with one warning).
pub const MAX_SERIES_PER_STAGE: usize = 1000;

/// Labels every series already has: a plugin label of the same name is refused.
const STAGE_LABELS: [&str; 4] = [
    "pipeline",
    "component_id",
    "component_kind",
    "component_type",
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct StageKey {
    pipeline: String,
    stage: String,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: MetricKind,
    /// Series by stage, then by the plugin's labels (names and escaped values).
    series: BTreeMap<StageKey, BTreeMap<Vec<(String, String)>, f64>>,
}

/// Every plugin series of the process.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    inner: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    families: BTreeMap<String, Family>,
    series_per_stage: HashMap<StageKey, usize>,
    /// What was refused, so that each mistake is logged once.
    warned: HashSet<String>,
}

static STORE: LazyLock<PluginMetrics> = LazyLock::new(PluginMetrics::default);

/// The process's plugin metrics.
pub fn store() -> &'static PluginMetrics {
    &STORE
}

/// The callback every library gets for its metrics. Never unwinds into the plugin.
pub extern "C" fn report(sample: &MetricSample<'_>) {
    let _ = catch_unwind(AssertUnwindSafe(|| store().record(sample)));
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Escapes a label value or help text for the text format (backslash, quote, newline).
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

impl PluginMetrics {
    pub fn record(&self, s: &MetricSample<'_>) {
        let plugin = s.plugin.as_str().replace('-', "_");
        let name = format!("orbit_plugin_{plugin}_{}", s.name.as_str());
        let key = StageKey {
            pipeline: s.pipeline.to_string(),
            stage: s.stage.to_string(),
        };
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let refuse = |store: &mut Store, why: String| {
            if store.warned.insert(format!("{name} {why}")) {
                tracing::warn!(
                    pipeline = %key.pipeline,
                    stage = %key.stage,
                    plugin = %s.plugin,
                    "plugin metric `{name}` dropped: {why}; fix the plugin's `Metrics` call"
                );
            }
        };
        if !valid_name(&plugin) || !valid_name(s.name.as_str()) {
            return refuse(&mut store, "its name is not [a-zA-Z_][a-zA-Z0-9_]*".into());
        }
        let mut labels = Vec::with_capacity(s.labels.len());
        for l in s.labels.iter() {
            let n = l.name.as_str();
            if !valid_name(n) || n.starts_with("__") {
                return refuse(&mut store, format!("its label name `{n}` is not valid"));
            }
            if STAGE_LABELS.contains(&n) || labels.iter().any(|(x, _): &(String, _)| x == n) {
                return refuse(&mut store, format!("its label `{n}` is repeated"));
            }
            labels.push((n.to_string(), escape(l.value.as_str(), true)));
        }
        labels.sort();
        let Store {
            families,
            series_per_stage,
            ..
        } = &mut *store;
        let family = families.entry(name.clone()).or_insert_with(|| Family {
            help: escape(s.help.as_str(), false),
            kind: s.kind,
            series: BTreeMap::new(),
        });
        if family.kind != s.kind {
            let why = format!("it was reported as a {:?} before", family.kind);
            return refuse(&mut store, why);
        }
        let stage = family.series.entry(key.clone()).or_default();
        if let Some(v) = stage.get_mut(&labels) {
            *v = s.value;
            return;
        }
        let count = series_per_stage.entry(key.clone()).or_insert(0);
        if *count >= MAX_SERIES_PER_STAGE {
            return refuse(
                &mut store,
                format!("the stage reports more than {MAX_SERIES_PER_STAGE} series"),
            );
        }
        *count += 1;
        stage.insert(labels, s.value);
    }

    /// Forgets a pipeline's series (the pipeline was removed).
    pub fn remove_pipeline(&self, pipeline: &str) {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for family in store.families.values_mut() {
            family.series.retain(|k, _| k.pipeline != pipeline);
        }
        store.families.retain(|_, f| !f.series.is_empty());
        store.series_per_stage.retain(|k, _| k.pipeline != pipeline);
    }

    /// The series of the stages in `stages`, as (name, help, kind, [(labels, value)]).
    fn snapshot(&self, stages: &HashMap<StageKey, StageLabels>) -> Vec<Snapshot> {
        let store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (name, f) in &store.families {
            let mut series = Vec::new();
            for (key, by_labels) in &f.series {
                let Some(stage) = stages.get(key) else {
                    continue;
                };
                for (labels, v) in by_labels {
                    series.push(((stage.clone(), labels.clone()), *v));
                }
            }
            if !series.is_empty() {
                out.push(Snapshot {
                    name: name.clone(),
                    help: f.help.clone(),
                    kind: f.kind,
                    series,
                });
            }
        }
        out
    }
}

type SeriesLabels = (StageLabels, Vec<(String, String)>);

struct Snapshot {
    name: String,
    help: String,
    kind: MetricKind,
    series: Vec<(SeriesLabels, f64)>,
}

/// Shows the plugin series of one host's stages on its registry.
#[derive(Debug)]
pub(super) struct PluginCollector {
    pub stages: Arc<Mutex<HashMap<StageLabels, Arc<StageMetrics>>>>,
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stages: HashMap<StageKey, StageLabels> = {
            let stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
            stages
                .keys()
                .map(|l| {
                    let key = StageKey {
                        pipeline: l.pipeline.clone(),
                        stage: l.component_id.clone(),
                    };
                    (key, l.clone())
                })
                .collect()
        };
        for family in store().snapshot(&stages) {
            let kind = match family.kind {
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Counter => MetricType::Counter,
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
            for (labels, value) in &family.series {
                let mut series = metric.encode_family(labels)?;
                match family.kind {
                    MetricKind::Gauge => series.encode_gauge(value)?,
                    MetricKind::Counter => {
                        series.encode_counter::<NoLabelSet, _, u64>(value, None)?
                    }
                }
            }
        }
        Ok(())
    }
}
