//! The http plugin library end to end: the `http` sink against test servers written here (axum),
//! the `http` source fed by curl, the `sse` sink read by curl and by a raw socket that never
//! reads. The checks use independent code: the HMAC is verified here with the documented
//! algorithm, not with the plugin's.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use orbit_e2e::*;
use sha2::Sha256;

const SECRET: &str = "test-hmac-secret";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    wait_for(
        &format!("port {port} to accept"),
        Duration::from_secs(30),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// An axum app served on its own runtime and thread; `stop` drops the listener.
struct TestServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn serve(port: u16, app: Router) -> TestServer {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            ready_tx
                .send(listener.local_addr().unwrap().port())
                .unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let port = ready_rx.recv().unwrap();
    TestServer {
        port,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl TestServer {
    fn stop(mut self) {
        self.halt();
    }
    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The host's stderr, collected by a thread while it runs.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let err = child.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            let mut s = l.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    log
}

/// The documented algorithm: `v1=` + hex(HMAC-SHA256(secret, timestamp + "." + body)).
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-orbit-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-orbit-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(secs) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(secs) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let Some(hex_sig) = sig.strip_prefix("v1=") else {
        return false;
    };
    let Ok(raw) = hex::decode(hex_sig) else {
        return false;
    };
    mac.verify_slice(&raw).is_ok()
}

fn ids_of(body: &[u8]) -> Vec<u64> {
    match serde_json::from_slice::<serde_json::Value>(body).unwrap() {
        serde_json::Value::Array(a) => a.iter().map(|v| v["id"].as_u64().unwrap()).collect(),
        v => vec![v["id"].as_u64().unwrap()],
    }
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "120"]);
    c
}

