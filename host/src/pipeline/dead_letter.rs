//! Records a stage could not handle: to the dead-letter sink with `errors.tolerance: all`, or a
//! pipeline failure with `none`. A dead-lettered record carries headers naming where and why it
//! failed and where it came from:
//!
//! | header | value |
//! |---|---|
//! | `orbit.dlq.pipeline` | pipeline name |
//! | `orbit.dlq.stage` | stage name (`transforms[0]`, `sink`, or its `name:`) |
//! | `orbit.dlq.plugin` | component name |
//! | `orbit.dlq.error_kind` | `rejected`, `retriable`, `fatal`, … |
//! | `orbit.dlq.error` | the plugin's message |
//! | `orbit.dlq.attempts` | calls made for the record |
//! | `orbit.dlq.stream`, `orbit.dlq.partition`, `orbit.dlq.offset` | original position (offset in base64) |

use std::sync::Arc;

use abi_stable::std_types::RVec;
use base64::Engine as _;
use orbit_plugin_api::{PluginError, Record};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::stage::Stage;
use super::{PipelineError, Shared};
use crate::config::Tolerance;
use crate::plugin::HostSink;
use crate::plugin::StageId;
use crate::policy::CallError;

/// One record a stage failed, by its index in the stage's input batch.
pub struct Failure {
    pub index: usize,
    pub error: PluginError,
    /// Calls made for the record before it was given up.
    pub attempts: u32,
}

impl Failure {
    /// A record a plugin reported failed, after `attempts` calls.
    pub fn reported(f: &orbit_plugin_api::ffi::RecordFailureFfi, attempts: u32) -> Self {
        Failure {
            index: f.index as usize,
            error: f.error.clone(),
            attempts,
        }
    }
}

pub struct DeadLetterRequest {
    records: RVec<Record>,
    reply: oneshot::Sender<Result<(), PluginError>>,
}

fn describe_position(r: &Record) -> String {
    format!(
        "stream `{}` partition {} offset {}",
        r.stream,
        r.partition,
        base64::engine::general_purpose::STANDARD.encode(&r.offset)
    )
}

/// Deals with the records `stage` failed in `input`; returns once they are dead-lettered, or
/// the error that stops the pipeline.
pub(super) async fn handle(
    shared: &Shared,
    stage: &StageId,
    input: &[Record],
    failures: Vec<Failure>,
) -> Result<(), PipelineError> {
    if failures.is_empty() {
        return Ok(());
    }
    if let Some(bad) = failures.iter().find(|f| f.index >= input.len()) {
        return Err(shared.stage_error(
            stage,
            PluginError::fatal(format!(
                "the plugin reported a failure for record {} of a batch of {}",
                bad.index,
                input.len()
            )),
        ));
    }
    if let Some(m) = shared.stage_metrics(&stage.stage) {
        for f in &failures {
            m.error(f.error.kind(), false);
        }
        m.set_last_error(&failures[0].error);
    }
    let (Tolerance::All, Some(dead_letters)) = (shared.tolerance, &shared.dead_letters) else {
        let first = &failures[0];
        return Err(PipelineError::Record {
            pipeline: shared.pipeline.clone(),
            stage: stage.stage.clone(),
            plugin: stage.plugin.clone(),
            position: describe_position(&input[first.index]),
            error: first.error.clone(),
        });
    };
    let mut records = RVec::with_capacity(failures.len());
    for f in &failures {
        let original = &input[f.index];
        let mut r = original.clone();
        r.push_header("orbit.dlq.pipeline", shared.pipeline.as_bytes());
        r.push_header("orbit.dlq.stage", stage.stage.as_bytes());
        r.push_header("orbit.dlq.plugin", stage.plugin.as_bytes());
        r.push_header("orbit.dlq.error_kind", f.error.kind().as_str());
        r.push_header("orbit.dlq.error", f.error.message());
        r.push_header("orbit.dlq.attempts", f.attempts.to_string());
        r.push_header("orbit.dlq.stream", original.stream.as_bytes());
        r.push_header("orbit.dlq.partition", original.partition.to_string());
        r.push_header(
            "orbit.dlq.offset",
            base64::engine::general_purpose::STANDARD.encode(&original.offset),
        );
        records.push(r);
    }
    let count = records.len();
    let (reply, answer) = oneshot::channel();
    let sent = dead_letters
        .send(DeadLetterRequest { records, reply })
        .await
        .is_ok();
    let result = if sent { answer.await.ok() } else { None };
    match result {
        Some(Ok(())) => {
            shared.stats.record_dead_lettered(count);
            if let Some(m) = shared.stage_metrics(&stage.stage) {
                m.dead_lettered.inc_by(count as u64);
            }
            tracing::debug!(count, "records dead-lettered");
            Ok(())
        }
        Some(Err(error)) => Err(PipelineError::DeadLetter {
            pipeline: shared.pipeline.clone(),
            plugin: shared.dead_letter_plugin.clone(),
            error,
        }),
        None => Err(PipelineError::DeadLetter {
            pipeline: shared.pipeline.clone(),
            plugin: shared.dead_letter_plugin.clone(),
            error: PluginError::fatal("the dead-letter stage has stopped"),
        }),
    }
}

/// Owns the dead-letter sink and writes what the stages send it, through its own policy.
/// Anything it cannot write (after retries) fails the pipeline: a dead letter is never lost.
///
/// It ends when `done` is cancelled (every other stage has ended, so no request can come).
pub(super) async fn run(
    mut stage: Stage<HostSink>,
    mut rx: mpsc::Receiver<DeadLetterRequest>,
    shared: Arc<Shared>,
    done: CancellationToken,
) -> Result<(), PipelineError> {
    let span = stage.instance.span().clone();
    async {
        loop {
            let req = tokio::select! {
                biased;
                req = rx.recv() => req,
                _ = done.cancelled() => None,
            };
            let Some(req) = req else { break };
            let records = Arc::new(req.records);
            stage.policy.metrics.received(records.len());
            let result = match stage.write(&records, &shared.stop).await {
                Ok((out, _)) if out.failures.is_empty() => {
                    stage.policy.metrics.sent(records.iter());
                    Ok(())
                }
                Ok((out, _)) => Err(out.failures[0].error.clone()),
                Err(CallError::Stopped) => Err(PluginError::fatal("the pipeline is stopping")),
                Err(
                    CallError::Exhausted { error, .. }
                    | CallError::Rejected { error, .. }
                    | CallError::Fatal { error },
                ) => Err(error),
            };
            let failed = result.is_err();
            let _ = req.reply.send(result);
            if failed {
                break;
            }
        }
    }
    .instrument(span.clone())
    .await;
    stage.instance.close(|s| s.close().into_result()).await;
    Ok(())
}
