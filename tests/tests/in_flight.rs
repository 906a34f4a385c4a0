//! Several batches in flight per sink: the chaos sink keeps up to 64 batches begun and not yet
//! confirmed, so these runs go through the host's window. Order is checked on the **last**
//! copy of every record (a resend may duplicate, never reorder what the destination ends with),
//! and delivery by SIGKILL and restart.

use std::collections::HashMap;
use std::time::Duration;

use orbit_e2e::*;

/// The `policy events:` counters the host logged for `stage` (none: empty).
fn events(stderr: &str, stage: &str) -> HashMap<String, u64> {
    policy_events(stderr, stage).unwrap_or_default()
}

/// The seqs in the order of their last occurrence.
fn last_copies(seqs: &[u64]) -> Vec<u64> {
    let mut last = HashMap::new();
    for (i, s) in seqs.iter().enumerate() {
        last.insert(*s, i);
    }
    let mut by_position: Vec<(usize, u64)> = last.into_iter().map(|(s, i)| (i, s)).collect();
    by_position.sort_unstable();
    by_position.into_iter().map(|(_, s)| s).collect()
}

#[test]
fn a_sink_keeps_several_batches_in_flight_and_writes_them_in_order() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: window
source: { plugin: chaos, config: { count: 3000 } }
sink:
  plugin: chaos
  max_in_flight: 8
  config: { path: out.txt, finish_after: 20ms }
batch: { max_records: 50, buffer: 16 }
"#,
    );
    assert_eq!(seqs(&s.lines("out.txt")), (0..3000).collect::<Vec<_>>());
    assert_eq!((summary.records_in, summary.written), (3000, 3000), "{err}");
    // Confirmations take 20 ms and batches keep coming: the window fills.
    assert!(sink_in_flight_max(&err) >= 4, "{err}");
    assert!(
        err.contains("the sink keeps up to 8 batches in flight"),
        "{err}"
    );
}

#[test]
fn a_batch_lost_in_the_window_is_resent_and_the_last_copies_stay_in_order() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: lost
source: { plugin: chaos, config: { count: 2000 } }
sink:
  plugin: chaos
  max_in_flight: 4
  config: { path: out.txt, finish_after: 10ms, lose_batch: 3 }
  policy: { retry: { initial_backoff: 1ms, max_backoff: 5ms } }
batch: { max_records: 50, buffer: 8 }
"#,
    );
    let got = seqs(&s.lines("out.txt"));
    // Batch 3 (seqs 100..150) was lost while later batches were confirmed: it was resent,
    // and the later ones with it, so that its partition's last copies are in order.
    assert_eq!(last_copies(&got), (0..2000).collect::<Vec<_>>(), "{err}");
    let duplicates = got.len() - 2000;
    assert!(
        duplicates > 0 && duplicates <= 4 * 50,
        "{duplicates} duplicates: at most a window of batches is written twice\n{err}"
    );
    // Each record counts once.
    assert_eq!((summary.records_in, summary.written), (2000, 2000), "{err}");
    let e = events(&err, "sink");
    assert_eq!(e.get("retries"), Some(&1), "{err}");
    assert_eq!(
        e.get("order_resent").copied(),
        Some(duplicates as u64),
        "{err}"
    );
}

#[test]
fn a_batch_confirmed_after_a_lost_one_is_not_acknowledged_before_it() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        r#"
name: ack-order
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  max_in_flight: 4
  config: { path: out.txt, lose_batch: 3 }
  # The lost batch waits a long backoff before its resend: the kill comes during it.
  policy: { retry: { initial_backoff: 60s, max_backoff: 60s } }
