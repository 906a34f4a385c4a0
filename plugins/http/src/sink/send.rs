//! Sending the `http` sink's requests and judging the answers: the requests of every batch in
//! flight go out `concurrency` at a time (sink-wide permits, taken in the order the batches
//! began) on the sink's runtime; each response is classified as written, retriable (with
//! `Retry-After`, 413 chunk halving) or rejected/config, and the per-request results become the
//! batch's [`WriteOutcome`] (or one error when nothing got through).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use orbit_plugin_api::{PluginError, WriteOutcome};

use super::request::{redact, redact_url, Request};
use super::Inner;

/// The largest part of a response body quoted in an error message.
const BODY_IN_ERRORS: usize = 512;

/// What the requests of one batch came to, for [`outcome`].
#[derive(Default)]
pub(super) struct Sent {
    /// The records of the requests that failed, with their request's error.
    pub(super) failed: Vec<(usize, PluginError)>,
    /// Some request succeeded.
    pub(super) any_ok: bool,
    pub(super) failed_requests: u64,
}

impl Sent {
    fn add(&mut self, (indices, result): (Vec<usize>, Result<(), PluginError>)) {
        match result {
            Ok(()) => self.any_ok = true,
            Err(e) => {
                self.failed_requests += 1;
                self.failed
                    .extend(indices.into_iter().map(|i| (i, e.clone())));
            }
        }
    }
}

