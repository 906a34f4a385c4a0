//! Host policies proved with the chaos plugin, by exact counts in the output, the dead-letter
//! file and the per-stage policy counters the host logs at the end of a run.

use std::collections::HashMap;

use orbit_e2e::*;

/// The `policy events:` counters the host logged for `stage`, plus `calls`.
fn events(stderr: &str, stage: &str) -> HashMap<String, u64> {
    policy_events(stderr, stage).unwrap_or_else(|| panic!("no policy events for {stage}: {stderr}"))
}

#[test]
fn transient_failures_are_retried_to_success_honouring_retry_after() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
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
    assert!(summary.secs >= 0.6, "{summary:?}: {err}");
    assert_eq!((summary.records_in, summary.written), (1000, 1000), "{err}");
}

#[test]
fn breaker_opens_at_the_threshold_rejects_calls_while_open_and_a_probe_closes_it() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
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
    // Three 300 ms open periods: the probes waited for them.
    assert!(summary.secs >= 0.9, "{summary:?}: {err}");
}

#[test]
fn rate_limit_holds_the_stage_to_the_configured_rate() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
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
    let lines = s.lines("out.txt");
    assert_eq!(lines.len(), 5000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &i.to_string(), "line {i}");
    }
    // The pipeline's own clock: "… in 2.45s (…)". 100 records of burst, then 4900 at 2000/s.
    let secs = summary.secs;
    assert_eq!(summary.written, 5000, "{err}");
    let expected = 4900.0 / 2000.0;
    assert!(
        (secs - expected).abs() / expected < 0.10,
        "{secs}s for an expected {expected}s: {err}"
    );
    assert!(events(&err, "sink")["rate_limit_waits"] > 0, "{err}");
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
    // The burst's worth went through: the first ten records.
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(s.lines("out.txt"), want, "{err}");
    assert!(
        err.contains("1000 records in, 10 written, 990 dropped"),
        "{err}"
    );
    assert_eq!(events(&err, "sink")["rate_limit_dropped"], 990);
    // Dropped on purpose counts as delivered: a rerun has nothing left to read.
    let again = s.run(&["p.yaml", "--progress", "0s"]);
    let again_err = text(&again.stderr);
    assert!(again.status.success(), "{again_err}");
    let rerun = finished_once(&again_err);
    assert_eq!((rerun.records_in, rerun.written), (0, 0), "{again_err}");
    assert_eq!(s.lines("out.txt"), want, "the rerun wrote nothing");
}

#[test]
fn a_hung_call_times_out_and_the_stage_recovers_with_a_new_instance() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: hang
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  # One batch at a time: a batch in flight on the hung instance would be resent (a duplicate);
  # tests/in_flight.rs covers that case.
  max_in_flight: 1
  config: { hang_on_call: 2, hang_for: 60s, path: out.txt }
  policy: { timeout: 300ms, retry: { initial_backoff: 1ms }, restart: { backoff: 10ms } }
batch: { max_records: 100 }
"#,
    );
    // The pipeline's own clock: nowhere near the 60 s the call hung for.
    assert!(summary.secs < 20.0, "{summary:?}: {err}");
    assert_eq!(seqs(&s.lines("out.txt")), (0..1000).collect::<Vec<_>>());
    let e = events(&err, "sink");
    assert_eq!((e["timeouts"], e["restarts"]), (1, 1), "{err}");
}

/// A source abandoned mid-call still holds its listening port until the call returns; the
/// replacement opens once it has (issue 14 item 6), instead of failing on "address in use".
#[test]
fn a_replacement_opens_after_the_abandoned_instance_released_its_port() {
    let s = Scratch::new();
    let port = free_port();
    let (err, _) = run_ok(
        &s,
        &format!(
            r#"
name: release
source:
  plugin: chaos
  config: {{ count: 1000, listen: "127.0.0.1:{port}", hang_on_call: 2, hang_for: 1500ms }}
  policy: {{ timeout: 1s, restart: {{ backoff: 10ms }} }}
sink: {{ plugin: chaos, config: {{ path: out.txt }} }}
batch: {{ max_records: 100 }}
"#
        ),
    );
    // The batch polled before the hang may be read again (it was not acknowledged yet).
    let mut got = seqs(&s.lines("out.txt"));
    assert!(
        got.len() <= 1100,
        "more than the first batch again: {}",
        got.len()
    );
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    let e = events(&err, "source");
    assert_eq!((e["timeouts"], e["restarts"]), (1, 1), "{err}");
    assert!(
        err.contains("waiting up to 1s for the abandoned instance"),
        "{err}"
    );
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
    let out = s.lines("out.txt");
    assert_eq!(out.len(), 990);
    // Exactly the good records, in order, transformed.
    let good: Vec<u64> = (0..1000).filter(|i| (i + 1) % 100 != 0).collect();
    assert_eq!(seqs(&out), good);
    for l in &out {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["ok"], true, "the transform ran: {l}");
    }
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
    let out = s.lines("out.txt");
    assert!(out.len() <= 50, "{} lines written", out.len());
    assert_eq!(seqs(&out), (0..out.len() as u64).collect::<Vec<_>>());
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
    let mut seen = std::collections::BTreeSet::new();
    for l in s.lines("out.txt") {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        seen.insert(v["seq"].as_u64().unwrap());
    }
    let dlq = s.lines("dlq.jsonl");
    for l in &dlq {
        let seq = l
            .strip_prefix("poison ")
            .unwrap_or_else(|| panic!("not a poison record in the DLQ: {l}"))
            .parse::<u64>()
            .unwrap();
        assert_eq!((seq + 1) % 100, 0, "a good record was dead-lettered: {l}");
        seen.insert(seq);
    }
    assert_eq!(
        dlq.len(),
        10,
        "every poison record dead-lettered once: {dlq:?}"
    );
    assert_eq!(seen, (0..1000).collect(), "records lost");
}

/// Records a sink fails one by one are retried as a smaller batch in their batch's order, each
/// once, whatever order the sink reported them in (the chaos sink reports them last first).
#[test]
fn records_retried_alone_keep_their_batch_order() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: subset
source: { plugin: chaos, config: { count: 100 } }
sink:
  plugin: chaos
  # One batch at a time: with several in flight, the later batches are resent after the
  # retried records to keep the partition's order (tests/in_flight.rs).
  max_in_flight: 1
  config: { retry_once_every: 3, path: out.txt }
  policy: { retry: { initial_backoff: 1ms, max_backoff: 1ms } }
batch: { max_records: 10 }
"#,
    );
    let mut expected = Vec::new();
    for b in 0..10u64 {
        let (retried, first): (Vec<u64>, Vec<u64>) =
            (b * 10..b * 10 + 10).partition(|seq| (seq % 10 + 1) % 3 == 0);
        expected.extend(first);
        expected.extend(retried);
    }
    assert_eq!(seqs(&s.lines("out.txt")), expected, "{err}");
    assert_eq!((summary.records_in, summary.written), (100, 100), "{err}");
}
