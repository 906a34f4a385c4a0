//! Running one pipeline: stages as tokio tasks joined by bounded channels, batches flowing
//! forward, completions flowing back to the source, positions acknowledged in order.
//!
//! ```text
//! source task ──batch──▶ transform task … ──▶ sink task
//!     ▲   │                    │                 │
//!     │   └─ offsets ─▶ offset store persister   │
//!     └────────── completed batch ids ◀──────────┘ (and from transforms that emptied a batch)
//! ```
//!
//! The source task owns the source instance, the [`acks::AckTracker`] and the offsets. Records
//! a transform or sink fails go to the dead-letter task (with `errors.tolerance: all`) before
//! their batch counts as finished, or stop the pipeline (`none`).

mod acks;
mod build;
mod dead_letter;
mod stage;
mod stats;

pub use build::{resolve, ResolvedStage};
pub use stage::{StageId, StageInstance};
pub use stats::{Stats, Summary};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RString, RVec};
use orbit_plugin_api::ffi::{SinkBox, SourceBox, SourceContextFfi, StageContextFfi, TransformBox};
use orbit_plugin_api::{PluginError, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{BatchSpec, PipelineSpec, StageRole, Tolerance};
use crate::offsets::{to_positions, FileOffsetStore, OffsetStoreError, Offsets};
use acks::AckTracker;
use dead_letter::{DeadLetterRequest, RecordFailures};

/// Why a pipeline stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline `{pipeline}`: stage `{stage}` (plugin `{plugin}`) failed: {error}")]
    Stage {
        pipeline: String,
        stage: String,
        plugin: String,
        error: PluginError,
    },
    #[error(
        "pipeline `{pipeline}`: stage `{stage}` (plugin `{plugin}`) could not deliver a record \
         from {position} ({error}); it was not acknowledged and will be read again on restart. \
         Fix the cause, or set `errors.tolerance: all` with a dead-letter sink"
    )]
    Record {
        pipeline: String,
        stage: String,
        plugin: String,
        position: String,
        error: PluginError,
    },
    #[error(
        "pipeline `{pipeline}`: the dead-letter sink (plugin `{plugin}`) failed: {error}; the \
         records it was given were not acknowledged and will be read again on restart"
    )]
    DeadLetter {
        pipeline: String,
        plugin: String,
        error: PluginError,
    },
    #[error("pipeline `{pipeline}`: {source}")]
    Offsets {
        pipeline: String,
        source: OffsetStoreError,
    },
}

/// A batch on its way through the stages; `id` keys it in the ack tracker.
struct Batch {
    id: u64,
    records: RVec<Record>,
}

/// What every task of one pipeline shares.
struct Shared {
    pipeline: String,
    tolerance: Tolerance,
    stats: Arc<Stats>,
    /// Cancelled when any task fails; the others stop without finishing their batches.
    failed: CancellationToken,
    failure: Mutex<Option<PipelineError>>,
    completions: mpsc::UnboundedSender<u64>,
    dead_letters: Option<mpsc::Sender<DeadLetterRequest>>,
}

impl Shared {
    fn fail(&self, error: PipelineError) {
        let mut slot = self.failure.lock().expect("failure lock");
        if slot.is_none() {
            tracing::error!(pipeline = %self.pipeline, "{error}");
            *slot = Some(error);
        }
        self.failed.cancel();
    }

    fn stage_error(&self, stage: &StageId, error: PluginError) -> PipelineError {
        PipelineError::Stage {
            pipeline: self.pipeline.clone(),
            stage: stage.stage.clone(),
            plugin: stage.plugin.clone(),
            error,
        }
    }

    fn complete(&self, id: u64) {
        // The source task is gone only when the pipeline is ending; nothing to acknowledge then.
        let _ = self.completions.send(id);
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub stages: Vec<ResolvedStage>,
    pub store: FileOffsetStore,
    /// How long a shutdown waits for in-flight batches to be delivered.
    pub grace: Duration,
    /// How often a progress line is logged; zero for never.
    pub progress_every: Duration,
}

fn stage_ctx(pipeline: &str, s: &ResolvedStage) -> StageContextFfi {
    StageContextFfi {
        pipeline: RString::from(pipeline),
        stage: RString::from(s.name.as_str()),
        config: RString::from(s.config_json.as_str()),
    }
}

impl Pipeline {
    fn stage(&self, role: StageRole) -> Option<&ResolvedStage> {
        self.stages.iter().find(|s| s.role == role)
    }

    /// Runs until the source ends (and everything is delivered), `shutdown` is cancelled (and
    /// in-flight batches are drained within the grace period), or a stage fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Summary, PipelineError> {
        let span = tracing::info_span!("pipeline", pipeline = %self.spec.name);
        self.run_in_span(shutdown).instrument(span).await
    }

