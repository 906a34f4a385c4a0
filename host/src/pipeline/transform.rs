//! The transform loop: each batch through one transform, failures dead-lettered or fatal.

use std::sync::Arc;

use orbit_plugin_api::ffi::TransformBox;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::dead_letter::{self, Failure};
use super::stage::{recv, sample, settle, Stage};
use super::{Batch, PipelineError, Shared};

pub(super) async fn run_transform(
    mut stage: Stage<TransformBox>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    let span = stage.instance.span().clone();
    let result = async {
        while let Some(mut batch) = recv(&mut rx, &shared).await {
            stage.policy.metrics.received(batch.records.len());
            sample(&stage.policy, &mut batch.records, &shared).await;
            let admitted = batch.records.len();
            let records = Arc::new(batch.records);
            let input = records.clone();
            let result = stage
                .policy
                .call(&mut stage.instance, admitted, &shared.stop, move |t| {
                    t.process(input.as_rslice()).into_result()
                })
                .await;
            let Some((out, attempts)) =
                settle(&shared, &stage.instance.id, &records, result).await?
            else {
                shared.complete(batch.id);
                continue;
            };
            let failures: Vec<Failure> = out
                .failures
                .iter()
                .map(|f| Failure::reported(f, attempts))
                .collect();
            let failed = failures.len();
            dead_letter::handle(&shared, &stage.instance.id, &records, failures)
                .await
                .map_err(Some)?;
            let kept = out.records.len();
            let dropped = records.len().saturating_sub(kept + failed);
            shared.stats.record_dropped(dropped);
            let m = &stage.policy.metrics;
            m.discarded_intentional.inc_by(dropped as u64);
            m.sent(out.records.iter());
            if out.records.is_empty() {
                shared.complete(batch.id);
            } else if tx
                .send(Batch {
                    id: batch.id,
                    records: out.records,
                })
                .await
                .is_err()
            {
                break; // the next stage is gone: the pipeline is stopping
            }
        }
        Ok::<(), Option<PipelineError>>(())
    }
    .instrument(span.clone())
    .await;
    stage.instance.close(|t| t.close().into_result()).await;
    result.or_else(|e| e.map_or(Ok(()), Err))
}
