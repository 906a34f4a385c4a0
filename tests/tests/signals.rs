//! The first SIGTERM ends a host within its grace period, whatever its pipelines are waiting
//! for: a source whose server is down at start, a sink retrying against a closed port after
//! the source ended, a sink whose calls hang until they time out.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use orbit_e2e::*;

const GRACE: Duration = Duration::from_secs(3);
/// Time to exit after the grace period: closing instances, saving offsets, process exit.
const SLACK: Duration = Duration::from_secs(3);

/// Sends SIGTERM once the log shows `ready_when`, and returns how long the host took to exit.
fn terminate_after(s: &Scratch, yaml: &str, ready_when: &str) -> Duration {
    s.write("p.yaml", yaml);
    let mut host = KillOnDrop(s.spawn_logged(&["p.yaml", "--grace-period", "3s"], "host.log"));
    wait_for_explained(
        ready_when,
        Duration::from_secs(60),
        || s.read("host.log").contains(ready_when),
        || s.tail("host.log", 20),
    );
    let sent = Instant::now();
    signal(&host, libc::SIGTERM);
    let status = wait_exit(&mut host, Duration::from_secs(60));
    let took = sent.elapsed();
    assert!(
        took <= GRACE + SLACK,
        "exited {took:?} after SIGTERM (grace {GRACE:?}): {status:?}\n{}",
        s.tail("host.log", 30)
    );
    took
}

/// A port that accepts connections and never answers; returns the port.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    port
}

#[test]
fn a_source_whose_server_is_down_at_start_stops_at_the_first_signal() {
    build_workspace();
    let s = Scratch::new();
    let port = free_port();
    let took = terminate_after(
        &s,
        &format!(
            "name: down\n\
             source: {{ plugin: rabbitmq, config: {{ url: \"amqp://guest:guest@127.0.0.1:{port}/%2f\", queue: q }} }}\n\
             sink: {{ plugin: file, config: {{ path: out.txt }} }}\n"
        ),
        "retrying in",
    );
    // Nothing in flight: the creation's back-off is interrupted, no grace period to wait out.
    assert!(took < GRACE, "took {took:?}\n{}", s.tail("host.log", 20));
    assert!(
        s.read("host.log").contains("stopped while starting"),
        "{}",
        s.tail("host.log", 20)
    );
}

#[test]
fn a_sink_retrying_a_closed_port_after_the_source_ended_stops_within_the_grace_period() {
    build_workspace();
    let s = Scratch::new();
    let port = free_port();
    terminate_after(
        &s,
        &format!(
            "name: closed\n\
             source: {{ plugin: generate, config: {{ count: 100 }} }}\n\
             sink: {{ plugin: http, config: {{ url: \"http://127.0.0.1:{port}/in\" }} }}\n"
        ),
        "source reached the end of its input",
    );
    let log = s.read("host.log");
    assert!(
        log.contains("grace period over"),
        "{}",
        s.tail("host.log", 20)
    );
    // Nothing was delivered, so nothing was acknowledged.
    let offsets = std::fs::read_to_string(s.path(".orbit/offsets/closed.json")).unwrap_or_default();
    assert!(!offsets.contains("\"generate\""), "{offsets}");
}

#[test]
fn a_sink_whose_calls_hang_stops_within_the_grace_period() {
    build_workspace();
    let s = Scratch::new();
    let port = silent_server();
    terminate_after(
        &s,
        &format!(
            "name: hung\n\
             source: {{ plugin: generate, config: {{ rate: 100 }} }}\n\
             sink:\n  plugin: http\n  config: {{ url: \"http://127.0.0.1:{port}/in\" }}\n  \
             policy: {{ timeout: 500ms, restart: {{ max_restarts: 2, backoff: 10ms }} }}\n"
        ),
        "abandoning the instance",
    );
}

/// Timeouts are ridden out by retries and the breaker: more of them than the restart budget
/// allows panics, and the pipeline still runs (it used to give up, and the host to exit).
#[test]
fn a_sink_timing_out_more_often_than_the_restart_budget_keeps_its_pipeline_running() {
    build_workspace();
    let s = Scratch::new();
    let port = silent_server();
    s.write(
        "p.yaml",
        &format!(
            "name: hung\n\
             source: {{ plugin: generate, config: {{ rate: 100 }} }}\n\
             sink:\n  plugin: http\n  config: {{ url: \"http://127.0.0.1:{port}/in\" }}\n  \
             policy: {{ timeout: 300ms, restart: {{ max_restarts: 2, backoff: 10ms }}, \
             circuit_breaker: {{ open_for: 100ms }} }}\n"
        ),
    );
    let mut host = KillOnDrop(s.spawn_logged(&["p.yaml", "--grace-period", "3s"], "host.log"));
    wait_for_explained(
        "five recreations after timeouts (the budget for panics is two)",
        Duration::from_secs(90),
        || {
            s.read("host.log")
                .matches("recreating the stage instance after a timeout")
                .count()
                >= 5
        },
        || s.tail("host.log", 20),
    );
    assert!(
        matches!(host.try_wait(), Ok(None)),
        "{}",
        s.tail("host.log", 20)
    );
    assert!(!s.read("host.log").contains("giving up"));
    signal(&host, libc::SIGTERM);
    wait_exit(&mut host, GRACE + SLACK);
}
