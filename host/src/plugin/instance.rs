//! A running plugin instance and how the host calls it.
//!
//! Plugin calls are synchronous across the ABI and may block (fsync, a broker round trip), so
//! they never run on an async worker. Each instance lives on a thread of its own, its *runner*:
//! the runner makes the instance (through the factory), runs every call handed to it, and drops
//! it, so a plugin sees one thread for its whole life (thread-local state, a current-thread
//! runtime it drives). A call is a job sent to the runner and a result sent back; the runner's
//! thread stays warm between calls, where a hop to tokio's blocking pool took a pool slot, a
//! task allocation and a thread that might not be the one that ran the previous call.
//!
//! If a call is abandoned (a timeout), the instance is "lost" and the stage gets a new instance,
//! on a new runner, from its factory. The abandoned runner finishes its call, drops its instance
//! and ends; the replacement waits for that (up to a bound), so what the old instance holds (a
//! listening port, a lock) is free before the new one opens. The same holds for an instance
//! discarded after a panic.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use orbit_plugin_api::PluginError;
use tokio::sync::oneshot;
use tracing::Instrument as _;

/// Which stage this is, for errors and dead-letter headers.
#[derive(Debug, Clone)]
pub struct StageId {
    /// The stage's name in the pipeline (`source`, `transforms[0]`, or its `name:`).
    pub stage: String,
    /// The component name (`file`, `json`).
    pub plugin: String,
}

/// Makes a new instance of a stage's component (blocking: it may connect somewhere).
pub type Factory<T> = Arc<dyn Fn() -> Result<T, PluginError> + Send + Sync>;

/// How long closing waits for the runner to drop its instance after `close` returned.
const DROP_GRACE: Duration = Duration::from_secs(10);

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// The thread that owns one instance.
struct Runner<T> {
    jobs: mpsc::Sender<Job<T>>,
    /// Fires (or closes) once the runner has dropped its instance.
    released: oneshot::Receiver<()>,
}

/// One stage's plugin instance, or the lack of one.
pub struct StageInstance<T> {
    pub id: StageId,
    runner: Option<Runner<T>>,
    /// A call was handed to the runner and its result not taken (its future was dropped): the
    /// instance is in an unknown state and counts as lost.
    busy: bool,
    factory: Factory<T>,
    /// How many instances were made: 1 for the first, counting up at every recreation. Tells
    /// which instance produced something (a source's batch is acknowledged only to its own).
    generation: u64,
    span: tracing::Span,
    /// The last abandoned or discarded runner: fires once its instance is dropped.
    abandoned: Option<oneshot::Receiver<()>>,
    /// The instance was lost to a panic (not to a timeout).
    panicked: bool,
}

