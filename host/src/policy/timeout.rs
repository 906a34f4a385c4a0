//! Timeout per plugin call. A call that does not return in time is abandoned: the blocking
//! thread keeps running it (a thread cannot be killed), but its instance is never used again
//! and the stage gets a new one from the factory (see `restart`).

use std::future::Future;
use std::time::Duration;

/// The call did not finish within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

pub async fn within<F: Future>(limit: Option<Duration>, call: F) -> Result<F::Output, TimedOut> {
    match limit {
        None => Ok(call.await),
        Some(d) => tokio::time::timeout(d, call).await.map_err(|_| TimedOut(d)),
    }
}
