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

/// Writes a batch through the policy stack with per-record retries
/// ([`crate::policy::PolicyStack::call_per_record`]), then dead-letters what failed for good.
/// Returns how many records were written.
pub(super) async fn write_through_policy(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    records: Arc<RVec<Record>>,
    resend: Resend<'_>,
) -> Result<usize, Option<PipelineError>> {
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
    Ok(settled.written)
}
