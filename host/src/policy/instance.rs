//! Making sure a stage has a live instance: the first at start, a new one after a panic or a
//! timeout, through the restart budget, the breaker and retries.

use std::time::{Duration, Instant};

use orbit_plugin_api::{ErrorKind, PluginError};
use tokio_util::sync::CancellationToken;

use super::{sleep_or_stop, timeout, CallError, PolicyStack, DEFAULT_TIMEOUT};
use crate::plugin::StageInstance;

impl PolicyStack {
    /// Makes sure the stage has a live instance: the first one at start, or a new one after
    /// a panic or a timeout (after its back-off; see [`PolicyStack::restart_backoff`]).
    /// Creation failures go through retry and breaker like calls.
    pub async fn ensure_instance<T: Send + 'static>(
        &mut self,
        stage: &mut StageInstance<T>,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let started = Instant::now();
        let mut attempts = 0;
        while stage.is_lost() {
            if stage.was_created() {
                let backoff = self.restart_backoff(stage.lost_to_panic())?;
                self.metrics.restarts.inc();
                sleep_or_stop(backoff, stop).await?;
                // An instance abandoned after a timeout may hold what its replacement needs
                // (the http source's port): give its call up to one more timeout to return.
                let grace = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
                tokio::select! {
                    _ = stage.release_abandoned(grace) => {}
                    _ = stop.cancelled() => return Err(CallError::Stopped),
                }
            }
            self.pass_breaker(stop).await?;
            attempts += 1;
            let created = timeout::within(self.timeout, stage.recreate()).await;
            let error = match created {
                Ok(Ok(())) => {
                    self.record_success();
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(timeout::TimedOut(d)) => PluginError::retriable(format!(
                    "creating the instance did not finish within {}",
                    humantime::format_duration(d)
                )),
            };
            self.metrics.error(error.kind(), false);
            self.metrics.set_last_error(&error);
            match error.kind() {
                ErrorKind::Retriable | ErrorKind::Panicked => {
                    self.record_failure(error, attempts, started, stop).await?
                }
                _ => return Err(CallError::Fatal { error }),
            }
        }
        Ok(())
    }

    /// How long to wait before recreating a lost instance. After a panic that spends the
    /// restart budget (`Err` once it is spent: the pipeline fails). After a timeout it does
    /// not: a hung downstream is ridden out by retries and the breaker, with the same growing
    /// back-off, instead of ending the pipeline after a few slow minutes.
    fn restart_backoff(&mut self, panicked: bool) -> Result<Duration, CallError> {
        let now = Instant::now();
        if !panicked {
            let backoff = self.restarts.after_timeout(now);
            tracing::warn!(
                "recreating the stage instance after a timeout in {}",
                humantime::format_duration(backoff)
            );
            return Ok(backoff);
        }
        let Some(backoff) = self.restarts.take(now) else {
            let p = self.restarts.policy();
            return Err(CallError::Fatal {
                error: PluginError::fatal(format!(
                    "the stage was restarted {} times within {} and failed again ({}); giving up",
                    p.max_restarts,
                    humantime::format_duration(p.window),
                    self.last_error
                        .as_ref()
                        .map_or("no error recorded".to_string(), |e| e.to_string())
                )),
            });
        };
        tracing::warn!(
            restart = self.restarts.used(),
            max = self.restarts.policy().max_restarts,
            "recreating the stage instance in {}",
            humantime::format_duration(backoff)
        );
        Ok(backoff)
    }
}
