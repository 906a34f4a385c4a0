//! Retry with full-jitter exponential backoff, for retriable errors only.
//!
//! The delay before attempt `n + 1` is uniform in `[0, min(max_backoff, initial × multiplierⁿ⁻¹)]`
//! ("full jitter": spreads retries of many stages hitting one broker), but never shorter than a
//! retry-after the plugin asked for. Attempts are bounded by `max_attempts` and/or
//! `max_elapsed`; neither set means retry until the pipeline stops (backpressure holds the
//! source meanwhile, and the circuit breaker spaces the attempts).

use std::time::Duration;

use rand::Rng as _;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total calls including the first; `None` is unbounded.
    pub max_attempts: Option<u32>,
    pub max_elapsed: Option<Duration>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: None,
            max_elapsed: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Whether another attempt may follow `attempts` failed ones, `elapsed` after the first.
    pub fn may_retry(&self, attempts: u32, elapsed: Duration) -> bool {
        self.max_attempts.is_none_or(|m| attempts < m)
            && self.max_elapsed.is_none_or(|m| elapsed < m)
    }

    /// The ceiling of the jittered delay after `attempts` failures.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempts.saturating_sub(1).min(1000) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before the next attempt: full jitter under the ceiling, at least `retry_after`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempts);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()))
        };
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_elapsed_bound_retries() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            max_elapsed: Some(Duration::from_secs(10)),
            ..RetryPolicy::default()
        };
        assert!(p.may_retry(1, Duration::ZERO));
        assert!(p.may_retry(2, Duration::ZERO));
        assert!(!p.may_retry(3, Duration::ZERO));
        assert!(!p.may_retry(1, Duration::from_secs(10)));
        assert!(RetryPolicy::default().may_retry(1_000_000, Duration::from_secs(86400)));
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap_with_full_jitter() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(10), Duration::from_secs(1));
        for attempt in 1..8 {
            let d = p.delay(attempt, None);
            assert!(d <= p.ceiling(attempt), "{d:?}");
        }
        // Jitter spreads: 200 draws under a 1 s ceiling are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| p.delay(10, None)).collect();
        assert!(draws.len() > 100);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        assert!(p.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
