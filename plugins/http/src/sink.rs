//! `http` sink: delivers batches to a webhook with reqwest (rustls), one pooled client per
//! instance. See the crate documentation for delivery semantics and the signature algorithm.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt as _};
use hmac::{Hmac, Mac};
use orbit_plugin_api::{
    ConfigError, PluginError, Record, Sink, SinkContext, Template, WriteOutcome,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;
use sha2::Sha256;

/// The largest part of a response body quoted in an error message.
const BODY_IN_ERRORS: usize = 512;

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
#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    Bearer { token: String },
    Basic { username: String, password: String },
}

/// `signature: { secret, header, timestamp_header }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    secret: String,
    #[serde(default = "default_signature_header")]
    header: String,
    #[serde(default = "default_timestamp_header")]
    timestamp_header: String,
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
    url: String,
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
    /// Requests in flight at once while writing one batch.
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
// URL templates

/// Percent-encodes everything but RFC 3986 unreserved characters: a substituted value stays
/// inside its path segment or query value.
fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The URL without its password or query values, for logs and errors.
pub fn redact(url: &str) -> String {
    orbit_plugin_api::redact::redact_url(url)
}

fn redact_url(url: &reqwest::Url) -> String {
    redact(url.as_str())
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
// The sink

pub struct HttpSink {
    /// This sink's own single-threaded runtime, driven only inside `write` by the calling
    /// thread: the requests, their connections and timers all run on that one thread, with
    /// no hand-off to worker threads per response (which cost more than the request on a
    /// busy machine). Between writes nothing needs driving: idle pooled connections wait, and
    /// one the server closed meanwhile is noticed and replaced when next used.
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    template: Template,
    /// The URL when it has no placeholders, parsed once.
    fixed_url: Option<reqwest::Url>,
    method: reqwest::Method,
    body: BodyMode,
    headers: HeaderMap,
    content_type: HeaderValue,
    auth: Option<Auth>,
    signature: Option<Signature>,
    gzip: bool,
    /// Most records per request: `max_batch_records`, halved each time the receiver answers
    /// 413 to a request of several records (kept for the life of the instance).
    chunk: AtomicUsize,
    concurrency: usize,
    retry_on: Vec<(u16, u16)>,
    stats: Stats,
}

/// Logged on close: how much was sent and how long `write` took in total.
#[derive(Default)]
struct Stats {
    writes: u64,
    requests: u64,
    records: u64,
    failed_requests: u64,
    in_write: Duration,
}

/// One request: the URL, the indices of its records in the batch, the body.
struct Request {
    url: reqwest::Url,
    indices: Vec<usize>,
    body: Vec<u8>,
    /// `per_record`: the record's dedup key, sent as `X-Orbit-Record-Id`.
    record_id: Option<String>,
}

impl Sink for HttpSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
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
        header_map(config)?;
        if let Some(ct) = &config.content_type {
            HeaderValue::from_str(ct)
                .map_err(|_| ConfigError::new("content_type", "not a valid header value"))?;
        }
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
        status_matcher(&config.retry_on)?;
        Ok(())
    }

    fn open(config: Config, ctx: SinkContext) -> Result<Self, PluginError> {
        let template = Template::parse("url", &config.url)?;
        let fixed_url = match template.as_static() {
            Some(t) => Some(
                reqwest::Url::parse(t)
                    .map_err(|e| PluginError::config(format!("`url`: not a URL ({e})")))?,
            ),
            _ => None,
        };
        let headers = header_map(&config)?;
        let retry_on = status_matcher(&config.retry_on)?;
        let content_type = match (&config.content_type, config.body) {
            (Some(ct), _) => HeaderValue::from_str(ct)
                .map_err(|_| PluginError::config("`content_type`: not a valid header value"))?,
            (None, BodyMode::Ndjson) => HeaderValue::from_static("application/x-ndjson"),
            (None, _) => HeaderValue::from_static("application/json"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(format!("cannot create the sink's runtime: {e}")))?;
        let client = {
            let _guard = rt.enter();
            reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(10)))
                .pool_max_idle_per_host(config.concurrency.max(1) * 2)
                .user_agent(concat!("orbit-http/", env!("CARGO_PKG_VERSION")))
                // A redirect would turn a POST into a bodyless GET whose 200 looks like
                // success: never follow one; a 3xx is a configuration error.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| PluginError::fatal(format!("cannot build the HTTP client: {e}")))?
        };
        tracing::info!(
            pipeline = %ctx.pipeline,
            url = %redact(&config.url),
            "http sink ready"
        );
        Ok(HttpSink {
            rt,
            client,
            template,
            fixed_url,
            method: match config.method {
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
            },
            body: config.body,
            headers,
            content_type,
            auth: config.auth,
            signature: config.signature,
            gzip: config.gzip,
            chunk: AtomicUsize::new(config.max_batch_records.unwrap_or(usize::MAX)),
            concurrency: config.concurrency,
            retry_on,
            stats: Stats::default(),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::ok());
        }
        let started = std::time::Instant::now();
        let mut failed: Vec<(usize, PluginError)> = Vec::new();
        let requests = self.requests(batch, &mut failed);
        self.stats.writes += 1;
        self.stats.requests += requests.len() as u64;
        self.stats.records += batch.len() as u64;
        let this = &*self;
        let results: Vec<(Vec<usize>, Result<(), PluginError>)> = this.rt.block_on(
            stream::iter(requests.into_iter().map(|r| async move {
                let result = this
                    .send(&r.url, r.body, r.indices.len(), r.record_id.as_deref())
                    .await;
                (r.indices, result)
            }))
            .buffer_unordered(self.concurrency)
            .collect(),
        );
        let mut any_ok = false;
        for (indices, result) in results {
            match result {
                Ok(()) => any_ok = true,
                Err(e) => {
                    self.stats.failed_requests += 1;
                    failed.extend(indices.into_iter().map(|i| (i, e.clone())))
                }
            }
        }
        self.stats.in_write += started.elapsed();
        if failed.is_empty() {
            return Ok(WriteOutcome::ok());
        }
        let retry_after = failed.iter().filter_map(|(_, e)| e.retry_after()).max();
        let all_retriable = failed
            .iter()
            .all(|(_, e)| e.kind() == orbit_plugin_api::ErrorKind::Retriable);
        if !any_ok && all_retriable && failed.len() == batch.len() {
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
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        let s = &self.stats;
        if s.writes > 0 {
            tracing::info!(
                writes = s.writes,
                requests = s.requests,
                failed_requests = s.failed_requests,
                records = s.records,
                in_write_ms = s.in_write.as_millis() as u64,
                "http sink done"
            );
        }
    }
}