impl Inner {
    /// Sends one batch's `requests`, each holding one of the sink's `concurrency` permits
    /// while it is sent. Permits are taken in order, behind the requests of batches begun
    /// earlier: with `concurrency: 1` requests go out one at a time in begin order.
    pub(super) async fn send_all(self: Arc<Self>, requests: Vec<Request>) -> Sent {
        let mut sent = Sent::default();
        let this = &*self;
        let mut in_flight = FuturesUnordered::new();
        let line = this.line.lock().await;
        for r in requests {
            // The same `acquire` is polled until it yields its permit (dropping it would lose
            // its place in the queue); meanwhile this batch's requests in flight go on.
            let acquire = this.permits.acquire();
            tokio::pin!(acquire);
            let permit = loop {
                tokio::select! {
                    biased;
                    permit = &mut acquire => break permit,
                    Some(done) = in_flight.next() => sent.add(done),
                }
            };
            in_flight.push(async move {
                // Never closed: always a permit, held until the answer is read.
                let _permit = permit;
                let result = this
                    .send(&r.url, r.body, r.indices.len(), r.record_id.as_deref())
                    .await;
                (r.indices, result)
            });
        }
        drop(line);
        while let Some(done) = in_flight.next().await {
            sent.add(done);
        }
        sent
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        records: usize,
        record_id: Option<&str>,
    ) -> Result<(), PluginError> {
        let req = self.build(url, body, record_id)?;
        // Only formatted when something failed.
        let what = || format!("{} {}", self.settings.method, redact_url(url));
        let response = req.send().await.map_err(|e| {
            if e.is_builder() {
                // The request itself cannot be built (a bad URL or header): sending it again
                // would fail the same way.
                PluginError::rejected(format!("{}: {}", what(), describe(e)))
            } else {
                PluginError::retriable(format!("{}: {}; the host retries", what(), describe(e)))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            return Ok(());
        }
        let response_location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| {
                // Absolute: redacted like any URL; relative: its path, without the query.
                let shown = if reqwest::Url::parse(l).is_ok() {
                    redact(l)
                } else {
                    l.split('?').next().unwrap_or_default().to_string()
                };
                format!(" to {shown}")
            });
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = match response.bytes().await {
            Ok(b) => quote_body(&b),
            Err(_) => String::new(),
        };
        let code = status.as_u16();
        let message = format!("{}: HTTP {status}{text}", what());
        if code == 413 && records > 1 {
            // Too large as a whole, not per record: send these again in smaller requests.
            let smaller = records / 2;
            if self.chunk.fetch_min(smaller, Ordering::Relaxed) > smaller {
                tracing::warn!(
                    records,
                    max_batch_records = smaller,
                    "the receiver refused a request of {records} records as too large (HTTP 413); \
                     sending at most {smaller} per request from now on (set `max_batch_records`)"
                );
            }
            return Err(PluginError::retriable(format!(
                "{message}: {records} records were too large for one request; retried {smaller} per request"
            )));
        }
        if self
            .settings
            .retry_on
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
        {
            let e = PluginError::retriable(message);
            Err(match retry_after {
                Some(d) => e.with_retry_after(d),
                None => e,
            })
        } else if status.is_redirection() {
            let location = response_location.unwrap_or_default();
            Err(PluginError::config(format!(
                "{message}: the endpoint redirects{location}; set `url` to the final address \
                 (redirects are not followed: they would drop the body)"
            )))
        } else if code == 401 || code == 403 {
            Err(PluginError::config(format!(
                "{message}: the endpoint refused the credentials; check `auth` and `headers`"
            )))
        } else if code == 413 {
            Err(PluginError::rejected(format!(
                "{message}: this record alone is larger than the receiver accepts"
            )))
        } else {
            Err(PluginError::rejected(message))
        }
    }
}

/// The result of a `write` of `batch_len` records whose `failed` records were not written
/// (`any_ok`: some request succeeded).
pub(super) fn outcome(
    mut failed: Vec<(usize, PluginError)>,
    any_ok: bool,
    batch_len: usize,
) -> Result<WriteOutcome, PluginError> {
    if failed.is_empty() {
        return Ok(WriteOutcome::ok());
    }
    let retry_after = failed.iter().filter_map(|(_, e)| e.retry_after()).max();
    let all_retriable = failed
        .iter()
        .all(|(_, e)| e.kind() == orbit_plugin_api::ErrorKind::Retriable);
    if !any_ok && all_retriable && failed.len() == batch_len {
        // Nothing got through: fail the call as a whole, so the breaker sees the failure.
        let (_, e) = failed.swap_remove(0);
        return Err(match retry_after {
            Some(d) => e.with_retry_after(d),
            None => e,
        });
    }
    let mut outcome = WriteOutcome::ok();
    for (i, e) in failed {
        let e = match (e.kind(), retry_after) {
            // The host waits for the retry-after of the failures it retries: give each the
            // longest one the server asked for.
            (orbit_plugin_api::ErrorKind::Retriable, Some(d)) => e.with_retry_after(d),
            _ => e,
        };
        outcome.fail(i, e);
    }
    Ok(outcome)
}

/// `: <body>` with the body cut to [`BODY_IN_ERRORS`] bytes, or nothing for an empty body.
fn quote_body(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(&b[..b.len().min(BODY_IN_ERRORS)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else if b.len() > BODY_IN_ERRORS {
        format!(": {text}… ({} bytes)", b.len())
    } else {
        format!(": {text}")
    }
}

/// A reqwest error with its causes, without the URL (ours is redacted).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use orbit_plugin_api::{Record, Sink as _};

    use super::super::test_sink as sink;
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_refused_connection_fails_the_whole_call_as_retriable_without_secrets() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = sink(&format!(
            r#"{{"url":"http://user:pw-secret@127.0.0.1:{port}/x","auth":{{"bearer":{{"token":"tok-secret"}}}},"signature":{{"secret":"mac-secret"}},"timeout":"2s"}}"#
        ));
        let e = s.write(&[Record::new("{}")]).unwrap_err();
        assert_eq!(e.kind(), orbit_plugin_api::ErrorKind::Retriable);
        let m = e.message();
        assert!(m.contains("cannot connect"), "{m}");
        assert!(m.contains("user:***@"), "{m}");
        for secret in ["pw-secret", "tok-secret", "mac-secret"] {
            assert!(!m.contains(secret), "{m}");
        }
    }
}
