//! Restarts: an instance that panicked or timed out is recreated through its factory, after a
//! growing backoff, at most `max_restarts` times within `window`; past that the pipeline fails.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    /// The first restart waits this long; each further one in the window twice as long, up to
    /// 30 s.
    pub backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(300),
            backoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    /// Recreations after timeouts in the window: they grow the back-off, not the count.
    timeouts: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            timeouts: VecDeque::new(),
        }
    }

    /// Records a restart at `now`. Returns the backoff to wait before recreating, or `None` when
    /// the budget is spent.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        trim(&mut self.recent, now, self.policy.window);
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return None;
        }
        let n = self.recent.len() as u32;
        self.recent.push_back(now);
        Some(backoff(self.policy.backoff, n))
    }

    /// Records a recreation after a timeout at `now`: the back-off to wait, growing like a
    /// restart's, with no limit on how many.
    pub fn after_timeout(&mut self, now: Instant) -> Duration {
        trim(&mut self.timeouts, now, self.policy.window);
        let n = self.timeouts.len() as u32;
        self.timeouts.push_back(now);
        backoff(self.policy.backoff, n)
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    pub fn used(&self) -> usize {
        self.recent.len()
    }
}

/// Forgets the instants that left the window.
fn trim(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

/// The `n`-th back-off in a window (from 0): `first` doubled `n` times, at most 30 s.
fn backoff(first: Duration, n: u32) -> Duration {
    let secs = first.as_secs_f64() * 2f64.powi(n.min(16) as i32);
    Duration::from_secs_f64(secs.min(30.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_per_window_with_growing_backoff() {
        let mut b = RestartBudget::new(RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        assert_eq!(b.take(t0), Some(Duration::from_millis(100)));
        assert_eq!(b.take(t0), Some(Duration::from_millis(200)));
        assert_eq!(b.take(t0 + Duration::from_secs(59)), None);
        // The first restart leaves the window.
        assert!(b.take(t0 + Duration::from_secs(60)).is_some());
    }

    #[test]
    fn recreations_after_timeouts_grow_the_backoff_and_never_run_out() {
        let mut b = RestartBudget::new(RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..12).map(|_| b.after_timeout(t0)).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[3], Duration::from_millis(800));
        assert_eq!(waits[11], Duration::from_secs(30));
        // They spend none of the restart budget.
        assert_eq!(b.take(t0), Some(Duration::from_millis(100)));
    }
}
