//! Persisting acknowledged offsets, coalesced to at most one write per interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{PipelineError, Shared};
use crate::offsets::{FileOffsetStore, LedgerReader, OffsetStoreError};

/// Writes the latest acknowledged offsets when they change, at most once per `interval`
/// (updates in between are coalesced: only the latest matters), and the final value at once
/// when the source task is done. Each write is a small file fsynced and renamed into place, which
/// costs more than a batch on a fast pipeline; the interval bounds what a crash re-reads.
/// A failed save fails the pipeline at once: running on with nothing saved would make a crash
/// re-read everything since, and hide the cause until the end.
pub(super) async fn persist_offsets(
    store: FileOffsetStore,
    ledger: LedgerReader,
    changes: watch::Receiver<u64>,
    interval: Duration,
    shared: Arc<Shared>,
) {
    if let Err(source) = persist_offsets_until_closed(store, ledger, changes, interval).await {
        shared.fail(PipelineError::Offsets {
            pipeline: shared.pipeline.clone(),
            source,
        });
    }
}

async fn persist_offsets_until_closed(
    store: FileOffsetStore,
    ledger: LedgerReader,
    mut changes: watch::Receiver<u64>,
    interval: Duration,
) -> Result<(), OffsetStoreError> {
    let mut saved = *changes.borrow();
    let mut next_save = tokio::time::Instant::now();
    loop {
        let mut closed = changes.changed().await.is_err();
        // Let updates pile up until the interval is over, unless the source task ends.
        while !closed && tokio::time::Instant::now() < next_save {
            tokio::select! {
                _ = tokio::time::sleep_until(next_save) => break,
                changed = changes.changed() => closed = changed.is_err(),
            }
        }
        let latest = *changes.borrow_and_update();
        if latest != saved {
            // Read after the version: it holds at least what that version recorded.
            let snapshot = ledger.snapshot();
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.save(&snapshot))
                .await
                .expect("offset save")?;
            saved = latest;
            next_save = tokio::time::Instant::now() + interval;
        }
        if closed {
            return Ok(());
        }
    }
}