/// POSTs a file with curl; returns (status, body).
fn post_file(url: &str, file: &Path, headers: &[&str]) -> (u16, String) {
    let mut c = curl();
    c.args(["-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()));
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl: {text} {}", text_of(&out.stderr))),
        body.to_string(),
    )
}

/// The pipeline tail the sink tests share: rejected records to `dlq.jsonl` as envelopes.
const DEAD_LETTERS_TO_FILE: &str = "errors:
  tolerance: all
  dead_letter: { plugin: file, config: { path: dlq.jsonl, format: envelope } }
";

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// http sink

#[derive(Default)]
struct Flaky {
    requests: u64,
    delivered: Vec<u64>,
    bad_signatures: u64,
    unavailable: u64,
    throttled: u64,
    throttled_at: HashMap<u64, Instant>,
    retry_gaps: Vec<Duration>,
}

async fn flaky(
    State(state): State<Arc<Mutex<Flaky>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    let n = s.requests;
    if !signature_ok(&headers, &body) {
        s.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let now = Instant::now();
    let ids = ids_of(&body);
    for id in &ids {
        if let Some(t) = s.throttled_at.remove(id) {
            s.retry_gaps.push(now - t);
        }
    }
    match n % 10 {
        // 30% of requests fail with 503…
        0 | 3 | 6 => {
            s.unavailable += 1;
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        }
        // …and 10% with 429 + Retry-After: 1.
        8 => {
            s.throttled += 1;
            for id in ids {
                s.throttled_at.insert(id, now);
            }
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response()
        }
        _ => {
            s.delivered.extend(ids);
            StatusCode::OK.into_response()
        }
    }
}

#[test]
fn sink_delivers_every_record_through_503s_and_429s_with_valid_signatures() {
    let state = Arc::new(Mutex::new(Flaky::default()));
    let server = serve(
        0,
        Router::new()
            .route("/hook", post(flaky))
            .with_state(state.clone()),
    );
    let s = Scratch::new();
    let n = 2000u64;
    s.write(
        "p.yaml",
        &format!(
            r#"
name: webhook
source: {{ plugin: generate, config: {{ count: {n}, template: '{{"id":{{{{seq}}}}}}' }} }}
sink:
  plugin: http
  config:
    url: http://127.0.0.1:{port}/hook
    body: json_array
    max_batch_records: 100
    concurrency: 4
    signature: {{ secret: {SECRET} }}
    timeout: 5s
  policy:
    retry: {{ initial_backoff: 1ms, max_backoff: 20ms }}
    circuit_breaker: {{ failure_threshold: 1000 }}
batch: {{ max_records: 500 }}
"#,
            port = server.port
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains(SECRET),
        "the secret leaked into the log: {err}"
    );
    let st = state.lock().unwrap();
    let distinct: BTreeSet<u64> = st.delivered.iter().copied().collect();
    assert_eq!(distinct, (0..n).collect::<BTreeSet<_>>(), "{err}");
    assert_eq!(st.bad_signatures, 0);
    assert!(
        st.unavailable >= 3 && st.throttled >= 1,
        "faults were injected"
    );
    // Every record refused with 429 came back, and not before the Retry-After.
    assert!(
        st.throttled_at.is_empty(),
        "throttled records never retried"
    );
    assert!(!st.retry_gaps.is_empty());
    for gap in &st.retry_gaps {
        assert!(
            *gap >= Duration::from_secs(1),
            "retried {gap:?} after a 429"
        );
    }
    drop(st);
    server.stop();
}

#[derive(Default)]
struct Picky {
    accepted: Vec<u64>,
    wrong_record_ids: Vec<String>,
}

async fn picky(
    State(state): State<Arc<Mutex<Picky>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = ids_of(&body)[0];
    // The dedup key: the record's source position, `stream/partition/hex(offset)`.
    let record_id = headers
        .get("x-orbit-record-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if record_id != format!("generate/0/{}", hex::encode(id.to_be_bytes())) {
        state.lock().unwrap().wrong_record_ids.push(record_id);
    }
    if id % 10 == 0 {
        return (
            StatusCode::BAD_REQUEST,
            format!("{{\"error\":\"id {id} is not welcome\"}}"),
        )
            .into_response();
    }
    state.lock().unwrap().accepted.push(id);
    StatusCode::NO_CONTENT.into_response()
}

#[test]
fn rejected_records_go_to_the_dead_letter_file_with_status_and_body() {
    let state = Arc::new(Mutex::new(Picky::default()));
    let server = serve(
        0,
        Router::new()
            .route("/one", axum::routing::put(picky))
            .with_state(state.clone()),
    );
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            r#"
name: picky
source: {{ plugin: generate, config: {{ count: 200, template: '{{"id":{{{{seq}}}}}}' }} }}
sink:
  plugin: http
  config: {{ url: "http://127.0.0.1:{port}/one", method: PUT, body: per_record, concurrency: 8 }}
batch: {{ max_records: 50 }}
{DEAD_LETTERS_TO_FILE}"#,
            port = server.port
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(state.lock().unwrap().wrong_record_ids, Vec::<String>::new());
    let mut accepted = state.lock().unwrap().accepted.clone();
    accepted.sort();
    assert_eq!(
        accepted,
        (0..200).filter(|i| i % 10 != 0).collect::<Vec<u64>>()
    );
    let dlq = s.lines("dlq.jsonl");
    let mut dead = Vec::new();
    for line in &dlq {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = ids_of(v["value"].as_str().unwrap().as_bytes())[0];
        dead.push(id);
        let h = &v["headers"];
        assert_eq!(h["orbit.dlq.error_kind"], "rejected", "{line}");
        assert_eq!(h["orbit.dlq.plugin"], "http");
        let e = h["orbit.dlq.error"].as_str().unwrap();
        assert!(e.contains("HTTP 400"), "{e}");
        assert!(e.contains(&format!("id {id} is not welcome")), "{e}");
        assert!(e.contains("PUT http://127.0.0.1:"), "{e}");
    }
    dead.sort();
    assert_eq!(dead, (0..200).step_by(10).collect::<Vec<u64>>());
    assert!(err.contains("180 written"), "{err}");
    assert!(err.contains("20 dead-lettered"), "{err}");
    server.stop();
}

#[derive(Default)]
struct Limited {
    delivered: Vec<u64>,
    too_large: u64,
}

/// Refuses bodies over 2,000 bytes with 413, like a receiver with a body limit.
async fn limited(State(state): State<Arc<Mutex<Limited>>>, body: Bytes) -> StatusCode {
    let mut s = state.lock().unwrap();
    if body.len() > 2000 {
        s.too_large += 1;
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    s.delivered.extend(ids_of(&body));
    StatusCode::OK
}

#[test]
fn a_413_shrinks_the_requests_and_only_a_record_too_large_alone_is_dead_lettered() {
    let state = Arc::new(Mutex::new(Limited::default()));
    let server = serve(
        0,
        Router::new()
            .route("/hook", post(limited))
            .with_state(state.clone()),
    );
    let s = Scratch::new();
    // 500 records of about 100 bytes (100 per request would be 10 KB), and one of 3 KB.
    let pad = "x".repeat(80);
    let mut input = String::new();
    for i in 0..500 {
        let p = if i == 250 {
            "y".repeat(3000)
        } else {
            pad.clone()
        };
        input.push_str(&format!("{{\"id\":{i},\"pad\":\"{p}\"}}\n"));
    }
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        &format!(
            r#"
name: limited
source: {{ plugin: file, config: {{ path: in.jsonl }} }}
sink:
  plugin: http
  config: {{ url: "http://127.0.0.1:{port}/hook", body: json_array, max_batch_records: 100, concurrency: 2 }}
  policy: {{ retry: {{ initial_backoff: 10ms, max_backoff: 50ms }}, circuit_breaker: {{ failure_threshold: 20 }} }}
batch: {{ max_records: 500 }}
{DEAD_LETTERS_TO_FILE}"#,
            port = server.port
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let st = state.lock().unwrap();
    assert!(st.too_large > 0, "the receiver never refused a request");
    let mut delivered = st.delivered.clone();
    delivered.sort();
    // Every other record exactly once: a refused request delivered nothing, so its records
    // are sent again without duplicates.
    assert_eq!(
        delivered,
        (0..500).filter(|&i| i != 250).collect::<Vec<u64>>()
    );
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let v: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert_eq!(ids_of(v["value"].as_str().unwrap().as_bytes()), vec![250]);
    let e = v["headers"]["orbit.dlq.error"].as_str().unwrap();
    assert!(
        e.contains("HTTP 413") && e.contains("this record alone"),
        "{e}"
    );
    assert!(err.contains("sending at most"), "{err}");
    assert!(
        err.contains("499 written") && err.contains("1 dead-lettered"),
        "{err}"
    );
    drop(st);
    server.stop();
}

#[derive(Default)]
struct Steady {
    delivered: Vec<u64>,
}

async fn steady(State(state): State<Arc<Mutex<Steady>>>, body: Bytes) -> StatusCode {
    state.lock().unwrap().delivered.extend(ids_of(&body));
    StatusCode::OK
}

#[test]
fn server_down_for_ten_seconds_opens_and_closes_the_breaker_and_loses_nothing() {
    let state = Arc::new(Mutex::new(Steady::default()));
    let app = || {
        Router::new()
            .route("/hook", post(steady))
            .with_state(state.clone())
    };
    let server = serve(0, app());
    let port = server.port;
    let s = Scratch::new();
    let n = 3000u64;
    s.write(
        "p.yaml",
        &format!(
            r#"
name: outage
source: {{ plugin: generate, config: {{ count: {n}, rate: 500, template: '{{"id":{{{{seq}}}}}}' }} }}
sink:
  plugin: http
  config: {{ url: "http://127.0.0.1:{port}/hook", timeout: 2s }}
  policy:
    retry: {{ initial_backoff: 50ms, max_backoff: 500ms }}
    circuit_breaker: {{ failure_threshold: 3, open_for: 2s }}
batch: {{ max_records: 100, max_wait: 50ms }}
"#
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    let log = collect_stderr(&mut child);
    wait_for("500 records delivered", Duration::from_secs(60), || {
        state.lock().unwrap().delivered.len() >= 500
    });
    server.stop();
    let down_at = Instant::now();
    // The server went away mid-run: part of the records were delivered, not all.
    let before_outage = state.lock().unwrap().delivered.len() as u64;
    assert!(
        before_outage < n,
        "every record was delivered before the outage ({before_outage})"
    );
    wait_for("the breaker to open", Duration::from_secs(30), || {
        log.lock().unwrap().contains("circuit breaker opened")
    });
    // The outage lasts 10 s: this sleep is the fault being injected, not a synchronisation.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed()));
    let server = serve(port, app());
    let status = wait_exit(&mut child, Duration::from_secs(120));
    let err = log.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    let delivered = state.lock().unwrap().delivered.clone();
    assert!(
        delivered.len() as u64 > before_outage,
        "nothing delivered after the outage"
    );
    let distinct: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(distinct.len() as u64, n, "{err}");
    assert_eq!(distinct, (0..n).collect::<BTreeSet<_>>());
    let summary = finished_once(&err);
    assert_eq!(summary.records_in, n, "{err}");
    assert!(err.contains("circuit breaker half-open"), "{err}");
    assert!(err.contains("circuit breaker closed"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    server.stop();
}

#[derive(Default)]
struct Slow {
    now: usize,
    peak: usize,
    /// The ids of each request, in arrival order.
    requests: Vec<Vec<u64>>,
}

/// Answers every request after 50 ms, counting the requests it holds at once.
async fn slow(State(state): State<Arc<Mutex<Slow>>>, body: Bytes) -> StatusCode {
    {
        let mut s = state.lock().unwrap();
        s.now += 1;
        s.peak = s.peak.max(s.now);
        s.requests.push(ids_of(&body));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    state.lock().unwrap().now -= 1;
    StatusCode::OK
}

#[test]
fn http_sink_keeps_several_batches_in_flight() {
    let state = Arc::new(Mutex::new(Slow::default()));
    let server = serve(
        0,
        Router::new()
            .route("/hook", post(slow))
            .with_state(state.clone()),
    );
    let s = Scratch::new();
    let n = 2000u64;
    s.write(
        "p.yaml",
        &format!(
            r#"
name: window
source: {{ plugin: generate, config: {{ count: {n}, template: '{{"id":{{{{seq}}}}}}' }} }}
sink:
  plugin: http
  max_in_flight: 4
  config: {{ url: "http://127.0.0.1:{port}/hook", body: json_array, max_batch_records: 25, concurrency: 2, timeout: 10s }}
batch: {{ max_records: 100 }}
"#,
            port = server.port
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let st = state.lock().unwrap();
    // Every record once: nothing failed, so nothing was sent twice.
    let mut delivered: Vec<u64> = st.requests.iter().flatten().copied().collect();
    delivered.sort_unstable();
    assert_eq!(delivered, (0..n).collect::<Vec<_>>(), "{err}");
    assert!(st.requests.iter().all(|r| !r.is_empty() && r.len() <= 25));
    // `concurrency` is for the whole sink: 2 requests at once, however many batches are in
    // flight (each batch alone has 4 requests to send).
    assert_eq!(st.peak, 2, "{err}");
    let summary = finished_once(&err);
    assert_eq!((summary.records_in, summary.written), (n, n), "{err}");
    let e = policy_events(&err, "sink").unwrap_or_default();
    assert!(e.get("in_flight_max").copied().unwrap_or(1) >= 2, "{err}");
    drop(st);
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// http source

#[test]
fn source_ingests_100000_ndjson_records_from_curl_with_delivered_acks() {
    let s = Scratch::new();
    let port = free_port();
    s.write(
        "p.yaml",
        &format!(
            r#"
name: ingest
source:
  plugin: http
  config:
    address: 127.0.0.1:{port}
    path: /ingest
    token: ingest-token
    ack_mode: delivered
    max_body_bytes: 1000000
    headers: [x-request-id]
sink: {{ plugin: file, config: {{ path: out.jsonl, format: envelope }} }}
batch: {{ max_records: 1000, max_wait: 20ms }}
"#
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    let log = collect_stderr(&mut child);
    wait_port(port);
    let url = format!("http://127.0.0.1:{port}/ingest");
    let auth = "Authorization: Bearer ingest-token";
    let ndjson = "Content-Type: application/x-ndjson";
    for part in 0..10u64 {
        let mut body = String::new();
        for id in part * 10_000..(part + 1) * 10_000 {
            body.push_str(&format!("{{\"id\":{id},\"part\":{part}}}\n"));
        }
        let f = s.write(&format!("part{part}.ndjson"), &body);
        let rid = format!("X-Request-Id: req-{part}");
        let (code, resp) = post_file(&url, &f, &[auth, ndjson, &rid]);
        assert_eq!(code, 200, "{resp}");
        assert!(resp.contains("\"delivered\":10000"), "{resp}");
        // Delivered means written: the records are in the file when the answer comes.
        assert_eq!(s.lines("out.jsonl").len() as u64, (part + 1) * 10_000);
    }

    // A malformed body: 400 with the reason, and nothing of it ingested (the next valid record
    // comes right after the 100,000).
    let bad = s.write("bad.ndjson", "{\"id\":-1}\n{\"id\":-2,\n");
    let (code, resp) = post_file(&url, &bad, &[auth, ndjson]);
    assert_eq!(code, 400, "{resp}");
    assert!(
        resp.contains("malformed") && resp.contains("line 2"),
        "{resp}"
    );
    // Oversized: 413.
    let big = s.write(
        "big.json",
        &format!("{{\"pad\":\"{}\"}}", "x".repeat(1_100_000)),
    );
    let (code, resp) = post_file(&url, &big, &[auth]);
    assert_eq!(code, 413, "{resp}");
    // Wrong or missing token: 401.
    let one = s.write("one.json", "{\"id\":100000}");
    let (code, _) = post_file(&url, &one, &["Authorization: Bearer nope"]);
    assert_eq!(code, 401);
    let (code, _) = post_file(&url, &one, &[]);
    assert_eq!(code, 401);
    // A single JSON object, sniffed without a content type.
    let (code, resp) = post_file(&url, &one, &[auth]);
    assert_eq!(code, 200, "{resp}");

    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = log.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    assert!(!err.contains("ingest-token"), "the token leaked: {err}");
    let lines = s.lines("out.jsonl");
    assert_eq!(lines.len(), 100_001, "{err}");
    let mut ids = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let env: serde_json::Value = serde_json::from_str(line).unwrap();
        let v: serde_json::Value = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
        let id = v["id"].as_u64().unwrap();
        assert_eq!(
            id, i as u64,
            "records in order, none from the malformed body"
        );
        ids.insert(id);
        if id < 100_000 {
            assert_eq!(
                env["headers"]["x-request-id"],
                format!("req-{}", id / 10_000)
            );
        }
    }
    assert_eq!(ids.len(), 100_001);
}

#[test]
fn source_serves_https_with_a_certificate_from_files() {
    let s = Scratch::new();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = s.write("cert.pem", &ck.cert.pem());
    s.write("key.pem", &ck.key_pair.serialize_pem());
    let port = free_port();
    s.write(
        "p.yaml",
        &format!(
            r#"
name: tls
source:
  plugin: http
  config: {{ address: 127.0.0.1:{port}, path: /in, tls: {{ cert_file: cert.pem, key_file: key.pem }} }}
sink: {{ plugin: file, config: {{ path: out.jsonl }} }}
"#
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    let log = collect_stderr(&mut child);
    wait_port(port);
    let body = s.write("b.json", r#"[{"id":1},{"id":2},{"id":3}]"#);
    let out = curl()
        .args(["-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&cert)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://127.0.0.1:{port}/in"))
        .output()
        .unwrap();
    let resp = text_of(&out.stdout);
    assert!(resp.ends_with("\n200"), "{resp} {}", text_of(&out.stderr));
    assert_eq!(
        s.lines("out.jsonl"),
        [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]
    );
    // Plain HTTP to the TLS port does not get in.
    let out = curl()
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "{}",
        ])
        .arg(format!("http://127.0.0.1:{port}/in"))
        .output()
        .unwrap();
    assert_ne!(text_of(&out.stdout), "200");
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", log.lock().unwrap());
}

/// curl -i: (status, the Retry-After header if any).
fn post_with_headers(url: &str, body: &str) -> (u16, Option<String>) {
    let out = curl()
        .args([
            "-i",
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            body,
            url,
        ])
        .output()
        .unwrap();
    let text = text_of(&out.stdout);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let retry_after = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_string())
    });
    (status, retry_after)
}

#[test]
fn source_answers_503_with_retry_after_when_the_pipeline_cannot_keep_up() {
    // The sink fails every call (retriable, retried for ever): batches back up, the source
    // stops being polled, its queue fills.
    let s = Scratch::new();
    let (accepted_port, delivered_port) = (free_port(), free_port());
    s.write(
        "p.yaml",
        &format!(
            r#"
name: accepted
source:
  plugin: http
  config: {{ address: 127.0.0.1:{accepted_port}, ack_mode: accepted, queue_records: 10, retry_after: 2s }}
sink:
  plugin: chaos
  config: {{ fail_calls: 1000000000, path: a.txt }}
  policy: {{ retry: {{ initial_backoff: 10ms, max_backoff: 10ms }}, circuit_breaker: {{ failure_threshold: 1000000 }} }}
batch: {{ max_records: 5, buffer: 1 }}
"#
        ),
    );
    s.write(
        "q.yaml",
        &format!(
            r#"
name: delivered
source:
  plugin: http
  config: {{ address: 127.0.0.1:{delivered_port}, ack_mode: delivered, delivery_timeout: 300ms }}
sink:
  plugin: chaos
  config: {{ fail_calls: 1000000000, path: d.txt, counter: d }}
  policy: {{ retry: {{ initial_backoff: 10ms, max_backoff: 10ms }}, circuit_breaker: {{ failure_threshold: 1000000 }} }}
"#
        ),
    );
    let mut child = s.spawn(&[
        "p.yaml",
        "q.yaml",
        "--progress",
        "0s",
        "--grace-period",
        "1s",
    ]);
    let log = collect_stderr(&mut child);
    wait_port(accepted_port);
    wait_port(delivered_port);
    let five = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":4}\n{\"a\":5}\n";
    let url = format!("http://127.0.0.1:{accepted_port}/");
    let mut answers = Vec::new();
    for _ in 0..100 {
        let (status, retry_after) = post_with_headers(&url, five);
        answers.push(status);
        if status == 503 {
            assert_eq!(retry_after.as_deref(), Some("2"));
            break;
        }
        assert_eq!(status, 202);
    }
    assert_eq!(answers.last(), Some(&503), "{answers:?}");
    assert!(
        answers.len() >= 3,
        "a few requests were accepted first: {answers:?}"
    );

    let started = Instant::now();
    let (status, retry_after) =
        post_with_headers(&format!("http://127.0.0.1:{delivered_port}/"), five);
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(started.elapsed() >= Duration::from_millis(300));

    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = log.lock().unwrap().clone();
    assert!(
        s.lines("a.txt").is_empty() && s.lines("d.txt").is_empty(),
        "{err}"
    );
    // The grace period ran out with batches undelivered: a warning, then exit 0 (nothing
    // acknowledged was lost), as the README says.
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("grace period over"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// sse sink

/// An SSE client: curl writing the stream to a file.
struct SseClient {
    child: Child,
    file: std::path::PathBuf,
}

impl SseClient {
    fn start(s: &Scratch, name: &str, url: &str, headers: &[&str]) -> SseClient {
        let file = s.path(name);
        let mut c = curl();
        c.args(["-N", "--max-time", "300", "-o"]).arg(&file);
        for h in headers {
            c.args(["-H", h]);
        }
        let child = c
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let client = SseClient { child, file };
        // The server sends a keep-alive comment at once on a fresh stream: connected.
        wait_for(
            &format!("{name} to connect"),
            Duration::from_secs(30),
            || std::fs::metadata(&client.file).is_ok_and(|m| m.len() > 0),
        );
        client
    }

    /// (id, data) of every event received so far.
    fn events(&self) -> Vec<(u64, String)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut out = Vec::new();
        // Only complete events (terminated by a blank line) count.
        let complete = match text.rfind("\n\n") {
            Some(i) => &text[..i + 2],
            None => "",
        };
        for block in complete.split("\n\n") {
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if let Some(id) = id {
                out.push((id, data.join("\n")));
            }
        }
        out
    }

    fn stop(mut self) -> Vec<(u64, String)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.events()
    }
}

fn field(data: &str, key: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(data).unwrap()[key].clone()
}

const TABLES: [&str; 3] = ["users", "orders", "items"];
const OPS: [&str; 3] = ["insert", "update", "delete"];

fn change(id: u64) -> String {
    format!(
        "{{\"id\":{id},\"table\":\"{}\",\"operation\":\"{}\"}}",
        TABLES[(id % 3) as usize],
        OPS[((id / 3) % 3) as usize]
    )
}

#[test]
fn sse_clients_get_exactly_their_filtered_records_and_resume_with_last_event_id() {
    let s = Scratch::new();
    let (in_port, sse_port) = (free_port(), free_port());
    s.write(
        "p.yaml",
        &format!(
            r#"
name: sse
source: {{ plugin: http, config: {{ address: 127.0.0.1:{in_port}, path: /in }} }}
sink:
  plugin: sse
  config: {{ address: 127.0.0.1:{sse_port}, replay_buffer: 10000, keep_alive: 100ms }}
batch: {{ max_records: 100, max_wait: 5ms }}
"#
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    let log = collect_stderr(&mut child);
    wait_port(in_port);
    wait_port(sse_port);
    let events = format!("http://127.0.0.1:{sse_port}/events");
    let users = SseClient::start(&s, "users.sse", &format!("{events}?table=users"), &[]);
    let orders = SseClient::start(
        &s,
        "orders.sse",
        &format!("{events}?table=orders&operation=insert,update"),
        &[],
    );
    let ingest = format!("http://127.0.0.1:{in_port}/in");
    let post = |from: u64, to: u64| {
        let body: String = (from..to).map(|i| change(i) + "\n").collect();
        let f = s.write(&format!("b{from}.ndjson"), &body);
        let (code, resp) = post_file(&ingest, &f, &[]);
        // Delivered: the SSE sink has handed every event to the clients' queues.
        assert_eq!(code, 200, "{resp}");
    };
    post(0, 300);
    let want_users: Vec<u64> = (0..300).filter(|i| i % 3 == 0).collect();
    let want_orders: Vec<u64> = (0..300)
        .filter(|i| i % 3 == 1 && (i / 3) % 3 != 2)
        .collect();
    wait_for("users' events", Duration::from_secs(30), || {
        users.events().len() >= want_users.len()
    });
    wait_for("orders' events", Duration::from_secs(30), || {
        orders.events().len() >= want_orders.len()
    });
    let got_users = users.stop();
    let ids: Vec<u64> = got_users
        .iter()
        .map(|(_, d)| field(d, "id").as_u64().unwrap())
        .collect();
    assert_eq!(ids, want_users);
    assert!(
        got_users.windows(2).all(|w| w[0].0 < w[1].0),
        "event ids increase"
    );
    let got_orders = orders.stop();
    let ids: Vec<u64> = got_orders
        .iter()
        .map(|(_, d)| field(d, "id").as_u64().unwrap())
        .collect();
    assert_eq!(ids, want_orders);
    for (_, d) in &got_orders {
        assert_eq!(field(d, "table"), "orders");
        assert_ne!(field(d, "operation"), "delete");
    }

    // The users client was away while 300 more records went by; it resumes from its last id.
    let last = got_users.last().unwrap().0;
    post(300, 600);
    let back = SseClient::start(
        &s,
        "users-again.sse",
        &format!("{events}?table=users"),
        &[&format!("Last-Event-ID: {last}")],
    );
    let want: Vec<u64> = (300..600).filter(|i| i % 3 == 0).collect();
    wait_for("the missed users' events", Duration::from_secs(30), || {
        back.events().len() >= want.len()
    });
    let got = back.stop();
    let ids: Vec<u64> = got
        .iter()
        .map(|(_, d)| field(d, "id").as_u64().unwrap())
        .collect();
    assert_eq!(ids, want);
    assert!(got[0].0 > last);

    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", log.lock().unwrap());
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_does_not_slow_the_pipeline() {
    let s = Scratch::new();
    let port = free_port();
    let n = 200_000u64;
    let pad = "x".repeat(200);
    s.write(
        "p.yaml",
        &format!(
            r#"
name: sse-slow
source: {{ plugin: generate, config: {{ count: {n}, rate: 20000, template: '{{"seq":{{{{seq}}}},"pad":"{pad}"}}' }} }}
sink:
  plugin: sse
  config: {{ address: 127.0.0.1:{port}, client_buffer: 1000, replay_buffer: 1000, keep_alive: 100ms }}
batch: {{ max_records: 500, max_wait: 10ms }}
"#
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    let log = collect_stderr(&mut child);
    wait_port(port);
    // A client that sends its request and never reads a byte of the answer.
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    // A healthy client beside it.
    let healthy = SseClient::start(
        &s,
        "healthy.sse",
        &format!("http://127.0.0.1:{port}/events"),
        &[],
    );
    let status = wait_exit(&mut child, Duration::from_secs(90));
    let err = log.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    assert!(
        err.contains(&format!("{n} records in, {n} written")),
        "{err}"
    );
    assert!(err.contains("SSE client too slow"), "{err}");
    assert!(err.contains("dropped_clients_total=1"), "{err}");
    // At 20,000 records/s the run takes about 10 s (the pipeline's own clock, from its
    // summary); a pipeline held by the stuck client would never finish.
    let summary = finished_once(&err);
    assert_eq!(summary.written, n, "{err}");
    assert!(summary.secs < 60.0, "{summary:?}");
    // The healthy client kept up and saw events in order.
    let got = healthy.stop();
    assert!(!got.is_empty());
    assert!(
        got.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "no gaps for the healthy client"
    );
    // Each event is a whole record, in the pipeline's order.
    let seqs: Vec<u64> = got
        .iter()
        .map(|(_, d)| field(d, "seq").as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the healthy client's events are consecutive records"
    );
    assert!(*seqs.last().unwrap() < n);
    drop(stuck);
}

/// A redirect is not followed (it would turn the POST into a bodyless GET whose 200 looks like
/// success) and refused credentials stop the pipeline: neither loses records silently nor
/// dead-letters every record. Tokens in the query string stay out of the log.
#[test]
fn redirects_and_refused_credentials_stop_the_pipeline_with_a_clear_error() {
    let gets = Arc::new(Mutex::new(0u32));
    let counter = gets.clone();
    let server = serve(
        0,
        Router::new()
            .route(
                "/moved",
                axum::routing::post(|| async {
                    (
                        StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::get(move || {
                    let c = counter.clone();
                    async move {
                        *c.lock().unwrap() += 1;
                        StatusCode::OK
                    }
                }),
            )
            .route(
                "/locked",
                axum::routing::post(|| async { StatusCode::UNAUTHORIZED }),
            ),
    );
    let s = Scratch::new();
    for (path, expect) in [
        ("moved", "the endpoint redirects to /elsewhere"),
        ("locked", "the endpoint refused the credentials"),
    ] {
        s.write(
            "p.yaml",
            &format!(
                "name: refused\nsource: {{ plugin: generate, config: {{ count: 10 }} }}\n\
                 sink: {{ plugin: http, config: {{ url: \"http://127.0.0.1:{}/{path}?token=s3cr3t\" }} }}\n\
                 errors:\n  tolerance: all\n  dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl }} }}\n",
                server.port
            ),
        );
        let out = s.run(&["p.yaml", "--progress", "0s"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{path}: {err}");
        assert!(err.contains(expect), "{path}: {err}");
        assert!(!err.contains("s3cr3t"), "{path}: the token leaked: {err}");
        assert!(
            s.lines("dlq.jsonl").is_empty(),
            "{path}: nothing dead-lettered"
        );
    }
    assert_eq!(*gets.lock().unwrap(), 0, "the redirect was not followed");
    server.stop();
}

#[test]
fn sse_event_ids_go_on_across_a_restart_so_a_resuming_client_misses_nothing() {
    let s = Scratch::new();
    let (in_port, sse_port) = (free_port(), free_port());
    s.write(
        "p.yaml",
        &format!(
            r#"
name: sse-restart
source: {{ plugin: http, config: {{ address: 127.0.0.1:{in_port}, path: /in }} }}
sink:
  plugin: sse
  config: {{ address: 127.0.0.1:{sse_port}, replay_buffer: 10000, keep_alive: 100ms }}
batch: {{ max_records: 100, max_wait: 5ms }}
"#
        ),
    );
    let events = format!("http://127.0.0.1:{sse_port}/events");
    let ingest = format!("http://127.0.0.1:{in_port}/in");
    let post = |from: u64, to: u64| {
        let body: String = (from..to).map(|i| change(i) + "\n").collect();
        let f = s.write(&format!("b{from}.ndjson"), &body);
        let (code, resp) = post_file(&ingest, &f, &[]);
        assert_eq!(code, 200, "{resp}");
    };
    let run = |log: &str| {
        let child = s.spawn_logged(&["p.yaml", "--progress", "0s"], log);
        wait_port(in_port);
        wait_port(sse_port);
        child
    };

    let mut first = run("first.log");
    let client = SseClient::start(&s, "first.sse", &events, &[]);
    post(0, 200);
    wait_for("the first run's events", Duration::from_secs(30), || {
        client.events().len() >= 200
    });
    let seen = client.stop();
    let last = seen.last().unwrap().0;
    signal(&first, libc::SIGTERM);
    let status = wait_exit(&mut first, Duration::from_secs(30));
    assert!(status.success(), "{}", s.read("first.log"));

    // A new run: fewer events than the client had seen, so ids restarting at 1 would all be
    // at or below its Last-Event-ID and it would get none of them.
    let mut second = run("second.log");
    post(200, 300);
    let back = SseClient::start(
        &s,
        "back.sse",
        &events,
        &[&format!("Last-Event-ID: {last}")],
    );
    wait_for("the second run's events", Duration::from_secs(30), || {
        back.events().len() >= 100
    });
    let got = back.stop();
    let ids: Vec<u64> = got
        .iter()
        .map(|(_, d)| field(d, "id").as_u64().unwrap())
        .collect();
    assert_eq!(ids, (200..300).collect::<Vec<u64>>());
    assert!(
        got[0].0 > last,
        "event ids went back: {} after {last}",
        got[0].0
    );

    // The largest id a client can send neither wraps nor fails: it just has nothing to replay.
    let max = SseClient::start(
        &s,
        "max.sse",
        &events,
        &[&format!("Last-Event-ID: {}", u64::MAX)],
    );
    post(300, 301);
    wait_for(
        "the live event after u64::MAX",
        Duration::from_secs(30),
        || !max.events().is_empty(),
    );
    let got = max.stop();
    assert_eq!(got.len(), 1);
    assert_eq!(field(&got[0].1, "id"), 300);
    signal(&second, libc::SIGTERM);
    let status = wait_exit(&mut second, Duration::from_secs(30));
    assert!(status.success(), "{}", s.read("second.log"));
}
