//! The kafka plugin against tansu, a real Kafka-protocol broker started per test on its own
//! port, checked with an independent rdkafka client in this test (not through Orbit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use orbit_e2e::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Kafka tests move hundreds of thousands of records on two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config(brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// One message as the independent client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Msg {
    key: Option<String>,
    value: String,
    headers: Vec<(String, String)>,
}

/// Produces with one record per batch. tansu 0.6.0 answers a fetch from an offset inside a
/// record batch with the *next* batch, so a consumer resuming from a committed offset in the
/// middle of a batch would skip the batch's rest (Kafka returns the containing batch). With
/// single-record batches every offset starts a batch, and resuming is exact.
fn produce(brokers: &str, topic: &str, messages: impl Iterator<Item = Msg>) {
    let p: BaseProducer = config(brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "1")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for m in messages {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = BaseRecord::<str, str>::to(topic)
            .payload(&m.value)
            .headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k);
        }
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("every message delivered");
}

/// Reads `topic` from the beginning of every partition until `n` messages arrived (and then
/// whatever else is there), as (partition, message) in each partition's order.
fn consume(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<(i32, Msg)> {
    let c: BaseConsumer = config(brokers)
        .set("group.id", "orbit-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_since: Option<Instant> = None;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.partition(),
                    Msg {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: String::from_utf8_lossy(m.payload().unwrap_or_default())
                            .into_owned(),
                        headers,
                    },
                ));
            }
            Some(Err(e)) => panic!("consumer: {e}"),
            None => {
                // Enough, and nothing more for a second: the topic is read.
                if out.len() >= n {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        return out;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "read {} of {n} messages from {topic} before the deadline",
            out.len()
        );
    }
}

/// The sum of the group's committed offsets on `topic`.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = config(brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// A broker whose topic `in` (with `partitions`) holds `msg(0..n)`.
fn broker_with_input(partitions: i32, n: usize) -> (Tansu, String) {
    let broker = Tansu::start();
    let b = broker.brokers();
    create_topic(&b, "in", partitions);
    produce(&b, "in", (0..n).map(msg));
    (broker, b)
}

fn msg(i: usize) -> Msg {
    Msg {
        key: Some(format!("k{}", i % 97)),
        value: format!(r#"{{"id":{i},"pad":"{}"}}"#, "x".repeat(i % 13)),
        headers: vec![
            ("trace".to_string(), format!("t-{i}")),
            ("kind".to_string(), "test".to_string()),
        ],
    }
}

/// The envelope lines the file sink writes, back to messages.
fn from_envelopes(lines: &[String]) -> Vec<Msg> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("envelope JSON");
            let mut headers: Vec<(String, String)> = v["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            headers.sort();
            Msg {
                key: v["key"].as_str().map(str::to_string),
                value: v["value"].as_str().unwrap().to_string(),
                headers,
            }
        })
        .collect()
}

fn sorted_headers(mut m: Msg) -> Msg {
    m.headers.sort();
    m
}

fn kafka_to_file(name: &str, brokers: &str, topic: &str, group: &str, extra: &str) -> String {
    format!(
        "name: {name}\n\
         source:\n  plugin: kafka\n  config:\n    brokers: \"{brokers}\"\n    topic: {topic}\n    group: {group}\n    commit_interval: 500ms\n{extra}\
         sink:\n  plugin: file\n  config: {{ path: out.jsonl, format: envelope }}\n"
    )
}

