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
use orbit_plugin_api::ffi::{RecordFailureFfi, SinkBox};
use orbit_plugin_api::{PluginError, Record};
use tokio::sync::{mpsc, oneshot};

use super::stage::{StageId, StageInstance};
use super::{PipelineError, Shared};
use crate::config::Tolerance;

pub struct RecordFailures(pub RVec<RecordFailureFfi>);

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
    input: &RVec<Record>,
    failures: RecordFailures,
) -> Result<(), PipelineError> {
    let failures = failures.0;
    if failures.is_empty() {
        return Ok(());
    }
    if let Some(bad) = failures.iter().find(|f| f.index as usize >= input.len()) {
        return Err(shared.stage_error(
            stage,
            PluginError::fatal(format!(
                "the plugin reported a failure for record {} of a batch of {}",
                bad.index,
                input.len()
            )),
        ));
    }
    let (Tolerance::All, Some(dead_letters)) = (shared.tolerance, &shared.dead_letters) else {
        let first = &failures[0];
        return Err(PipelineError::Record {
            pipeline: shared.pipeline.clone(),
            stage: stage.stage.clone(),
            plugin: stage.plugin.clone(),
            position: describe_position(&input[first.index as usize]),
            error: first.error.clone(),
        });
    };
    let mut records = RVec::with_capacity(failures.len());
    for f in failures.iter() {
        let original = &input[f.index as usize];
        let mut r = original.clone();
        r.push_header("orbit.dlq.pipeline", shared.pipeline.as_bytes());
        r.push_header("orbit.dlq.stage", stage.stage.as_bytes());
        r.push_header("orbit.dlq.plugin", stage.plugin.as_bytes());
        r.push_header("orbit.dlq.error_kind", f.error.kind().as_str());
        r.push_header("orbit.dlq.error", f.error.message());
        r.push_header("orbit.dlq.attempts", "1");
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
            Ok(())
        }
        // The dead-letter task reported (and recorded) its own failure.
        Some(Err(error)) => Err(PipelineError::DeadLetter {
            pipeline: shared.pipeline.clone(),
            plugin: stage.plugin.clone(),
            error,
        }),
        None => Err(PipelineError::DeadLetter {
            pipeline: shared.pipeline.clone(),
            plugin: stage.plugin.clone(),
            error: PluginError::fatal("the dead-letter stage has stopped"),
        }),
    }
}

/// Owns the dead-letter sink and writes what the stages send it.
pub(super) async fn run(
    mut stage: StageInstance<SinkBox>,
    mut rx: mpsc::Receiver<DeadLetterRequest>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    while let Some(req) = rx.recv().await {
        let records = req.records;
        let (_records, result) = stage
            .call(move |s| {
                let r = s.write(records.as_rslice()).into_result();
                (records, r)
            })
            .await;
        let result = match result {
            Ok(out) if out.failures.is_empty() => Ok(()),
            Ok(out) => Err(out.failures[0].error.clone()),
            Err(e) => Err(e),
        };
        let failed = result.is_err();
        let _ = req.reply.send(result);
        if failed {
            break;
        }
    }
    let _ = shared;
    if let Err(e) = stage.call(|s| s.close().into_result()).await {
        tracing::warn!("closing the dead-letter sink failed: {e}");
    }
    Ok(())
}
