//! The sink loop: each batch written through the policy stack, failed records retried alone,
//! then dead-lettered or fatal. A sink that keeps several batches in flight runs the windowed
//! loop of [`window`] instead; [`plan`] says what it resends after a failure.

mod plan;
mod window;

use std::sync::Arc;
use std::time::Instant;

use abi_stable::std_types::RVec;
use orbit_plugin_api::{ErrorKind, PluginError, Record};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::dead_letter::{self, Failure};
use super::stage::{recv, sample, settle, Stage};
use super::{Batch, PipelineError, Shared};
use crate::plugin::HostSink;
use crate::policy::CallError;

/// How a batch is written again after its window failed.
#[derive(Default)]
pub(super) struct Resend<'a> {
    /// Per record: delivered already, written again only to keep its partition's order; not
    /// counted as written a second time.
    pub order_only: &'a [bool],
    /// The failure that made the resend: it counts as the first attempt (the retry policy's
    /// backoff and breaker apply before the first write).
    pub after: Option<(PluginError, Instant)>,
}

pub(super) async fn run_sink(
    mut stage: Stage<HostSink>,
    mut rx: mpsc::Receiver<Batch>,
    shared: Arc<Shared>,
    max_in_flight: Option<usize>,
) -> Result<(), PipelineError> {
    let span = stage.instance.span().clone();
    let window = window::size(&mut stage, max_in_flight)
        .instrument(span.clone())
        .await;
    let result = async {
        if window > 1 {
            return window::run(&mut stage, &mut rx, &shared, window).await;
        }
        while let Some(mut batch) = recv(&mut rx, &shared).await {
            sample(&stage.policy, &mut batch.records, &shared).await;
            let records = Arc::new(batch.records);
            let written =
                write_through_policy(&mut stage, &shared, records, Resend::default()).await?;
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
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    records: Arc<RVec<Record>>,
    resend: Resend<'_>,
) -> Result<usize, Option<PipelineError>> {
    let (mut pending, started) = match resend.after {
        Some((error, started)) => (Some(error), started),
        None => (None, Instant::now()),
    };
    let mut total_attempts = u32::from(pending.is_some());
    let mut current = records;
    // The index in `records` of each record of `current`.
    let mut origin: Vec<usize> = (0..current.len()).collect();
    let counted = |origin: usize| !resend.order_only.get(origin).copied().unwrap_or(false);
    let mut written = 0usize;
    loop {
        if let Some(error) = pending.take() {
            match stage
                .policy
                .record_failure(error.clone(), total_attempts, started, &shared.stop)
                .await
            {
                Ok(()) => {}
                Err(CallError::Stopped) => return Err(None),
                Err(_) => {
                    let failures = (0..current.len())
                        .map(|index| Failure {
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
        let n = current.len();
        let result = stage.write(&current, &shared.stop).await;
        let Some((out, attempts)) = settle(shared, &stage.instance.id, &current, result).await?
        else {
            return Ok(written);
        };
        total_attempts += attempts;
        let mut failed = vec![false; n];
        let mut retry_indices = Vec::new();
        let mut failures = Vec::new();
        let mut retry_error = None;
        for f in out.failures.iter() {
            let index = f.index as usize;
            if let Some(slot) = failed.get_mut(index) {
                *slot = true;
            }
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
        written += (0..n).filter(|&i| !failed[i] && counted(origin[i])).count();
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
        origin = retry_indices.iter().map(|&i| origin[i]).collect();
        current = Arc::new(retry_indices.iter().map(|&i| current[i].clone()).collect());
        pending = Some(error);
    }
}