/// A topic template that renders to a name Kafka refuses dead-letters that record (instead of
/// retrying it for ever) and the others reach their topics.
#[test]
fn a_template_rendering_an_invalid_topic_name_dead_letters_that_record() {
    let _g = serial();
    let broker = Tansu::start();
    let s = Scratch::new();
    let statuses = ["paid", "shipped", "not valid!", "paid", "shipped"];
    let input: String = statuses
        .iter()
        .enumerate()
        .map(|(n, st)| format!("{}\n", serde_json::json!({ "n": n, "status": st })))
        .collect();
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        &format!(
            "name: to-kafka\n\
             source: {{ plugin: file, config: {{ path: in.jsonl }} }}\n\
             sink:\n  plugin: kafka\n  config:\n    brokers: \"{}\"\n    topic: \"orders.{{status}}\"\n    \
             create_topic: {{ partitions: 1 }}\n\
             errors: {{ tolerance: all, dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl, format: envelope }} }} }}\n",
            broker.brokers()
        ),
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let v: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert_eq!(v["headers"]["orbit.dlq.plugin"], "kafka", "{v}");
    assert_eq!(v["headers"]["orbit.dlq.error_kind"], "rejected", "{v}");
    let error = v["headers"]["orbit.dlq.error"].as_str().unwrap();
    assert!(
        error.contains("`orders.not valid!`, not a valid Kafka topic name"),
        "{error}"
    );
    for (topic, want) in [("orders.paid", [0u64, 3]), ("orders.shipped", [1, 4])] {
        let mut got: Vec<u64> = consume(&broker.brokers(), topic, 2, Duration::from_secs(30))
            .into_iter()
            .map(|(_, m)| {
                serde_json::from_str::<serde_json::Value>(&m.value).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{topic}");
    }
}

#[test]
fn file_to_kafka_publishes_200k_with_keys_and_headers() {
    let _g = serial();
    let broker = Tansu::start();
    let s = Scratch::new();
    const N: usize = 200_000;
    let mut input = String::new();
    for i in 0..N {
        let m = msg(i);
        let headers: serde_json::Map<String, serde_json::Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        input.push_str(
            &serde_json::json!({ "key": m.key, "value": m.value, "headers": headers }).to_string(),
        );
        input.push('\n');
    }
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        &format!(
            "name: to-kafka\n\
             source: {{ plugin: file, config: {{ path: in.jsonl, format: envelope }} }}\n\
             sink:\n  plugin: kafka\n  config:\n    brokers: \"{}\"\n    topic: out\n    \
             create_topic: {{ partitions: 3 }}\n    compression: lz4\n",
            broker.brokers()
        ),
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let got = consume(&broker.brokers(), "out", N, Duration::from_secs(120));
    assert_eq!(
        got.len(),
        N,
        "exactly the input, no duplicates on a clean run"
    );
    let mut got: Vec<Msg> = got.into_iter().map(|(_, m)| sorted_headers(m)).collect();
    let mut want: Vec<Msg> = (0..N).map(|i| sorted_headers(msg(i))).collect();
    got.sort();
    want.sort();
    assert!(got == want, "contents, keys and headers equal");
}

#[test]
fn kafka_to_file_delivers_200k_with_keys_and_headers() {
    let _g = serial();
    const N: usize = 200_000;
    let (_broker, b) = broker_with_input(3, N);

    let s = Scratch::new();
    let stats = "    properties: { statistics.interval.ms: \"300\" }\n";
    s.write(
        "p.yaml",
        &kafka_to_file("from-kafka", &b, "in", "g1", stats),
    );
    let mut host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    let admin = orbit_e2e::admin::Admin::from_log(&s, "host.log");
    wait_for("200,000 lines", Duration::from_secs(180), || {
        s.lines("out.jsonl").len() >= N
    });
    // The source's consumer lag (a plugin metric from librdkafka's statistics, under the
    // stage's labels, per partition) comes down to 0 once everything is delivered.
    let lags = |m: &orbit_e2e::admin::Metrics| -> Vec<Option<f64>> {
        (0..3)
            .map(|p| {
                let p = p.to_string();
                let labels = [
                    ("pipeline", "from-kafka"),
                    ("component_id", "source"),
                    ("component_kind", "source"),
                    ("component_type", "kafka"),
                    ("topic", "in"),
                    ("partition", p.as_str()),
                ];
                m.value("orbit_plugin_kafka_consumer_lag", &labels)
            })
            .collect()
    };
    wait_for_explained(
        "orbit_plugin_kafka_consumer_lag to be 0 on the 3 partitions",
        Duration::from_secs(30),
        || lags(&admin.metrics()) == vec![Some(0.0); 3],
        || format!("{:?}", lags(&admin.metrics())),
    );
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());

    let mut got = from_envelopes(&s.lines("out.jsonl"));
    let mut want: Vec<Msg> = (0..N).map(|i| sorted_headers(msg(i))).collect();
    assert_eq!(got.len(), N, "no duplicates on a clean run");
    got.sort();
    want.sort();
    assert!(got == want, "contents, keys and headers equal");
    // The group's offsets were committed at the end: up to the end of every partition, that is
    // one past the last record delivered in each.
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for l in s.lines("out.jsonl") {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let offset = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["offset"].as_str().unwrap(),
        )
        .unwrap();
        let o = i64::from_be_bytes(offset.try_into().unwrap());
        let e = last.entry(v["partition"].as_i64().unwrap()).or_insert(-1);
        *e = (*e).max(o);
    }
    let next: i64 = last.values().map(|o| o + 1).sum();
    assert_eq!(
        committed(&b, "g1", "in", 3),
        next,
        "committed = last delivered + 1 per partition {last:?}; watermarks sum {}",
        end_offsets(&b, "in")
    );
}

