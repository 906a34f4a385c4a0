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
//! The source task owns the source instance, the [`acks::AckTracker`] and the offsets. Every
//! plugin call goes through the stage's [`PolicyStack`] (retry, breaker, rate limit, timeout,
//! restarts). Records a transform or sink fails go to the dead-letter task (with
//! `errors.tolerance: all`) before their batch counts as finished, or stop the pipeline
//! (`none`).

mod acks;
mod build;
mod dead_letter;
mod stage;
mod stats;

pub use build::{resolve, ResolvedStage};
pub use stage::{Factory, StageId, StageInstance};
pub use stats::{Stats, Summary};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RString, RVec};
use orbit_plugin_api::ffi::{SinkBox, SourceBox, SourceContextFfi, StageContextFfi, TransformBox};
use orbit_plugin_api::{ErrorKind, PluginError, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{BatchSpec, PipelineSpec, StageRole, Tolerance};
use crate::offsets::{to_positions, FileOffsetStore, OffsetStoreError, Offsets};
use crate::policy::{CallError, PolicyMetrics, PolicyStack};
use acks::AckTracker;
use dead_letter::{DeadLetterRequest, Failure};

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
    #[error(
        "pipeline `{pipeline}`: {source}; stopped so that nothing runs unsaved (what was \
         acknowledged since the last save is read again after the cause is fixed)"
    )]
    Offsets {
        pipeline: String,
        source: OffsetStoreError,
    },
    #[error(
        "pipeline `{pipeline}`: internal error in the host: {detail}; please report it \
         (nothing unacknowledged is lost: it is read again on restart)"
    )]
    Internal { pipeline: String, detail: String },
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
    /// Cancelled when any task fails or the grace period ends; the others stop after their
    /// current call without finishing their batches.
    stop: CancellationToken,
    failure: Mutex<Option<PipelineError>>,
    completions: mpsc::UnboundedSender<u64>,
    dead_letters: Option<mpsc::Sender<DeadLetterRequest>>,
    /// The dead-letter sink's component name, for errors.
    dead_letter_plugin: String,
}

impl Shared {
    fn fail(&self, error: PipelineError) {
        let mut slot = self.failure.lock().expect("failure lock");
        if slot.is_none() {
            tracing::error!(pipeline = %self.pipeline, "{error}");
            *slot = Some(error);
        }
        self.stop.cancel();
    }

