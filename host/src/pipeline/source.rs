//! The source loop: polls batches, hands them downstream, and acknowledges finished ones in
//! order (positions to the source, offsets to the store).

use std::sync::Arc;
use std::time::Duration;

use orbit_plugin_api::ffi::SourceBox;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use abi_stable::std_types::RVec;

use super::acks::{self, AckTracker};
use super::stage::Stage;
use super::{Batch, Pause, PipelineError, Shared};
use crate::config::BatchSpec;
use crate::offsets::Ledger;

pub(super) struct SourceTask {
    pub(super) source: Stage<SourceBox>,
    pub(super) tx: mpsc::Sender<Batch>,
    pub(super) completions: mpsc::UnboundedReceiver<u64>,
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    /// Where acknowledged positions go; dropped when the loop ends, which ends the persister.
    pub(super) ledger: Ledger,
    pub(super) batch: BatchSpec,
    pub(super) grace: Duration,
    pub(super) pause: Option<Pause>,
}

enum SourceEvent<'a> {
    Stopped,
    Shutdown,
    Completed(u64),
    Permit(mpsc::Permit<'a, Batch>),
    GraceExpired,
    IdleOver,
    PauseChanged,
}

/// Resolves when a pause or resume is requested; never without a pause link (or once its
/// sender is gone).
async fn pause_changed(pause: &mut Option<Pause>) {
    if let Some(p) = pause {
        if p.requested.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

async fn reserve(tx: &Option<mpsc::Sender<Batch>>) -> Option<mpsc::Permit<'_, Batch>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Why the source loop ended.
enum Ended {
    Done,
    Failed(PipelineError),
}

pub(super) async fn run_source(task: SourceTask) -> Result<(), PipelineError> {
    let SourceTask {
        mut source,
        tx,
        mut completions,
        shared,
        shutdown,
        ledger,
        batch,
        grace,
        mut pause,
    } = task;
    let mut tx = Some(tx);
    let mut tracker = AckTracker::default();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Set after a poll came back empty while batches were in flight: records that arrive now
    // wait for the first completion (or this instant, `max_wait` on) and go in one batch, and
    // a source that has nothing until its batches are acknowledged (a broker's prefetch credit
    // used up) gets its acknowledgements instead of being polled in a spin.
    let mut idle_until: Option<tokio::time::Instant> = None;
    let max_records = batch.max_records.min(u32::MAX as usize) as u32;
    let max_wait_ms = batch.max_wait.as_millis().min(u64::MAX as u128) as u64;
    let span = source.instance.span().clone();
    let mut acks = Acknowledger {
        tracker: &mut tracker,
        ledger: &ledger,
        shared: &shared,
    };

    let ended = loop {
        let in_flight = acks.tracker.in_flight();
        source
            .policy
            .metrics
            .in_flight_batches
            .set(in_flight as i64);
        // Paused: no polling; reported paused once nothing is in flight.
        let paused = pause.as_ref().is_some_and(|p| *p.requested.borrow());
        if let Some(p) = &pause {
            p.drained.send_if_modified(|d| {
                let now = paused && in_flight == 0;
                std::mem::replace(d, now) != now
            });
        }
        if tx.is_none() && in_flight == 0 {
            break Ended::Done;
        }
        // The event borrows `tx` (a send permit); the block ends the borrow before `tx` changes.
        let mut stop_polling = false;
        {
            let event = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => SourceEvent::Stopped,
                Some(id) = completions.recv() => SourceEvent::Completed(id),
                _ = shutdown.cancelled(), if drain_deadline.is_none() => SourceEvent::Shutdown,
                _ = sleep_until(drain_deadline) => SourceEvent::GraceExpired,
                _ = sleep_until(idle_until) => SourceEvent::IdleOver,
                _ = pause_changed(&mut pause) => SourceEvent::PauseChanged,
                Some(permit) = reserve(&tx), if idle_until.is_none() && !paused => SourceEvent::Permit(permit),
            };
            match event {
                SourceEvent::Stopped => break Ended::Done,
                SourceEvent::Shutdown => {
                    tracing::info!(
                        in_flight_batches = acks.tracker.in_flight(),
                        "shutting down: stopped polling, draining in-flight batches"
                    );
                    stop_polling = true;
                    drain_deadline = Some(tokio::time::Instant::now() + grace);
                }
                SourceEvent::GraceExpired => {
                    tracing::warn!(
                        in_flight_batches = acks.tracker.in_flight(),
                        grace = %humantime::format_duration(grace),
                        "grace period over with batches undelivered; their positions stay unacknowledged and will be read again"
                    );
                    shared.stop.cancel();
                    break Ended::Done;
                }
                SourceEvent::IdleOver => idle_until = None,
                SourceEvent::PauseChanged => {
                    let now = pause.as_ref().is_some_and(|p| *p.requested.borrow());
                    tracing::info!(
                        in_flight_batches = acks.tracker.in_flight(),
                        "{}",
                        if now {
                            "paused: polling stopped"
                        } else {
                            "resumed: polling"
                        }
                    );
                }
                SourceEvent::Completed(id) => {
                    idle_until = None;
                    if let Err(e) = acks.complete(id, &mut completions) {
                        break Ended::Failed(e);
                    }
                    if let Err(e) = acks.acknowledge(&mut source).instrument(span.clone()).await {
                        break e.map_or(Ended::Done, Ended::Failed);
                    }
                }
                SourceEvent::Permit(permit) => {
                    let poll_started = tokio::time::Instant::now();
                    // Group commit: an idle pipeline waits up to `max_wait` for the first
                    // record and takes it at once; while batches are in flight the source only
                    // takes what is ready, so the poll never holds back their acknowledgements.
                    let wait_ms = if acks.tracker.in_flight() == 0 {
                        max_wait_ms
                    } else {
                        0
                    };
                    let polled = source
                        .policy
                        .call(&mut source.instance, 0, &shared.stop, move |s| {
                            s.poll(max_records, wait_ms).into_result()
                        })
                        .instrument(span.clone())
                        .await;
                    let mut out = match polled {
                        Ok((out, _attempts)) => out,
                        Err(e) => {
                            break shared
                                .source_error(&source.instance.id, e)
                                .map_or(Ended::Done, Ended::Failed)
                        }
                    };
                    let polled_count = out.records.len();
                    shared.stats.record_polled(polled_count);
                    source.policy.metrics.received(polled_count);
                    match source
                        .policy
                        .admit_polled(&mut out.records, &shared.stop)
                        .await
                    {
                        Ok(dropped) => shared.stats.record_dropped(dropped),
                        Err(_) => break Ended::Done,
                    }
                    // The instance that made the poll: its batch is acknowledged only to it.
                    let id = acks
                        .tracker
                        .register(source.instance.generation(), out.positions.into_vec());
                    if out.records.is_empty() {
                        drop(permit);
                        // Completing the empty batch also takes the completions already
                        // waiting, so this counts what is still in flight after them.
                        if let Err(e) = acks.complete(id, &mut completions) {
                            break Ended::Failed(e);
                        }
                        if let Err(e) = acks.acknowledge(&mut source).instrument(span.clone()).await
                        {
                            break e.map_or(Ended::Done, Ended::Failed);
                        }
                        // Nothing ready while batches are in flight: see `idle_until`.
                        if polled_count == 0 && acks.tracker.in_flight() > 0 {
                            let until = poll_started + batch.max_wait;
                            if tokio::time::Instant::now() < until {
                                idle_until = Some(until);
                            }
                        }
                    } else {
                        source.policy.metrics.sent(out.records.iter());
                        permit.send(Batch {
                            id,
                            records: out.records,
                        });
                    }
                    if out.end_of_stream {
                        tracing::info!("source reached the end of its input; draining");
                        stop_polling = true;
                    }
                }
            }
        }
        if stop_polling {
            tx = None;
        }
    };
    source.instance.close(|s| s.close().into_result()).await;
    drop(ledger);
    match ended {
        Ended::Done => Ok(()),
        Ended::Failed(e) => Err(e),
    }
}

/// Acknowledges finished batches to the source and hands their offsets to the store.
struct Acknowledger<'a> {
    tracker: &'a mut AckTracker,
    ledger: &'a Ledger,
    shared: &'a Shared,
}

