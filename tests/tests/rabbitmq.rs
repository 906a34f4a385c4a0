//! The rabbitmq plugin against the real RabbitMQ on 127.0.0.1:5672, checked with an
//! independent lapin client in this test (not through Orbit).

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orbit_e2e::*;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The tests share one broker; run them one at a time so that one test's 100,000-message load
/// does not slow another's timing assertions.
static BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    BROKER.lock().unwrap_or_else(|e| e.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect() -> Connection {
    Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (.ci/run starts it)")
}

/// A fresh durable queue with this test's name.
fn fresh_queue(name: &str) {
    rt().block_on(async {
        let c = connect().await;
        let ch = c.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    })
}

fn publish(queue: &str, messages: impl Iterator<Item = String>) {
    rt().block_on(async {
        let c = connect().await;
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut pending = Vec::new();
        for m in messages {
            pending.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    m.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
            if pending.len() >= 1000 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
    })
}

fn message_count(queue: &str) -> u32 {
    rt().block_on(async {
        let c = connect().await;
        let ch = c.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    })
}

/// Consumes until `n` messages arrived or nothing came for 5 s.
fn consume(queue: &str, n: usize) -> Vec<String> {
    rt().block_on(async {
        let c = connect().await;
        let ch = c.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "check".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    out.push(String::from_utf8(d.data.clone()).unwrap());
                    d.ack(BasicAckOptions::default()).await.unwrap();
                }
                _ => break,
            }
        }
        out
    })
}

#[test]
fn file_to_rabbitmq_publishes_every_record_confirmed() {
    let _broker = serial();
    let q = "orbit-test-sink";
    fresh_queue(q);
    let s = Scratch::new();
    let input: Vec<String> = (0..100_000).map(|i| format!("{{\"n\":{i}}}")).collect();
    s.write("in.jsonl", &(input.join("\n") + "\n"));
    s.write(
        "p.yaml",
        &format!("name: to-rabbit\nsource: {{ plugin: file, config: {{ path: in.jsonl }} }}\nsink: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", routing_key: {q} }} }}\n"),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(message_count(q), 100_000);
    let got = consume(q, 100_000);
    assert_eq!(got, input);
}

#[test]
fn rabbitmq_to_file_delivers_everything_and_empties_the_queue() {
    let _broker = serial();
    let q = "orbit-test-source";
    fresh_queue(q);
    publish(q, (0..100_000).map(|i| format!("m{i}")));
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!("name: from-rabbit\nsource: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", queue: {q} }} }}\nsink: {{ plugin: file, config: {{ path: out.txt }} }}\n"),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for(
        "every message in the file",
        Duration::from_secs(120),
        || s.lines("out.txt").len() >= 100_000,
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", stderr_of(&mut child));
    let mut lines = s.lines("out.txt");
    lines.sort_by_key(|l| l[1..].parse::<u64>().unwrap());
    lines.dedup();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(message_count(q), 0, "everything delivered was acked");
}

#[test]
fn sigkill_with_the_rabbitmq_source_then_restart_delivers_every_message() {
    let _broker = serial();
    let q = "orbit-test-kill";
    fresh_queue(q);
    publish(q, (0..50_000).map(|i| format!("m{i}")));
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!("name: kill-rabbit\nsource: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", queue: {q}, prefetch: 500 }} }}\nsink: {{ plugin: file, config: {{ path: out.txt }} }}\nbatch: {{ max_records: 100 }}\n"),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for("some output", Duration::from_secs(60), || {
        s.lines("out.txt").len() > 5_000
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for("every message", Duration::from_secs(120), || {
        let mut l = s.lines("out.txt");
        l.sort();
        l.dedup();
        l.len() >= 50_000
    });
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let lines = s.lines("out.txt");
    let duplicates = lines.len() - 50_000;
    eprintln!("duplicates after SIGKILL with prefetch 500: {duplicates}");
    assert!(duplicates <= 1_000, "{duplicates}");
    assert_eq!(message_count(q), 0);
}