#[test]
fn kafka_json_kafka_keeps_order_within_each_partition() {
    let _g = serial();
    let broker = Tansu::start();
    let b = broker.brokers();
    create_topic(&b, "in", 3);
    create_topic(&b, "out", 3);
    const KEYS: usize = 30;
    const PER_KEY: usize = 2_000;
    produce(
        &b,
        "in",
        (0..PER_KEY).flat_map(|seq| {
            (0..KEYS).map(move |k| Msg {
                key: Some(format!("key-{k}")),
                value: format!(r#"{{"k":{k},"seq":{seq}}}"#),
                headers: vec![],
            })
        }),
    );
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: relay\n\
             source: {{ plugin: kafka, config: {{ brokers: \"{b}\", topic: in, group: relay }} }}\n\
             transforms:\n  - plugin: json\n    config: {{ set: {{ relayed: true }} }}\n\
             sink: {{ plugin: kafka, config: {{ brokers: \"{b}\", topic: out }} }}\n"
        ),
    );
    let mut host = s.spawn(&["p.yaml"]);
    let got = consume(&b, "out", KEYS * PER_KEY, Duration::from_secs(180));
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());

    assert_eq!(got.len(), KEYS * PER_KEY);
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (p, m) in &got {
        let v: serde_json::Value = serde_json::from_str(&m.value).unwrap();
        assert_eq!(v["relayed"], true, "the transform ran: {}", m.value);
        let key = m.key.clone().unwrap();
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*p),
            *p,
            "one key, one partition"
        );
        let expected = next.entry(key.clone()).or_insert(0);
        assert_eq!(
            v["seq"].as_u64().unwrap(),
            *expected,
            "order of {key} in partition {p}"
        );
        *expected += 1;
    }
    assert_eq!(next.len(), KEYS);
    let partitions: HashSet<i32> = partition_of.values().copied().collect();
    assert_eq!(
        partitions.len(),
        3,
        "the keys spread over the three partitions"
    );
}

