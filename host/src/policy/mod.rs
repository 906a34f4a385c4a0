//! Host policies around every stage call (retry, circuit breaker, rate limit, timeout).
//! The schema is in [`crate::config::PolicySpec`]; the layers come with the policy issue.
