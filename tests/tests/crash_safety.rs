//! What a crash, a full or read-only state directory, or a replaced source instance must not
//! do: merge records into a torn line, run on with offsets unsaved, or acknowledge a position
//! to an instance that did not hand it out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use orbit_e2e::*;

/// Every line of `lines` parsed as JSON, or a panic naming the first line that is not.
fn parse_all(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l:?}", i + 1))
        })
        .collect()
}

fn ids(values: &[serde_json::Value], field: &str) -> HashSet<u64> {
    values
        .iter()
        .map(|v| {
            v[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field}: {v}"))
        })
        .collect()
}

#[test]
fn a_sigkill_mid_write_leaves_no_merged_line_after_the_restart() {
    const LINES: u64 = 300_000;
    let s = Scratch::new();
    let mut input = String::new();
    for i in 0..LINES {
        input.push_str(&format!(
            "{{\"id\":{i},\"pad\":\"abcdefghijklmnopqrstuvwxyz\"}}\n"
        ));
    }
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        "name: torn\nsource: { plugin: file, config: { path: in.jsonl } }\n\
         sink: { plugin: file, config: { path: out.jsonl } }\n\
         batch: { max_records: 1000, max_wait: 10ms }\noffsets: { flush_interval: 0s }\n",
    );
    let out = s.path("out.jsonl");
    let mut child = s.spawn_logged(&["p.yaml"], "first.log");
    wait_for("some output", Duration::from_secs(120), || {
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) > 1_000_000
    });
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let written = std::fs::read(&out).unwrap();
    assert!(
        !s.lines("first.log").iter().any(|l| l.contains("finished:")),
        "the kill came after the run had finished"
    );
    assert!(
        (written.len() as u64) < LINES * 40,
        "killed too late: {} bytes out",
        written.len()
    );
    // Wherever the kill struck, make sure the output ends the way a kill during a write
    // leaves it: half a record without its newline.
    let mut torn = written;
    torn.extend_from_slice(b"{\"id\":12345,\"pad\":\"abc");
    std::fs::write(&out, &torn).unwrap();

    let rerun = s.run(&["p.yaml"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    assert!(
        text(&rerun.stderr).contains("torn line"),
        "the repair is logged: {}",
        text(&rerun.stderr)
    );
    let values = parse_all(&s.lines("out.jsonl"));
    let seen = ids(&values, "id");
    let missing: Vec<u64> = (0..LINES).filter(|i| !seen.contains(i)).take(5).collect();
    assert!(missing.is_empty(), "lost after the kill: {missing:?}…");
}

#[test]
fn offsets_that_cannot_be_saved_fail_the_pipeline_at_once_naming_the_path() {
    const COUNT: u64 = 20_000;
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: unsaved\nsource: {{ plugin: generate, config: {{ count: {COUNT}, rate: 2000, template: '{{\"seq\":{{{{seq}}}}}}' }} }}\n\
             sink: {{ plugin: file, config: {{ path: out.jsonl }} }}\n\
             batch: {{ max_records: 100, max_wait: 10ms }}\noffsets: {{ flush_interval: 100ms }}\n"
        ),
    );
    let offsets = s.path(".orbit/offsets/unsaved.json");
    let mut child = s.spawn_logged(&["p.yaml"], "first.log");
    wait_for("the first offsets save", Duration::from_secs(60), || {
        offsets.exists()
    });
    // Root ignores file modes, so make the save fail the way a full or read-only disk does
    // for anyone: its temporary file cannot be created (a directory is in the way).
    let obstacle = s.path(".orbit/offsets/unsaved.json.tmp");
    std::fs::create_dir(&obstacle).unwrap();
    let blocked = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let waited = blocked.elapsed();
    let log = s.lines("first.log").join("\n");
    assert!(!status.success(), "the pipeline must fail: {log}");
    assert!(
        log.contains("unsaved.json") && log.contains("cannot create a temporary file"),
        "the error names the path and the reason: {log}"
    );
    let before = s.lines("out.jsonl").len() as u64;
    assert!(
        before < COUNT,
        "the source had already finished ({before} lines): the failure was not prompt"
    );
    eprintln!("failed {waited:?} after the save broke, with {before} of {COUNT} written");

    std::fs::remove_dir(&obstacle).unwrap();
    let rerun = s.run(&["p.yaml"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let seen = ids(&parse_all(&s.lines("out.jsonl")), "seq");
    let missing: Vec<u64> = (0..COUNT).filter(|i| !seen.contains(i)).take(5).collect();
    assert!(missing.is_empty(), "lost: {missing:?}…");
}

#[test]
fn a_batch_polled_by_an_earlier_source_instance_is_never_acknowledged_to_a_later_one() {
    const COUNT: u64 = 3000;
    let s = Scratch::new();
    // The sink holds the first batch for 2 s; meanwhile the source's third poll panics and
    // the host makes a new source instance. When the first batch completes, its position
    // belongs to the first instance: the chaos source fails the pipeline if the second one is
    // acknowledged it (as a RabbitMQ channel would acknowledge its own deliveries).
    s.write(
        "p.yaml",
        &format!(
            "name: instances\n\
             source: {{ plugin: chaos, config: {{ count: {COUNT}, instance_positions: true, panic_on_call: 3 }},\n\
                       policy: {{ restart: {{ backoff: 100ms }} }} }}\n\
             sink: {{ plugin: chaos, config: {{ path: out.txt, hang_on_call: 1, hang_for: 2s }} }}\n\
             batch: {{ max_records: 100, max_wait: 10ms }}\n"
        ),
    );
    let out = s.run(&["p.yaml"]);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("recreating the stage instance"),
        "the source was recreated with batches in flight: {log}"
    );
    let seen = ids(&parse_all(&s.lines("out.txt")), "seq");
    let missing: Vec<u64> = (0..COUNT).filter(|i| !seen.contains(i)).take(5).collect();
    assert!(missing.is_empty(), "lost: {missing:?}…");
}
