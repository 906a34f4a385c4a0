//! Host policies around every stage call, stacked in the order of DESIGN.md §4:
//!
//! ```text
//! retry → circuit breaker → rate limit → timeout → plugin call
//! ```
//!
//! Each policy is its own module and knows nothing of the others; [`PolicyStack::call`] is the
//! one place they are composed. The same stack wraps the source, every transform, the sink and
//! the dead-letter sink. Every event (retry, breaker transition, rate-limit wait or drop,
//! timeout, restart) is a log line and a counter in the stage's [`StageMetrics`].

mod admit;
pub mod breaker;
mod instance;
mod per_record;
pub mod rate_limit;
mod resolve;
pub mod restart;
pub mod retry;
pub mod timeout;

pub use per_record::{written_healthy, Resend, Settled, Verdict};
pub use resolve::{merge, validate, PolicyError, ResolvedPolicy, DEFAULT_TIMEOUT};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbit_plugin_api::{ErrorKind, PluginError};
use tokio_util::sync::CancellationToken;

use crate::plugin::StageInstance;
use crate::telemetry::{BreakerGauge, StageMetrics};
use breaker::{BreakerState, CircuitBreaker, Transition};
use rate_limit::{OnLimit, RateLimiter};
use restart::RestartBudget;
use retry::RetryPolicy;

/// Why a call through the stack did not succeed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// Retriable failures (or timeouts, or panics) until the retry policy gave up: the batch's
    /// records are failed (dead-lettered with `tolerance: all`).
    Exhausted { error: PluginError, attempts: u32 },
    /// The plugin rejected the whole batch as bad input: never retried.
    Rejected { error: PluginError, attempts: u32 },
    /// Config, fatal, an unknown kind, or too many restarts: the pipeline stops.
    Fatal { error: PluginError },
    /// The pipeline is stopping; the call was abandoned without a verdict.
    Stopped,
}

/// The policies of one stage, with their state.
pub struct PolicyStack {
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    rate: Option<RateLimiter>,
    on_limit: OnLimit,
    timeout: Option<Duration>,
    open_for: Duration,
    restarts: RestartBudget,
    /// The last failure, named when the restart budget runs out.
    last_error: Option<PluginError>,
    pub metrics: Arc<StageMetrics>,
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> Result<(), CallError> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(CallError::Stopped),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

impl PolicyStack {
    pub fn new(policy: &ResolvedPolicy, metrics: Arc<StageMetrics>) -> Self {
        PolicyStack {
            retry: policy.retry.clone(),
            breaker: CircuitBreaker::new(policy.breaker.clone()),
            rate: policy.rate_limit.as_ref().and_then(RateLimiter::new),
            on_limit: policy
                .rate_limit
                .as_ref()
                .map_or(OnLimit::Wait, |r| r.on_limit),
            timeout: policy.timeout,
            open_for: policy.breaker.open_for,
            restarts: RestartBudget::new(policy.restart.clone()),
            last_error: None,
            metrics,
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn log_transition(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let gauge = match t.to {
            BreakerState::Closed => BreakerGauge::Closed,
            BreakerState::Open => BreakerGauge::Open,
            BreakerState::HalfOpen => BreakerGauge::HalfOpen,
        };
        self.metrics.breaker.set(gauge as i64);
        match t.to {
            BreakerState::Open => {
                self.metrics.breaker_opened.fetch_add(1, Relaxed);
                tracing::warn!(
                    from = t.from.as_str(),
                    "circuit breaker opened: the stage is not called for {}",
                    humantime::format_duration(self.breaker_policy_open_for())
                );
            }
            BreakerState::HalfOpen => tracing::info!("circuit breaker half-open: probing"),
            BreakerState::Closed => tracing::info!("circuit breaker closed: the stage recovered"),
        }
    }

    fn breaker_policy_open_for(&self) -> Duration {
        self.open_for
    }

    /// Waits while the breaker is open; logs the move to half-open.
    async fn pass_breaker(&mut self, stop: &CancellationToken) -> Result<(), CallError> {
        loop {
            match self.breaker.before_call(Instant::now()) {
                Ok(t) => {
                    self.log_transition(t);
                    return Ok(());
                }
                Err(until) => {
                    let wait = until.saturating_duration_since(Instant::now());
                    sleep_or_stop(wait, stop).await?;
                }
            }
        }
    }

    /// Records a failed attempt: breaker, then whether and how long to wait before the next.
    /// `Err(Exhausted)` when the retry policy gives up.
    pub async fn record_failure(
        &mut self,
        error: PluginError,
        attempts: u32,
        started: Instant,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let t = self.breaker.on_failure(Instant::now());
        self.log_transition(t);
        self.last_error = Some(error.clone());
        if !self.retry.may_retry(attempts, started.elapsed()) {
            tracing::warn!(attempts, "giving up: {error}");
            return Err(CallError::Exhausted { error, attempts });
        }
        let delay = self.retry.delay(attempts, error.retry_after());
        self.metrics.retries.inc();
        tracing::warn!(
            attempt = attempts,
            "{error}; retrying in {}",
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        sleep_or_stop(delay, stop).await
    }

    /// One logical call through the whole stack, retried as the policy allows. `records` is
    /// what the call carries, for the rate limit. `op` runs on the blocking pool and may run
    /// several times (it captures the batch by `Arc`, so a retry does not copy records).
    pub async fn call<T, R, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        records: usize,
        stop: &CancellationToken,
        op: F,
    ) -> Result<(R, u32), CallError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(&mut T) -> Result<R, PluginError> + Clone + Send + 'static,
    {
        self.call_judged(stage, records, stop, op, |_| true).await
    }

    /// [`PolicyStack::call`] for calls that can return `Ok` and still have failed: `healthy`
    /// says whether a result counts as a success for the circuit breaker. A sink batch whose
    /// records all failed retriably (every message timed out) must not close the breaker; the
    /// caller reports the failure with [`PolicyStack::record_failure`].
    pub async fn call_judged<T, R, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        records: usize,
        stop: &CancellationToken,
        op: F,
        healthy: impl Fn(&R) -> bool,
    ) -> Result<(R, u32), CallError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(&mut T) -> Result<R, PluginError> + Clone + Send + 'static,
    {
        let called = self
            .attempt(stage, None, records, stop, op, healthy)
            .await?;
        Ok(called.expect("an unpinned call makes the instance it needs"))
    }

    /// [`PolicyStack::call`] on one particular instance, `generation`: retried while that
    /// instance lives, `Ok(None)` once it is gone (lost, or replaced by a newer one), never
    /// sent to another. For calls whose arguments mean something only to the instance that
    /// produced them, such as acknowledgements of a source's positions.
    pub async fn call_pinned<T, R, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        generation: u64,
        stop: &CancellationToken,
        op: F,
    ) -> Result<Option<(R, u32)>, CallError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(&mut T) -> Result<R, PluginError> + Clone + Send + 'static,
    {
        self.attempt(stage, Some(generation), 0, stop, op, |_| true)
            .await
    }

