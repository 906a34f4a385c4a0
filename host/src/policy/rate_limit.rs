//! Rate limit with governor (GCRA): `records_per_second` and/or `batches_per_second`, with
//! `burst`. By default a stage waits for capacity (backpressure: nothing is lost); with
//! `on_limit: drop` the records over the limit are dropped on purpose, counted, and their
//! positions acknowledged — lossy sampling the user asked for.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Governor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    Wait,
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub records_per_second: Option<f64>,
    pub batches_per_second: Option<f64>,
    /// Cells that may be taken at once; defaults to one second's worth (at least 1).
    pub burst: Option<u32>,
    pub on_limit: OnLimit,
}

fn quota(per_second: f64, burst: Option<u32>) -> (Quota, u32) {
    let burst = burst.unwrap_or_else(|| per_second.ceil().clamp(1.0, u32::MAX as f64) as u32);
    let burst = NonZeroU32::new(burst.max(1)).expect("burst ≥ 1");
    // governor counts in nanoseconds: rates above 10⁹/s are as good as unlimited.
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)
        .expect("a positive rate gives a non-zero period")
        .allow_burst(burst);
    (quota, burst.get())
}

pub struct RateLimiter {
    records: Option<(DefaultDirectRateLimiter, u32)>,
    batches: Option<DefaultDirectRateLimiter>,
    on_limit: OnLimit,
}

/// What the limiter did to one call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Records that may go on (the first `admitted` of the batch).
    pub admitted: usize,
    /// How long the call waited for capacity.
    pub waited: Duration,
}

impl RateLimiter {
    pub fn new(policy: &RateLimitPolicy) -> Option<Self> {
        if policy.records_per_second.is_none() && policy.batches_per_second.is_none() {
            return None;
        }
        Some(RateLimiter {
            records: policy.records_per_second.map(|r| {
                let (q, burst) = quota(r, policy.burst);
                (Governor::direct(q), burst)
            }),
            batches: policy
                .batches_per_second
                .map(|b| Governor::direct(quota(b, policy.burst).0)),
            on_limit: policy.on_limit,
        })
    }

    /// Admits a batch of `records`: waits for capacity, or with `on_limit: drop` admits only
    /// what capacity allows now.
    pub async fn admit(&self, records: usize) -> Admission {
        let start = Instant::now();
        match self.on_limit {
            OnLimit::Wait => {
                if let Some(b) = &self.batches {
                    b.until_ready().await;
                }
                if let Some((r, burst)) = &self.records {
                    // governor refuses a request larger than the burst: take it in slices.
                    let mut left = records;
                    while left > 0 {
                        let n = left.min(*burst as usize);
                        let cells = NonZeroU32::new(n as u32).expect("n ≥ 1");
                        r.until_n_ready(cells).await.expect("n ≤ burst");
                        left -= n;
                    }
                }
                Admission {
                    admitted: records,
                    waited: start.elapsed(),
                }
            }
            OnLimit::Drop => {
                if let Some(b) = &self.batches {
                    if b.check().is_err() {
                        return Admission::default();
                    }
                }
                let admitted = match &self.records {
                    None => records,
                    Some((r, _)) => (0..records).take_while(|_| r.check().is_ok()).count(),
                };
                Admission {
                    admitted,
                    waited: Duration::ZERO,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_to_hold_the_rate() {
        let l = RateLimiter::new(&RateLimitPolicy {
            records_per_second: Some(2000.0),
            batches_per_second: None,
            burst: Some(100),
            on_limit: OnLimit::Wait,
        })
        .unwrap();
        let start = Instant::now();
        let mut total = 0;
        while total < 1100 {
            total += l.admit(100).await.admitted;
        }
        // 100 of burst, then 1000 more at 2000/s: about 0.5 s.
        let secs = start.elapsed().as_secs_f64();
        assert!((0.45..0.7).contains(&secs), "{secs}");
    }

    #[tokio::test]
    async fn drop_mode_admits_only_the_burst() {
        let l = RateLimiter::new(&RateLimitPolicy {
            records_per_second: Some(10.0),
            batches_per_second: None,
            burst: Some(5),
            on_limit: OnLimit::Drop,
        })
        .unwrap();
        assert_eq!(l.admit(8).await.admitted, 5);
        assert_eq!(l.admit(8).await.admitted, 0);
    }
}
