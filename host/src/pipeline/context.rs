//! What the tasks of one running pipeline share (the run context), and how a pipeline fails.

use std::sync::{Arc, Mutex};

use abi_stable::std_types::RVec;
use orbit_plugin_api::{PluginError, Record};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetterRequest;
use super::stats::Stats;
use crate::config::Tolerance;
use crate::offsets::OffsetStoreError;
use crate::plugin::StageId;
use crate::policy::CallError;
use crate::telemetry::StageMetrics;

/// Why a pipeline stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline `{pipeline}`: stage `{stage}` (plugin `{plugin}`) failed: {error}")]
    Stage {
        pipeline: String,
        stage: String,
        plugin: String,
        error: PluginError,
    },
    #[error(
        "pipeline `{pipeline}`: stage `{stage}` (plugin `{plugin}`) could not deliver a record \
         from {position} ({error}); it was not acknowledged and will be read again on restart. \
         Fix the cause, or set `errors.tolerance: all` with a dead-letter sink"
    )]
    Record {
        pipeline: String,
        stage: String,
        plugin: String,
        position: String,
        error: PluginError,
    },
    #[error(
        "pipeline `{pipeline}`: the dead-letter sink (plugin `{plugin}`) failed: {error}; the \
         records it was given were not acknowledged and will be read again on restart"
    )]
    DeadLetter {
        pipeline: String,
        plugin: String,
        error: PluginError,
    },
    #[error(
        "pipeline `{pipeline}`: {source}; stopped so that nothing runs unsaved (what was \
         acknowledged since the last save is read again after the cause is fixed)"
    )]
    Offsets {
        pipeline: String,
        source: OffsetStoreError,
    },
    #[error(
        "pipeline `{pipeline}`: internal error in the host: {detail}; please report it \
         (nothing unacknowledged is lost: it is read again on restart)"
    )]
    Internal { pipeline: String, detail: String },
}

/// A batch on its way through the stages; `id` keys it in the ack tracker.
pub(super) struct Batch {
    pub(super) id: u64,
    pub(super) records: RVec<Record>,
}

/// What every task of one pipeline shares.
pub(super) struct Shared {
    pub(super) pipeline: String,
    pub(super) tolerance: Tolerance,
    pub(super) stats: Arc<Stats>,
    /// Cancelled when any task fails or the grace period ends; the others stop after their
    /// current call without finishing their batches.
    pub(super) stop: CancellationToken,
    pub(super) failure: Mutex<Option<PipelineError>>,
    pub(super) completions: mpsc::UnboundedSender<u64>,
    pub(super) dead_letters: Option<mpsc::Sender<DeadLetterRequest>>,
    /// The dead-letter sink's component name, for errors.
    pub(super) dead_letter_plugin: String,
    /// Every stage's metrics, by stage name.
    pub(super) stage_metrics: Vec<Arc<StageMetrics>>,
}

impl Shared {
    pub(super) fn fail(&self, error: PipelineError) {
        let mut slot = self.failure.lock().expect("failure lock");
        if slot.is_none() {
            tracing::error!(pipeline = %self.pipeline, "{error}");
            *slot = Some(error);
        }
        self.stop.cancel();
    }

    /// Turns a policy verdict on a source call into the pipeline's error (or `None` when the
    /// pipeline is stopping anyway).
    pub(super) fn source_error(&self, stage: &StageId, e: CallError) -> Option<PipelineError> {
        match e {
            CallError::Stopped => None,
            CallError::Exhausted { error, .. }
            | CallError::Rejected { error, .. }
            | CallError::Fatal { error } => Some(self.stage_error(stage, error)),
        }
    }

    pub(super) fn stage_error(&self, stage: &StageId, error: PluginError) -> PipelineError {
        PipelineError::Stage {
            pipeline: self.pipeline.clone(),
            stage: stage.stage.clone(),
            plugin: stage.plugin.clone(),
            error,
        }
    }

    pub(super) fn stage_metrics(&self, stage: &str) -> Option<Arc<StageMetrics>> {
        self.stage_metrics
            .iter()
            .find(|m| m.labels.component_id == stage)
            .cloned()
    }

    pub(super) fn complete(&self, id: u64) {
        // The source task is gone only when the pipeline is ending; nothing to acknowledge then.
        let _ = self.completions.send(id);
    }
}