impl HttpSink {
    /// Groups records by URL (in first-seen order), splits them into requests and builds the
    /// bodies. Records that cannot be sent (URL, framing) go to `failed` as rejected.
    fn requests(&self, batch: &[Record], failed: &mut Vec<(usize, PluginError)>) -> Vec<Request> {
        let mut groups: Vec<(reqwest::Url, Vec<usize>)> = Vec::new();
        let mut by_url: HashMap<String, usize> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            if let Err(msg) = self.check_framing(r) {
                failed.push((i, PluginError::rejected(msg)));
                continue;
            }
            let url = match &self.fixed_url {
                Some(u) => {
                    if groups.is_empty() {
                        groups.push((u.clone(), Vec::with_capacity(batch.len())));
                    }
                    groups[0].1.push(i);
                    continue;
                }
                None => match self.template.render_encoded(r, encode_component) {
                    Ok(u) => u,
                    Err(msg) => {
                        failed.push((i, PluginError::rejected(msg)));
                        continue;
                    }
                },
            };
            match by_url.get(&url) {
                Some(&g) => groups[g].1.push(i),
                None => match reqwest::Url::parse(&url) {
                    Ok(parsed) => {
                        by_url.insert(url, groups.len());
                        groups.push((parsed, vec![i]));
                    }
                    Err(e) => failed.push((
                        i,
                        PluginError::rejected(format!(
                            "the URL rendered for this record is invalid ({e}): {}",
                            redact(&url)
                        )),
                    )),
                },
            }
        }
        let mut requests = Vec::new();
        for (url, indices) in groups {
            match self.body {
                BodyMode::PerRecord => {
                    for i in indices {
                        requests.push(Request {
                            url: url.clone(),
                            indices: vec![i],
                            body: batch[i].value().to_vec(),
                            record_id: Some(batch[i].position_id()),
                        });
                    }
                }
                BodyMode::JsonArray | BodyMode::Ndjson => {
                    for chunk in indices.chunks(self.chunk.load(Ordering::Relaxed)) {
                        let size: usize = chunk.iter().map(|&i| batch[i].value().len() + 1).sum();
                        let mut body = Vec::with_capacity(size + 2);
                        if self.body == BodyMode::JsonArray {
                            body.push(b'[');
                            for (n, &i) in chunk.iter().enumerate() {
                                if n > 0 {
                                    body.push(b',');
                                }
                                body.extend_from_slice(batch[i].value());
                            }
                            body.push(b']');
                        } else {
                            for &i in chunk {
                                body.extend_from_slice(batch[i].value());
                                body.push(b'\n');
                            }
                        }
                        requests.push(Request {
                            url: url.clone(),
                            indices: chunk.to_vec(),
                            body,
                            record_id: None,
                        });
                    }
                }
            }
        }
        requests
    }

    fn check_framing(&self, r: &Record) -> Result<(), String> {
        match self.body {
            BodyMode::JsonArray => serde_json::from_slice::<&serde_json::value::RawValue>(r.value())
                .map(|_| ())
                .map_err(|e| {
                    format!("value is not JSON ({e}); `body: json_array` needs JSON values (use `ndjson` or `per_record` for other text)")
                }),
            BodyMode::Ndjson if r.value().contains(&b'\n') => Err(
                "value contains a newline; `body: ndjson` needs one line per record (use `json_array` or `per_record`)".into(),
            ),
            _ => Ok(()),
        }
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        records: usize,
        record_id: Option<&str>,
    ) -> Result<(), PluginError> {
        let mut req = self
            .client
            .request(self.method.clone(), url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, self.content_type.clone());
        if let Some(id) = record_id {
            req = req.header("X-Orbit-Record-Id", id);
        }
        match &self.auth {
            Some(Auth::Bearer { token }) => req = req.bearer_auth(token),
            Some(Auth::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password))
            }
            None => {}
        }
        if let Some(s) = &self.signature {
            let (timestamp, signature) = sign(s.secret.as_bytes(), &body, SystemTime::now());
            req = req
                .header(s.timestamp_header.as_str(), timestamp)
                .header(s.header.as_str(), signature);
        }
        let body = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4 + 64),
                flate2::Compression::fast(),
            );
            req = req.header(CONTENT_ENCODING, "gzip");
            enc.write_all(&body)
                .and_then(|_| enc.finish())
                .map_err(|e| PluginError::fatal(format!("gzip failed: {e}")))?
        } else {
            body
        };
        // Only formatted when something failed.
        let what = || format!("{} {}", self.method, redact_url(url));
        let response = req.body(body).send().await.map_err(|e| {
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

/// The signature headers for `body` at `now`: (`timestamp`, `v1=<hex>`), where timestamp is
/// Unix seconds and the MAC is HMAC-SHA256(secret, timestamp + "." + body).
pub fn sign(secret: &[u8], body: &[u8], now: SystemTime) -> (String, String) {
    let ts = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    (ts, sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        let (ts, sig) = sign(
            b"secret",
            br#"{"a":1}"#,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        assert_eq!(ts, "1700000000");
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"secret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sig,
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

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
    fn templates_render_and_encode() {
        let parts = Template::parse("url", "http://h/t/{table}/{key}?s={stream}").unwrap();
        let render = |t: &Template, r: &Record| t.render_encoded(r, encode_component);
        let r = Record::new(r#"{"table":"a b/c"}"#)
            .with_key("k1")
            .with_position("orders", 0, vec![0]);
        assert_eq!(
            render(&parts, &r).unwrap(),
            "http://h/t/a%20b%2Fc/k1?s=orders"
        );
        let r = Record::new(r#"{"other":1}"#);
        assert!(render(&parts, &r)
            .unwrap_err()
            .contains("`table` is missing"));
    }

    fn sink(yaml_json: &str) -> HttpSink {
        let config: Config = serde_json::from_str(yaml_json).unwrap();
        HttpSink::validate(&config).unwrap();
        HttpSink::open(
            config,
            SinkContext {
                pipeline: "p".into(),
                stage: "sink".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn records_are_grouped_by_url_then_chunked_and_unframeable_ones_rejected() {
        let s = sink(
            r#"{"url":"http://127.0.0.1:9/t/{table}","body":"json_array","max_batch_records":2}"#,
        );
        let batch: Vec<Record> = [
            r#"{"table":"a","n":0}"#,
            r#"{"table":"b","n":1}"#,
            r#"{"table":"a","n":2}"#,
            "not json",
            r#"{"table":"a","n":4}"#,
            r#"{"n":5}"#,
            r#"{"table":"b","n":6}"#,
        ]
        .iter()
        .map(|v| Record::new(*v))
        .collect();
        let mut failed = Vec::new();
        let requests = s.requests(&batch, &mut failed);
        let shape: Vec<(String, Vec<usize>, String)> = requests
            .iter()
            .map(|r| {
                (
                    r.url.to_string(),
                    r.indices.clone(),
                    String::from_utf8(r.body.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (
                    "http://127.0.0.1:9/t/a".to_string(),
                    vec![0, 2],
                    r#"[{"table":"a","n":0},{"table":"a","n":2}]"#.to_string()
                ),
                (
                    "http://127.0.0.1:9/t/a".to_string(),
                    vec![4],
                    r#"[{"table":"a","n":4}]"#.to_string()
                ),
                (
                    "http://127.0.0.1:9/t/b".to_string(),
                    vec![1, 6],
                    r#"[{"table":"b","n":1},{"table":"b","n":6}]"#.to_string()
                ),
            ]
        );
        let rejected: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, vec![3, 5]);
        assert!(failed
            .iter()
            .all(|(_, e)| e.kind() == orbit_plugin_api::ErrorKind::Rejected));
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

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("https://u:hunter2@h/x"), "https://u:***@h/x");
    }

    #[test]
    fn status_classes() {
        let m = status_matcher(&default_retry_on()).unwrap();
        assert_eq!(m, vec![(408, 408), (429, 429), (500, 599)]);
        assert!(status_matcher(&[StatusMatch::Class("6xx".into())]).is_err());
    }
}
