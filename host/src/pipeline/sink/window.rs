//! The windowed sink loop: up to `W` batches begun (`begin_write`) and not yet confirmed,
//! finished (`finish_write`) oldest first, so batches complete in the order the source
//! produced them and a position is acknowledged only once every batch up to it is confirmed.
//!
//! Invariants:
//! * only the front of the window completes: completions go in batch order;
//! * nothing more is begun after a `begin_write` failed, or while the front needs a resend;
//! * an entry is finished only on the instance that began it; once that instance is gone
//!   (a timeout, a panic), the entry failed as a whole;
//! * after a failure the whole window is finished first, then [`super::plan`] decides what goes
//!   again, and the resend runs one batch at a time through the policy stack, in window order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::RVec;
use orbit_plugin_api::{ErrorKind, PluginError, Record};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::plan::{plan, Ended};
use super::{count_written, write_through_policy};
use crate::config::DEFAULT_SINK_IN_FLIGHT;
use crate::pipeline::dead_letter::{self, Failure};
use crate::pipeline::stage::{recv, sample, Stage};
use crate::pipeline::{Batch, PipelineError, Shared};
use crate::plugin::HostSink;
use crate::policy::{CallError, Resend};

/// How long a `finish_write` waits while the window has room for another batch: a new batch
/// is begun within about this long.
const FINISH_SLICE_WITH_ROOM: Duration = Duration::from_millis(2);
/// The longest one `finish_write` waits (so a stop is seen within it).
const FINISH_SLICE: Duration = Duration::from_secs(1);

/// The window: `sink.max_in_flight` (or the default) bounded by what the plugin supports (1 for
/// a library built before pipelined sinks, or a sink that does not opt in).
pub(super) async fn size(stage: &mut Stage<HostSink>, configured: Option<usize>) -> usize {
    let supported = stage.max_in_flight().await;
    let wanted = configured.unwrap_or(DEFAULT_SINK_IN_FLIGHT);
    let window = wanted.min(supported).max(1);
    if window > 1 {
        tracing::info!("the sink keeps up to {window} batches in flight");
    } else if configured.is_some_and(|n| n > 1) {
        tracing::warn!(
            "`max_in_flight` is {wanted} but this sink writes one batch at a time (its plugin \
             does not support batches in flight, or was built before plugin-api 0.1.1)"
        );
    }
    window
}

struct Entry {
    id: u64,
    records: Arc<RVec<Record>>,
    generation: u64,
    begun: Instant,
    ended: Option<Ended>,
}

pub(super) async fn run(
    stage: &mut Stage<HostSink>,
    rx: &mut mpsc::Receiver<Batch>,
    shared: &Shared,
    w: usize,
) -> Result<(), Option<PipelineError>> {
    let mut window: VecDeque<Entry> = VecDeque::with_capacity(w);
    let mut open = true;
    loop {
        fill(stage, rx, shared, &mut window, &mut open, w).await?;
        let Some(front) = window.front() else {
            if open {
                continue;
            }
            return Ok(());
        };
        if front.ended.is_none() {
            let room = open && window.len() < w;
            finish_front(stage, shared, &mut window, room).await?;
        }
        let Some(ended) = window.front().and_then(|e| e.ended.as_ref()) else {
            continue;
        };
        if !matches!(ended, Ended::Done(_)) || ended.fatal().is_some() || ended.needs_resend() {
            drain(stage, shared, &mut window).await?;
            recover(stage, shared, window.drain(..).collect()).await?;
            continue;
        }
        let entry = window.pop_front().expect("a front");
        complete(stage, shared, entry).await?;
    }
}

