//! At-least-once delivery through the real binary and real plugin libraries.

use std::collections::HashMap;
use std::time::Duration;

use orbit_e2e::*;

#[test]
fn generate_json_file_writes_every_record_with_the_transform_applied() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: gen
source:
  plugin: generate
  config: { count: 25000, template: '{"n":{{seq}},"drop_me":1,"kind":"{{seq}}"}' }
transforms:
  - plugin: json
    config:
      drop_if: { field: n, lt: 5000 }
      rename: { kind: k }
      drop: [drop_me]
      set: { "meta.by": orbit }
sink:
  plugin: file
  config: { path: out/result.jsonl }
batch: { max_records: 700, max_wait: 5ms }
"#,
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = s.lines("out/result.jsonl");
    assert_eq!(lines.len(), 20000);
    for (i, line) in lines.iter().enumerate() {
        let n = 5000 + i;
        assert_eq!(
            line,
            &format!(r#"{{"n":{n},"k":"{n}","meta":{{"by":"orbit"}}}}"#)
        );
    }
    let err = text(&out.stderr);
    assert!(
        err.contains("25000 records in, 20000 written, 5000 dropped by transforms"),
        "{err}"
    );
    let summary = finished_once(&err);
    assert_eq!(
        (summary.records_in, summary.written, summary.dropped),
        (25000, 20000, 5000),
        "{err}"
    );
}

/// Counts how often each input line occurs in the output.
fn occurrences(lines: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_insert(0) += 1;
    }
    m
}

#[test]
fn sigkill_mid_run_then_restart_loses_nothing() {
    const LINES: usize = 1_000_000;
    let s = Scratch::new();
    let mut input = String::with_capacity(LINES * 40);
    for i in 0..LINES {
        input.push_str(&format!(
            "{{\"id\":{i},\"payload\":\"abcdefghijklmnop\"}}\n"
        ));
    }
    s.write("in.jsonl", &input);
    drop(input);
    s.write(
        "p.yaml",
        r#"
name: kill9
source: { plugin: file, config: { path: in.jsonl } }
transforms:
  - plugin: json
    config: { drop: [payload], set: { seen: true } }
sink: { plugin: file, config: { path: out.jsonl } }
batch: { max_records: 1000, max_wait: 10ms, buffer: 2 }
# Every acknowledgement is written: the window is the batches in flight.
offsets: { flush_interval: 0s }
"#,
    );
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log");
    let out_path = s.path("out.jsonl");
    // Kill somewhere in the middle: after 200,000 lines are out, well before the end.
    wait_for("a fifth of the output", Duration::from_secs(120), || {
        std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0) > 200_000 * 24
    });
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let before = s.lines("out.jsonl").len();
    assert!(
        before < LINES,
        "killed too late to test anything: {before} lines out"
    );
    // The kill came mid-run: the first run never reached its summary.
    let first_log = s.read("first.log");
    assert!(
        finished(&first_log).is_empty(),
        "the first run completed before the kill:\n{first_log}"
    );

    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = s.lines("out.jsonl");
    // Every line is a whole record of the input, transformed: no torn or foreign line.
    for (n, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {n} is not JSON ({e}): {line:?}"));
        let id = v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("line {n}: {line}"));
        assert!(id < LINES as u64, "line {n}: {line}");
        assert_eq!(line, &format!("{{\"id\":{id},\"seen\":true}}"), "line {n}");
    }
    let seen = occurrences(&lines);
    let mut missing = 0;
    for i in 0..LINES {
        if !seen.contains_key(format!("{{\"id\":{i},\"seen\":true}}").as_str()) {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "lines lost after SIGKILL");
    // The restart read on from the stored offsets, not from the start of the input.
    let restart = finished_once(&text(&out.stderr));
    assert!(
        restart.records_in < LINES as u64,
        "the restart read the whole input again: {restart:?}"
    );
    let duplicates = lines.len() - LINES;
    // The window: batches in the two channels (2 each), one inside each of the three stages,
    // plus offsets not yet persisted when the kill came: at most ~10 batches of 1000.
    eprintln!("SIGKILL after {before} lines: {duplicates} duplicates on restart");
    assert!(
        duplicates <= 10_000,
        "{duplicates} duplicates exceed the in-flight window"
    );
}