#[test]
fn a_poison_message_is_dead_lettered_and_the_rest_flow() {
    let _broker = serial();
    let q = "orbit-test-poison";
    fresh_queue(q);
    publish(
        q,
        (0..1000).map(|i| {
            if i % 250 == 7 {
                format!("not json {i}")
            } else {
                format!("{{\"n\":{i}}}")
            }
        }),
    );
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!("name: poison-rabbit\nsource: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", queue: {q} }} }}\ntransforms: [ {{ plugin: json, config: {{ set: {{ ok: true }} }} }} ]\nsink: {{ plugin: file, config: {{ path: out.txt }} }}\nerrors: {{ tolerance: all, dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl, format: envelope }} }} }}\n"),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for("all records", Duration::from_secs(60), || {
        s.lines("out.txt").len() + s.lines("dlq.jsonl").len() >= 1000
    });
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert_eq!(s.lines("out.txt").len(), 996);
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 4);
    for l in &dlq {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["value"].as_str().unwrap().starts_with("not json"));
        assert_eq!(v["headers"]["amqp.routing_key"], q);
        assert_eq!(v["headers"]["orbit.dlq.plugin"], "json");
    }
    assert_eq!(message_count(q), 0);
}

#[test]
fn bad_credentials_vhost_or_port_give_a_clear_error_without_the_password() {
    let _broker = serial();
    for (url, expect) in [
        (
            "amqp://guest:wrong-pw-123@127.0.0.1:5672/%2f",
            "check the user, password and vhost",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            "check the user, password and vhost",
        ),
        (
            "amqp://guest:hidden-pw-9@127.0.0.1:1/%2f",
            "cannot connect to amqp://guest:***@127.0.0.1:1/",
        ),
    ] {
        let s = Scratch::new();
        s.write(
            "p.yaml",
            &format!("name: bad\nsource: {{ plugin: generate, config: {{ count: 10 }} }}\nsink:\n  plugin: rabbitmq\n  config: {{ url: \"{url}\", routing_key: x, connect_timeout: 2s }}\n  policy: {{ retry: {{ max_attempts: 2, initial_backoff: 10ms }} }}\n"),
        );
        let start = std::time::Instant::now();
        let out = s.run(&["p.yaml", "--progress", "0s"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{url}: took {:?}",
            start.elapsed()
        );
        assert!(err.contains(expect), "{url}: {err}");
        assert!(
            !err.contains("wrong-pw-123") && !err.contains("hidden-pw-9"),
            "password leaked: {err}"
        );
    }
}

/// Starts the broker's app again when dropped, so a failing test never leaves it stopped.
struct BrokerRestart;

impl BrokerRestart {
    fn stop() -> BrokerRestart {
        let ok = std::process::Command::new("rabbitmqctl")
            .arg("stop_app")
            .output()
            .expect("rabbitmqctl")
            .status
            .success();
        assert!(ok, "rabbitmqctl stop_app failed");
        BrokerRestart
    }
}

impl Drop for BrokerRestart {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
        wait_for(
            "RabbitMQ accepting connections",
            Duration::from_secs(120),
            || std::net::TcpStream::connect("127.0.0.1:5672").is_ok(),
        );
    }
}

#[test]
fn a_broker_restart_mid_stream_loses_nothing_in_either_direction() {
    let _broker = serial();
    let (q_in, q_out) = ("orbit-test-restart-in", "orbit-test-restart-out");
    fresh_queue(q_in);
    fresh_queue(q_out);
    publish(q_in, (0..20_000).map(|i| format!("m{i}")));
    let s = Scratch::new();
    // rabbitmq → rabbitmq: the source and the sink both lose their connection.
    s.write(
        "p.yaml",
        &format!(
            "name: restart-rabbit
source: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", queue: {q_in}, prefetch: 500 }} }}
sink: {{ plugin: rabbitmq, config: {{ url: \"{URL}\", routing_key: {q_out} }} }}
batch: {{ max_records: 200 }}
defaults:
  policy:
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
    circuit_breaker: {{ failure_threshold: 3, open_for: 1s }}
"
        ),
    );
    let mut child = s.spawn(&["p.yaml", "--progress", "0s"]);
    wait_for("some messages relayed", Duration::from_secs(60), || {
        message_count(q_out) > 2_000
    });
    {
        let _stopped = BrokerRestart::stop();
        assert!(
            std::net::TcpStream::connect("127.0.0.1:5672").is_err(),
            "broker still up"
        );
        // Dropping the guard starts it again.
    }
    wait_for(
        "the relay to finish after the restart",
        Duration::from_secs(180),
        || message_count(q_in) == 0 && message_count(q_out) >= 20_000,
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let err = stderr_of(&mut child);
    assert!(status.success(), "{err}");
    let mut got = consume(q_out, usize::MAX);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20_000, "messages lost across the broker restart");
    assert!(
        err.contains("reconnecting") || err.contains("cannot connect"),
        "{err}"
    );
}