impl Acknowledger<'_> {
    /// Marks batch `id` finished, and every other completion already waiting.
    fn complete(
        &mut self,
        id: u64,
        completions: &mut mpsc::UnboundedReceiver<u64>,
    ) -> Result<(), PipelineError> {
        let internal = |e: acks::AckError| PipelineError::Internal {
            pipeline: self.shared.pipeline.clone(),
            detail: e.to_string(),
        };
        self.tracker.complete(id).map_err(internal)?;
        while let Ok(id) = completions.try_recv() {
            self.tracker.complete(id).map_err(internal)?;
        }
        Ok(())
    }

    /// `Err(None)` when the pipeline is stopping.
    async fn acknowledge(
        &mut self,
        source: &mut Stage<SourceBox>,
    ) -> Result<(), Option<PipelineError>> {
        let current = source.instance.generation();
        let released = self.tracker.take_ready(current);
        if released.is_empty() {
            return Ok(());
        }
        self.ledger.record(&released.store);
        if !released.ack.is_empty() {
            // Only to the instance that polled these batches; if it is gone by now, a later
            // one never sees them (their delivery tags or sequences are not its own).
            let positions: Arc<RVec<_>> = Arc::new(released.ack.into());
            source
                .policy
                .call_pinned(&mut source.instance, current, &self.shared.stop, move |s| {
                    s.ack(positions.as_rslice()).into_result()
                })
                .await
                .map_err(|e| self.shared.source_error(&source.instance.id, e))?;
        }
        Ok(())
    }
}
