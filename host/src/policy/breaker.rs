//! Circuit breaker: closed → open after `failure_threshold` consecutive failures; open for
//! `open_for` (the stage is not called; its input waits upstream); then half-open, where
//! `half_open_max_calls` consecutive successful probes close it and any failure opens it again.
//!
//! Consecutive failures rather than a failure rate: a stage makes one call at a time, so a rate
//! over a window would mostly measure the retry schedule; a run of failures is the signal.
//! The state machine takes the current time as an argument so it can be tested without clocks.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub half_open_max_calls: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_max_calls: 1,
        }
    }
}

/// A change of state, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: BreakerState,
    consecutive_failures: u32,
    half_open_successes: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        CircuitBreaker {
            policy,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            half_open_successes: 0,
            open_until: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Before a call: `Ok` with a transition if the breaker moved to half-open, or `Err(until)`
    /// while it is open.
    pub fn before_call(&mut self, now: Instant) -> Result<Option<Transition>, Instant> {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) if now < until => Err(until),
            (BreakerState::Open, _) => {
                self.half_open_successes = 0;
                Ok(self.go(BreakerState::HalfOpen))
            }
            _ => Ok(None),
        }
    }

    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        if self.state == BreakerState::HalfOpen {
            self.half_open_successes += 1;
            if self.half_open_successes >= self.policy.half_open_max_calls {
                return self.go(BreakerState::Closed);
            }
        }
        None
    }

    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_failures += 1;
        let trip = self.state == BreakerState::HalfOpen
            || (self.state == BreakerState::Closed
                && self.consecutive_failures >= self.policy.failure_threshold);
        if trip {
            self.open_until = Some(now + self.policy.open_for);
            return self.go(BreakerState::Open);
        }
        None
    }

    fn go(&mut self, to: BreakerState) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            half_open_max_calls: 2,
        })
    }

    #[test]
    fn opens_after_the_threshold_and_refuses_calls_while_open() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.on_failure(t0), None);
        b.on_success(); // a success resets the run
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        let tr = b.on_failure(t0).unwrap();
        assert_eq!((tr.from, tr.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            b.before_call(t0 + Duration::from_secs(5)),
            Err(t0 + Duration::from_secs(10))
        );
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(10);
        let tr = b.before_call(later).unwrap().unwrap();
        assert_eq!(tr.to, BreakerState::HalfOpen);
        // A failed probe opens it again for another open_for.
        assert_eq!(b.on_failure(later).unwrap().to, BreakerState::Open);
        assert!(b.before_call(later + Duration::from_secs(9)).is_err());
        let again = later + Duration::from_secs(10);
        assert_eq!(
            b.before_call(again).unwrap().unwrap().to,
            BreakerState::HalfOpen
        );
        // Two successful probes close it.
        assert_eq!(b.on_success(), None);
        assert_eq!(b.on_success().unwrap().to, BreakerState::Closed);
        assert_eq!(b.before_call(again), Ok(None));
    }
}
