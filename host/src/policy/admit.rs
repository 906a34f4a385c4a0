//! The rate limit as the stack applies it outside a call: records over the limit dropped
//! (`on_limit: drop`), or a wait for capacity (`wait`), for a batch whose size is known only
//! after the call that made it (a source's poll).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use abi_stable::std_types::RVec;
use tokio_util::sync::CancellationToken;

use super::rate_limit::{Admission, OnLimit};
use super::{CallError, PolicyStack};

impl PolicyStack {
    /// With `on_limit: drop`, cuts `records` down to what the rate limit admits (the rest are
    /// dropped on purpose, and acknowledged like delivered ones); returns how many were dropped.
    /// Without it, nothing: waiting happens inside [`PolicyStack::call`].
    pub async fn drop_over_limit<R>(&self, records: &mut RVec<R>) -> usize {
        let before = records.len();
        let admitted = self.sample(before).await;
        records.truncate(admitted);
        before - admitted
    }

    /// The rate limit on what a source returned, whose size is known only after the poll:
    /// records over the limit dropped (`on_limit: drop`, returning how many) or a wait for
    /// capacity (`wait`).
    pub async fn admit_polled<R>(
        &self,
        records: &mut RVec<R>,
        stop: &CancellationToken,
    ) -> Result<usize, CallError> {
        let dropped = self.drop_over_limit(records).await;
        self.throttle(records.len(), stop).await?;
        Ok(dropped)
    }

    /// With `on_limit: drop`, how many of `records` may go on.
    async fn sample(&self, records: usize) -> usize {
        match (&self.rate, self.on_limit) {
            (Some(rate), OnLimit::Drop) => {
                let Admission { admitted, .. } = rate.admit(records).await;
                let dropped = records - admitted;
                if dropped > 0 {
                    self.metrics
                        .rate_limit_dropped
                        .fetch_add(dropped as u64, Relaxed);
                    self.metrics.discarded_intentional.inc_by(dropped as u64);
                    tracing::debug!(dropped, "rate limit: dropped records over the limit");
                }
                admitted
            }
            _ => records,
        }
    }

    /// Waits for rate-limit capacity for `records` (wait mode).
    pub(super) async fn throttle(
        &self,
        records: usize,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let (Some(rate), OnLimit::Wait) = (&self.rate, self.on_limit) else {
            return Ok(());
        };
        let admission = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(CallError::Stopped),
            a = rate.admit(records) => a,
        };
        if admission.waited > Duration::from_millis(1) {
            self.metrics.rate_limit_waits.fetch_add(1, Relaxed);
            self.metrics
                .rate_limit_wait_seconds
                .inc_by(admission.waited.as_secs_f64());
            tracing::trace!(waited = ?admission.waited, "rate limit: waited for capacity");
        }
        Ok(())
    }
}
