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
//! The source task owns the source instance, the [`acks::AckTracker`] and the offsets
//! [`Ledger`] (the one copy of the acknowledged positions; the persister and a recreated
//! source read it). Every
//! plugin call goes through the stage's [`PolicyStack`] (retry, breaker, rate limit, timeout,
//! restarts). Records a transform or sink fails go to the dead-letter task (with
//! `errors.tolerance: all`) before their batch counts as finished, or stop the pipeline
//! (`none`).

mod acks;
mod build;
mod context;
mod dead_letter;
mod persist;
mod sink;
mod source;
mod stage;
mod stats;
mod transform;

pub use build::{resolve, ResolvedStage};
pub use context::PipelineError;
use context::{Batch, Shared};
pub use stats::{Stats, Summary};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orbit_plugin_api::PluginError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{PipelineSpec, StageRole, Tolerance};
use crate::offsets::{FileOffsetStore, Ledger};
use crate::plugin::{sink_factory, source_factory, transform_factory, StageId};
use crate::telemetry::Telemetry;
use persist::persist_offsets;
use sink::run_sink;
use source::{run_source, SourceTask};
pub(crate) use stage::stage_metrics;
use stage::{stage_config, Stage};
use transform::run_transform;

/// Pausing a pipeline without stopping it: the source stops polling while `requested` holds
/// true (instances stay open, in-flight batches finish), and sets `drained` once nothing is in
/// flight; polling resumes when `requested` goes back to false.
pub struct Pause {
    pub requested: tokio::sync::watch::Receiver<bool>,
    pub drained: tokio::sync::watch::Sender<bool>,
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
    /// Where the stages count (`/metrics`, `/status`).
    pub telemetry: Telemetry,
    /// Told once every instance is created and records may move.
    pub started: Option<tokio::sync::oneshot::Sender<()>>,
    /// Pause requests, if the pipeline can be paused.
    pub pause: Option<Pause>,
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

    async fn run_in_span(mut self, shutdown: CancellationToken) -> Result<Summary, PipelineError> {
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
        let ledger = Ledger::new(offsets);

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
            stage_metrics: self
                .stages
                .iter()
                .map(|s| stage_metrics(&self.telemetry, &name, s))
                .collect(),
        });
        // A shutdown while instances are made interrupts their creation and back-offs: nothing
        // was read, so the pipeline simply stops.
        let interrupt = {
            let (stop, shutdown) = (shared.stop.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
            })
        };
        let stopped_early = shutdown.clone();
        let fail_early = |e: Option<PipelineError>| match e {
            None if stopped_early.is_cancelled() => None,
            e => Some(e.unwrap_or_else(|| PipelineError::Stage {
                pipeline: name.clone(),
                stage: "source".into(),
                plugin: String::new(),
                error: PluginError::fatal("stopped before it started"),
            })),
        };

        // Create every instance before any record moves, so a bad config or an unreachable
        // server fails the pipeline with nothing read.
        let started_stages = async {
            let source_spec = self.stage(StageRole::Source).expect("a source").clone();
            let mut source = Stage::new(
                &source_spec,
                source_factory(&stage_config(&name, &source_spec), ledger.reader()),
                &shared,
            );
            source.start(&shared).await.map_err(fail_early)?;
            let mut transforms = Vec::new();
            for i in 0..self.spec.transforms.len() {
                let s = self.stage(StageRole::Transform(i)).expect("resolved");
                let mut t = Stage::new(s, transform_factory(&stage_config(&name, s)), &shared);
                t.start(&shared).await.map_err(fail_early)?;
                transforms.push(t);
            }
            let sink_spec = self.stage(StageRole::Sink).expect("a sink").clone();
            let mut sink = Stage::new(
                &sink_spec,
                sink_factory(&stage_config(&name, &sink_spec)),
                &shared,
            );
            sink.start(&shared).await.map_err(fail_early)?;
            let mut dead_letter_sink = None;
            if has_dead_letters {
                let s = self.stage(StageRole::DeadLetter).expect("checked");
                let mut d = Stage::new(s, sink_factory(&stage_config(&name, s)), &shared);
                d.start(&shared).await.map_err(fail_early)?;
                dead_letter_sink = Some(d);
            }
            Ok((source, transforms, sink, dead_letter_sink))
        }
        .await;
        interrupt.abort();
        let (source, transforms, sink, dead_letter_sink) = match started_stages {
            Ok(stages) => stages,
            Err(Some(e)) => return Err(e),
            Err(None) => {
                tracing::info!("stopped while starting: nothing was read");
                return Ok(stats.summary(started.elapsed()));
            }
        };

        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        let mut metrics = vec![source.metrics()];
        metrics.extend(transforms.iter().map(Stage::metrics));
        metrics.push(sink.metrics());
        metrics.extend(dead_letter_sink.iter().map(Stage::metrics));

        let mut tasks = tokio::task::JoinSet::new();

        let persister = tokio::spawn(
            persist_offsets(
                self.store.clone(),
                ledger.reader(),
                ledger.subscribe(),
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
        let max_in_flight = self
            .stage(StageRole::Sink)
            .expect("a sink")
            .spec
            .max_in_flight;
        spawn_stage(
            &mut tasks,
            &shared,
            run_sink(sink, rx, shared.clone(), max_in_flight),
        );
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
            ledger,
            batch: self.spec.batch.clone(),
            grace: self.grace,
            pause: self.pause.take(),
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