/// The sink keeps several batches in flight (`max_in_flight: 8`): each key's records still
/// land in their partition in order, once each.
#[test]
fn kafka_sink_keeps_each_partition_in_order_with_batches_in_flight() {
    let _g = serial();
    let broker = Tansu::start();
    let b = broker.brokers();
    create_topic(&b, "out", 3);
    const KEYS: usize = 30;
    const PER_KEY: usize = 2_000;
    let mut input = String::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            input.push_str(&format!("{{\"k\":\"key-{k}\",\"seq\":{seq}}}\n"));
        }
    }
    let s = Scratch::new();
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        &format!(
            "name: window\n\
             source: {{ plugin: file, config: {{ path: in.jsonl }} }}\n\
             sink:\n  plugin: kafka\n  max_in_flight: 8\n  config:\n    brokers: \"{b}\"\n    \
             topic: out\n    key_field: k\n    linger: 20ms\n\
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

    let got = consume(&b, "out", KEYS * PER_KEY, Duration::from_secs(120));
    assert_eq!(got.len(), KEYS * PER_KEY, "no duplicates on a clean run");
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (p, m) in &got {
        let v: serde_json::Value = serde_json::from_str(&m.value).unwrap();
        let key = m.key.clone().unwrap();
        assert_eq!(v["k"], key.as_str(), "the key is the value's `k`");
        assert_eq!(*partition_of.entry(key.clone()).or_insert(*p), *p);
        let expected = next.entry(key.clone()).or_insert(0);
        assert_eq!(
            v["seq"].as_u64().unwrap(),
            *expected,
            "order of {key} in partition {p}"
        );
        *expected += 1;
    }
    assert_eq!(next.len(), KEYS);
}

#[test]
fn sigkill_then_restart_delivers_everything_duplicates_only_past_the_commit() {
    let _g = serial();
    const N: usize = 100_000;
    let (broker, b) = broker_with_input(2, N);
    let s = Scratch::new();
    // A slow sink (rate limit) so the kill lands mid-run. The killed member never leaves the
    // group: the restarted one is assigned its partitions once the broker expires it, after
    // `session.timeout.ms` (librdkafka's default, 45 s, made the wait below race it).
    s.write(
        "p.yaml",
        &(kafka_to_file(
            "crash",
            &b,
            "in",
            "g-crash",
            "    properties: { session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" }\n",
        ) + "  policy: { rate_limit: { records_per_second: 20000 } }\n"),
    );
    let mut host = s.spawn_logged(&["p.yaml"], "first.log");
    wait_for("a third of the records", Duration::from_secs(120), || {
        s.lines("out.jsonl").len() >= N / 3
    });
    signal(&host, libc::SIGKILL);
    wait_exit(&mut host, Duration::from_secs(10));
    let at_kill = s.lines("out.jsonl").len();
    let committed_at_kill = committed(&b, "g-crash", "in", 2);
    assert!(at_kill < N, "the kill landed mid-run ({at_kill} lines)");
    assert!(
        committed_at_kill < N as i64,
        "everything was committed before the kill ({committed_at_kill})"
    );
    // Every line written before the kill is a whole record of the input.
    let want: HashSet<Msg> = (0..N).map(|i| sorted_headers(msg(i))).collect();
    for m in from_envelopes(&s.lines("out.jsonl")) {
        assert!(want.contains(&m), "not a record of the input: {m:?}");
    }
    assert!(
        committed_at_kill > 0,
        "offsets were committed during the run (every 500ms)"
    );

    let mut host = s.spawn_logged(&["p.yaml"], "second.log");
    let expected = N + at_kill - committed_at_kill as usize;
    wait_for_explained(
        "every record after the restart",
        Duration::from_secs(180),
        || s.lines("out.jsonl").len() >= expected,
        || {
            let broker_log = broker.log_text();
            let tail: Vec<&str> = broker_log.lines().rev().take(30).collect();
            format!(
                "{} of {expected} lines\nhost:\n{}\nbroker:\n{}",
                s.lines("out.jsonl").len(),
                s.tail("second.log", 40),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        },
    );
    signal(&host, libc::SIGTERM);
    let status = wait_exit(&mut host, Duration::from_secs(30));
    assert!(status.success(), "{}", s.tail("second.log", 40));

    let got = from_envelopes(&s.lines("out.jsonl"));
    let distinct: HashSet<Msg> = got.iter().cloned().collect();
    assert_eq!(distinct.len(), N, "every record of the input topic");
    assert!(distinct == want, "exactly the input's records, by value");
    let duplicates = got.len() - N;
    // Re-read: exactly what was written after the last commit before the kill.
    assert!(
        duplicates as i64 <= at_kill as i64 - committed_at_kill,
        "{duplicates} duplicates; uncommitted window was {}",
        at_kill as i64 - committed_at_kill
    );
}