impl<T: 'static> StageInstance<T> {
    /// A stage with no instance yet; [`crate::policy::PolicyStack::ensure_instance`] makes it.
    pub fn new(id: StageId, factory: Factory<T>) -> Self {
        let span = tracing::info_span!("stage", stage = %id.stage, plugin = %id.plugin);
        StageInstance {
            id,
            runner: None,
            busy: false,
            panicked: false,
            factory,
            generation: 0,
            span,
            abandoned: None,
        }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// No usable instance: never made, panicked, or abandoned after a timeout.
    pub fn is_lost(&self) -> bool {
        self.runner.is_none() || self.busy
    }

    /// Whether an instance was made before (so a new one is a restart).
    pub fn was_created(&self) -> bool {
        self.generation > 0
    }

    /// Which instance this is: 0 before the first, then 1, 2, … as instances are recreated.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Forgets an instance whose call was abandoned; its runner finishes the call, drops the
    /// instance and ends.
    pub fn abandon(&mut self) {
        self.busy = false;
        if let Some(runner) = self.runner.take() {
            // Dropping `jobs` ends the runner's loop after its current call.
            self.abandoned = Some(runner.released);
        }
    }

    /// Drops an instance that panicked (its state cannot be trusted), on its own thread; its
    /// replacement waits for that like for an abandoned one.
    pub fn discard(&mut self) {
        self.abandon();
        self.panicked = true;
    }

    /// The instance was lost to a panic, not abandoned after a timeout: its replacement counts
    /// against the restart budget.
    pub fn lost_to_panic(&self) -> bool {
        self.panicked
    }

    /// Waits up to `grace` for the instance of an abandoned call to be dropped, so that what it
    /// holds is free for its replacement. Returns whether it was (or there was none).
    pub async fn release_abandoned(&mut self, grace: Duration) -> bool {
        let Some(mut released) = self.abandoned.take() else {
            return true;
        };
        if !matches!(
            released.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ) {
            return true;
        }
        let grace_text = humantime::format_duration(grace);
        self.span.in_scope(|| {
            tracing::info!(
                "waiting up to {grace_text} for the abandoned instance's call to return and \
                 release what it holds"
            )
        });
        let released = tokio::time::timeout(grace, released).await.is_ok();
        if !released {
            self.span.in_scope(|| {
                tracing::warn!(
                    "the abandoned instance's call is still running after {grace_text}; making \
                     a new instance anyway (the old one may still hold a port or a lock)"
                )
            });
        }
        released
    }

    /// Makes a new instance through the factory, on a new runner thread. If this future is
    /// dropped (a timeout), the runner drops the instance once the factory returns.
    pub async fn recreate(&mut self) -> Result<(), PluginError> {
        let factory = self.factory.clone();
        let span = self.span.clone();
        let (made_tx, made_rx) = oneshot::channel();
        let (jobs, queue) = mpsc::channel::<Job<T>>();
        let (released_tx, released) = oneshot::channel();
        let run = move || {
            let _entered = span.enter();
            match factory() {
                Ok(mut instance) => {
                    if made_tx.send(Ok(())).is_ok() {
                        while let Ok(job) = queue.recv() {
                            job(&mut instance);
                        }
                    }
                    drop(instance);
                }
                Err(e) => drop(made_tx.send(Err(e))),
            }
            let _ = released_tx.send(());
        };
        spawn_runner(&self.id, run)?;
        // Kept here while the factory runs: if this future is dropped (a timeout), the next
        // recreation waits for the late instance to be dropped like for an abandoned one.
        self.abandoned = Some(released);
        match made_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(host_panic(&self.id, "making the instance")),
        }
        let released = self.abandoned.take().expect("set above");
        self.runner = Some(Runner { jobs, released });
        self.busy = false;
        self.panicked = false;
        self.generation += 1;
        Ok(())
    }

    /// Runs `f` on the instance's runner thread, inside the stage's span (so the plugin's log
    /// events carry pipeline, stage and plugin). If this future is dropped before the result
    /// comes (a timeout), the instance counts as lost until [`StageInstance::abandon`].
    pub async fn call<R, F>(&mut self, f: F) -> Result<R, PluginError>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> Result<R, PluginError> + Send + 'static,
    {
        if self.busy {
            // The previous call's future was dropped without abandoning the instance.
            self.abandon();
        }
        let Some(runner) = &self.runner else {
            return Err(PluginError::retriable("the stage has no instance"));
        };
        let (tx, rx) = oneshot::channel();
        let job: Job<T> = Box::new(move |instance| drop(tx.send(f(instance))));
        if runner.jobs.send(job).is_err() {
            // The runner is gone: it panicked in host code. Its instance went with it.
            self.runner = None;
            return Err(host_panic(&self.id, "a call"));
        }
        self.busy = true;
        let result = rx.instrument(self.span.clone()).await;
        self.busy = false;
        result.unwrap_or_else(|_| {
            self.runner = None;
            Err(host_panic(&self.id, "a call"))
        })
    }

    /// Closes the instance, if there is one, inside the stage's span, logging a failure; then
    /// waits (a bounded time) for its runner to drop it.
    pub async fn close(&mut self, f: fn(&mut T) -> Result<(), PluginError>) {
        if self.is_lost() {
            return;
        }
        let span = self.span.clone();
        if let Err(e) = self.call(f).instrument(span).await {
            let _g = self.span.enter();
            tracing::warn!("closing failed: {e}");
        }
        if let Some(runner) = self.runner.take() {
            drop(runner.jobs);
            if tokio::time::timeout(DROP_GRACE, runner.released)
                .await
                .is_err()
            {
                let _g = self.span.enter();
                tracing::warn!(
                    "the closed instance was not dropped within {}; going on without it",
                    humantime::format_duration(DROP_GRACE)
                );
            }
        }
    }
}

impl<T: Send + 'static> StageInstance<T> {
    /// A stage around an instance made elsewhere (benchmarks).
    pub async fn with_instance(id: StageId, instance: T, factory: Factory<T>) -> Self {
        let made = std::sync::Mutex::new(Some(instance));
        let mut s = Self::new(
            id,
            Arc::new(move || {
                made.lock()
                    .expect("instance lock")
                    .take()
                    .map_or_else(|| factory(), Ok)
            }),
        );
        s.recreate().await.expect("the instance was made");
        s
    }
}

/// Starts a runner thread named after its stage.
fn spawn_runner(id: &StageId, run: impl FnOnce() + Send + 'static) -> Result<(), PluginError> {
    std::thread::Builder::new()
        .name(format!("orbit {}", id.stage))
        .spawn(run)
        .map(drop)
        .map_err(|e| {
            PluginError::retriable(format!(
                "cannot start a thread for stage `{}`: {e}",
                id.stage
            ))
        })
}

fn host_panic(id: &StageId, what: &str) -> PluginError {
    PluginError::fatal(format!(
        "internal error: the host panicked running {what} of stage `{}` (plugin `{}`); please \
         report it (nothing unacknowledged is lost: it is read again on restart)",
        id.stage, id.plugin
    ))
}

#[cfg(test)]
#[path = "instance_tests.rs"]
mod tests;
