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
}

impl RestartBudget {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`. Returns the backoff to wait before recreating, or `None` when
    /// the budget is spent.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return None;
        }
        let n = self.recent.len() as u32;
        self.recent.push_back(now);
        let backoff = self.policy.backoff.as_secs_f64() * 2f64.powi(n.min(16) as i32);
        Some(Duration::from_secs_f64(backoff.min(30.0)))
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    pub fn used(&self) -> usize {
        self.recent.len()
    }
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
}
