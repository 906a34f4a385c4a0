//! The admin server of a running host, over HTTP with a real client: health, readiness, the
//! pipelines' states, Prometheus metrics counted around each stage, the token on mutating
//! requests, and a failed pipeline that stays FAILED alone while the others run. Reload: reload.rs.

use std::time::Duration;

use orbit_e2e::admin::Admin;
use orbit_e2e::*;

const LONG: Duration = Duration::from_secs(60);

fn sink_labels(pipeline: &'static str) -> [(&'static str, &'static str); 2] {
    [("pipeline", pipeline), ("component_kind", "sink")]
}

#[test]
fn health_ready_pipelines_and_status_describe_a_running_host() {
    build_workspace();
    let s = Scratch::new();
    s.write(
        "gen.yaml",
        "name: gen\nsource: { plugin: generate, config: { rate: 2000 } }\n\
         sink: { plugin: file, config: { path: out.jsonl } }\n",
    );
    s.write(
        "bad.yaml",
        "name: bad\nsource: { plugin: chaos, config: { count: 1000000 } }\n\
         transforms: [ { plugin: chaos, config: { fatal_on_call: 3 } } ]\n\
         sink: { plugin: file, config: { path: bad.jsonl } }\n",
    );
    let mut host = KillOnDrop(s.spawn_logged(&["gen.yaml", "bad.yaml"], "host.log"));
    let admin = Admin::from_log(&s, "host.log");
    assert_eq!(admin.get("/health").status, 200);

    // The bad pipeline fails alone: FAILED with its error; the process and the other stay up.
    admin.wait_state("bad", "FAILED", LONG);
    let status = admin.get("/pipelines/bad/status").json();
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("chaos: fatal error on call 3"), "{status}");
    let t = &status["stages"][1];
    assert_eq!(
        (
            t["stage"].as_str(),
            t["kind"].as_str(),
            t["plugin"].as_str()
        ),
        (Some("transforms[0]"), Some("transform"), Some("chaos")),
        "{status}"
    );
    assert!(
        t["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("fatal error on call 3"),
        "{status}"
    );
    admin.wait_state("gen", "RUNNING", LONG);
    let before = s.lines("out.jsonl").len();
    wait_for("the healthy pipeline to keep writing", LONG, || {
        s.lines("out.jsonl").len() > before + 100
    });
    assert!(matches!(host.try_wait(), Ok(None)), "the host stays up");

    let list = admin.get("/pipelines").json();
    let states: Vec<(String, String)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("bad".into(), "FAILED".into()),
            ("gen".into(), "RUNNING".into())
        ]
    );
    let ready = admin.get("/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let not_ready = ready.json()["not_ready"].clone();
    let names: Vec<&str> = not_ready
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad"], "{}", ready.body);

    let m = admin.metrics();
    assert_eq!(
        m.value(
            "orbit_pipeline_state",
            &[("pipeline", "bad"), ("state", "FAILED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "orbit_pipeline_state",
            &[("pipeline", "gen"), ("state", "RUNNING")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "orbit_component_errors_total",
            &[
                ("pipeline", "bad"),
                ("component_id", "transforms[0]"),
                ("error_type", "fatal")
            ]
        ),
        Some(1.0)
    );

    let described = admin.get("/pipelines/gen").json();
    assert_eq!(described["spec"]["sink"]["config"]["path"], "out.jsonl");
    let missing = admin.get("/pipelines/nope/status");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));
    assert_eq!(admin.get("/no/such/thing").status, 404);
    // A name that is not UTF-8 is a JSON error too (found by fuzzing).
    let garbled = admin.get("/pipelines/%FF/status");
    assert_eq!(garbled.status, 400, "{}", garbled.body);
    assert!(garbled.json()["hint"].is_string(), "{}", garbled.body);

    // A stopped pipeline waits for a resume: the host stays up.
    assert_eq!(admin.send("PUT", "/pipelines/gen/stop", None).status, 202);
    admin.wait_state("gen", "STOPPED", LONG);
    assert!(matches!(host.try_wait(), Ok(None)), "the host stays up");
    // A shutdown ends it; one pipeline failed: non-zero.
    signal(&host, libc::SIGTERM);
    let code = wait_exit(&mut host, LONG);
    assert!(
        !code.success(),
        "a pipeline failed: {code:?}\n{}",
        s.tail("host.log", 20)
    );
}

#[test]
fn sink_sent_events_equal_the_lines_written_and_failures_move_their_metrics() {
    build_workspace();
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: m
source: { plugin: generate, config: { rate: 5000, template: '{"seq":{{seq}},"bad":{{seq}}}' } }
transforms:
  - plugin: chaos
    config: { reject_where: { field: bad, eq: 7 } }
sink:
  plugin: chaos
  config: { fail_calls: 4, path: out.txt }
  max_in_flight: 1
  policy:
    retry: { initial_backoff: 1ms, max_backoff: 1ms }
    circuit_breaker: { failure_threshold: 2, open_for: 2s, half_open_max_calls: 1 }
errors:
  tolerance: all
  dead_letter: { plugin: file, config: { path: dlq.jsonl } }
batch: { max_records: 100 }
"#,
    );
    let mut host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    let admin = Admin::from_log(&s, "host.log");
    // The breaker opens after two failures and stays open for 2 s: the gauge shows it.
    let mut open_seen = false;
    wait_for_explained(
        "the breaker gauge to show open, then closed",
        LONG,
        || {
            let m = admin.metrics();
            let g = m.value("orbit_circuit_breaker_state", &sink_labels("m"));
            open_seen |= g == Some(2.0);
            open_seen && g == Some(0.0)
        },
        || s.tail("host.log", 20),
    );
    wait_for("records to be written", LONG, || {
        s.lines("out.txt").len() > 1000
    });
    assert_eq!(admin.send("PUT", "/pipelines/m/pause", None).status, 202);
    admin.wait_state("m", "PAUSED", LONG);

    let m = admin.metrics();
    let sink = sink_labels("m");
    let written = s.lines("out.txt").len() as f64;
    assert_eq!(
        m.value("orbit_component_sent_events_total", &sink),
        Some(written)
    );
    let bytes: usize = s.lines("out.txt").iter().map(String::len).sum();
    assert_eq!(
        m.value("orbit_component_sent_event_bytes_total", &sink),
        Some(bytes as f64)
    );
    // Four failed calls, each retried; the record with bad == 7 rejected by the transform.
    assert_eq!(m.value("orbit_retries_total", &sink), Some(4.0));
    assert_eq!(
        m.value(
            "orbit_component_errors_total",
            &[
                ("pipeline", "m"),
                ("component_kind", "sink"),
                ("error_type", "retriable")
            ]
        ),
        Some(4.0)
    );
    // The chaos plugin's own counter, a plugin metric that crossed the ABI as values, agrees
    // and carries the stage's labels.
    let injected = [
        ("pipeline", "m"),
        ("component_id", "sink"),
        ("component_kind", "sink"),
        ("component_type", "chaos"),
        ("fault", "retriable"),
    ];
    assert_eq!(
        m.value("orbit_plugin_chaos_injected_faults_total", &injected),
        Some(4.0)
    );
    let transform = [("pipeline", "m"), ("component_kind", "transform")];
    assert_eq!(
        m.value("orbit_dead_letter_events_total", &transform),
        Some(1.0)
    );
    assert_eq!(s.lines("dlq.jsonl").len(), 1);
    let received = m
        .value("orbit_component_received_events_total", &transform)
        .expect("received");
    let sent = m
        .value("orbit_component_sent_events_total", &transform)
        .expect("sent");
    assert_eq!(sent, received - 1.0, "all but the rejected record passed");
    // Histograms have buckets, cumulative, ending with the count.
    let buckets = m.buckets("orbit_stage_call_duration_seconds", &sink);
    assert!(buckets.len() >= 8, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let batches = m.buckets("orbit_batch_records", &sink);
    assert!(
        batches.iter().any(|(le, n)| *le >= 100.0 && *n > 0.0),
        "{batches:?}"
    );
    // Paused: nothing more is written; resumed: writing continues.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.lines("out.txt").len() as f64, written);
    assert_eq!(admin.state("m"), "PAUSED");
    assert_eq!(admin.get("/ready").status, 503);
    assert_eq!(admin.send("PUT", "/pipelines/m/resume", None).status, 202);
    admin.wait_state("m", "RUNNING", LONG);
    wait_for("writing to continue", LONG, || {
        s.lines("out.txt").len() as f64 > written + 100.0
    });
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, LONG).success());
}