/// Begins batches while the window has room and batches are waiting (waits for one only when
/// the window is empty).
async fn fill(
    stage: &mut Stage<HostSink>,
    rx: &mut mpsc::Receiver<Batch>,
    shared: &Shared,
    window: &mut VecDeque<Entry>,
    open: &mut bool,
    w: usize,
) -> Result<(), Option<PipelineError>> {
    while *open && window.len() < w && !window.iter().any(|e| e.ended.is_some()) {
        let next = if window.is_empty() {
            recv(rx, shared).await
        } else {
            match rx.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => None,
            }
        };
        let Some(mut batch) = next else {
            *open = false;
            if shared.stop.is_cancelled() {
                return Err(None);
            }
            return Ok(());
        };
        stage.policy.metrics.received(batch.records.len());
        sample(&stage.policy, &mut batch.records, shared).await;
        let records = Arc::new(batch.records);
        let mut entry = Entry {
            id: batch.id,
            records,
            generation: 0,
            begun: Instant::now(),
            ended: None,
        };
        if entry.records.is_empty() {
            entry.ended = Some(Ended::Done(Default::default()));
        } else {
            let (generation, result) = stage
                .begin(&entry.records, &shared.stop)
                .await
                .map_err(|e| stop_error(shared, stage, e))?;
            entry.generation = generation;
            entry.ended = result.err().map(Ended::Failed);
        }
        window.push_back(entry);
        let peak = &stage.policy.metrics.in_flight_max;
        peak.fetch_max(window.len() as u64, Relaxed);
    }
    Ok(())
}

fn stop_error(shared: &Shared, stage: &Stage<HostSink>, e: CallError) -> Option<PipelineError> {
    shared.source_error(&stage.instance.id, e)
}

/// One `finish_write` for the front: a short one while another batch could be begun, else up
/// to a second and never past the front's timeout.
async fn finish_front(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    window: &mut VecDeque<Entry>,
    room: bool,
) -> Result<(), Option<PipelineError>> {
    let front = window.front().expect("a front");
    let generation = front.generation;
    if stage.instance.is_lost() || stage.instance.generation() != generation {
        lose(window, generation);
        return Ok(());
    }
    let deadline = front.begun + stage.policy.call_timeout();
    let now = Instant::now();
    if now >= deadline {
        time_out(stage, window);
        return Ok(());
    }
    let slice = if room {
        FINISH_SLICE_WITH_ROOM
    } else {
        FINISH_SLICE
    };
    let wait = slice.min(deadline - now);
    let result = stage
        .finish(generation, wait, &shared.stop)
        .await
        .map_err(|e| stop_error(shared, stage, e))?;
    let front = window.front_mut().expect("a front");
    match result {
        None => lose(window, generation),
        Some(Ok(None)) => {}
        Some(Ok(Some(out))) => front.ended = Some(Ended::Done(out)),
        Some(Err(e)) => {
            front.ended = Some(Ended::Failed(e));
            if stage.instance.is_lost() {
                lose(window, generation);
            }
        }
    }
    Ok(())
}

/// The instance that began these entries is gone: what it had in flight failed.
fn lose(window: &mut VecDeque<Entry>, generation: u64) {
    for e in window.iter_mut() {
        if e.ended.is_none() && e.generation == generation {
            e.ended = Some(Ended::Failed(PluginError::retriable(
                "the sink instance was replaced before this batch was confirmed",
            )));
        }
    }
}

/// The front was not confirmed within the call timeout: the instance is abandoned (it may be
/// stuck) and every batch still in flight failed.
fn time_out(stage: &mut Stage<HostSink>, window: &mut VecDeque<Entry>) {
    let timeout = stage.policy.call_timeout();
    stage.policy.metrics.timeouts.fetch_add(1, Relaxed);
    stage.policy.metrics.error(ErrorKind::Retriable, true);
    tracing::warn!(
        "a batch was not confirmed within {}; abandoning the instance",
        humantime::format_duration(timeout)
    );
    stage.instance.abandon();
    for e in window.iter_mut().filter(|e| e.ended.is_none()) {
        e.ended = Some(Ended::Failed(PluginError::retriable(format!(
            "not confirmed within {}",
            humantime::format_duration(timeout)
        ))));
    }
}

