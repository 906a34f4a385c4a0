//! Host policies proved with the chaos plugin, by exact counts in the output, the dead-letter
//! file and the per-stage policy counters the host logs at the end of a run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orbit_e2e::*;

/// The `policy events:` counters the host logged for `stage`, plus `calls`.
fn events(stderr: &str, stage: &str) -> HashMap<String, u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("policy events:") && l.contains(&format!("stage={stage} ")))
        .unwrap_or_else(|| panic!("no policy events for {stage}: {stderr}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn run_ok(s: &Scratch, yaml: &str) -> (String, Duration) {
    s.write("p.yaml", yaml);
    let start = Instant::now();
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    (err, start.elapsed())
}

#[test]
fn transient_failures_are_retried_to_success_honouring_retry_after() {
    let s = Scratch::new();
    let (err, elapsed) = run_ok(
        &s,
        r#"
name: retry
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  config: { fail_calls: 3, retry_after: 200ms, path: out.txt }
  policy: { retry: { initial_backoff: 1ms, max_backoff: 5ms } }
batch: { max_records: 100 }
"#,
    );
    assert_eq!(seqs(&s.lines("out.txt")), (0..1000).collect::<Vec<_>>());
    let e = events(&err, "sink");
    assert_eq!(e["retries"], 3, "{err}");
    assert_eq!(e["calls"], 13, "10 batches + 3 failed calls: {err}");
    // Three retries, each held back by the plugin's 200 ms retry-after despite 5 ms backoff.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
}

#[test]
fn breaker_opens_at_the_threshold_rejects_calls_while_open_and_a_probe_closes_it() {
    let s = Scratch::new();
    let (err, elapsed) = run_ok(
        &s,
        r#"
name: breaker
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  config: { fail_calls: 4, path: out.txt }
  policy:
    retry: { initial_backoff: 1ms, max_backoff: 1ms }
    circuit_breaker: { failure_threshold: 2, open_for: 300ms, half_open_max_calls: 1 }
batch: { max_records: 100 }
"#,
    );
    assert_eq!(seqs(&s.lines("out.txt")), (0..1000).collect::<Vec<_>>());
    let e = events(&err, "sink");
    // Calls 1, 2 fail → open. Probe 3 fails → open. Probe 4 fails → open. Probe 5 succeeds.
    assert_eq!(e["breaker_opened"], 3, "{err}");
    // With 1 ms backoff, any call while open would show up here: 10 batches + 4 failures only.
    assert_eq!(e["calls"], 14, "{err}");
    assert_eq!(err.matches("circuit breaker half-open").count(), 3, "{err}");
    assert_eq!(err.matches("circuit breaker closed").count(), 1, "{err}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}

#[test]
fn rate_limit_holds_the_stage_to_the_configured_rate() {
    let s = Scratch::new();
    let (err, _) = run_ok(
        &s,
        r#"
name: rate
source: { plugin: generate, config: { count: 5000, template: '{{seq}}' } }
sink:
  plugin: file
  config: { path: out.txt }
  policy: { rate_limit: { records_per_second: 2000, burst: 100 } }
batch: { max_records: 100, max_wait: 1ms }
"#,
    );
    assert_eq!(s.lines("out.txt").len(), 5000);
    // The pipeline's own clock: "… in 2.45s (…)". 100 records of burst, then 4900 at 2000/s.
    let secs: f64 = err
        .split(" dead-lettered in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    let expected = 4900.0 / 2000.0;
    assert!(
        (secs - expected).abs() / expected < 0.10,
        "{secs}s for an expected {expected}s: {err}"
    );
    assert!(events(&err, "sink")["rate_limit_waits"] > 0);
}

#[test]
fn rate_limit_drop_mode_drops_counts_and_acknowledges() {
    let s = Scratch::new();
    let (err, _) = run_ok(
        &s,
        r#"
name: sample
source: { plugin: generate, config: { count: 1000, template: '{{seq}}' } }
sink:
  plugin: file
  config: { path: out.txt }
  policy: { rate_limit: { records_per_second: 0.001, burst: 10, on_limit: drop } }
"#,
    );
    assert_eq!(s.lines("out.txt").len(), 10, "{err}");
    assert!(
        err.contains("1000 records in, 10 written, 990 dropped"),
        "{err}"
    );
    assert_eq!(events(&err, "sink")["rate_limit_dropped"], 990);
    // Dropped on purpose counts as delivered: a rerun has nothing left to read.
    let again = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(
        text(&again.stderr).contains("0 records in"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn a_hung_call_times_out_and_the_stage_recovers_with_a_new_instance() {
    let s = Scratch::new();
    let (err, elapsed) = run_ok(
        &s,
        r#"
name: hang
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  config: { hang_on_call: 2, hang_for: 60s, path: out.txt }
  policy: { timeout: 300ms, retry: { initial_backoff: 1ms }, restart: { backoff: 10ms } }
batch: { max_records: 100 }
"#,
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(seqs(&s.lines("out.txt")), (0..1000).collect::<Vec<_>>());
    let e = events(&err, "sink");
    assert_eq!((e["timeouts"], e["restarts"]), (1, 1), "{err}");
}

#[test]
fn a_panicking_instance_is_restarted_and_the_pipeline_completes() {
    let s = Scratch::new();
    let (err, _) = run_ok(
        &s,
        r#"
name: restart
source: { plugin: chaos, config: { count: 1000 } }
transforms: [ { plugin: chaos, config: { panic_on_call: 3 } } ]
sink: { plugin: chaos, config: { path: out.txt } }
defaults: { policy: { retry: { initial_backoff: 1ms }, restart: { backoff: 10ms } } }
batch: { max_records: 100 }
"#,
    );
    assert_eq!(seqs(&s.lines("out.txt")), (0..1000).collect::<Vec<_>>());
    let e = events(&err, "transforms[0]");
    assert_eq!((e["panics"], e["restarts"]), (1, 1), "{err}");
}

const POISON: &str = r#"
name: poison
source: { plugin: chaos, config: { count: 1000, poison_every: 100 } }
transforms: [ { plugin: json, config: { set: { ok: true } } } ]
sink: { plugin: file, config: { path: out.txt } }
batch: { max_records: 50 }
"#;

#[test]
fn tolerance_all_dead_letters_exactly_the_rejected_records_with_headers() {
    let s = Scratch::new();
    let (err, _) = run_ok(
        &s,
        &format!(
            "{POISON}errors:\n  tolerance: all\n  dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl, format: envelope }} }}\n"
        ),
    );
    assert_eq!(s.lines("out.txt").len(), 990);
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 10, "{err}");
    use base64::Engine as _;
    for (i, line) in dlq.iter().enumerate() {
        let seq = i as u64 * 100 + 99;
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["value"], format!("poison {seq}"));
        let h = &v["headers"];
        assert_eq!(h["orbit.dlq.pipeline"], "poison");
        assert_eq!(h["orbit.dlq.stage"], "transforms[0]");
        assert_eq!(h["orbit.dlq.plugin"], "json");
        assert_eq!(h["orbit.dlq.error_kind"], "rejected");
        assert!(h["orbit.dlq.error"].as_str().unwrap().contains("not JSON"));
        assert_eq!(h["orbit.dlq.attempts"], "1");
        assert_eq!(h["orbit.dlq.stream"], "chaos");
        assert_eq!(h["orbit.dlq.partition"], "0");
        let offset = base64::engine::general_purpose::STANDARD
            .decode(h["orbit.dlq.offset"].as_str().unwrap())
            .unwrap();
        assert_eq!(offset, seq.to_be_bytes());
    }
    assert!(
        err.contains("1000 records in, 990 written, 0 dropped by transforms, 10 dead-lettered"),
        "{err}"
    );
}

fn stored_seq(s: &Scratch, pipeline: &str) -> Option<u64> {
    let bytes = std::fs::read(s.path(&format!(".orbit/offsets/{pipeline}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(v["offsets"][0]["offset"].as_str()?)
        .unwrap();
    Some(u64::from_be_bytes(b.try_into().unwrap()))
}

#[test]
fn tolerance_none_stops_with_nothing_acknowledged_past_the_failing_record() {
    let s = Scratch::new();
    s.write("p.yaml", POISON);
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stage `transforms[0]` (plugin `json`) could not deliver a record from stream `chaos` partition 0")
            && err.contains("not JSON"),
        "{err}"
    );
    // The poison record is seq 99, in the second batch (50..99): at most the first is acked.
    if let Some(seq) = stored_seq(&s, "poison") {
        assert!(seq <= 49, "acknowledged up to {seq}");
    }
    assert!(s.lines("out.txt").len() <= 50);
}

#[test]
fn a_failing_dead_letter_sink_stops_the_pipeline_and_loses_nothing() {
    let s = Scratch::new();
    let broken = format!(
        "{POISON}errors:\n  tolerance: all\n  dead_letter:\n    plugin: chaos\n    config: {{ fail_calls: 1000000, counter: dlq }}\n    policy: {{ retry: {{ max_attempts: 2, initial_backoff: 1ms }} }}\n"
    );
    s.write("p.yaml", &broken);
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the dead-letter sink (plugin `chaos`) failed: retriable error: chaos: transient failure"),
        "{err}"
    );
    if let Some(seq) = stored_seq(&s, "poison") {
        assert!(
            seq < 99,
            "acknowledged past the undeliverable record: {seq}"
        );
    }
    // Fix the dead-letter sink and run again: every record is in the output or the DLQ.
    s.write(
        "p.yaml",
        &format!(
            "{POISON}errors:\n  tolerance: all\n  dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl }} }}\n"
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut seen = std::collections::HashSet::new();
    for l in s.lines("out.txt") {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        seen.insert(v["seq"].as_u64().unwrap());
    }
    for l in s.lines("dlq.jsonl") {
        seen.insert(l.trim_start_matches("poison ").parse::<u64>().unwrap());
    }
    assert_eq!(seen.len(), 1000, "records lost");
}
