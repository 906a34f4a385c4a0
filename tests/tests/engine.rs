//! The engine's behaviour as a user sees it: how batches form (group commit) and how long a
//! record waits on an idle pipeline.

use std::io::Write as _;
use std::time::{Duration, Instant};

use orbit_e2e::raw_http::{connect, read_answer, status_of};
use orbit_e2e::*;

/// POSTs one JSON record and returns the answer's status with how long the answer took.
fn post_one(port: u16, body: &str) -> (u16, Duration, String) {
    let started = Instant::now();
    let mut c = connect(port);
    write!(
        c,
        "POST /in HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (answer, _) = read_answer(&mut c, Duration::from_secs(30));
    (status_of(&answer), started.elapsed(), answer)
}

/// With `max_wait: 10s`, records sent one at a time on an idle pipeline are written and
/// answered (`ack_mode: delivered`) at once. Before group commit, the poll made while a record's
/// batch was in flight waited out `max_wait` inside the plugin and held back that batch's
/// acknowledgement: every answer took 10 s.
#[test]
fn an_idle_pipeline_delivers_at_once_whatever_max_wait_is() {
    let s = Scratch::new();
    let port = free_port();
    s.write(
        "p.yaml",
        &format!(
            r#"
name: idle
source:
  plugin: http
  config: {{ address: 127.0.0.1:{port}, path: /in, ack_mode: delivered }}
sink: {{ plugin: file, config: {{ path: out.jsonl }} }}
batch: {{ max_records: 1000, max_wait: 10s }}
"#
        ),
    );
    let mut child = KillOnDrop(s.spawn_logged(&["p.yaml", "--progress", "0s"], "host.log"));
    wait_for_explained(
        "the http source to listen",
        Duration::from_secs(60),
        || port_open(port),
        || s.read("host.log"),
    );
    for i in 0..5 {
        let (status, took, answer) = post_one(port, &format!("{{\"n\":{i}}}"));
        assert_eq!(status, 200, "{answer}\n{}", s.read("host.log"));
        // Delivered means written: the record is in the file when the answer comes.
        let lines = s.lines("out.jsonl");
        assert_eq!(lines.len(), i + 1, "{lines:?}");
        assert_eq!(lines[i], format!("{{\"n\":{i}}}"));
        assert!(
            took < Duration::from_secs(3),
            "record {i} answered after {took:?}, with max_wait 10s: a poll held it back"
        );
    }
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{}", s.read("host.log"));
}