#[test]
fn mutating_requests_need_the_token_and_stop_resume_restart_take_effect() {
    build_workspace();
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: t\nsource: { plugin: generate, config: { rate: 1000 } }\n\
         sink: { plugin: file, config: { path: out.jsonl } }\n",
    );
    let mut host =
        KillOnDrop(s.spawn_logged(&["p.yaml", "--admin-token", "s3cret-token"], "host.log"));
    let open = Admin::from_log(&s, "host.log");
    open.wait_state("t", "RUNNING", LONG);
    for (method, path) in [
        ("PUT", "/pipelines/t/stop"),
        ("POST", "/pipelines/t/restart"),
        ("PUT", "/pipelines/t/resume"),
    ] {
        let a = open.send(method, path, None);
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
    }
    let wrong = Admin::at(open.base.trim_start_matches("http://")).with_token("s3cret-tokeX");
    assert_eq!(wrong.send("PUT", "/pipelines/t/stop", None).status, 401);
    assert_eq!(open.state("t"), "RUNNING", "nothing changed");

    let admin = Admin::at(open.base.trim_start_matches("http://")).with_token("s3cret-token");
    assert_eq!(admin.send("PUT", "/pipelines/t/stop", None).status, 202);
    admin.wait_state("t", "STOPPED", LONG);
    let stopped_at = s.lines("out.jsonl").len();
    // Stopped means no more records; the offsets were saved.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.lines("out.jsonl").len(), stopped_at);
    let offsets = admin.get("/pipelines/t/offsets").json();
    assert_eq!(offsets["offsets"][0]["stream"], "generate", "{offsets}");
    assert!(offsets["offsets"][0]["offset"].is_string(), "{offsets}");
    assert_eq!(admin.send("PUT", "/pipelines/t/stop", None).status, 409);

    assert_eq!(admin.send("PUT", "/pipelines/t/resume", None).status, 202);
    admin.wait_state("t", "RUNNING", LONG);
    wait_for("writing to continue", LONG, || {
        s.lines("out.jsonl").len() > stopped_at + 50
    });
    assert_eq!(admin.send("POST", "/pipelines/t/restart", None).status, 202);
    wait_for("a restart", LONG, || {
        let st = admin.get("/pipelines/t/status").json();
        st["restarts"] == 2 && st["state"] == "RUNNING"
    });
    let after_restart = s.lines("out.jsonl").len();
    wait_for("writing after the restart", LONG, || {
        s.lines("out.jsonl").len() > after_restart + 50
    });
    // Every record once, in order, across stop, resume and restart: nothing lost or repeated.
    let seq = seqs(&s.lines("out.jsonl"));
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());

    // Offsets change only while STOPPED; then DELETE makes the source start over and PATCH
    // puts back what GET showed.
    assert_eq!(
        admin.send("DELETE", "/pipelines/t/offsets", None).status,
        409
    );
    assert_eq!(
        open.send("DELETE", "/pipelines/t/offsets", None).status,
        401
    );
    assert_eq!(admin.send("PUT", "/pipelines/t/stop", None).status, 202);
    admin.wait_state("t", "STOPPED", LONG);
    let saved = admin.get("/pipelines/t/offsets").json()["offsets"].clone();
    assert_eq!(saved.as_array().map(Vec::len), Some(1), "{saved}");
    let reset = admin.send("DELETE", "/pipelines/t/offsets", None);
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(
        admin.get("/pipelines/t/offsets").json()["offsets"],
        serde_json::json!([])
    );
    assert_eq!(admin.send("PUT", "/pipelines/t/resume", None).status, 202);
    let zeros = || {
        seqs(&s.lines("out.jsonl"))
            .iter()
            .filter(|n| **n == 0)
            .count()
    };
    wait_for("the source to start over", LONG, || zeros() == 2);
    assert_eq!(admin.send("PUT", "/pipelines/t/stop", None).status, 202);
    admin.wait_state("t", "STOPPED", LONG);
    let bad = admin.send("PATCH", "/pipelines/t/offsets", Some(r#"{"offsets": 3}"#));
    assert_eq!(bad.status, 400, "{}", bad.body);
    let body = serde_json::json!({ "offsets": saved }).to_string();
    let patched = admin.send("PATCH", "/pipelines/t/offsets", Some(&body));
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(admin.get("/pipelines/t/offsets").json()["offsets"], saved);

    assert!(
        !s.read("host.log").contains("s3cret-token"),
        "the token is never logged"
    );
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, LONG).success());
}

