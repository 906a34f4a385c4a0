//! The `http` sink's configuration: the `config:` block as deserialized ([`Config`] and the
//! types of its keys), its checks, and [`Settings`], what `validate` and `open` parse it into
//! once (the URL template, headers, content type, retry statuses...).

use std::collections::BTreeMap;
use std::time::Duration;

use orbit_plugin_api::{ConfigError, Template};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// One request per batch (or chunk): `[v1,v2,...]`; values must be JSON.
    #[default]
    JsonArray,
    /// One request per batch (or chunk): one value per line; values must be one line.
    Ndjson,
    /// One request per record with the value as the body.
    PerRecord,
}

/// `auth: { bearer: { token } }` or `auth: { basic: { username, password } }`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    Bearer { token: String },
    Basic { username: String, password: String },
}

/// `signature: { secret, header, timestamp_header }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub(super) secret: String,
    #[serde(default = "default_signature_header")]
    pub(super) header: String,
    #[serde(default = "default_timestamp_header")]
    pub(super) timestamp_header: String,
}

fn default_signature_header() -> String {
    "X-Orbit-Signature".into()
}
fn default_timestamp_header() -> String {
    "X-Orbit-Timestamp".into()
}

/// One entry of `retry_on`: a status code (`429`) or a class (`"5xx"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusMatch {
    Code(u16),
    Class(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Target URL; may hold `{stream}`, `{key}`, `{partition}` or `{field.path}` placeholders.
    pub(super) url: String,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    body: BodyMode,
    /// Extra request headers. Values are never logged.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    auth: Option<Auth>,
    #[serde(default)]
    signature: Option<Signature>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    gzip: bool,
    /// Most records per request (json_array, ndjson); default: the whole batch.
    #[serde(default)]
    max_batch_records: Option<usize>,
    /// Requests in flight at once for the whole sink, across all the batches in flight.
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    /// Statuses that are retried (the host's retry policy); other non-2xx are rejections.
    #[serde(default = "default_retry_on")]
    retry_on: Vec<StatusMatch>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    4
}
fn default_retry_on() -> Vec<StatusMatch> {
    vec![
        StatusMatch::Code(408),
        StatusMatch::Code(429),
        StatusMatch::Class("5xx".into()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Validation

fn status_matcher(list: &[StatusMatch]) -> Result<Vec<(u16, u16)>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            StatusMatch::Code(c) if (100..=599).contains(c) => Ok((*c, *c)),
            StatusMatch::Code(c) => Err(ConfigError::new(
                format!("retry_on[{i}]"),
                format!("{c} is not an HTTP status; use 100 to 599 or a class such as \"5xx\""),
            )),
            StatusMatch::Class(s) => match s.as_bytes() {
                [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    let base = u16::from(d - b'0') * 100;
                    Ok((base, base + 99))
                }
                _ => Err(ConfigError::new(
                    format!("retry_on[{i}]"),
                    format!("`{s}` is neither a status code nor a class such as \"5xx\""),
                )),
            },
        })
        .collect()
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| {
        ConfigError::new(
            "url",
            format!("not a URL ({e}); write e.g. `https://example.com/hooks/orbit`"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            "url",
            format!("scheme `{}` is not http:// or https://", u.scheme()),
        ));
    }
    Ok(())
}

fn header_map(config: &Config) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in &config.headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::new(format!("headers.{name}"), "is not a valid HTTP header name")
        })?;
        // The value is not quoted: it may be a secret.
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            ConfigError::new(
                format!("headers.{name}"),
                "the value holds characters not allowed in an HTTP header (e.g. a newline)",
            )
        })?;
        v.set_sensitive(true);
        map.insert(n, v);
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------------
// Settings

