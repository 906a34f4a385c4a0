//! A stage of a running pipeline: its instance with its policies, and what the stage loops
//! share (receiving a batch, settling a verdict).

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RVec;
use orbit_plugin_api::ffi::WriteOutcomeFfi;
use orbit_plugin_api::{PluginError, Record};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::dead_letter::{self, Failure};
use super::{Batch, PipelineError, ResolvedStage, Shared};
use crate::config::StageRole;
use crate::plugin::HostSink;
use crate::plugin::{Factory, StageConfig, StageId, StageInstance};
use crate::policy::{written_healthy, CallError, Once, PolicyStack};
use crate::telemetry::{StageLabels, StageMetrics, Telemetry};

pub(super) fn stage_config(pipeline: &str, s: &ResolvedStage) -> StageConfig {
    StageConfig {
        pipeline: pipeline.to_string(),
        stage: s.name.clone(),
        component: s.component.clone(),
        config_json: s.config_json.clone(),
    }
}

/// The stage's handles in the host's metrics.
pub(crate) fn stage_metrics(
    telemetry: &Telemetry,
    pipeline: &str,
    s: &ResolvedStage,
) -> Arc<StageMetrics> {
    let kind = match s.role {
        StageRole::Source => "source",
        StageRole::Transform(_) => "transform",
        StageRole::Sink => "sink",
        StageRole::DeadLetter => "dead_letter",
    };
    telemetry.stage(StageLabels {
        pipeline: pipeline.to_string(),
        component_id: s.name.clone(),
        component_kind: kind.to_string(),
        component_type: s.component.name.clone(),
    })
}

fn stage_id(s: &ResolvedStage) -> StageId {
    StageId {
        stage: s.name.clone(),
        plugin: s.component.name.clone(),
    }
}

/// A stage's instance with its policies.
pub(super) struct Stage<T> {
    pub(super) instance: StageInstance<T>,
    pub(super) policy: PolicyStack,
}

impl<T: Send + 'static> Stage<T> {
    pub(super) fn new(s: &ResolvedStage, factory: Factory<T>, shared: &Shared) -> Self {
        let metrics = shared
            .stage_metrics(&s.name)
            .unwrap_or_else(|| Arc::new(StageMetrics::default()));
        Stage {
            instance: StageInstance::new(stage_id(s), factory),
            policy: PolicyStack::new(&s.policy, metrics),
        }
    }

    /// Creates the first instance (through retry and breaker).
    pub(super) async fn start(&mut self, shared: &Shared) -> Result<(), Option<PipelineError>> {
        let span = self.instance.span().clone();
        self.policy
            .ensure_instance(&mut self.instance, &shared.stop)
            .instrument(span)
            .await
            .map_err(|e| shared.source_error(&self.instance.id, e))
    }

    pub(super) fn metrics(&self) -> (StageId, Arc<StageMetrics>) {
        (self.instance.id.clone(), self.policy.metrics.clone())
    }
}

/// Applies `on_limit: drop` to a batch before the call, counting what it drops. (Takes the
/// policy, not the stage: a `&Stage` held across an await would need a `Sync` plugin instance.)
pub(super) async fn sample(policy: &PolicyStack, records: &mut RVec<Record>, shared: &Shared) {
    shared
        .stats
        .record_dropped(policy.drop_over_limit(records).await);
}

impl Stage<HostSink> {
    /// One `write` of `records` through the policy stack (the batch is shared, not copied, by
    /// retries).
    pub(super) async fn write(
        &mut self,
        records: &Arc<RVec<Record>>,
        stop: &CancellationToken,
    ) -> Result<(orbit_plugin_api::ffi::WriteOutcomeFfi, u32), CallError> {
        let input = records.clone();
        self.policy
            .call_judged(
                &mut self.instance,
                records.len(),
                stop,
                move |s| s.write(input.as_rslice()).into_result(),
                written_healthy,
            )
            .await
    }

    /// How many batches the plugin can hold in flight: 1 for a sink that writes one batch at a
    /// time, and for a library built before pipelined sinks (see [`HostSink`]).
    pub(super) async fn max_in_flight(&mut self) -> usize {
        self.instance
            .call(|s| Ok(s.max_in_flight()))
            .await
            .map_or(1, |n| n.max(1) as usize)
    }

    /// One `begin_write`, not retried (a failure fails the batch; the window resends it):
    /// through breaker and rate limit, on a live instance. Returns the instance's generation
    /// with the plugin's answer.
    pub(super) async fn begin(
        &mut self,
        records: &Arc<RVec<Record>>,
        stop: &CancellationToken,
    ) -> Result<(u64, Result<(), PluginError>), CallError> {
        let input = records.clone();
        let once = Once {
            records: records.len(),
            gate: true,
            pinned: None,
        };
        let result = self
            .policy
            .call_once(&mut self.instance, once, stop, move |s| {
                s.begin_write(input.as_rslice()).into_result()
            })
            .await?
            .expect("an unpinned call makes the instance it needs");
        Ok((self.instance.generation(), result))
    }

    /// One `finish_write` for the oldest batch in flight on instance `generation`, waiting up to
    /// `wait`. `None`: that instance is gone. Neither gated nor retried: it runs while the
    /// breaker is open, and never makes an instance.
    pub(super) async fn finish(
        &mut self,
        generation: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<Result<Option<WriteOutcomeFfi>, PluginError>>, CallError> {
        let once = Once {
            records: 0,
            gate: false,
            pinned: Some(generation),
        };
        let wait_ms = wait.as_millis() as u64;
        let result = self
            .policy
            .call_once(&mut self.instance, once, stop, move |s| {
                s.finish_write(wait_ms)
                    .into_result()
                    .map(|o| o.into_option())
            })
            .await?;
        Ok(result)
    }
}

pub(super) async fn recv(rx: &mut mpsc::Receiver<Batch>, shared: &Shared) -> Option<Batch> {
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => None,
        b = rx.recv() => b,
    }
}

/// Every record of `input` failed with the same error (a whole-batch failure the policy gave
/// up on, or a rejected batch).
pub(super) fn all_failed(len: usize, error: PluginError, attempts: u32) -> Vec<Failure> {
    (0..len)
        .map(|index| Failure {
            index,
            error: error.clone(),
            attempts,
        })
        .collect()
}

/// Applies a stage's verdict on a batch: `Ok(Some(value))` to go on, `Ok(None)` when every
/// record failed and was handled, `Err` to stop the stage.
pub(super) async fn settle<R>(
    shared: &Shared,
    id: &StageId,
    input: &[Record],
    result: Result<(R, u32), CallError>,
) -> Result<Option<(R, u32)>, Option<PipelineError>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(CallError::Stopped) => Err(None),
        Err(CallError::Fatal { error }) => Err(Some(shared.stage_error(id, error))),
        Err(CallError::Exhausted { error, attempts } | CallError::Rejected { error, attempts }) => {
            dead_letter::handle(shared, id, input, all_failed(input.len(), error, attempts))
                .await
                .map_err(Some)?;
            Ok(None)
        }
    }
}