    /// Turns a policy verdict on a source call into the pipeline's error (or `None` when the
    /// pipeline is stopping anyway).
    fn source_error(&self, stage: &StageId, e: CallError) -> Option<PipelineError> {
        match e {
            CallError::Stopped => None,
            CallError::Exhausted { error, .. }
            | CallError::Rejected { error, .. }
            | CallError::Fatal { error } => Some(self.stage_error(stage, error)),
        }
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

fn stage_id(s: &ResolvedStage) -> StageId {
    StageId {
        stage: s.name.clone(),
        plugin: s.component.name.clone(),
    }
}

fn transform_factory(pipeline: &str, s: &ResolvedStage) -> Factory<TransformBox> {
    let module = s.component.library.module;
    let name = s.component.name.clone();
    let ctx = stage_ctx(pipeline, s);
    Arc::new(move || (module.create_transform())(name.as_str().into(), ctx.clone()).into_result())
}

fn sink_factory(pipeline: &str, s: &ResolvedStage) -> Factory<SinkBox> {
    let module = s.component.library.module;
    let name = s.component.name.clone();
    let ctx = stage_ctx(pipeline, s);
    Arc::new(move || (module.create_sink())(name.as_str().into(), ctx.clone()).into_result())
}

/// A source is reopened from the offsets acknowledged so far, read when it is (re)created.
fn source_factory(
    pipeline: &str,
    s: &ResolvedStage,
    offsets: Arc<Mutex<Offsets>>,
) -> Factory<SourceBox> {
    let module = s.component.library.module;
    let name = s.component.name.clone();
    let (pipeline, stage, config) = (
        RString::from(pipeline),
        RString::from(s.name.as_str()),
        RString::from(s.config_json.as_str()),
    );
    Arc::new(move || {
        let ctx = SourceContextFfi {
            pipeline: pipeline.clone(),
            stage: stage.clone(),
            config: config.clone(),
            offsets: to_positions(&offsets.lock().expect("offsets lock")).into(),
        };
        (module.create_source())(name.as_str().into(), ctx).into_result()
    })
}

/// A stage's instance with its policies.
struct Stage<T> {
    instance: StageInstance<T>,
    policy: PolicyStack,
}

impl<T: Send + 'static> Stage<T> {
    fn new(s: &ResolvedStage, factory: Factory<T>) -> Self {
        Stage {
            instance: StageInstance::new(stage_id(s), factory),
            policy: PolicyStack::new(&s.policy),
        }
    }

    /// Creates the first instance (through retry and breaker).
    async fn start(&mut self, shared: &Shared) -> Result<(), Option<PipelineError>> {
        let span = self.instance.span().clone();
        self.policy
            .ensure_instance(&mut self.instance, &shared.stop)
            .instrument(span)
            .await
            .map_err(|e| shared.source_error(&self.instance.id, e))
    }

    fn metrics(&self) -> (StageId, Arc<PolicyMetrics>) {
        (self.instance.id.clone(), self.policy.metrics.clone())
    }
}

/// Applies `on_limit: drop` sampling to a batch before the call, counting what it drops.
/// (Takes the policy, not the stage: a `&Stage` held across an await would need a `Sync`
/// plugin instance.)
async fn sample(policy: &PolicyStack, records: &mut RVec<Record>, shared: &Shared) {
    let before = records.len();
    let admitted = policy.sample(before).await;
    records.truncate(admitted);
    shared.stats.record_dropped(before - admitted);
}

impl Stage<SinkBox> {
    /// One `write` of `records` through the policy stack (the batch is shared, not copied, by
    /// retries).
    async fn write(
        &mut self,
        records: &Arc<RVec<Record>>,
        stop: &CancellationToken,
    ) -> Result<(orbit_plugin_api::ffi::WriteOutcomeFfi, u32), CallError> {
        let input = records.clone();
        self.policy
            .call_judged(
                &mut self.instance,
                records.len(),
                stop,
                move |s| s.write(input.as_rslice()).into_result(),
                |out| {
                    !out.failures
                        .iter()
                        .any(|f| f.error.kind() == ErrorKind::Retriable)
                },
            )
            .await
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

        let store = self.store.clone();
        let offsets = tokio::task::spawn_blocking(move || store.load())
            .await
            .expect("offset load")
            .map_err(|source| PipelineError::Offsets {
                pipeline: name.clone(),
                source,
            })?;
        if !offsets.is_empty() {
            tracing::info!(
                partitions = offsets.len(),
                file = %self.store.path().display(),
                "resuming from stored offsets"
            );
        }
        let acked_offsets = Arc::new(Mutex::new(offsets.clone()));

        let (completions_tx, completions_rx) = mpsc::unbounded_channel();
        let (dead_letter_tx, dead_letter_rx) = mpsc::channel(1);
        let has_dead_letters = self.spec.errors.tolerance == Tolerance::All
            && self.stage(StageRole::DeadLetter).is_some();
        let shared = Arc::new(Shared {
            pipeline: name.clone(),
            tolerance: self.spec.errors.tolerance,
            stats: stats.clone(),
            stop: CancellationToken::new(),
            failure: Mutex::new(None),
            completions: completions_tx,
            dead_letters: has_dead_letters.then_some(dead_letter_tx),
            dead_letter_plugin: self
                .stage(StageRole::DeadLetter)
                .map(|s| s.component.name.clone())
                .unwrap_or_default(),
        });
        let fail_early = |e: Option<PipelineError>| {
            e.unwrap_or_else(|| PipelineError::Stage {
                pipeline: name.clone(),
                stage: "source".into(),
                plugin: String::new(),
                error: PluginError::fatal("stopped before it started"),
            })
        };

        // Create every instance before any record moves, so a bad config or an unreachable
        // server fails the pipeline with nothing read.
        let source_spec = self.stage(StageRole::Source).expect("a source").clone();
        let mut source = Stage::new(
            &source_spec,
            source_factory(&name, &source_spec, acked_offsets.clone()),
        );
        source.start(&shared).await.map_err(fail_early)?;
        let mut transforms = Vec::new();
        for i in 0..self.spec.transforms.len() {
            let s = self.stage(StageRole::Transform(i)).expect("resolved");
            let mut t = Stage::new(s, transform_factory(&name, s));
            t.start(&shared).await.map_err(fail_early)?;
            transforms.push(t);
        }
        let sink_spec = self.stage(StageRole::Sink).expect("a sink");
        let mut sink = Stage::new(sink_spec, sink_factory(&name, sink_spec));
        sink.start(&shared).await.map_err(fail_early)?;
        let mut dead_letter_sink = None;
        if has_dead_letters {
            let s = self.stage(StageRole::DeadLetter).expect("checked");
            let mut d = Stage::new(s, sink_factory(&name, s));
            d.start(&shared).await.map_err(fail_early)?;
            dead_letter_sink = Some(d);
        }

        let mut metrics = vec![source.metrics()];
        metrics.extend(transforms.iter().map(Stage::metrics));
        metrics.push(sink.metrics());
        metrics.extend(dead_letter_sink.iter().map(Stage::metrics));

        let mut tasks = tokio::task::JoinSet::new();
        let (offsets_tx, offsets_rx) = watch::channel(offsets.clone());
        let persister = tokio::spawn(
            persist_offsets(
                self.store.clone(),
                offsets_rx,
                self.spec.offsets.flush_interval,
                shared.clone(),
            )
            .in_current_span(),
        );

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
        spawn_stage(&mut tasks, &shared, run_sink(sink, rx, shared.clone()));
        let dead_letters_done = CancellationToken::new();
        let mut dead_letter_task = tokio::task::JoinSet::new();
        if let Some(d) = dead_letter_sink {
            spawn_stage(
                &mut dead_letter_task,
                &shared,
                dead_letter::run(d, dead_letter_rx, shared.clone(), dead_letters_done.clone()),
            );
        }
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
            acked_offsets,
            offsets_tx,
            batch: self.spec.batch.clone(),
            grace: self.grace,
        })
        .await;
        if let Err(e) = source_result {
            shared.fail(e);
        }
        // Stages end when their input closes, or after their current call when the pipeline
        // is stopping.
        while tasks.join_next().await.is_some() {}
        dead_letters_done.cancel();
        while dead_letter_task.join_next().await.is_some() {}
        if let Some(p) = progress {
            p.abort();
        }
        persister.await.expect("offset persister");
        for (id, m) in &metrics {
            stats::log_policy_events(id, m);
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

/// Writes the latest acknowledged offsets when they change, at most once per `interval`
/// (updates in between are coalesced: only the latest matters), and the final value at once
/// when the source task is done. Each write is a small file fsynced and renamed into place, which
/// costs more than a batch on a fast pipeline; the interval bounds what a crash re-reads.
/// A failed save fails the pipeline at once: running on with nothing saved would make a crash
/// re-read everything since, and hide the cause until the end.
async fn persist_offsets(
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

struct SourceTask {
    source: Stage<SourceBox>,
    tx: mpsc::Sender<Batch>,
    completions: mpsc::UnboundedReceiver<u64>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    offsets: Offsets,
    /// What a recreated source resumes from.
    acked_offsets: Arc<Mutex<Offsets>>,
    offsets_tx: watch::Sender<Offsets>,
    batch: BatchSpec,
    grace: Duration,
}

enum SourceEvent<'a> {
    Stopped,
    Shutdown,
    Completed(u64),
    Permit(mpsc::Permit<'a, Batch>),
    GraceExpired,
    IdleOver,
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

async fn run_source(task: SourceTask) -> Result<(), PipelineError> {
    let SourceTask {
        mut source,
        tx,
        mut completions,
        shared,
        shutdown,
        mut offsets,
        acked_offsets,
        offsets_tx,
        batch,
        grace,
    } = task;
    let mut tx = Some(tx);
    let mut tracker = AckTracker::default();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Set after a poll came back empty before `max_wait` while batches were in flight: the
    // source has nothing until they are acknowledged (a broker's prefetch credit is used up),
    // so the next poll waits for a completion or this instant instead of spinning.
    let mut idle_until: Option<tokio::time::Instant> = None;
    let max_records = batch.max_records.min(u32::MAX as usize) as u32;
    let max_wait_ms = batch.max_wait.as_millis().min(u64::MAX as u128) as u64;
    let span = source.instance.span().clone();
    let mut acks = Acknowledger {
        tracker: &mut tracker,
        offsets: &mut offsets,
        acked_offsets: &acked_offsets,
        offsets_tx: &offsets_tx,
        shared: &shared,
    };

    let ended = loop {
        if tx.is_none() && acks.tracker.in_flight() == 0 {
            break Ended::Done;
        }
        // The event borrows `tx` (a send permit); the block ends the borrow before `tx` changes.
        let mut stop_polling = false;
        {
            let event = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => SourceEvent::Stopped,
                Some(id) = completions.recv() => SourceEvent::Completed(id),
                _ = shutdown.cancelled(), if tx.is_some() => SourceEvent::Shutdown,
                _ = sleep_until(drain_deadline) => SourceEvent::GraceExpired,
                _ = sleep_until(idle_until) => SourceEvent::IdleOver,
                Some(permit) = reserve(&tx), if idle_until.is_none() => SourceEvent::Permit(permit),
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
                    let polled = source
                        .policy
                        .call(&mut source.instance, 0, &shared.stop, move |s| {
                            s.poll(max_records, max_wait_ms).into_result()
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
                    // Rate limit after the poll: a source's batch size is known only now.
                    let admitted = source.policy.sample(polled_count).await;
                    if admitted < polled_count {
                        out.records.truncate(admitted);
                        shared.stats.record_dropped(polled_count - admitted);
                    }
                    if source
                        .policy
                        .throttle(out.records.len(), &shared.stop)
                        .await
                        .is_err()
                    {
                        break Ended::Done;
                    }
                    // The instance that made the poll: its batch is acknowledged only to it.
                    let id = acks
                        .tracker
                        .register(source.instance.generation(), out.positions.into_vec());
                    if out.records.is_empty() {
                        drop(permit);
                        // More in flight than this empty batch: see `idle_until`.
                        if polled_count == 0 && acks.tracker.in_flight() > 1 {
                            let until = poll_started + batch.max_wait;
                            if tokio::time::Instant::now() < until {
                                idle_until = Some(until);
                            }
                        }
                        if let Err(e) = acks.complete(id, &mut completions) {
                            break Ended::Failed(e);
                        }
                        if let Err(e) = acks.acknowledge(&mut source).instrument(span.clone()).await
                        {
                            break e.map_or(Ended::Done, Ended::Failed);
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
    source.instance.close(|s| s.close().into_result()).await;
    drop(offsets_tx);
    match ended {
        Ended::Done => Ok(()),
        Ended::Failed(e) => Err(e),
    }
}

/// Acknowledges finished batches to the source and hands their offsets to the store.
struct Acknowledger<'a> {
    tracker: &'a mut AckTracker,
    offsets: &'a mut Offsets,
    acked_offsets: &'a Mutex<Offsets>,
    offsets_tx: &'a watch::Sender<Offsets>,
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
        for p in &released.store {
            self.offsets
                .insert((p.stream.to_string(), p.partition), p.offset.to_vec());
        }
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
        *self.acked_offsets.lock().expect("offsets lock") = self.offsets.clone();
        self.offsets_tx.send_replace(self.offsets.clone());
        Ok(())
    }
}

async fn recv(rx: &mut mpsc::Receiver<Batch>, shared: &Shared) -> Option<Batch> {
    tokio::select! {
        biased;
        _ = shared.stop.cancelled() => None,
        b = rx.recv() => b,
    }
}

/// Every record of `input` failed with the same error (a whole-batch failure the policy gave
/// up on, or a rejected batch).
fn all_failed(len: usize, error: PluginError, attempts: u32) -> Vec<Failure> {
    (0..len)
        .map(|index| Failure {
            index,
            error: error.clone(),
            attempts,
        })
        .collect()
}

/// Applies a stage's verdict on a batch: `Ok(Some(value))` to go on, `Ok(None)` when every
/// record failed and was handled, `Err` to stop the stage.
async fn settle<R>(
    shared: &Shared,
    id: &StageId,
    input: &[Record],
    result: Result<(R, u32), CallError>,
) -> Result<Option<(R, u32)>, Option<PipelineError>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(CallError::Stopped) => Err(None),
        Err(CallError::Fatal { error }) => Err(Some(shared.stage_error(id, error))),
        Err(CallError::Exhausted { error, attempts } | CallError::Rejected { error, attempts }) => {
            dead_letter::handle(shared, id, input, all_failed(input.len(), error, attempts))
                .await
                .map_err(Some)?;
            Ok(None)
        }
    }
}

async fn run_transform(
    mut stage: Stage<TransformBox>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
) -> Result<(), PipelineError> {
    let span = stage.instance.span().clone();
    let result = async {
        while let Some(mut batch) = recv(&mut rx, &shared).await {
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
                .map(|f| Failure {
                    index: f.index as usize,
                    error: f.error.clone(),
                    attempts,
                })
                .collect();
            let failed = failures.len();
            dead_letter::handle(&shared, &stage.instance.id, &records, failures)
                .await
                .map_err(Some)?;
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

async fn run_sink(
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
async fn write_through_policy(
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