/// Scale-out through Kafka's group protocol. Against Kafka, a member killed without leaving
/// loses its partitions after `session.timeout.ms`. tansu 0.6.0 keeps a dead member's
/// assignment until the group changes again, so here the killed host is restarted (as a
/// supervisor would) and the survivor takes over through a graceful leave.
#[test]
fn two_hosts_share_the_partitions_and_take_over_from_each_other() {
    let _g = serial();
    const N: usize = 40_000;
    let (_broker, b) = broker_with_input(4, N);
    let pipeline = |out: &str| {
        format!(
            "name: shared\n\
             source:\n  plugin: kafka\n  config:\n    brokers: \"{b}\"\n    topic: in\n    group: shared\n    \
             commit_interval: 200ms\n    properties: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" }}\n  \
             policy: {{ rate_limit: {{ records_per_second: 1000 }} }}\n\
             sink: {{ plugin: file, config: {{ path: {out}, format: envelope }} }}\n"
        )
    };
    let s = Scratch::new();
    s.write("a.yaml", &pipeline("a.jsonl"));
    s.write("b.yaml", &pipeline("b.jsonl"));
    // Each host keeps its own state directory, as two machines would.
    let mut a = s.spawn_logged_in("a-state", &["a.yaml"], "a.log");
    wait_for("host A to receive records", Duration::from_secs(60), || {
        !s.lines("a.jsonl").is_empty()
    });
    let mut b_host = s.spawn_logged_in("b-state", &["b.yaml"], "b.log");
    wait_for("host B to receive records", Duration::from_secs(90), || {
        !s.lines("b.jsonl").is_empty()
    });
    let partitions = |file: &str| -> BTreeMap<i64, usize> {
        let mut m = BTreeMap::new();
        for l in s.lines(file) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            *m.entry(v["partition"].as_i64().unwrap()).or_insert(0) += 1;
        }
        m
    };
    // Both hosts read, from different partitions.
    let (a_before, b_before) = (s.lines("a.jsonl").len(), s.lines("b.jsonl").len());
    wait_for(
        "both hosts to make progress",
        Duration::from_secs(60),
        || s.lines("a.jsonl").len() > a_before + 100 && s.lines("b.jsonl").len() > b_before + 100,
    );

    // Kill A outright; its replacement resumes A's partitions from the committed offsets.
    signal(&a, libc::SIGKILL);
    wait_exit(&mut a, Duration::from_secs(10));
    let mut a = s.spawn_logged_in("a-state", &["a.yaml"], "a2.log");
    let a_after_kill = s.lines("a.jsonl").len();
    wait_for("the restarted A to resume", Duration::from_secs(90), || {
        s.lines("a.jsonl").len() > a_after_kill + 100
    });
    // A leaves the group; B takes every partition and finishes the topic.
    signal(&a, libc::SIGTERM);
    let status = wait_exit(&mut a, Duration::from_secs(30));
    assert!(
        status.success(),
        "the restarted A exited with {status} on SIGTERM; its log ends:\n{}",
        s.tail("a2.log", 40)
    );
    let all = || {
        let mut lines = s.lines("a.jsonl");
        lines.extend(s.lines("b.jsonl"));
        from_envelopes(&lines).into_iter().collect::<HashSet<Msg>>()
    };
    wait_for(
        "every record across both hosts",
        Duration::from_secs(180),
        || all().len() >= N,
    );
    signal(&b_host, libc::SIGTERM);
    let status = wait_exit(&mut b_host, Duration::from_secs(30));
    assert!(status.success(), "{}", s.tail("b.log", 40));
    let want: HashSet<Msg> = (0..N).map(|i| sorted_headers(msg(i))).collect();
    assert!(all() == want);
    assert!(
        !s.path(".orbit").exists(),
        "a host used the shared default state directory"
    );
    let (pa, pb) = (partitions("a.jsonl"), partitions("b.jsonl"));
    assert_eq!(pb.len(), 4, "B ended up reading every partition: {pb:?}");
    assert!(pa.len() < 4, "A had only part of the topic: {pa:?}");
}

