//! One pipeline's driver: runs it, records how each run ended, restarts it after a failure
//! when asked to (`restart: { on_failure: true }`), and takes commands between and during runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, Managed, Supervisor};
use crate::pipeline::{Pause, Pipeline};
use crate::telemetry::PipelineState;

/// How one run ended.
enum Ended {
    Finished,
    Stopped,
    Failed(String),
}

pub(super) async fn drive(
    sup: Supervisor,
    m: Arc<Managed>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = m.definition().spec.restart.backoff;
    loop {
        // A reload may have replaced the definition since the last run.
        let restart = m.definition().spec.restart.clone();
        backoff = backoff.clamp(restart.backoff, restart.max_backoff);
        let started = Instant::now();
        let (ended, next) = run_once(&sup, &m, &mut commands).await;
        let shutting_down = sup.inner.shutdown.is_cancelled();
        if started.elapsed() >= restart.max_backoff {
            // It ran for a while: the next failure starts the back-off over.
            backoff = restart.backoff;
        }
        let mut next = next;
        match ended {
            Ended::Finished => sup.set_state(&m, PipelineState::Finished, None),
            Ended::Stopped => sup.set_state(&m, PipelineState::Stopped, None),
            Ended::Failed(error) => {
                if restart.on_failure && next.is_none() && !shutting_down {
                    sup.set_state(&m, PipelineState::Restarting, Some(error));
                    tracing::warn!(
                        pipeline = %m.name,
                        "restarting the pipeline from its stored offsets in {}",
                        humantime::format_duration(backoff)
                    );
                    next = wait_or_command(&sup, &mut commands, Some(backoff)).await;
                    if next.is_none() && !sup.inner.shutdown.is_cancelled() {
                        next = Some(Command::Restart);
                    }
                    backoff = (backoff * 2).min(restart.max_backoff);
                    if next == Some(Command::Stop) {
                        sup.set_state(&m, PipelineState::Stopped, None);
                        next = None;
                    }
                } else {
                    sup.set_state(&m, PipelineState::Failed, Some(error));
                }
            }
        }
        if next.is_none() && !sup.inner.shutdown.is_cancelled() {
            next = wait_or_command(&sup, &mut commands, None).await;
        }
        match next {
            Some(Command::Restart | Command::Resume) => {
                m.status.lock().expect("status").restarts += 1;
                continue;
            }
            Some(Command::Stop | Command::Pause) => {
                if next == Some(Command::Stop) {
                    sup.set_state(&m, PipelineState::Stopped, None);
                }
                match wait_for_run(&sup, &mut commands).await {
                    Some(Command::Remove) if sup.remove(&m) => return,
                    Some(_) => {
                        m.status.lock().expect("status").restarts += 1;
                        continue;
                    }
                    None => return,
                }
            }
            // Not removed: its file came back meanwhile; run the new version.
            Some(Command::Remove) if sup.remove(&m) => return,
            Some(Command::Remove) => continue,
            None => return,
        }
    }
}

fn running_or_paused(drained: &watch::Receiver<bool>) -> PipelineState {
    if *drained.borrow() {
        PipelineState::Paused
    } else {
        PipelineState::Running
    }
}

/// After a stop: waits for a command that runs the pipeline again or removes it (`None` on
/// shutdown).
async fn wait_for_run(
    sup: &Supervisor,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Command> {
    loop {
        match wait_or_command(sup, commands, None).await {
            Some(Command::Stop | Command::Pause) => {}
            other => return other,
        }
    }
}

/// Waits for a command, up to `limit`; `None` at the limit or on shutdown.
async fn wait_or_command(
    sup: &Supervisor,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    limit: Option<Duration>,
) -> Option<Command> {
    let sleep = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sup.inner.shutdown.cancelled() => None,
        c = commands.recv() => c,
        _ = sleep => None,
    }
}

/// One run of the pipeline, with the commands that arrive while it runs: `Stop` and `Restart`
/// drain it (within the grace period) and end the run; the command that ended it is returned.
async fn run_once(
    sup: &Supervisor,
    m: &Arc<Managed>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (Ended, Option<Command>) {
    sup.set_state(m, PipelineState::Starting, None);
    let settings = &sup.inner.settings;
    let stop = sup.inner.shutdown.child_token();
    let (started_tx, started_rx) = oneshot::channel();
    let (drained_tx, mut drained_rx) = watch::channel(false);
    let definition = m.definition();
    let pipeline = Pipeline {
        spec: definition.spec.clone(),
        stages: definition.stages.clone(),
        store: m.store.clone(),
        grace: settings.grace,
        progress_every: settings.progress_every,
        telemetry: sup.inner.telemetry.clone(),
        started: Some(started_tx),
        pause: Some(Pause {
            requested: m.pause.subscribe(),
            drained: drained_tx,
        }),
    };
    let run = pipeline.run(stop.clone());
    tokio::pin!(run);
    let mut started_rx = Some(started_rx);
    let mut requested = None;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Ok(()) = async { started_rx.as_mut().expect("guarded").await }, if started_rx.is_some() => {
                started_rx = None;
                if !stop.is_cancelled() {
                    sup.set_state(m, running_or_paused(&drained_rx), None);
                }
            }
            Ok(()) = drained_rx.changed() => {
                if started_rx.is_none() && !stop.is_cancelled() {
                    sup.set_state(m, running_or_paused(&drained_rx), None);
                }
            }
            Some(c) = commands.recv(), if requested.is_none() => {
                if matches!(c, Command::Stop | Command::Restart | Command::Remove) {
                    tracing::info!(pipeline = %m.name, "{c:?} requested: draining in-flight batches");
                    requested = Some(c);
                    stop.cancel();
                }
            }
        }
    };
    let ended = match result {
        Ok(summary) => {
            tracing::info!(pipeline = %m.name, "finished: {summary}");
            if stop.is_cancelled() {
                Ended::Stopped
            } else {
                Ended::Finished
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ended::Failed(e.to_string())
        }
    };
    (ended, requested)
}
