//! What a stage's `policy:` block says: merged over `defaults.policy`, validated, and resolved
//! into the policies with every default filled in.

use std::time::Duration;

use crate::config::{self, PolicySpec};

use super::breaker::BreakerPolicy;
use super::rate_limit::{OnLimit, RateLimitPolicy};
use super::restart::RestartPolicy;
use super::retry::RetryPolicy;

/// Every policy of one stage with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPolicy {
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    pub rate_limit: Option<RateLimitPolicy>,
    pub timeout: Option<Duration>,
    pub restart: RestartPolicy,
}

/// The default per-call timeout: long enough for any healthy batch, short enough that a hung
/// plugin is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `stage` over `defaults`, key by key.
pub fn merge(stage: &PolicySpec, defaults: &PolicySpec) -> PolicySpec {
    fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
        a.clone().or_else(|| b.clone())
    }
    let retry = match (&stage.retry, &defaults.retry) {
        (Some(s), Some(d)) => Some(config::RetrySpec {
            max_attempts: pick(&s.max_attempts, &d.max_attempts),
            max_elapsed: pick(&s.max_elapsed, &d.max_elapsed),
            initial_backoff: pick(&s.initial_backoff, &d.initial_backoff),
            max_backoff: pick(&s.max_backoff, &d.max_backoff),
            multiplier: pick(&s.multiplier, &d.multiplier),
        }),
        (s, d) => pick(s, d),
    };
    let circuit_breaker = match (&stage.circuit_breaker, &defaults.circuit_breaker) {
        (Some(s), Some(d)) => Some(config::BreakerSpec {
            failure_threshold: pick(&s.failure_threshold, &d.failure_threshold),
            open_for: pick(&s.open_for, &d.open_for),
            half_open_max_calls: pick(&s.half_open_max_calls, &d.half_open_max_calls),
        }),
        (s, d) => pick(s, d),
    };
    let rate_limit = match (&stage.rate_limit, &defaults.rate_limit) {
        (Some(s), Some(d)) => Some(config::RateLimitSpec {
            records_per_second: pick(&s.records_per_second, &d.records_per_second),
            batches_per_second: pick(&s.batches_per_second, &d.batches_per_second),
            burst: pick(&s.burst, &d.burst),
            on_limit: pick(&s.on_limit, &d.on_limit),
        }),
        (s, d) => pick(s, d),
    };
    let restart = match (&stage.restart, &defaults.restart) {
        (Some(s), Some(d)) => Some(config::RestartSpec {
            max_restarts: pick(&s.max_restarts, &d.max_restarts),
            window: pick(&s.window, &d.window),
            backoff: pick(&s.backoff, &d.backoff),
        }),
        (s, d) => pick(s, d),
    };
    PolicySpec {
        retry,
        circuit_breaker,
        rate_limit,
        timeout: stage.timeout.or(defaults.timeout),
        restart,
    }
}

/// A bad policy value: the key (relative to `policy`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: &str) -> PolicyError {
    PolicyError {
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// Checks one `policy:` block as written (before merging), so errors point at the user's key.
pub fn validate(p: &PolicySpec) -> Result<(), PolicyError> {
    let positive = |d: Option<Duration>, key: &str| match d {
        Some(d) if d.is_zero() => Err(bad(key, "must be longer than 0")),
        _ => Ok(()),
    };
    if let Some(r) = &p.retry {
        if r.max_attempts == Some(0) {
            return Err(bad(
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)",
            ));
        }
        positive(r.max_elapsed, "retry.max_elapsed")?;
        positive(r.max_backoff, "retry.max_backoff")?;
        if let Some(m) = r.multiplier {
            if !(m >= 1.0 && m.is_finite()) {
                return Err(bad("retry.multiplier", "must be a number ≥ 1"));
            }
        }
        if let (Some(i), Some(m)) = (r.initial_backoff, r.max_backoff) {
            if i > m {
                return Err(bad("retry.initial_backoff", "must not exceed max_backoff"));
            }
        }
    }
    if let Some(b) = &p.circuit_breaker {
        if b.failure_threshold == Some(0) {
            return Err(bad(
                "circuit_breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        if b.half_open_max_calls == Some(0) {
            return Err(bad(
                "circuit_breaker.half_open_max_calls",
                "must be at least 1",
            ));
        }
        positive(b.open_for, "circuit_breaker.open_for")?;
    }
    if let Some(r) = &p.rate_limit {
        for (v, key) in [
            (r.records_per_second, "rate_limit.records_per_second"),
            (r.batches_per_second, "rate_limit.batches_per_second"),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(bad(key, "must be a positive number"));
                }
            }
        }
        if r.records_per_second.is_none() && r.batches_per_second.is_none() {
            return Err(bad(
                "rate_limit",
                "give records_per_second and/or batches_per_second",
            ));
        }
        if r.burst == Some(0) {
            return Err(bad("rate_limit.burst", "must be at least 1"));
        }
    }
    positive(p.timeout, "timeout")?;
    if let Some(r) = &p.restart {
        positive(r.window, "restart.window")?;
    }
    Ok(())
}

impl ResolvedPolicy {
    /// Fills in defaults for everything a merged spec leaves out.
    pub fn resolve(p: &PolicySpec) -> ResolvedPolicy {
        let r = p.retry.clone().unwrap_or_default();
        let dr = RetryPolicy::default();
        let b = p.circuit_breaker.clone().unwrap_or_default();
        let db = BreakerPolicy::default();
        let s = p.restart.clone().unwrap_or_default();
        let ds = RestartPolicy::default();
        ResolvedPolicy {
            retry: RetryPolicy {
                max_attempts: r.max_attempts,
                max_elapsed: r.max_elapsed,
                initial_backoff: r.initial_backoff.unwrap_or(dr.initial_backoff),
                max_backoff: r.max_backoff.unwrap_or(dr.max_backoff),
                multiplier: r.multiplier.unwrap_or(dr.multiplier),
            },
            breaker: BreakerPolicy {
                failure_threshold: b.failure_threshold.unwrap_or(db.failure_threshold),
                open_for: b.open_for.unwrap_or(db.open_for),
                half_open_max_calls: b.half_open_max_calls.unwrap_or(db.half_open_max_calls),
            },
            rate_limit: p.rate_limit.as_ref().map(|r| RateLimitPolicy {
                records_per_second: r.records_per_second,
                batches_per_second: r.batches_per_second,
                burst: r.burst,
                on_limit: match r.on_limit {
                    Some(config::OnLimit::Drop) => OnLimit::Drop,
                    _ => OnLimit::Wait,
                },
            }),
            timeout: Some(p.timeout.unwrap_or(DEFAULT_TIMEOUT)),
            restart: RestartPolicy {
                max_restarts: s.max_restarts.unwrap_or(ds.max_restarts),
                window: s.window.unwrap_or(ds.window),
                backoff: s.backoff.unwrap_or(ds.backoff),
            },
        }
    }
}