#[test]
fn unreachable_brokers_fail_clearly_within_the_timeout() {
    build_workspace();
    let s = Scratch::new();
    let port = free_port();
    for (name, yaml) in [
        (
            "sink",
            format!(
                "name: bad\nsource: {{ plugin: generate, config: {{ count: 10 }} }}\n\
                 sink:\n  plugin: kafka\n  config: {{ brokers: \"127.0.0.1:{port}\", topic: t, connect_timeout: 2s }}\n  \
                 policy: {{ retry: {{ max_attempts: 2, initial_backoff: 10ms }} }}\n"
            ),
        ),
        (
            "source",
            format!(
                "name: bad\n\
                 source:\n  plugin: kafka\n  config: {{ brokers: \"127.0.0.1:{port}\", topic: t, group: g, connect_timeout: 2s }}\n  \
                 policy: {{ retry: {{ max_attempts: 2, initial_backoff: 10ms }} }}\n\
                 sink: {{ plugin: blackhole }}\n"
            ),
        ),
    ] {
        s.write("p.yaml", &yaml);
        let started = Instant::now();
        let out = s.run(&["p.yaml"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert!(
            err.contains(&format!("cannot reach the Kafka brokers `127.0.0.1:{port}` within 2s")),
            "{name}: {err}"
        );
    }
}

#[test]
fn bad_kafka_options_are_config_errors_at_validate() {
    let s = Scratch::new();
    for (config, key) in [
        (
            "{ brokers: \"b:1\", topic: t, partitioner: nope }",
            "partitioner",
        ),
        ("{ brokers: \"b:1\", topic: t, acks: \"1\" }", "acks"),
        (
            "{ brokers: \"b:1\", topic: t, properties: { enable.auto.commit: \"true\" } }",
            "properties.enable.auto.commit",
        ),
        (
            "{ brokers: \"b:1\", topic: t, properties: { no.such.thing: \"1\" } }",
            "no.such.thing",
        ),
    ] {
        s.write(
            "p.yaml",
            &format!(
                "name: v\nsource: {{ plugin: generate, config: {{ count: 1 }} }}\nsink: {{ plugin: kafka, config: {config} }}\n"
            ),
        );
        let out = s.run(&["validate", "p.yaml"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains("p.yaml:3:"), "points at the line: {err}");
    }
}

/// The sum of the partitions' high watermarks (the offsets a fully caught-up group commits).
fn end_offsets(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = config(brokers).create().unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .unwrap()
                .1
        })
        .sum()
}

/// How many records `topic` holds (0 while it does not exist), from its watermarks.
fn count_in(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = config(brokers).create().unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter_map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .ok()
        })
        .map(|(low, high)| high - low)
        .sum()
}

