//! Several batches in flight against a small blocking HTTP/1.1 server (a thread per
//! connection): sink-wide `concurrency`, oldest batch first, begin order with `concurrency: 1`,
//! `finish_write` that times out loses nothing, `close` with batches in flight.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orbit_plugin_api::{PipelinedSink as _, Record, Sink as _, WriteOutcome};

use super::test_sink;

/// What the server saw: request bodies in arrival order, and the most requests at once.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<String>>,
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Answers every request with 200 after `delay`; returns its port.
fn server(delay: Duration) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let s = s.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let now = s.now.fetch_add(1, Ordering::SeqCst) + 1;
                    s.peak.fetch_max(now, Ordering::SeqCst);
                    s.bodies
                        .lock()
                        .unwrap()
                        .push(String::from_utf8(body).unwrap());
                    std::thread::sleep(delay);
                    s.now.fetch_sub(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// No record failed (the outcome's fields are private to the SDK).
fn all_written(o: &WriteOutcome) -> bool {
    format!("{o:?}").contains("failures: []")
}

fn batch(from: usize, n: usize) -> Vec<Record> {
    (from..from + n)
        .map(|i| Record::new(format!("{{\"id\":{i}}}")).with_position("t", 0, vec![i as u8]))
        .collect()
}

#[test]
fn batches_in_flight_share_the_permits_and_finish_oldest_first() {
    let (port, seen) = server(Duration::from_millis(30));
    let mut s = test_sink(&format!(
        r#"{{"url":"http://127.0.0.1:{port}/h","body":"per_record","concurrency":2,"timeout":"10s"}}"#
    ));
    for b in 0..3 {
        s.begin_write(&batch(b * 4, 4)).unwrap();
    }
    // Not done yet: the batch stays in flight and is answered later.
    assert!(s.finish_write(Duration::ZERO).unwrap().is_none());
    for _ in 0..3 {
        let outcome = loop {
            if let Some(o) = s.finish_write(Duration::from_millis(5)).unwrap() {
                break o;
            }
        };
        assert!(all_written(&outcome), "{outcome:?}");
    }
    assert!(s.finish_write(Duration::ZERO).unwrap().is_none());
    let mut bodies = seen.bodies.lock().unwrap().clone();
    bodies.sort_by_key(|b| b[6..b.len() - 1].parse::<usize>().unwrap());
    let want: Vec<String> = (0..12).map(|i| format!("{{\"id\":{i}}}")).collect();
    assert_eq!(bodies, want);
    // Two permits for the whole sink, however many batches are in flight.
    assert_eq!(seen.peak.load(Ordering::SeqCst), 2);
    assert_eq!(s.stats.requests, 12);
    assert_eq!(s.stats.writes, 3);
}

#[test]
fn with_concurrency_1_requests_go_out_in_begin_order() {
    let (port, seen) = server(Duration::from_millis(2));
    let mut s = test_sink(&format!(
        r#"{{"url":"http://127.0.0.1:{port}/h","body":"ndjson","max_batch_records":2,"concurrency":1}}"#
    ));
    for b in 0..4 {
        s.begin_write(&batch(b * 5, 5)).unwrap();
    }
    for _ in 0..4 {
        while s.finish_write(Duration::from_millis(1)).unwrap().is_none() {}
    }
    let got: Vec<String> = seen.bodies.lock().unwrap().clone();
    let ids: Vec<usize> = got
        .iter()
        .flat_map(|b| {
            b.lines()
                .map(|l| l[6..l.len() - 1].parse::<usize>().unwrap())
        })
        .collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert_eq!(got.len(), 12, "2+2+1 per batch: {got:?}");
    assert_eq!(seen.peak.load(Ordering::SeqCst), 1);
}

#[test]
fn an_empty_batch_and_close_with_batches_in_flight() {
    let (port, _seen) = server(Duration::from_millis(200));
    let mut s = test_sink(&format!(r#"{{"url":"http://127.0.0.1:{port}/h"}}"#));
    s.begin_write(&[]).unwrap();
    let outcome = s.finish_write(Duration::from_secs(1)).unwrap().unwrap();
    assert!(all_written(&outcome), "{outcome:?}");
    s.begin_write(&batch(0, 3)).unwrap();
    s.begin_write(&batch(3, 3)).unwrap();
    s.close().unwrap();
    assert!(s.pending.is_empty());
    assert!(s.finish_write(Duration::ZERO).unwrap().is_none());
}