#[test]
fn sigterm_drains_acks_and_resumes_without_gap_or_duplicate() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: term
source: { plugin: generate, config: { rate: 20000, template: '{{seq}}' } }
sink: { plugin: file, config: { path: out.txt } }
batch: { max_records: 100, max_wait: 5ms }
# Not written while running after the first: the stop itself must write the last position.
offsets: { flush_interval: 1h }
"#,
    );
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log");
    let out_path = s.path("out.txt");
    wait_for("output", Duration::from_secs(60), || {
        std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0) > 20_000
    });
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let err = s.read("first.log");
    assert!(status.success(), "exit {status:?}: {err}");
    let first = s.lines("out.txt");
    // Drained: everything polled before the stop was written, and nothing else.
    let summary = finished_once(&err);
    assert_eq!(summary.written, first.len() as u64, "{err}");
    assert_eq!(
        summary.records_in, summary.written,
        "polled but not written: {err}"
    );

    // The stored offset is exactly the last record written: the drain delivered and acked all.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path(".orbit/offsets/term.json")).unwrap())
            .unwrap();
    let b64 = stored["offsets"][0]["offset"].as_str().unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let seq = u64::from_be_bytes(bytes.try_into().unwrap());
    assert_eq!(first.last().unwrap(), &seq.to_string());

    // Run again briefly: it continues at seq + 1.
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "second.log");
    let n = first.len();
    wait_for("more output", Duration::from_secs(60), || {
        s.lines("out.txt").len() > n + 1000
    });
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", s.read("second.log"));
    let all = s.lines("out.txt");
    assert!(all.len() > n + 1000, "the second run wrote nothing");
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l, &i.to_string(), "gap or duplicate at line {i}");
    }
}

#[test]
fn sigkill_rereads_what_was_acknowledged_since_the_last_offset_flush_and_loses_nothing() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: flush
source: { plugin: generate, config: { count: 40000, rate: 20000, template: '{{seq}}' } }
sink: { plugin: file, config: { path: out.txt } }
batch: { max_records: 100, max_wait: 5ms }
offsets: { flush_interval: 1h }
"#,
    );
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log");
    wait_for("half the output", Duration::from_secs(60), || {
        s.lines("out.txt").len() >= 20_000
    });
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let before = s.lines("out.txt").len();
    assert!(before < 40_000, "killed too late: {before} lines");
    let first_log = s.read("first.log");
    assert!(
        finished(&first_log).is_empty(),
        "the first run completed before the kill:\n{first_log}"
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = s.lines("out.txt");
    for (n, line) in lines.iter().enumerate() {
        let seq: u64 = line
            .parse()
            .unwrap_or_else(|e| panic!("line {n} is not a sequence number ({e}): {line:?}"));
        assert!(seq < 40_000, "line {n}: {line}");
    }
    let seen = occurrences(&lines);
    for i in 0..40_000 {
        assert!(seen.contains_key(i.to_string().as_str()), "{i} lost");
    }
    // Only the first acknowledgement was flushed (the next was due in an hour), so the
    // restart read again nearly everything written before the kill: the interval is honoured,
    // and what it costs is duplicates, never a loss.
    let duplicates = lines.len() - 40_000;
    assert!(
        duplicates + 1_000 >= before,
        "{duplicates} duplicates after {before} lines: offsets were flushed more often than asked"
    );
}

