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

/// (messages ready, consumers attached) of `queue`, from a passive declare. A consumer's
/// unacknowledged messages are not among the ready ones.
fn counts(queue: &str) -> (u32, u32) {
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
        (q.message_count(), q.consumer_count())
    })
}

/// The messages ready in `queue` now, whoever is attached: for waiting while the host consumes.
fn ready_count(queue: &str) -> u32 {
    counts(queue).0
}

/// The messages `queue` holds once no consumer is attached: a host that just exited (or was
/// killed) may still hold unacknowledged messages, which the broker counts only after it has
/// closed that consumer and put them back.
fn message_count(queue: &str) -> u32 {
    let mut messages = 0;
    wait_for(
        &format!("no consumer on {queue}"),
        Duration::from_secs(30),
        || {
            let (m, consumers) = counts(queue);
            messages = m;
            consumers == 0
        },
    );
    messages
}

/// Every message `queue` holds, ready or held unacknowledged by a consumer, as the broker
/// itself reports it (`rabbitmqctl list_queues`): a passive declare counts only the ready ones.
fn held_by_broker(queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find_map(|l| {
            let (name, n) = l.split_once('\t')?;
            (name == queue).then(|| n.trim().parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no queue {queue}: {}", text(&out.stdout)))
}

/// `prefix0` … `prefix{n-1}`, sorted as strings.
fn expected(prefix: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    v.sort();
    v
}

/// The distinct lines, sorted as strings.
fn distinct(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines.dedup();
    lines
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

/// Several batches in flight (`max_in_flight: 8`, confirms bounded across them by
/// `confirm_window`): the queue still holds exactly the input, in order.
#[test]
fn rabbitmq_sink_keeps_queue_order_with_batches_in_flight() {
    let _broker = serial();
    let q = "orbit-test-sink-window";
    fresh_queue(q);
    let s = Scratch::new();
    let input: Vec<String> = (0..100_000).map(|i| format!("{{\"n\":{i}}}")).collect();
    s.write("in.jsonl", &(input.join("\n") + "\n"));
    s.write(
        "p.yaml",
        &format!(
            "name: to-rabbit-window\n\
             source: {{ plugin: file, config: {{ path: in.jsonl }} }}\n\
             sink: {{ plugin: rabbitmq, max_in_flight: 8, config: {{ url: \"{URL}\", \
             routing_key: {q}, confirm_window: 100 }} }}\n\
             batch: {{ max_records: 250, buffer: 16 }}\n"
        ),
    );
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let window = sink_in_flight_max(&err);
    assert!(
        window >= 4,
        "the window never filled (in_flight_max={window}): {err}"
    );
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
    let err = stderr_of(&mut child);
    assert!(status.success(), "{err}");
    let mut lines = s.lines("out.txt");
    lines.sort_by_key(|l| l[1..].parse::<u64>().unwrap());
    lines.dedup();
    assert_eq!(lines.len(), 100_000);
    // Every message published, by value.
    assert_eq!(distinct(lines), expected("m", 100_000));
    assert!(finished_once(&err).written >= 100_000, "{err}");
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
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "first.log");
    wait_for("some output", Duration::from_secs(60), || {
        s.lines("out.txt").len() > 5_000
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // The kill came mid-run: some but not all messages were written, and the queue (once the
    // broker has closed the dead consumer and put its unacknowledged messages back) still
    // holds every message not acknowledged, so none is in neither place.
    let at_kill = s.lines("out.txt").len();
    let left = message_count(q) as usize;
    assert!(
        at_kill < 50_000 && left > 0,
        "killed too late: {at_kill} lines written, {left} left in the queue"
    );
    assert!(
        at_kill + left >= 50_000,
        "acknowledged but not written: {at_kill} lines, {left} in the queue"
    );
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "0s"], "second.log");
    wait_for("every message", Duration::from_secs(120), || {
        let mut l = s.lines("out.txt");
        l.sort();
        l.dedup();
        l.len() >= 50_000
    });
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", s.read("second.log"));
    let lines = s.lines("out.txt");
    assert_eq!(distinct(lines.clone()), expected("m", 50_000));
    let duplicates = lines.len() - 50_000;
    eprintln!("duplicates after SIGKILL with prefetch 500: {duplicates}");
    assert!(duplicates <= 1_000, "{duplicates}");
    // Only what was written but not acknowledged at the kill came again.
    assert!(
        duplicates <= at_kill + left - 50_000,
        "{duplicates} duplicates; {at_kill} written and {left} unacknowledged at the kill"
    );
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
    let out = s.lines("out.txt");
    assert_eq!(out.len(), 996);
    // Exactly the good messages, each transformed.
    let mut good: Vec<u64> = out
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["ok"], true, "the transform ran: {l}");
            v["n"].as_u64().unwrap()
        })
        .collect();
    good.sort();
    assert_eq!(
        good,
        (0..1000).filter(|i| i % 250 != 7).collect::<Vec<u64>>()
    );
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 4);
    let mut dead = Vec::new();
    for l in &dlq {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["value"].as_str().unwrap().starts_with("not json"));
        assert_eq!(v["headers"]["amqp.routing_key"], q);
        assert_eq!(v["headers"]["orbit.dlq.plugin"], "json");
        dead.push(v["value"].as_str().unwrap().to_string());
    }
    dead.sort();
    assert_eq!(
        dead,
        ["not json 257", "not json 507", "not json 7", "not json 757"]
    );
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
sink:
  plugin: rabbitmq
  config: {{ url: \"{URL}\", routing_key: {q_out} }}
  # Slow enough (10 s for the lot) that the broker's stop lands mid-stream.
  policy: {{ rate_limit: {{ records_per_second: 2000 }} }}
batch: {{ max_records: 200 }}
defaults:
  policy:
    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
    circuit_breaker: {{ failure_threshold: 3, open_for: 1s }}
"
        ),
    );
    // Logs go to a file (an outage logs more than a pipe holds), with progress lines: the
    // host's own count of what it had written when the broker went away.
    let mut child = s.spawn_logged(&["p.yaml", "--progress", "100ms"], "host.log");
    wait_for("some messages relayed", Duration::from_secs(60), || {
        message_count(q_out) > 2_000
    });
    let written_while_down;
    {
        let _stopped = BrokerRestart::stop();
        assert!(
            std::net::TcpStream::connect("127.0.0.1:5672").is_err(),
            "broker still up"
        );
        // A progress line logged while the broker is down: nothing can be confirmed until it
        // is back, so this is what was relayed before the stop (no duplicates yet: nothing
        // has been redelivered).
        let mark = progress(&s.read("host.log")).len();
        wait_for(
            "a progress line while the broker is down",
            Duration::from_secs(30),
            || progress(&s.read("host.log")).len() > mark,
        );
        written_while_down = progress(&s.read("host.log"))[mark].1;
        // Dropping the guard starts it again.
    }
    let restarted = std::time::Instant::now();
    assert!(
        written_while_down < 20_000,
        "the stream was complete before the broker stopped ({written_while_down} written)"
    );
    // Finished means every input message acknowledged: none ready, none held by the host (the
    // output's count alone would include the duplicates the restart causes).
    wait_for(
        "the relay to finish after the restart",
        Duration::from_secs(180),
        || ready_count(q_in) == 0 && held_by_broker(q_in) == 0,
    );
    assert!(message_count(q_out) >= 20_000);
    eprintln!(
        "broker stopped after {written_while_down} relayed; relay finished {:?} after the restart",
        restarted.elapsed()
    );
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let err = s.read("host.log");
    assert!(status.success(), "{}", s.tail("host.log", 40));
    // Once the host is gone, nothing came back to the input queue.
    assert_eq!(message_count(q_in), 0, "input not all acknowledged");
    let summary = finished_once(&err);
    assert!(
        summary.written >= 20_000 && summary.written > written_while_down,
        "{summary:?}; {written_while_down} written before the stop"
    );
    let mut got = consume(q_out, usize::MAX);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20_000, "messages lost across the broker restart");
    assert_eq!(got, expected("m", 20_000));
    assert!(
        err.contains("reconnecting") || err.contains("cannot connect"),
        "{err}"
    );
}