/// Reads the whole topic, or nothing if it does not exist.
fn seqs_in(brokers: &str, topic: &str, at_least: usize) -> HashSet<u64> {
    consume(brokers, topic, at_least, Duration::from_secs(60))
        .into_iter()
        .map(|(_, m)| {
            let v: serde_json::Value = serde_json::from_str(&m.value).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn broker_replaced_mid_run_breaker_and_retries_ride_it_out() {
    let _g = serial();
    let mut broker = Tansu::start();
    let b = broker.brokers();
    const N: u64 = 30_000;
    let s = Scratch::new();
    s.write(
        "p.yaml",
        &format!(
            "name: outage\n\
             source: {{ plugin: generate, config: {{ count: {N}, rate: 3000 }} }}\n\
             sink:\n  plugin: kafka\n  config:\n    brokers: \"{b}\"\n    topic: out\n    \
             create_topic: {{ partitions: 1 }}\n    delivery_timeout: 2s\n    connect_timeout: 2s\n  \
             policy:\n    retry: {{ initial_backoff: 100ms, max_backoff: 1s }}\n    \
             circuit_breaker: {{ failure_threshold: 3, open_for: 2s }}\n\
             batch: {{ max_records: 200 }}\n"
        ),
    );
    // Logs go to a file: a 20 s outage writes more than a pipe holds.
    let mut host = s.spawn_logged(&["p.yaml"], "host.log");
    let mut seen_old: HashSet<u64> = HashSet::new();
    wait_for(
        "a quarter of the records on the first broker",
        Duration::from_secs(60),
        || count_in(&b, "out") >= N as i64 / 4,
    );
    // Freeze the host so that what the first broker holds stops changing, read all of it with
    // the independent client, then take the broker away and let the host run on without it.
    signal(&host, libc::SIGSTOP);
    seen_old.extend(seqs_in(&b, "out", 1));
    // The broker goes away mid-stream: part of the records are on it, not all.
    assert!(
        !seen_old.is_empty() && (seen_old.len() as u64) < N,
        "{} of {N} records on the first broker at the outage",
        seen_old.len()
    );
    broker.stop();
    signal(&host, libc::SIGCONT);
    let down_since = Instant::now();
    // The outage lasts 20 s, then a fresh broker (empty) comes up on the same port.
    while down_since.elapsed() < Duration::from_secs(20) {
        assert!(
            host.try_wait().unwrap().is_none(),
            "the host rode out the outage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _fresh = Tansu::start_on(broker.port);
    let up_since = Instant::now();
    let status = loop {
        if let Some(status) = host.try_wait().unwrap() {
            break status;
        }
        if up_since.elapsed() > Duration::from_secs(120) {
            let _ = host.kill();
            panic!(
                "the host did not finish within 120 s of the new broker; its log ends:\n{}",
                s.tail("host.log", 60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "finished {:?} after the new broker came up",
        up_since.elapsed()
    );
    let err = std::fs::read_to_string(s.path("host.log")).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("circuit breaker opened"), "{err}");
    assert!(err.contains("circuit breaker closed"), "{err}");
    let summary = finished_once(&err);
    assert!(
        summary.records_in == N && summary.written >= N,
        "{summary:?}: {err}"
    );

    let seen_new = seqs_in(&b, "out", 1);
    let missing: Vec<u64> = (0..N)
        .filter(|i| !seen_old.contains(i) && !seen_new.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records lost, first {:?} (old broker had {}, new has {})",
        missing.len(),
        &missing[..missing.len().min(10)],
        seen_old.len(),
        seen_new.len()
    );
}

#[test]
fn a_stalled_sink_pauses_the_partitions_and_resuming_loses_nothing() {
    let _g = serial();
    const N: usize = 5_000;
    let (_broker, b) = broker_with_input(2, N);
    let s = Scratch::new();
    // The sink fails its first three calls, each asking for 1 s: the host stops polling for
    // about 3 s, longer than `pause_after`.
    s.write(
        "p.yaml",
        &format!(
            "name: stall\n\
             source:\n  plugin: kafka\n  config: {{ brokers: \"{b}\", topic: in, group: stall, buffer: 50, pause_after: 1s }}\n\
             sink:\n  plugin: chaos\n  config: {{ path: out.txt, fail_calls: 3, retry_after: 1s }}\n\
             batch: {{ max_records: 100 }}\n"
        ),
    );
    let mut host = s.spawn_logged(&["p.yaml"], "host.log");
    wait_for("every record", Duration::from_secs(120), || {
        s.lines("out.txt").len() >= N
    });
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());
    let err = std::fs::read_to_string(s.path("host.log")).unwrap();
    assert!(err.contains("partitions paused"), "{err}");
    assert!(err.contains("partitions resumed"), "{err}");
    let got = s.lines("out.txt");
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), N, "every record after the pause");
    assert_eq!(got.len(), N, "a pause re-reads nothing");
    let want: Vec<String> = (0..N).map(|i| msg(i).value).collect();
    assert!(
        distinct == want.iter().collect::<HashSet<&String>>(),
        "exactly the input's values"
    );
}

/// Two pipelines in one host, one whose Kafka brokers are down at start: the host serves,
/// /ready names the bad one, the healthy one keeps writing, and with `restart: { on_failure:
/// true }` the bad one recovers once its broker comes up.
#[test]
fn a_pipeline_whose_broker_is_down_recovers_when_it_comes_up_while_another_runs() {
    let _serial = serial();
    build_workspace();
    let s = Scratch::new();
    let port = free_port();
    s.write(
        "gen.yaml",
        "name: gen\nsource: { plugin: generate, config: { rate: 2000 } }\n\
         sink: { plugin: file, config: { path: gen.jsonl } }\n",
    );
    s.write(
        "bad.yaml",
        &format!(
            "name: bad\n\
             source:\n  plugin: kafka\n  config: {{ brokers: \"127.0.0.1:{port}\", topic: in, group: g, connect_timeout: 1s }}\n  \
             policy: {{ retry: {{ max_attempts: 2, initial_backoff: 10ms }} }}\n\
             sink: {{ plugin: file, config: {{ path: out.jsonl, format: envelope }} }}\n\
             restart: {{ on_failure: true, backoff: 200ms, max_backoff: 1s }}\n"
        ),
    );
    let mut host = KillOnDrop(s.spawn_logged(&["gen.yaml", "bad.yaml"], "host.log"));
    let admin = orbit_e2e::admin::Admin::from_log(&s, "host.log");
    admin.wait_state("gen", "RUNNING", Duration::from_secs(60));
    assert_eq!(admin.get("/health").status, 200);
    wait_for_explained(
        "the bad pipeline to fail and be restarted",
        Duration::from_secs(60),
        || admin.get("/pipelines/bad/status").json()["restarts"].as_u64() >= Some(1),
        || s.tail("host.log", 20),
    );
    let ready = admin.get("/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let not_ready = ready.json()["not_ready"].clone();
    assert_eq!(not_ready.as_array().map(Vec::len), Some(1), "{not_ready}");
    assert_eq!(not_ready[0]["name"], "bad", "{not_ready}");
    let states = admin.get("/pipelines").json();
    assert_eq!(states[0]["name"], "bad");
    assert!(
        ["STARTING", "RESTARTING", "FAILED"].contains(&states[0]["state"].as_str().unwrap()),
        "{states}"
    );
    assert_eq!(
        states[1],
        serde_json::json!({"name": "gen", "state": "RUNNING"})
    );
    let written = s.lines("gen.jsonl").len();
    wait_for(
        "the healthy pipeline to keep writing",
        Duration::from_secs(30),
        || s.lines("gen.jsonl").len() > written + 100,
    );

    let broker = Tansu::start_on(port);
    let b = broker.brokers();
    create_topic(&b, "in", 1);
    produce(&b, "in", (0..50).map(msg));
    admin.wait_state("bad", "RUNNING", Duration::from_secs(60));
    wait_for_explained(
        "the recovered pipeline to deliver",
        Duration::from_secs(60),
        || s.lines("out.jsonl").len() >= 50,
        || s.tail("host.log", 20),
    );
    assert_eq!(
        from_envelopes(&s.lines("out.jsonl")),
        (0..50).map(msg).map(sorted_headers).collect::<Vec<_>>()
    );
    wait_for("ready", Duration::from_secs(30), || {
        admin.get("/ready").status == 200
    });
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, Duration::from_secs(60)).success());
}