#[test]
fn a_plugin_that_keeps_panicking_fails_its_pipeline_cleanly_and_other_pipelines_finish() {
    for (stage, yaml) in [
        (
            "source",
            "source: { plugin: chaos, config: { count: 5000, panic_from_call: 2 } }\nsink: { plugin: file, config: { path: out.txt } }",
        ),
        (
            "transforms[0]",
            "source: { plugin: chaos, config: { count: 5000 } }\ntransforms: [ { plugin: chaos, config: { panic_from_call: 2 } } ]\nsink: { plugin: file, config: { path: out.txt } }",
        ),
        (
            "sink",
            "source: { plugin: chaos, config: { count: 5000 } }\nsink: { plugin: chaos, config: { panic_from_call: 2, path: out.txt } }",
        ),
    ] {
        let s = Scratch::new();
        s.write(
            "pipes/a-panics.yaml",
            &format!("name: panics\n{yaml}\nbatch: {{ max_records: 100 }}\ndefaults: {{ policy: {{ restart: {{ max_restarts: 2, backoff: 10ms }}, retry: {{ initial_backoff: 1ms }} }} }}\n"),
        );
        s.write(
            "pipes/b-fine.yaml",
            "name: fine\nsource: { plugin: generate, config: { count: 30000, template: '{{seq}}' } }\nsink: { plugin: file, config: { path: fine.txt } }\n",
        );
        let out = s.run(&["pipes", "--progress", "0s"]);
        let err = text(&out.stderr);
        // Exit code 1 (not a signal, not an abort): the host caught every panic.
        assert_eq!(out.status.code(), Some(1), "{stage}: {err}");
        assert!(
            err.contains(&format!("stage `{stage}` (plugin `chaos`) failed: fatal error: the stage was restarted 2 times"))
                && err.contains("panicked error: plugin panicked at")
                && err.contains("chaos: panic on call 4"),
            "{stage}: {err}"
        );
        // The other pipeline in the same host ran to its end, every record in order.
        let fine = s.lines("fine.txt");
        assert_eq!(fine.len(), 30000, "{stage}");
        for (i, l) in fine.iter().enumerate() {
            assert_eq!(l, &i.to_string(), "{stage}: fine.txt line {i}");
        }
        let summaries = finished(&err);
        assert_eq!(summaries.len(), 1, "only `fine` finished: {err}");
        assert_eq!(summaries[0].written, 30000, "{stage}: {err}");
        // Of the failing pipeline, at most the first batch (call 1 of the chaos stage) was
        // written, each record whole.
        let out = s.lines("out.txt");
        assert!(out.len() <= 100, "{stage}: {} lines written", out.len());
        for (i, l) in out.iter().enumerate() {
            assert_eq!(l, &format!("{{\"seq\":{i}}}"), "{stage}: out.txt line {i}");
        }
        // Nothing past the failing batch was acknowledged: at most the first batch is stored.
        if let Ok(bytes) = std::fs::read(s.path(".orbit/offsets/panics.json")) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(v["offsets"][0]["offset"].as_str().unwrap())
                .unwrap();
            assert!(u64::from_be_bytes(b.try_into().unwrap()) < 100, "{stage}");
        }
    }
}

#[test]
fn file_source_in_follow_mode_picks_up_appended_lines_until_stopped() {
    let s = Scratch::new();
    s.write("in.txt", "a\nb\n");
    s.write(
        "p.yaml",
        "name: tail\nsource: { plugin: file, config: { path: in.txt, follow: true, poll_interval: 20ms } }\nsink: { plugin: file, config: { path: out.txt } }\n",
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for("the first lines", Duration::from_secs(30), || {
        s.lines("out.txt").len() == 2
    });
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(s.path("in.txt"))
            .unwrap();
        f.write_all(b"c\nd").unwrap(); // `d` has no newline yet: not a line until it does
        f.flush().unwrap();
        wait_for("the appended line", Duration::from_secs(30), || {
            s.lines("out.txt").len() == 3
        });
        f.write_all(b"\n").unwrap();
    }
    wait_for("the completed line", Duration::from_secs(30), || {
        s.lines("out.txt").len() == 4
    });
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert_eq!(s.lines("out.txt"), vec!["a", "b", "c", "d"]);
}