batch: { max_records: 50, buffer: 8 }
offsets: { flush_interval: 0s }
"#,
    );
    let mut child = KillOnDrop(s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log"));
    wait_for_explained(
        "the lost batch's retry",
        Duration::from_secs(60),
        || s.read("first.log").contains("retrying in"),
        || s.read("first.log"),
    );
    let before = seqs(&s.lines("out.txt"));
    // Batches after the lost one (seqs 100..150) were confirmed before the kill.
    assert!(before.iter().any(|&q| q >= 150), "{before:?}");
    assert!(!before.contains(&100), "{before:?}");
    child.0.kill().expect("SIGKILL");
    child.0.wait().unwrap();

    // Restart without faults: the stored offset is before the lost batch, so it comes again.
    s.write(
        "p.yaml",
        r#"
name: ack-order
source: { plugin: chaos, config: { count: 1000 } }
sink: { plugin: chaos, max_in_flight: 4, config: { path: out.txt } }
batch: { max_records: 50, buffer: 8 }
"#,
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = seqs(&s.lines("out.txt"));
    let missing: Vec<u64> = (0..1000).filter(|q| !got.contains(q)).collect();
    assert!(missing.is_empty(), "lost after SIGKILL: {missing:?}");
    let restart = finished_once(&text(&out.stderr));
    assert!(restart.records_in <= 900, "{restart:?}");
}

#[test]
fn a_panic_with_batches_in_flight_loses_nothing() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: panic
source: { plugin: chaos, config: { count: 2000 } }
sink:
  plugin: chaos
  max_in_flight: 8
  config: { path: out.txt, finish_after: 10ms, panic_on_call: 6 }
  policy: { retry: { initial_backoff: 1ms, max_backoff: 5ms }, restart: { backoff: 1ms } }
batch: { max_records: 50, buffer: 16 }
"#,
    );
    let got = seqs(&s.lines("out.txt"));
    assert_eq!(last_copies(&got), (0..2000).collect::<Vec<_>>(), "{err}");
    assert_eq!((summary.records_in, summary.written), (2000, 2000), "{err}");
    let e = events(&err, "sink");
    assert_eq!(
        (e.get("panics"), e.get("restarts")),
        (Some(&1), Some(&1)),
        "{err}"
    );
}

#[test]
fn a_confirmation_that_never_comes_times_out_and_the_window_is_resent() {
    let s = Scratch::new();
    let (err, summary) = run_ok(
        &s,
        r#"
name: hang
source: { plugin: chaos, config: { count: 1000 } }
sink:
  plugin: chaos
  max_in_flight: 4
  config: { path: out.txt, hang_on_call: 5, hang_for: 1500ms }
  policy:
    timeout: 1s
    retry: { initial_backoff: 1ms, max_backoff: 5ms }
    restart: { backoff: 1ms }
batch: { max_records: 50, buffer: 8 }
"#,
    );
    let got = seqs(&s.lines("out.txt"));
    assert_eq!(last_copies(&got), (0..1000).collect::<Vec<_>>(), "{err}");
    assert_eq!((summary.records_in, summary.written), (1000, 1000), "{err}");
    let e = events(&err, "sink");
    assert_eq!(e.get("timeouts"), Some(&1), "{err}");
}

/// SIGTERM with batches in flight: the window is drained (every batch begun is confirmed and
/// acknowledged) before the host exits, so a restart continues with no gap and no duplicate.
#[test]
fn sigterm_drains_the_window_and_a_restart_continues_without_gap_or_duplicate() {
    let s = Scratch::new();
    let pipeline = |finish_after: &str| {
        format!(
            r#"
name: term-window
source: {{ plugin: chaos, config: {{ count: 20000 }} }}
sink:
  plugin: chaos
  max_in_flight: 8
  config: {{ path: out.txt, finish_after: {finish_after} }}
batch: {{ max_records: 50, buffer: 4 }}
offsets: {{ flush_interval: 1h }}
"#
        )
    };
    s.write("p.yaml", &pipeline("200ms"));
    let mut child = KillOnDrop(s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log"));
    wait_for("output", Duration::from_secs(60), || {
        s.lines("out.txt").len() >= 1000
    });
    signal(&child.0, libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    let err = s.read("first.log");
    assert!(status.success(), "exit {status:?}: {err}");
    let first = seqs(&s.lines("out.txt"));
    assert!(first.len() < 20_000, "stopped too late to test anything");
    assert_eq!(first, (0..first.len() as u64).collect::<Vec<_>>(), "{err}");
    let summary = finished_once(&err);
    assert_eq!(summary.written, first.len() as u64, "{err}");
    assert!(sink_in_flight_max(&err) >= 4, "{err}");

    s.write("p.yaml", &pipeline("0ms"));
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        seqs(&s.lines("out.txt")),
        (0..20_000).collect::<Vec<_>>(),
        "every record once, in order, across the stop"
    );
}
