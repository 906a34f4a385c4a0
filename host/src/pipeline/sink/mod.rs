//! The sink loop: each batch written through the policy stack, failed records retried alone,
//! then dead-lettered or fatal. A sink that keeps several batches in flight runs the windowed
//! loop of [`window`] instead; [`plan`] says what it resends after a failure.

mod plan;
mod window;

use std::sync::Arc;

use abi_stable::std_types::RVec;
use orbit_plugin_api::Record;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::dead_letter::{self, Failure};
use super::stage::{recv, sample, Stage};
use super::{Batch, PipelineError, Shared};
use crate::plugin::HostSink;
use crate::policy::Resend;

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
            stage.policy.metrics.received(batch.records.len());
            sample(&stage.policy, &mut batch.records, &shared).await;
            let records = Arc::new(batch.records);
            let (written, failed) =
                write_through_policy(&mut stage, &shared, records.clone(), Resend::default())
                    .await?;
            count_written(&stage, &shared, &records, written, &failed);
            shared.complete(batch.id);
        }
        Ok::<(), Option<PipelineError>>(())
    }
    .instrument(span.clone())
    .await;
    stage.instance.close(|s| s.close().into_result()).await;
    result.or_else(|e| e.map_or(Ok(()), Err))
}

/// Counts what a sink wrote of `records`: `written` of them (order-only resends are not
/// counted twice), whose bytes are those of the records not `failed`.
pub(super) fn count_written(
    stage: &Stage<HostSink>,
    shared: &Shared,
    records: &[Record],
    written: usize,
    failed: &[bool],
) {
    shared.stats.record_written(written);
    let m = &stage.policy.metrics;
    m.sent.inc_by(written as u64);
    let bytes: usize = records
        .iter()
        .enumerate()
        .filter(|(i, _)| !failed.get(*i).copied().unwrap_or(false))
        .map(|(_, r)| r.value().len())
        .sum();
    m.sent_bytes.inc_by(bytes as u64);
}

/// Writes a batch through the policy stack with per-record retries
/// ([`crate::policy::PolicyStack::call_per_record`]), then dead-letters what failed for good.
/// Returns how many records were written and, per record, whether it failed for good.
pub(super) async fn write_through_policy(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    records: Arc<RVec<Record>>,
    resend: Resend<'_>,
) -> Result<(usize, Vec<bool>), Option<PipelineError>> {
    let settled = stage
        .policy
        .call_per_record(
            &mut stage.instance,
            records.clone(),
            resend,
            &shared.stop,
            |input| move |s: &mut HostSink| s.write(input.as_rslice()).into_result(),
        )
        .await
        .map_err(|e| shared.source_error(&stage.instance.id, e))?;
    let mut failed = vec![false; records.len()];
    for v in &settled.failed {
        if let Some(slot) = failed.get_mut(v.index) {
            *slot = true;
        }
    }
    let failures = settled
        .failed
        .into_iter()
        .map(|v| Failure {
            index: v.index,
            error: v.error,
            attempts: v.attempts,
        })
        .collect();
    dead_letter::handle(shared, &stage.instance.id, &records, failures)
        .await
        .map_err(Some)?;
    Ok((settled.written, failed))
}
