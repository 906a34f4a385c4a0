//! Persisting acknowledged offsets, coalesced to at most one write per interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{PipelineError, Shared};
use crate::offsets::{FileOffsetStore, OffsetStoreError, Offsets};

/// Writes the latest acknowledged offsets when they change, at most once per `interval`
/// (updates in between are coalesced: only the latest matters), and the final value at once
/// when the source task is done. Each write is a small file fsynced and renamed into place, which
/// costs more than a batch on a fast pipeline; the interval bounds what a crash re-reads.
/// A failed save fails the pipeline at once: running on with nothing saved would make a crash
/// re-read everything since, and hide the cause until the end.
pub(super) async fn persist_offsets(
    store: FileOffsetStore,
    rx: watch::Receiver<Offsets>,
    interval: Duration,
    shared: Arc<Shared>,
) {
    if let Err(source) = persist_offsets_until_closed(store, rx, interval).await {
        shared.fail(PipelineError::Offsets {
            pipeline: shared.pipeline.clone(),
            source,
        });
    }
}

async fn persist_offsets_until_closed(
    store: FileOffsetStore,
    mut rx: watch::Receiver<Offsets>,
    interval: Duration,
) -> Result<(), OffsetStoreError> {
    let mut saved = rx.borrow().clone();
    let mut next_save = tokio::time::Instant::now();
    loop {
        let mut closed = rx.changed().await.is_err();
        // Let updates pile up until the interval is over, unless the source task ends.
        while !closed && tokio::time::Instant::now() < next_save {
            tokio::select! {
                _ = tokio::time::sleep_until(next_save) => break,
                changed = rx.changed() => closed = changed.is_err(),
            }
        }
        let latest = rx.borrow_and_update().clone();
        if latest != saved {
            let s = store.clone();
            let snapshot = latest.clone();
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
