//! A running plugin instance and how the host calls it.
//!
//! Plugin calls are synchronous across the ABI and may block (fsync, a broker round trip), so
//! every call runs on tokio's blocking pool, never on an async worker. The instance moves into
//! the blocking task and comes back with the result. If the call is abandoned (a timeout), the
//! instance never comes back: the stage is "lost" and gets a new instance from its factory. The
//! abandoned instance is dropped on its blocking thread as soon as its call returns, and the
//! replacement waits for that (up to a bound): what the old one holds (a listening port, a lock)
//! is released before the new one opens.

use std::sync::Arc;

use orbit_plugin_api::PluginError;
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

/// One stage's plugin instance, or the lack of one.
pub struct StageInstance<T> {
    pub id: StageId,
    instance: Option<T>,
    factory: Factory<T>,
    /// How many instances were made: 1 for the first, counting up at every recreation. Tells
    /// which instance produced something (a source's batch is acknowledged only to its own).
    generation: u64,
    span: tracing::Span,
    /// The blocking task of the last abandoned call; it finishes once that instance is dropped.
    abandoned: Option<tokio::task::JoinHandle<()>>,
}

impl<T: Send + 'static> StageInstance<T> {
    /// A stage with no instance yet; [`crate::policy::PolicyStack::ensure_instance`] makes it.
    pub fn new(id: StageId, factory: Factory<T>) -> Self {
        let span = tracing::info_span!("stage", stage = %id.stage, plugin = %id.plugin);
        StageInstance {
            id,
            instance: None,
            factory,
            generation: 0,
            span,
            abandoned: None,
        }
    }

    /// A stage around an instance made elsewhere (benchmarks).
    pub fn with_instance(id: StageId, instance: T, factory: Factory<T>) -> Self {
        let mut s = Self::new(id, factory);
        s.instance = Some(instance);
        s.generation = 1;
        s
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// No usable instance: never made, panicked, or abandoned after a timeout.
    pub fn is_lost(&self) -> bool {
        self.instance.is_none()
    }

    /// Whether an instance was made before (so a new one is a restart).
    pub fn was_created(&self) -> bool {
        self.generation > 0
    }

    /// Which instance this is: 0 before the first, then 1, 2, … as instances are recreated.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Forgets an instance whose call was abandoned; the blocking thread still owns it and drops
    /// it when the call returns.
    pub fn abandon(&mut self) {
        self.instance = None;
    }

    /// Waits up to `grace` for the instance of an abandoned call to be dropped, so that what it
    /// holds is free for its replacement. Returns whether it was (or there was none).
    pub async fn release_abandoned(&mut self, grace: std::time::Duration) -> bool {
        let Some(mut handle) = self.abandoned.take() else {
            return true;
        };
        if handle.is_finished() {
            return true;
        }
        let grace_text = humantime::format_duration(grace);
        self.span.in_scope(|| {
            tracing::info!(
                "waiting up to {grace_text} for the abandoned instance's call to return and \
                 release what it holds"
            )
        });
        let released = tokio::time::timeout(grace, &mut handle).await.is_ok();
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

    /// Drops an instance that panicked (its state cannot be trusted), off the async thread.
    pub fn discard(&mut self) {
        if let Some(instance) = self.instance.take() {
            tokio::task::spawn_blocking(move || drop(instance));
        }
    }

    /// Makes a new instance through the factory.
    pub async fn recreate(&mut self) -> Result<(), PluginError> {
        let factory = self.factory.clone();
        let span = self.span.clone();
        let made = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            factory()
        })
        .await
        .expect("the SDK catches panics in factories")?;
        self.instance = Some(made);
        self.generation += 1;
        Ok(())
    }

    /// Runs `f` on the instance in the blocking pool, inside the stage's span (so the plugin's
    /// log events carry pipeline, stage and plugin). The instance must be present.
    pub async fn call<R, F>(&mut self, f: F) -> Result<R, PluginError>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> Result<R, PluginError> + Send + 'static,
    {
        let Some(mut instance) = self.instance.take() else {
            return Err(PluginError::retriable("the stage has no instance"));
        };
        let span = self.span.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let r = f(&mut instance);
            // If this call was abandoned (the receiver is gone), the instance is dropped here,
            // before the task finishes: `release_abandoned` waits for exactly that.
            drop(tx.send((instance, r)));
        });
        // Kept while the call runs: if this future is dropped (a timeout), the handle stays.
        self.abandoned = Some(task);
        let (instance, result) = rx
            .instrument(self.span.clone())
            .await
            .expect("the SDK catches plugin panics; a lost result means the host itself panicked");
        self.abandoned = None;
        self.instance = Some(instance);
        result
    }

    /// Closes the instance, if there is one, inside the stage's span, logging a failure.
    pub async fn close(&mut self, f: fn(&mut T) -> Result<(), PluginError>) {
        if self.is_lost() {
            return;
        }
        let span = self.span.clone();
        if let Err(e) = self.call(f).instrument(span).await {
            let _g = self.span.enter();
            tracing::warn!("closing failed: {e}");
        }
    }
}