#[test]
fn the_admin_server_refuses_a_public_address_without_a_token_and_a_taken_port() {
    build_workspace();
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: t\nsource: { plugin: generate, config: { count: 10 } }\n\
         sink: { plugin: file, config: { path: out.jsonl } }\n",
    );
    let out = s.run(&["p.yaml", "--admin", "0.0.0.0:0"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a loopback address and no admin token"),
        "{err}"
    );
    assert!(err.contains("--admin-token"), "{err}");
    assert!(!s.path("out.jsonl").exists(), "nothing ran");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = s.run(&["p.yaml", "--admin", &addr]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--admin none"), "{err}");

    let out = s.run(&["p.yaml", "--admin", "nonsense"]);
    assert!(
        text(&out.stderr).contains("is not HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["p.yaml", "--admin", "none"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("admin listening"));
}

#[test]
fn json_logs_are_one_object_per_line_with_pipeline_stage_and_plugin() {
    build_workspace();
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: j\nsource: { plugin: generate, config: { count: 100 } }\n\
         sink: { plugin: blackhole }\n",
    );
    let out = s.run(&["p.yaml", "--log-format", "json", "--admin", "none"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let finished = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("finished:"))
        })
        .unwrap_or_else(|| panic!("no finished line: {err}"));
    assert_eq!(finished["pipeline"], "j", "{finished}");
    let from_stage = lines
        .iter()
        .find(|l| l["plugin"] == "blackhole")
        .unwrap_or_else(|| panic!("no line from the sink's stage: {err}"));
    assert_eq!(
        (&from_stage["pipeline"], &from_stage["stage"]),
        (&serde_json::json!("j"), &serde_json::json!("sink")),
        "{from_stage}"
    );
    // The blackhole sink lives in the generate plugin's library.
    assert_eq!(from_stage["library"], "generate", "{from_stage}");
}