/// Finishes every entry still in flight.
async fn drain(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    window: &mut VecDeque<Entry>,
) -> Result<(), Option<PipelineError>> {
    while let Some(i) = window.iter().position(|e| e.ended.is_none()) {
        // Entries before `i` have ended; the plugin's oldest unfinished batch is entry `i`.
        window.rotate_left(i);
        let result = finish_front(stage, shared, window, false).await;
        window.rotate_right(i);
        result?;
    }
    Ok(())
}

/// The front was confirmed and needs no resend: its rejects are dead-lettered, and it
/// completes.
async fn complete(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    entry: Entry,
) -> Result<(), Option<PipelineError>> {
    let Some(Ended::Done(out)) = &entry.ended else {
        unreachable!("only a confirmed batch completes this way")
    };
    let n = entry.records.len();
    let failures: Vec<Failure> = out
        .failures
        .iter()
        .map(|f| Failure::reported(f, 1))
        .collect();
    let mut failed = vec![false; n];
    for f in &failures {
        if let Some(slot) = failed.get_mut(f.index) {
            *slot = true;
        }
    }
    if !failures.is_empty() {
        dead_letter::handle(shared, &stage.instance.id, &entry.records, failures)
            .await
            .map_err(Some)?;
    }
    stage.policy.record_success();
    let written = failed.iter().filter(|f| !**f).count();
    count_written(stage, shared, &entry.records, written, &failed);
    shared.complete(entry.id);
    Ok(())
}

/// After a failure in the window (every entry ended): dead-letters the rejects, resends what
/// [`plan`] says, one batch at a time through the policy stack, and completes the batches in
/// order.
async fn recover(
    stage: &mut Stage<HostSink>,
    shared: &Shared,
    entries: Vec<Entry>,
) -> Result<(), Option<PipelineError>> {
    let ended: Vec<&Ended> = entries
        .iter()
        .map(|e| e.ended.as_ref().expect("drained"))
        .collect();
    if let Some(error) = ended.iter().find_map(|e| e.fatal()) {
        return Err(Some(shared.stage_error(&stage.instance.id, error.clone())));
    }
    // Every batch is resent after the first resend: it waits for the longest retry-after any
    // of them was given (a 429 on a later batch than the one that failed first).
    let longest = ended.iter().filter_map(|e| e.retry_after()).max();
    let mut after = ended
        .iter()
        .find_map(|e| e.resend_error())
        .map(|e| match longest {
            Some(d) => (e.clone().with_retry_after(d), entries[0].begun),
            None => (e.clone(), entries[0].begun),
        });
    let window: Vec<_> = entries
        .iter()
        .zip(&ended)
        .map(|(e, x)| (&*e.records, *x))
        .collect();
    let pieces = plan(&window);
    let resent: usize = pieces
        .iter()
        .map(|p| p.order_only.iter().filter(|o| **o).count())
        .sum();
    stage
        .policy
        .metrics
        .order_resent
        .fetch_add(resent as u64, Relaxed);
    for (entry, piece) in entries.iter().zip(pieces) {
        let rejects: Vec<Failure> = piece
            .rejects
            .into_iter()
            .map(|(index, error)| Failure {
                index,
                error,
                attempts: 1,
            })
            .collect();
        let mut failed = vec![false; entry.records.len()];
        for r in &rejects {
            failed[r.index] = true;
        }
        dead_letter::handle(shared, &stage.instance.id, &entry.records, rejects)
            .await
            .map_err(Some)?;
        // Records resent only for order were delivered by their first copy: they count once.
        let mut written = piece.delivered + piece.order_only.iter().filter(|o| **o).count();
        if !piece.resend.is_empty() {
            let subset: RVec<Record> = piece
                .resend
                .iter()
                .map(|&i| entry.records[i].clone())
                .collect();
            let resend = Resend {
                order_only: &piece.order_only,
                after: after.take(),
            };
            let (n, lost) = write_through_policy(stage, shared, Arc::new(subset), resend).await?;
            written += n;
            for (k, _) in lost.iter().enumerate().filter(|(_, l)| **l) {
                failed[piece.resend[k]] = true;
            }
        }
        count_written(stage, shared, &entry.records, written, &failed);
        shared.complete(entry.id);
    }
    Ok(())
}