/// A TLS terminator in front of the real broker: accepts TLS on a free port with a certificate
/// signed by a test CA and relays the plain bytes to 127.0.0.1:5672. Counts completed
/// handshakes, so a test can tell the plugin really spoke TLS.
struct TlsFront {
    port: u16,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl TlsFront {
    /// Returns the terminator and the CA certificate (PEM) that signed its certificate.
    fn start() -> (TlsFront, String) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio_rustls::rustls;

        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "orbit test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        (
            TlsFront {
                port,
                handshakes,
                _rt: rt,
            },
            ca.pem(),
        )
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn amqps_with_a_private_ca_and_separate_credentials_in_both_directions() {
    let _broker = serial();
    let (q_in, q_out) = ("orbit-test-tls-in", "orbit-test-tls-out");
    fresh_queue(q_in);
    fresh_queue(q_out);
    let (front, ca_pem) = TlsFront::start();
    let s = Scratch::new();
    s.write("ca.pem", &ca_pem);
    let url = format!("amqps://127.0.0.1:{}/%2f", front.port);
    // The password comes from its own key, never from the URL.
    let conn =
        format!("url: \"{url}\", username: guest, password: guest, tls: {{ ca_file: ca.pem }}");
    s.write(
        "sink.yaml",
        &format!("name: tls-sink\nsource: {{ plugin: generate, config: {{ count: 5000, template: 'tls-{{{{seq}}}}' }} }}\nsink: {{ plugin: rabbitmq, config: {{ {conn}, routing_key: {q_out} }} }}\n"),
    );
    let out = s.run(&["sink.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(front.handshakes() >= 1, "the sink did not go through TLS");
    // Checked on the plain port by the independent client.
    let mut got = consume(q_out, 5000);
    got.sort();
    let mut want: Vec<String> = (0..5000).map(|i| format!("tls-{i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // The source over TLS: messages published by the independent client reach the file.
    publish(q_in, (0..5000).map(|i| format!("in-{i}")));
    let before = front.handshakes();
    s.write(
        "source.yaml",
        &format!("name: tls-source\nsource: {{ plugin: rabbitmq, config: {{ {conn}, queue: {q_in} }} }}\nsink: {{ plugin: file, config: {{ path: out.txt }} }}\n"),
    );
    let mut child = s.spawn(&["source.yaml", "--progress", "0s"]);
    wait_for("every message in the file", Duration::from_secs(60), || {
        s.lines("out.txt").len() >= 5000
    });
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", stderr_of(&mut child));
    assert!(
        front.handshakes() > before,
        "the source did not go through TLS"
    );
    let mut lines = s.lines("out.txt");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 5000);
    assert_eq!(lines, expected("in-", 5000));
    assert_eq!(message_count(q_in), 0);

    // Without the CA the broker's certificate is not trusted: a clear config error, at once,
    // without the password.
    s.write(
        "untrusted.yaml",
        &format!("name: untrusted\nsource: {{ plugin: generate, config: {{ count: 1 }} }}\nsink: {{ plugin: rabbitmq, config: {{ url: \"{url}\", username: guest, password: tls-secret-pw, routing_key: {q_out}, connect_timeout: 5s }} }}\n"),
    );
    let start = std::time::Instant::now();
    let out = s.run(&["untrusted.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15), "{err}");
    assert!(err.contains("tls.ca_file"), "{err}");
    assert!(!err.contains("tls-secret-pw"), "password leaked: {err}");
}