    async fn run_in_span(self, shutdown: CancellationToken) -> Result<Summary, PipelineError> {
        let name = self.spec.name.clone();
        let started = Instant::now();
        let stats = Arc::new(Stats::default());

        let offsets_err = |source| PipelineError::Offsets {
            pipeline: name.clone(),
            source,
        };
        let store = self.store.clone();
        let offsets = tokio::task::spawn_blocking(move || store.load())
            .await
            .expect("offset load")
            .map_err(offsets_err)?;
        if !offsets.is_empty() {
            tracing::info!(
                partitions = offsets.len(),
                file = %self.store.path().display(),
                "resuming from stored offsets"
            );
        }

        // Create every instance before any record moves, so a bad config or an unreachable
        // server fails the pipeline with nothing read.
        let source_spec = self.stage(StageRole::Source).expect("a source").clone();
        let source_ctx = SourceContextFfi {
            pipeline: RString::from(name.as_str()),
            stage: RString::from(source_spec.name.as_str()),
            config: RString::from(source_spec.config_json.as_str()),
            offsets: to_positions(&offsets).into(),
        };
        let source: SourceBox = create(&name, &source_spec, |m, n| {
            (m.create_source())(n, source_ctx)
        })
        .await?;
        let mut transforms: Vec<StageInstance<TransformBox>> = Vec::new();
        for i in 0..self.spec.transforms.len() {
            let s = self
                .stage(StageRole::Transform(i))
                .expect("resolved")
                .clone();
            let ctx = stage_ctx(&name, &s);
            let t = create(&name, &s, |m, n| (m.create_transform())(n, ctx)).await?;
            transforms.push(StageInstance::new(
                s.name.clone(),
                s.component.name.clone(),
                t,
            ));
        }
        let sink_spec = self.stage(StageRole::Sink).expect("a sink").clone();
        let ctx = stage_ctx(&name, &sink_spec);
        let sink: SinkBox = create(&name, &sink_spec, |m, n| (m.create_sink())(n, ctx)).await?;
        let dead_letter_sink = match self.stage(StageRole::DeadLetter) {
            Some(s) if self.spec.errors.tolerance == Tolerance::All => {
                let ctx = stage_ctx(&name, s);
                let d: SinkBox = create(&name, s, |m, n| (m.create_sink())(n, ctx)).await?;
                Some(StageInstance::new(
                    s.name.clone(),
                    s.component.name.clone(),
                    d,
                ))
            }
            _ => None,
        };

        let (completions_tx, completions_rx) = mpsc::unbounded_channel();
        let (dead_letter_tx, dead_letter_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            pipeline: name.clone(),
            tolerance: self.spec.errors.tolerance,
            stats: stats.clone(),
            failed: CancellationToken::new(),
            failure: Mutex::new(None),
            completions: completions_tx,
            dead_letters: dead_letter_sink.as_ref().map(|_| dead_letter_tx),
        });

        let mut tasks = tokio::task::JoinSet::new();
        let (offsets_tx, offsets_rx) = watch::channel(offsets.clone());
        let persister =
            tokio::spawn(persist_offsets(self.store.clone(), offsets_rx).in_current_span());

        let buffer = self.spec.batch.buffer;
        let (first_tx, mut rx) = mpsc::channel::<Batch>(buffer);
        for t in transforms {
            let (tx, next_rx) = mpsc::channel::<Batch>(buffer);
            spawn_stage(
                &mut tasks,
                &shared,
                run_transform(t, rx, tx, shared.clone()),
            );
            rx = next_rx;
        }
        let sink = StageInstance::new(
            sink_spec.name.clone(),
            sink_spec.component.name.clone(),
            sink,
        );
        spawn_stage(&mut tasks, &shared, run_sink(sink, rx, shared.clone()));
        if let Some(d) = dead_letter_sink {
            spawn_stage(
                &mut tasks,
                &shared,
                dead_letter::run(d, dead_letter_rx, shared.clone()),
            );
        }
        let source = StageInstance::new(
            source_spec.name.clone(),
            source_spec.component.name.clone(),
            source,
        );
        let progress = (!self.progress_every.is_zero()).then(|| {
            tokio::spawn(stats::log_progress(stats.clone(), self.progress_every).in_current_span())
        });
        let source_result = run_source(SourceTask {
            source,
            tx: first_tx,
            completions: completions_rx,
            shared: shared.clone(),
            shutdown,
            offsets,
            offsets_tx,
            batch: self.spec.batch.clone(),
            grace: self.grace,
        })
        .await;
        if let Err(e) = source_result {
            shared.fail(e);
        }
        // Stages end when their input closes, or after their current call when the pipeline
        // failed.
        while tasks.join_next().await.is_some() {}
        if let Some(p) = progress {
            p.abort();
        }
        match persister.await.expect("offset persister") {
            Ok(()) => {}
            Err(e) => shared.fail(PipelineError::Offsets {
                pipeline: name.clone(),
                source: e,
            }),
        }
        let summary = stats.summary(started.elapsed());
        if let Some(e) = shared.failure.lock().expect("failure lock").take() {
            return Err(e);
        }
        Ok(summary)
    }
}

