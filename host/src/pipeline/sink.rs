//! The sink loop: each batch written through the policy stack, failed records retried alone,
//! then dead-lettered or fatal.

use std::sync::Arc;
use std::time::Instant;

use abi_stable::std_types::RVec;
use orbit_plugin_api::ffi::SinkBox;
use orbit_plugin_api::{ErrorKind, Record};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::dead_letter::{self, Failure};
use super::stage::{recv, sample, settle, Stage};
use super::{Batch, PipelineError, Shared};
use crate::policy::CallError;

pub(super) async fn run_sink(
    mut stage: Stage<SinkBox>,
    mut rx: mpsc::Receiver<Batch>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    let span = stage.instance.span().clone();
    let result = async {
        while let Some(mut batch) = recv(&mut rx, &shared).await {
            sample(&stage.policy, &mut batch.records, &shared).await;
            let written =
                write_through_policy(&mut stage, &shared, Arc::new(batch.records)).await?;
            shared.stats.record_written(written);
            shared.complete(batch.id);
        }
        Ok::<(), Option<PipelineError>>(())
    }
    .instrument(span.clone())
    .await;
    stage.instance.close(|s| s.close().into_result()).await;
    result.or_else(|e| e.map_or(Ok(()), Err))
}

/// Writes a batch: retries the whole batch on retriable errors (inside the policy stack), then
/// the records the sink failed individually with retriable errors (as a smaller batch), and
/// dead-letters what is rejected or out of retries. Returns how many records were written.
pub(super) async fn write_through_policy(
    stage: &mut Stage<SinkBox>,
    shared: &Shared,
    records: Arc<RVec<Record>>,
) -> Result<usize, Option<PipelineError>> {
    let started = Instant::now();
    let mut total_attempts = 0u32;
    let mut current = records;
    let mut written = 0usize;
    loop {
        let n = current.len();
        let result = stage.write(&current, &shared.stop).await;
        let Some((out, attempts)) = settle(shared, &stage.instance.id, &current, result).await?
        else {
            return Ok(written);
        };
        total_attempts += attempts;
        written += n - out.failures.len().min(n);
        let mut retry_indices = Vec::new();
        let mut failures = Vec::new();
        let mut retry_error = None;
        for f in out.failures.iter() {
            let index = f.index as usize;
            if f.error.kind() == ErrorKind::Retriable && index < n {
                retry_indices.push(index);
                retry_error = Some(f.error.clone());
            } else {
                failures.push(Failure {
                    index,
                    error: f.error.clone(),
                    attempts: total_attempts,
                });
            }
        }
        // Retried in the batch's order (a sink may report failures in any order), each once.
        retry_indices.sort_unstable();
        retry_indices.dedup();
        // A record failing with a configuration or fatal error is not bad input: stop (its
        // position stays unacknowledged) instead of dead-lettering every record that follows.
        if let Some(f) = failures
            .iter()
            .find(|f| matches!(f.error.kind(), ErrorKind::Config | ErrorKind::Fatal))
        {
            return Err(Some(
                shared.stage_error(&stage.instance.id, f.error.clone()),
            ));
        }
        dead_letter::handle(shared, &stage.instance.id, &current, failures)
            .await
            .map_err(Some)?;
        let Some(error) = retry_error else {
            return Ok(written);
        };
        match stage
            .policy
            .record_failure(error.clone(), total_attempts, started, &shared.stop)
            .await
        {
            Ok(()) => {
                let subset: RVec<Record> =
                    retry_indices.iter().map(|&i| current[i].clone()).collect();
                current = Arc::new(subset);
            }
            Err(CallError::Stopped) => return Err(None),
            Err(_) => {
                let failures = retry_indices
                    .iter()
                    .map(|&index| Failure {
                        index,
                        error: error.clone(),
                        attempts: total_attempts,
                    })
                    .collect();
                dead_letter::handle(shared, &stage.instance.id, &current, failures)
                    .await
                    .map_err(Some)?;
                return Ok(written);
            }
        }
    }
}
