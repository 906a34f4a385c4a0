//! Building the `http` sink's requests from a batch: the URL of each record (templates,
//! percent-encoding, redaction for logs), grouping and chunking into [`Request`]s with their
//! bodies (`json_array`, `ndjson`, `per_record`), and the headers of one request (auth, the
//! HMAC signature, gzip).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use orbit_plugin_api::{PluginError, Record};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use sha2::Sha256;

use super::{Auth, BodyMode, Inner};

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

pub(super) fn redact_url(url: &reqwest::Url) -> String {
    redact(url.as_str())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One request: the URL, the indices of its records in the batch, the body.
pub(super) struct Request {
    pub(super) url: reqwest::Url,
    pub(super) indices: Vec<usize>,
    pub(super) body: Vec<u8>,
    /// `per_record`: the record's dedup key, sent as `X-Orbit-Record-Id`.
    pub(super) record_id: Option<String>,
}

impl Inner {
    /// Groups records by URL (in first-seen order), splits them into requests and builds the
    /// bodies. Records that cannot be sent (URL, framing) go to `failed` as rejected.
    pub(super) fn requests(
        &self,
        batch: &[Record],
        failed: &mut Vec<(usize, PluginError)>,
    ) -> Vec<Request> {
        let mut groups: Vec<(reqwest::Url, Vec<usize>)> = Vec::new();
        let mut by_url: HashMap<String, usize> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            if let Err(msg) = self.check_framing(r) {
                failed.push((i, PluginError::rejected(msg)));
                continue;
            }
            let url = match &self.settings.fixed_url {
                Some(u) => {
                    if groups.is_empty() {
                        groups.push((u.clone(), Vec::with_capacity(batch.len())));
                    }
                    groups[0].1.push(i);
                    continue;
                }
                None => match self.settings.template.render_encoded(r, encode_component) {
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
            match self.settings.body {
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
                        if self.settings.body == BodyMode::JsonArray {
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
        match self.settings.body {
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

    // -----------------------------------------------------------------------------------------
    // Headers

    /// The request to `url` with `body`: headers, credentials, signature, and the body
    /// (gzipped if configured), ready to send.
    pub(super) fn build(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        record_id: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, PluginError> {
        let settings = &self.settings;
        let mut req = self
            .client
            .request(settings.method.clone(), url.clone())
            .headers(settings.headers.clone())
            .header(CONTENT_TYPE, settings.content_type.clone());
        if let Some(id) = record_id {
            req = req.header("X-Orbit-Record-Id", id);
        }
        match &settings.auth {
            Some(Auth::Bearer { token }) => req = req.bearer_auth(token),
            Some(Auth::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password))
            }
            None => {}
        }
        if let Some(s) = &settings.signature {
            let (timestamp, signature) = sign(s.secret.as_bytes(), &body, SystemTime::now());
            req = req
                .header(s.timestamp_header.as_str(), timestamp)
                .header(s.header.as_str(), signature);
        }
        let body = if settings.gzip {
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
        Ok(req.body(body))
    }
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
    use std::time::Duration;

    use orbit_plugin_api::Template;

    use super::super::test_sink as sink;
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
        let requests = s.inner.requests(&batch, &mut failed);
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
    fn redacts_passwords() {
        assert_eq!(redact("https://u:hunter2@h/x"), "https://u:***@h/x");
    }
}
