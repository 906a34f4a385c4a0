//! Per-record retries, the last policy a sink's batch goes through: a write whose outcome fails
//! some records retriably is retried with just those records (in their batch order), through
//! the retry policy's backoff and the breaker, until they are written or out of attempts.
//! What fails for good comes back as verdicts for the caller to dead-letter.

use std::sync::Arc;
use std::time::Instant;

use abi_stable::std_types::RVec;
use orbit_plugin_api::ffi::WriteOutcomeFfi;
use orbit_plugin_api::{ErrorKind, PluginError, Record};
use tokio_util::sync::CancellationToken;

use super::{CallError, PolicyStack};
use crate::plugin::StageInstance;

/// How a batch is written again after its window failed (see the sink's window).
#[derive(Default)]
pub struct Resend<'a> {
    /// Per record: delivered already, written again only to keep its partition's order; not
    /// counted as written a second time.
    pub order_only: &'a [bool],
    /// The failure that made the resend: it counts as the first attempt (the retry policy's
    /// backoff and breaker apply before the first write).
    pub after: Option<(PluginError, Instant)>,
}

/// A record given up on: its index in the batch, why, after how many calls.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub index: usize,
    pub error: PluginError,
    pub attempts: u32,
}

/// The end of a batch's write: how many records were written (order-only ones not counted)
/// and the records that failed for good (rejected, or out of retries).
#[derive(Debug, Default)]
pub struct Settled {
    pub written: usize,
    pub failed: Vec<Verdict>,
}

/// Whether a write's outcome counts as a success for the circuit breaker: no record failed
/// retriably (a batch whose records all timed out must not close it).
pub fn written_healthy(out: &WriteOutcomeFfi) -> bool {
    !out.failures
        .iter()
        .any(|f| f.error.kind() == ErrorKind::Retriable)
}

impl PolicyStack {
    /// Writes `records` through the whole stack with per-record retries. `op(subset)` makes the
    /// call for a subset of the batch. `Err`: stopping, or a configuration or fatal error
    /// (whole-batch or for one record) that stops the stage.
    pub async fn call_per_record<T, F>(
        &mut self,
        stage: &mut StageInstance<T>,
        records: Arc<RVec<Record>>,
        resend: Resend<'_>,
        stop: &CancellationToken,
        op: impl Fn(Arc<RVec<Record>>) -> F,
    ) -> Result<Settled, CallError>
    where
        T: Send + 'static,
        F: Fn(&mut T) -> Result<WriteOutcomeFfi, PluginError> + Clone + Send + 'static,
    {
        let (mut pending, started) = match resend.after {
            Some((error, started)) => (Some(error), started),
            None => (None, Instant::now()),
        };
        let counted = |origin: usize| !resend.order_only.get(origin).copied().unwrap_or(false);
        let mut total_attempts = u32::from(pending.is_some());
        let mut current = records;
        // The index in the batch of each record of `current`.
        let mut origin: Vec<usize> = (0..current.len()).collect();
        let mut settled = Settled::default();
        let all_failed = |origin: &[usize], error: &PluginError, attempts: u32| {
            origin
                .iter()
                .map(|&index| Verdict {
                    index,
                    error: error.clone(),
                    attempts,
                })
                .collect::<Vec<_>>()
        };
        loop {
            if let Some(error) = pending.take() {
                match self
                    .record_failure(error.clone(), total_attempts, started, stop)
                    .await
                {
                    Ok(()) => {}
                    Err(CallError::Stopped) => return Err(CallError::Stopped),
                    Err(_) => {
                        let given_up = all_failed(&origin, &error, total_attempts);
                        settled.failed.extend(given_up);
                        return Ok(settled);
                    }
                }
            }
            let n = current.len();
            let (out, attempts) = match self
                .call_judged(stage, n, stop, op(current.clone()), written_healthy)
                .await
            {
                Ok(v) => v,
                Err(
                    CallError::Exhausted { error, attempts }
                    | CallError::Rejected { error, attempts },
                ) => {
                    settled.failed.extend(all_failed(&origin, &error, attempts));
                    return Ok(settled);
                }
                Err(e) => return Err(e),
            };
            total_attempts += attempts;
            let mut failed = vec![false; n];
            let mut retry = Vec::new();
            let mut retry_error = None;
            for f in out.failures.iter() {
                let index = f.index as usize;
                let Some(slot) = failed.get_mut(index) else {
                    continue; // an index outside the batch names no record
                };
                *slot = true;
                match f.error.kind() {
                    ErrorKind::Retriable => {
                        retry.push(index);
                        retry_error = Some(f.error.clone());
                    }
                    // Not bad input: stop (its position stays unacknowledged) instead of
                    // dead-lettering every record that follows.
                    ErrorKind::Config | ErrorKind::Fatal => {
                        return Err(CallError::Fatal {
                            error: f.error.clone(),
                        })
                    }
                    _ => settled.failed.push(Verdict {
                        index: origin[index],
                        error: f.error.clone(),
                        attempts: total_attempts,
                    }),
                }
            }
            settled.written += (0..n).filter(|&i| !failed[i] && counted(origin[i])).count();
            let Some(error) = retry_error else {
                return Ok(settled);
            };
            // Retried in the batch's order (a sink may report failures in any order), each once.
            retry.sort_unstable();
            retry.dedup();
            origin = retry.iter().map(|&i| origin[i]).collect();
            current = Arc::new(retry.iter().map(|&i| current[i].clone()).collect());
            pending = Some(error);
        }
    }
}