/// The configuration checked and parsed once, in the form the sink uses it.
pub(super) struct Settings {
    pub(super) template: Template,
    /// The URL when it has no placeholders, parsed once.
    pub(super) fixed_url: Option<reqwest::Url>,
    pub(super) method: reqwest::Method,
    pub(super) body: BodyMode,
    pub(super) headers: HeaderMap,
    pub(super) content_type: HeaderValue,
    pub(super) auth: Option<Auth>,
    pub(super) signature: Option<Signature>,
    pub(super) timeout: Duration,
    pub(super) gzip: bool,
    pub(super) max_batch_records: Option<usize>,
    pub(super) concurrency: usize,
    /// `retry_on` as inclusive status ranges.
    pub(super) retry_on: Vec<(u16, u16)>,
}

impl Settings {
    /// Checks `config` (the first problem is the error) and parses it. Connects nowhere.
    pub(super) fn parse(config: &Config) -> Result<Settings, ConfigError> {
        let template = Template::parse("url", &config.url)?;
        // A template is checked with every placeholder standing for `x`.
        check_url(&template.sample("x"))?;
        if let Some(t) = template.leading_text() {
            if !t.contains("://") || t.ends_with("://") {
                return Err(ConfigError::new(
                    "url",
                    "the scheme and host must be literal (placeholders may appear in the path and query only)",
                ));
            }
        } else {
            return Err(ConfigError::new(
                "url",
                "the URL must start with a literal `http://` or `https://` and host",
            ));
        }
        let fixed_url = match template.as_static() {
            Some(t) => Some(
                reqwest::Url::parse(t)
                    .map_err(|e| ConfigError::new("url", format!("not a URL ({e})")))?,
            ),
            _ => None,
        };
        let headers = header_map(config)?;
        let content_type = match (&config.content_type, config.body) {
            (Some(ct), _) => HeaderValue::from_str(ct)
                .map_err(|_| ConfigError::new("content_type", "not a valid header value"))?,
            (None, BodyMode::Ndjson) => HeaderValue::from_static("application/x-ndjson"),
            (None, _) => HeaderValue::from_static("application/json"),
        };
        match &config.auth {
            Some(Auth::Bearer { token }) if token.is_empty() => {
                return Err(ConfigError::new(
                    "auth.bearer.token",
                    "is empty; set it (e.g. `token: ${WEBHOOK_TOKEN}`) or remove `auth`",
                ))
            }
            Some(Auth::Basic { username, .. }) if username.is_empty() => {
                return Err(ConfigError::new("auth.basic.username", "is empty"))
            }
            _ => {}
        }
        if let Some(s) = &config.signature {
            if s.secret.is_empty() {
                return Err(ConfigError::new(
                    "signature.secret",
                    "is empty; set a shared secret (e.g. `secret: ${WEBHOOK_SECRET}`) or remove `signature`",
                ));
            }
            for (key, h) in [
                ("signature.header", &s.header),
                ("signature.timestamp_header", &s.timestamp_header),
            ] {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    ConfigError::new(key, format!("`{h}` is not a valid header name"))
                })?;
            }
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                "timeout",
                "must be more than 0, e.g. `10s`",
            ));
        }
        ConfigError::check_range("concurrency", config.concurrency, 1..=1024)?;
        if config.max_batch_records == Some(0) {
            return Err(ConfigError::new(
                "max_batch_records",
                "must be at least 1 (or leave it out for one request per batch)",
            ));
        }
        let retry_on = status_matcher(&config.retry_on)?;
        Ok(Settings {
            template,
            fixed_url,
            method: match config.method {
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
            },
            body: config.body,
            headers,
            content_type,
            auth: config.auth.clone(),
            signature: config.signature.clone(),
            timeout: config.timeout,
            gzip: config.gzip,
            max_batch_records: config.max_batch_records,
            concurrency: config.concurrency,
            retry_on,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let m = status_matcher(&default_retry_on()).unwrap();
        assert_eq!(m, vec![(408, 408), (429, 429), (500, 599)]);
        assert!(status_matcher(&[StatusMatch::Class("6xx".into())]).is_err());
    }
}
