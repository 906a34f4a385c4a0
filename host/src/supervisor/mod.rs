//! The pipelines of a host: each runs isolated under a driver of its own, with a state
//! (STARTING RUNNING PAUSED RESTARTING FAILED STOPPED FINISHED), its last error, restarts after a
//! failure when its `restart:` asks for them, and commands from the admin API.
//!
//! A pipeline that fails goes FAILED alone; the others keep running. The host runs while any
//! pipeline is not FINISHED or FAILED, until a shutdown ([`Supervisor::wait`]).

mod driver;
mod load;
mod offsets;
mod reload;
mod view;
mod watcher;

pub use load::{load_pipelines, Loaded};
pub use reload::{ReloadReport, Reloader};
pub use watcher::watch_files;

pub use offsets::{Encoding, OffsetView, OffsetsPatch};
pub use view::{PipelineSummary, StageView, StatusView};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::PipelineFile;
use crate::offsets::FileOffsetStore;
use crate::pipeline::ResolvedStage;
use crate::telemetry::{PipelineState, StageMetrics, Telemetry};

/// What every pipeline of the host shares.
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub state_dir: PathBuf,
    /// How long a stop waits for in-flight batches.
    pub grace: Duration,
    /// How often a progress line is logged; zero for never.
    pub progress_every: Duration,
}

/// A request to a pipeline's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drain and stop (STOPPED); offsets are saved.
    Stop,
    /// Stop (if running) and run again from the stored offsets.
    Restart,
    /// Run again after STOPPED, FAILED or FINISHED (a paused pipeline resumes without a
    /// command to its driver).
    Resume,
    /// Stop polling, keep the instances; PAUSED once nothing is in flight.
    Pause,
    /// Drain and forget the pipeline (its file was removed).
    Remove,
}

/// Why a command was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no pipeline named `{0}` runs in this host")]
    Unknown(String),
    #[error("pipeline `{name}` is {state}: {what}")]
    Conflict {
        name: String,
        state: &'static str,
        what: String,
    },
    #[error("{0}")]
    Offsets(String),
    #[error("{0}")]
    BadRequest(String),
}

/// What a pipeline runs: replaced as a whole by a reload; each run reads it when it starts.
pub(crate) struct Definition {
    file: PathBuf,
    /// The file as written (before `${VAR}` substitution), for `GET /pipelines/{name}`.
    source_text: String,
    spec: crate::config::PipelineSpec,
    stages: Vec<ResolvedStage>,
    metrics: Vec<Arc<StageMetrics>>,
}