/// Runs a stage task; its failure stops the whole pipeline at once (the source stops polling,
/// the other stages stop after their current call).
fn spawn_stage(
    tasks: &mut tokio::task::JoinSet<()>,
    shared: &Arc<Shared>,
    task: impl std::future::Future<Output = Result<(), PipelineError>> + Send + 'static,
) {
    let shared = shared.clone();
    tasks.spawn(
        async move {
            if let Err(e) = task.await {
                shared.fail(e);
            }
        }
        .in_current_span(),
    );
}

async fn create<T: Send + 'static>(
    pipeline: &str,
    stage: &ResolvedStage,
    f: impl FnOnce(
            orbit_plugin_api::ffi::PluginModuleRef,
            abi_stable::std_types::RStr<'_>,
        ) -> RResult<T, PluginError>
        + Send
        + 'static,
) -> Result<T, PipelineError> {
    let module = stage.component.library.module;
    let component = stage.component.name.clone();
    tokio::task::spawn_blocking(move || f(module, component.as_str().into()).into_result())
        .await
        .expect("the SDK catches panics in factories")
        .map_err(|error| PipelineError::Stage {
            pipeline: pipeline.to_string(),
            stage: stage.name.clone(),
            plugin: stage.component.name.clone(),
            error,
        })
}

/// Writes the latest acknowledged offsets whenever they change, coalescing updates that arrive
/// while a write is in progress; writes the final value once the source task is done.
async fn persist_offsets(
    store: FileOffsetStore,
    mut rx: watch::Receiver<Offsets>,
) -> Result<(), OffsetStoreError> {
    let mut saved = rx.borrow().clone();
    loop {
        let closed = rx.changed().await.is_err();
        let latest = rx.borrow_and_update().clone();
        if latest != saved {
            let s = store.clone();
            let snapshot = latest.clone();
            tokio::task::spawn_blocking(move || s.save(&snapshot))
                .await
                .expect("offset save")?;
            saved = latest;
        }
        if closed {
            return Ok(());
        }
    }
}

struct SourceTask {
    source: StageInstance<SourceBox>,
    tx: mpsc::Sender<Batch>,
    completions: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    offsets: Offsets,
    offsets_tx: watch::Sender<Offsets>,
    batch: BatchSpec,
    grace: Duration,
}

enum SourceEvent<'a> {
    Failed,
    Shutdown,
    Completed(u64),
    Permit(mpsc::Permit<'a, Batch>),
    GraceExpired,
}

