//! Bearer-token authorization for the `http` source, decided from the request headers alone
//! (before a byte of the body is read), and the aggregated log of refused requests.
//!
//! The token is kept only as its SHA-256 digest and compared in constant time; neither the
//! expected nor the presented token ever reaches a log line or an answer.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::throttle::{Throttle, REPORT_EVERY};

/// Why a request was refused; the text is safe to log (it never holds the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    NotBearer,
    WrongToken,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "no Authorization header",
            Refusal::NotBearer => "Authorization is not `Bearer <token>`",
            Refusal::WrongToken => "wrong bearer token",
        }
    }
}

/// The expected token, as its digest.
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        BearerToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Checks `Authorization: Bearer <token>`; the scheme is matched case-insensitively
    /// (RFC 9110 §11.1) and may be followed by more than one space.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
        let given = bearer(value.as_bytes()).ok_or(Refusal::NotBearer)?;
        // Comparing digests hides the token's length as well as its bytes.
        let digest: [u8; 32] = Sha256::digest(given).into();
        if constant_time_eq(&digest, &self.digest) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }
}

/// The credentials of a `Bearer` authorization value, if it is one.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
    let end = rest.iter().rposition(|&b| b != b' ' && b != b'\t')? + 1;
    Some(&rest[start..end])
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Refused requests, logged at warn at most once per [`Throttle`] window with a count of the
/// ones not logged since, so a flood of bad logins does not flood the log.
#[derive(Default)]
pub struct FailedLogins {
    state: Mutex<Throttle>,
}

impl FailedLogins {
    pub fn record(&self, peer: SocketAddr, why: Refusal) {
        let earlier = self
            .state
            .lock()
            .expect("failed-logins lock")
            .note(Instant::now());
        match earlier {
            None => {}
            Some(0) => {
                tracing::warn!(%peer, "http source: refused a request (401): {}", why.as_str())
            }
            Some(n) => tracing::warn!(
                %peer,
                "http source: refused a request (401): {}; {n} more refused since the last report (one line per {}s at most)",
                why.as_str(),
                REPORT_EVERY.as_secs()
            ),
        }
    }

    /// Logs the refusals not reported yet (at close).
    pub fn flush(&self) {
        let n = self
            .state
            .lock()
            .expect("failed-logins lock")
            .take_unreported();
        if n > 0 {
            tracing::warn!("http source: {n} more requests refused (401) since the last report");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let t = BearerToken::new("s3cret");
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer   s3cret ",
        ] {
            assert_eq!(t.check(&with_auth(ok)), Ok(()), "{ok}");
        }
        assert_eq!(t.check(&HeaderMap::new()), Err(Refusal::Missing));
        for (bad, why) in [
            ("Bearer s3cre", Refusal::WrongToken),
            ("Bearer S3CRET", Refusal::WrongToken),
            ("Bearer s3cret2", Refusal::WrongToken),
            ("Bearer ", Refusal::NotBearer),
            ("Bearers3cret", Refusal::NotBearer),
            ("Basic czNjcmV0", Refusal::NotBearer),
            ("s3cret", Refusal::NotBearer),
        ] {
            assert_eq!(t.check(&with_auth(bad)), Err(why), "{bad}");
        }
    }
}