/// One pipeline under supervision.
pub(crate) struct Managed {
    name: String,
    definition: Mutex<Arc<Definition>>,
    store: FileOffsetStore,
    status: Mutex<Status>,
    commands: mpsc::UnboundedSender<Command>,
    /// Whether the pipeline should be paused; kept across runs (a paused pipeline that is
    /// restarted comes back paused, as in Kafka Connect).
    pause: watch::Sender<bool>,
    /// A reload sent `Remove` (its file is gone) and the driver has not removed it yet. A
    /// reload that finds the file again meanwhile clears it, and the driver runs the new
    /// definition instead of removing the pipeline. Changed under the pipelines lock only.
    removing: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct Status {
    state: PipelineState,
    error: Option<String>,
    /// Times the host restarted the pipeline after a failure.
    restarts: u64,
    /// The last reload found the pipeline's file invalid (the running version goes on).
    reload_error: Option<String>,
}

struct Inner {
    settings: HostSettings,
    telemetry: Telemetry,
    pipelines: Mutex<BTreeMap<String, Arc<Managed>>>,
    /// Cancelled by the first SIGINT/SIGTERM: every pipeline drains and stops.
    shutdown: CancellationToken,
    /// Woken on every state change.
    changed: Notify,
    drivers: Mutex<tokio::task::JoinSet<()>>,
    /// Reads the pipeline files again (SIGHUP, `POST /reload`, `--watch`).
    reloader: Mutex<Option<Arc<Reloader>>>,
    /// Stay up when every pipeline is done (new files may come: `--watch`).
    keep_running: std::sync::atomic::AtomicBool,
}

/// The pipelines of a host. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(settings: HostSettings, telemetry: Telemetry, shutdown: CancellationToken) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                settings,
                telemetry,
                pipelines: Mutex::new(BTreeMap::new()),
                shutdown,
                changed: Notify::new(),
                drivers: Mutex::new(tokio::task::JoinSet::new()),
                reloader: Mutex::new(None),
                keep_running: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// Keeps the host up when every pipeline is done (it watches for new files).
    pub fn keep_running(&self) {
        self.inner
            .keep_running
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn definition(&self, file: PipelineFile, stages: Vec<ResolvedStage>) -> Arc<Definition> {
        let name = &file.spec.name;
        let source_text = std::fs::read_to_string(&file.path).unwrap_or_default();
        let metrics = stages
            .iter()
            .map(|s| crate::pipeline::stage_metrics(&self.inner.telemetry, name, s))
            .collect();
        Arc::new(Definition {
            file: file.path,
            source_text,
            spec: file.spec,
            stages,
            metrics,
        })
    }

    /// Starts running a loaded pipeline (its name must be new to the host).
    pub fn start(&self, file: PipelineFile, stages: Vec<ResolvedStage>) {
        let name = file.spec.name.clone();
        let definition = self.definition(file, stages);
        let (tx, rx) = mpsc::unbounded_channel();
        let managed = Arc::new(Managed {
            store: FileOffsetStore::new(&self.inner.settings.state_dir, &name),
            name: name.clone(),
            definition: Mutex::new(definition),
            status: Mutex::new(Status {
                state: PipelineState::Starting,
                error: None,
                restarts: 0,
                reload_error: None,
            }),
            commands: tx,
            pause: watch::Sender::new(false),
            removing: std::sync::atomic::AtomicBool::new(false),
        });
        self.inner
            .telemetry
            .set_pipeline_state(&name, PipelineState::Starting);
        self.inner
            .pipelines
            .lock()
            .expect("pipelines")
            .insert(name, managed.clone());
        let sup = self.clone();
        self.inner
            .drivers
            .lock()
            .expect("drivers")
            .spawn(driver::drive(sup, managed, rx));
    }

    fn get(&self, name: &str) -> Result<Arc<Managed>, CommandError> {
        self.inner
            .pipelines
            .lock()
            .expect("pipelines")
            .get(name)
            .cloned()
            .ok_or_else(|| CommandError::Unknown(name.to_string()))
    }

    fn all(&self) -> Vec<Arc<Managed>> {
        self.inner
            .pipelines
            .lock()
            .expect("pipelines")
            .values()
            .cloned()
            .collect()
    }

    fn set_state(&self, m: &Managed, state: PipelineState, error: Option<String>) {
        {
            let mut s = m.status.lock().expect("status");
            s.state = state;
            if error.is_some() || state == PipelineState::Running {
                s.error = error;
            }
        }
        self.inner.telemetry.set_pipeline_state(&m.name, state);
        self.inner.changed.notify_waiters();
    }

    /// Sends a command to a pipeline's driver, after checking that it makes sense now.
    pub fn command(&self, name: &str, command: Command) -> Result<(), CommandError> {
        let m = self.get(name)?;
        let state = m.state();
        let conflict = |what: &str| CommandError::Conflict {
            name: name.to_string(),
            state: state.as_str(),
            what: what.to_string(),
        };
        if self.inner.shutdown.is_cancelled() {
            return Err(conflict("the host is shutting down"));
        }
        let paused = *m.pause.borrow();
        let runs = matches!(
            state,
            PipelineState::Running
                | PipelineState::Starting
                | PipelineState::Restarting
                | PipelineState::Paused
        );
        match command {
            Command::Stop if state == PipelineState::Stopped => {
                return Err(conflict("it is stopped already"))
            }
            Command::Pause if !runs => {
                return Err(conflict("only a running pipeline can be paused; resume it"))
            }
            Command::Pause => {
                m.pause.send_replace(true);
                return Ok(());
            }
            Command::Resume if paused => {
                m.pause.send_replace(false);
                if runs {
                    return Ok(());
                }
            }
            Command::Resume if runs => return Err(conflict("it is running; nothing to resume")),
            _ => {}
        }
        let _ = m.commands.send(command);
        Ok(())
    }

    /// Waits until every pipeline is FINISHED, FAILED or STOPPED and its driver has ended
    /// (after a shutdown, once each has drained). `true` when none failed.
    pub async fn wait(&self) -> bool {
        loop {
            let notified = self.inner.changed.notified();
            let all = self.all();
            // A STOPPED pipeline waits for a resume, unless the host is shutting down.
            let shutdown = self.inner.shutdown.is_cancelled();
            let over = |s: PipelineState| s.is_done() || (shutdown && s == PipelineState::Stopped);
            let keep = self
                .inner
                .keep_running
                .load(std::sync::atomic::Ordering::Relaxed);
            if all.iter().all(|m| over(m.state())) && (shutdown || !keep) {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.inner.shutdown.cancelled(), if !shutdown => {}
            }
        }
        let mut drivers = std::mem::take(&mut *self.inner.drivers.lock().expect("drivers"));
        if self.inner.shutdown.is_cancelled() {
            while drivers.join_next().await.is_some() {}
        } else {
            drivers.abort_all();
        }
        self.all()
            .iter()
            .all(|m| m.state() != PipelineState::Failed)
    }
}

impl Managed {
    fn state(&self) -> PipelineState {
        self.status.lock().expect("status").state
    }

    fn definition(&self) -> Arc<Definition> {
        self.definition.lock().expect("definition").clone()
    }
}
