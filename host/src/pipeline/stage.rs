//! A running plugin instance and how the host calls it.
//!
//! Plugin calls are synchronous across the ABI and may block (fsync, a broker round trip), so
//! every call runs on tokio's blocking pool, never on an async worker. The instance moves into
//! the blocking task and comes back with the result; it is only ever used by one call at a time.

use tracing::Instrument as _;

/// Which stage this is, for errors and dead-letter headers.
#[derive(Debug, Clone)]
pub struct StageId {
    /// The stage's name in the pipeline (`source`, `transforms[0]`, or its `name:`).
    pub stage: String,
    /// The component name (`file`, `json`).
    pub plugin: String,
}

/// One instance of a source, transform or sink.
pub struct StageInstance<T> {
    pub id: StageId,
    instance: Option<T>,
    span: tracing::Span,
}

impl<T: Send + 'static> StageInstance<T> {
    pub fn new(stage: String, plugin: String, instance: T) -> Self {
        let span = tracing::info_span!("stage", stage = %stage, plugin = %plugin);
        StageInstance {
            id: StageId { stage, plugin },
            instance: Some(instance),
            span,
        }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Runs `f` on the instance in the blocking pool, inside the stage's span (so the plugin's
    /// log events carry pipeline, stage and plugin).
    pub async fn call<R, F>(&mut self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> R + Send + 'static,
    {
        let mut instance = self
            .instance
            .take()
            .expect("a stage instance serves one call at a time");
        let span = self.span.clone();
        let (instance, result) = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let r = f(&mut instance);
            (instance, r)
        })
        .instrument(self.span.clone())
        .await
        .expect("the SDK catches plugin panics; a join error means the host itself panicked");
        self.instance = Some(instance);
        result
    }
}