async fn reserve(tx: &Option<mpsc::Sender<Batch>>) -> Option<mpsc::Permit<'_, Batch>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn run_source(task: SourceTask) -> Result<(), PipelineError> {
    let SourceTask {
        mut source,
        tx,
        mut completions,
        shared,
        shutdown,
        mut offsets,
        offsets_tx,
        batch,
        grace,
    } = task;
    let mut tx = Some(tx);
    let mut tracker = AckTracker::default();
    let mut next_id = 0u64;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let max_records = batch.max_records.min(u32::MAX as usize) as u32;
    let max_wait_ms = batch.max_wait.as_millis().min(u64::MAX as u128) as u64;

    let result = loop {
        if tx.is_none() && tracker.in_flight() == 0 {
            break Ok(());
        }
        // The event borrows `tx` (a send permit); the block ends the borrow before `tx` changes.
        let mut stop_polling = false;
        {
            let event = tokio::select! {
                biased;
                _ = shared.failed.cancelled() => SourceEvent::Failed,
                Some(id) = completions.recv() => SourceEvent::Completed(id),
                _ = shutdown.cancelled(), if tx.is_some() => SourceEvent::Shutdown,
                _ = sleep_until(drain_deadline) => SourceEvent::GraceExpired,
                Some(permit) = reserve(&tx) => SourceEvent::Permit(permit),
            };
            match event {
                SourceEvent::Failed => break Ok(()),
                SourceEvent::Shutdown => {
                    tracing::info!(
                        in_flight_batches = tracker.in_flight(),
                        "shutting down: stopped polling, draining in-flight batches"
                    );
                    stop_polling = true;
                    drain_deadline = Some(tokio::time::Instant::now() + grace);
                }
                SourceEvent::GraceExpired => {
                    tracing::warn!(
                        in_flight_batches = tracker.in_flight(),
                        grace = %humantime::format_duration(grace),
                        "grace period over with batches undelivered; their positions stay unacknowledged and will be read again"
                    );
                    break Ok(());
                }
                SourceEvent::Completed(id) => {
                    tracker.complete(id);
                    while let Ok(id) = completions.try_recv() {
                        tracker.complete(id);
                    }
                    if let Err(e) = acknowledge(
                        &mut source,
                        &mut tracker,
                        &mut offsets,
                        &offsets_tx,
                        &shared,
                    )
                    .await
                    {
                        break Err(e);
                    }
                }
                SourceEvent::Permit(permit) => {
                    let polled = source
                        .call(move |s| s.poll(max_records, max_wait_ms).into_result())
                        .await;
                    let out = match polled {
                        Ok(out) => out,
                        Err(e) => break Err(shared.stage_error(&source.id, e)),
                    };
                    let id = next_id;
                    next_id += 1;
                    tracker.register(id, out.positions.into_vec());
                    shared.stats.record_polled(out.records.len());
                    if out.records.is_empty() {
                        drop(permit);
                        tracker.complete(id);
                        if let Err(e) = acknowledge(
                            &mut source,
                            &mut tracker,
                            &mut offsets,
                            &offsets_tx,
                            &shared,
                        )
                        .await
                        {
                            break Err(e);
                        }
                    } else {
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
    if let Err(e) = source.call(|s| s.close().into_result()).await {
        tracing::warn!("closing the source failed: {e}");
    }
    drop(offsets_tx);
    result
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Acknowledges the positions of the finished prefix of batches to the source and hands them
/// to the offset store.
async fn acknowledge(
    source: &mut StageInstance<SourceBox>,
    tracker: &mut AckTracker,
    offsets: &mut Offsets,
    offsets_tx: &watch::Sender<Offsets>,
    shared: &Shared,
) -> Result<(), PipelineError> {
    let ready = tracker.take_ready();
    if ready.is_empty() {
        return Ok(());
    }
    for p in &ready {
        offsets.insert((p.stream.to_string(), p.partition), p.offset.to_vec());
    }
    let positions: RVec<_> = ready.into();
    source
        .call(move |s| s.ack(positions.as_rslice()).into_result())
        .await
        .map_err(|e| shared.stage_error(&source.id, e))?;
    offsets_tx.send_replace(offsets.clone());
    Ok(())
}

async fn recv(rx: &mut mpsc::Receiver<Batch>, shared: &Shared) -> Option<Batch> {
    tokio::select! {
        biased;
        _ = shared.failed.cancelled() => None,
        b = rx.recv() => b,
    }
}

async fn run_transform(
    mut stage: StageInstance<TransformBox>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    let result = async {
        while let Some(batch) = recv(&mut rx, &shared).await {
            let records = batch.records;
            let (records, result) = stage
                .call(move |t| {
                    let r = t.process(records.as_rslice()).into_result();
                    (records, r)
                })
                .await;
            let out = result.map_err(|e| shared.stage_error(&stage.id, e))?;
            let failed = out.failures.len();
            dead_letter::handle(&shared, &stage.id, &records, RecordFailures(out.failures)).await?;
            let kept = out.records.len();
            shared
                .stats
                .record_dropped(records.len().saturating_sub(kept + failed));
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
                break; // the next stage is gone: the pipeline is failing
            }
        }
        Ok(())
    }
    .await;
    close(&mut stage, |t: &mut TransformBox| t.close().into_result()).await;
    result
}

async fn run_sink(
    mut stage: StageInstance<SinkBox>,
    mut rx: mpsc::Receiver<Batch>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    let result = async {
        while let Some(batch) = recv(&mut rx, &shared).await {
            let records = batch.records;
            let (records, result) = stage
                .call(move |s| {
                    let r = s.write(records.as_rslice()).into_result();
                    (records, r)
                })
                .await;
            let out = result.map_err(|e| shared.stage_error(&stage.id, e))?;
            let failed = out.failures.len();
            dead_letter::handle(&shared, &stage.id, &records, RecordFailures(out.failures)).await?;
            shared
                .stats
                .record_written(records.len() - failed.min(records.len()));
            shared.complete(batch.id);
        }
        Ok(())
    }
    .await;
    close(&mut stage, |s: &mut SinkBox| s.close().into_result()).await;
    result
}

async fn close<T: Send + 'static>(
    stage: &mut StageInstance<T>,
    f: fn(&mut T) -> Result<(), PluginError>,
) {
    if let Err(e) = stage.call(f).await {
        let _g = stage.span().enter();
        tracing::warn!("closing failed: {e}");
    }
}