    async fn attempt<T, R, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        pinned: Option<u64>,
        records: usize,
        stop: &CancellationToken,
        op: F,
        healthy: impl Fn(&R) -> bool,
    ) -> Result<Option<(R, u32)>, CallError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(&mut T) -> Result<R, PluginError> + Clone + Send + 'static,
    {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let once = Once {
                records,
                gate: true,
                pinned,
            };
            let Some(result) = self.call_once(stage, once, stop, op.clone()).await? else {
                return Ok(None);
            };
            attempts += 1;
            let error = match result {
                Ok(value) => {
                    if healthy(&value) {
                        self.record_success();
                    }
                    return Ok(Some((value, attempts)));
                }
                Err(e) => e,
            };
            match error.kind() {
                ErrorKind::Retriable | ErrorKind::Panicked => {
                    self.record_failure(error, attempts, started, stop).await?
                }
                ErrorKind::Rejected => return Err(CallError::Rejected { error, attempts }),
                ErrorKind::Config | ErrorKind::Fatal => return Err(CallError::Fatal { error }),
            }
        }
    }

    /// A call's success, for the circuit breaker.
    pub fn record_success(&mut self) {
        let t = self.breaker.on_success();
        self.log_transition(t);
    }

    /// One call, not retried: through the breaker and the rate limit (when `once.gate`), on a
    /// live instance (made if needed, unless pinned), within the timeout. A timeout abandons the
    /// instance and a panic discards it; both come back as the call's error, which the caller
    /// judges. `Ok(None)`: the pinned instance is gone. `Err`: stopping, or the stage cannot
    /// get an instance.
    pub async fn call_once<T, R, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        once: Once,
        stop: &CancellationToken,
        op: F,
    ) -> Result<Option<Result<R, PluginError>>, CallError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&mut T) -> Result<R, PluginError> + Send + 'static,
    {
        if stop.is_cancelled() {
            return Err(CallError::Stopped);
        }
        if once.gate {
            self.pass_breaker(stop).await?;
            self.throttle(once.records, stop).await?;
        }
        match once.pinned {
            None => self.ensure_instance(stage, stop).await?,
            Some(g) if stage.is_lost() || stage.generation() != g => return Ok(None),
            Some(_) => {}
        }
        let started = Instant::now();
        let result = timeout::within(self.timeout, stage.call(op)).await;
        if once.gate {
            // Calls that carry a batch (or an ack); waiting for a begun batch is not counted.
            self.metrics.call(started.elapsed());
        }
        let error = match result {
            Ok(Ok(value)) => return Ok(Some(Ok(value))),
            Ok(Err(e)) => {
                self.metrics.error(e.kind(), false);
                self.metrics.set_last_error(&e);
                e
            }
            Err(timeout::TimedOut(d)) => {
                self.metrics.timeouts.fetch_add(1, Relaxed);
                self.metrics.error(ErrorKind::Retriable, true);
                stage.abandon();
                tracing::warn!(
                    "the call did not return within {}; abandoning the instance",
                    humantime::format_duration(d)
                );
                let e = PluginError::retriable(format!(
                    "timed out after {}",
                    humantime::format_duration(d)
                ));
                self.metrics.set_last_error(&e);
                e
            }
        };
        if error.kind() == ErrorKind::Panicked {
            self.metrics.panics.fetch_add(1, Relaxed);
            stage.discard();
        }
        Ok(Some(Err(error)))
    }

    /// The longest a call may take before it is abandoned.
    pub fn call_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// How [`PolicyStack::call_once`] makes a call.
#[derive(Debug, Clone, Copy)]
pub struct Once {
    /// Records the call carries, for the rate limit.
    pub records: usize,
    /// Through the breaker and the rate limit (a batch's first call), or not (waiting for the
    /// outcome of a batch already begun).
    pub gate: bool,
    /// Only on this instance generation, never making one.
    pub pinned: Option<u64>,
}
