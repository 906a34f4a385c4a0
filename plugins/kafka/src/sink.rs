//! `kafka` sink: produce a batch, wait for every delivery report.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orbit_plugin_api::{
    ConfigError, ErrorKind, PluginError, Record, Sink, SinkContext, Template, WriteOutcome,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::client::{self, Brokers, Connection, Sasl, Tls};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub enum Acks {
    #[default]
    #[serde(rename = "all")]
    All,
    #[serde(rename = "1")]
    Leader,
    #[serde(rename = "0")]
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    #[serde(default = "one")]
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub brokers: Brokers,
    /// Fixed (`orders`) or a template over the record (`{stream}`, `events-{tenant}`).
    pub topic: String,
    /// A dotted path into the JSON value whose value becomes the Kafka key; by default the
    /// record's own key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// librdkafka's partitioner: `murmur2_random` (Java client compatible, the default),
    /// `murmur2`, `consistent_random`, `consistent`, `fnv1a`, `fnv1a_random`, `random`.
    #[serde(default = "default_partitioner")]
    pub partitioner: String,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub acks: Acks,
    /// The idempotent producer: no duplicates from the producer's own retries.
    #[serde(default = "yes")]
    pub idempotent: bool,
    /// How long librdkafka may wait to fill a batch (`linger.ms`).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Largest request batch in bytes (`batch.size`).
    #[serde(default)]
    pub batch_size: Option<u64>,
    /// How long librdkafka tries one message before reporting it failed (`message.timeout.ms`);
    /// after that the host's retry policy takes over.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Create a missing topic with this many partitions and replicas.
    #[serde(default)]
    pub create_topic: Option<CreateTopic>,
    /// Adds an `orbit.position` header (`stream/partition/offset-hex` of the source record): a
    /// dedup key for consumers downstream.
    #[serde(default)]
    pub position_header: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Any other librdkafka producer property.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_partitioner() -> String {
    "murmur2_random".into()
}
fn default_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

const PARTITIONERS: &[&str] = &[
    "random",
    "consistent",
    "consistent_random",
    "murmur2",
    "murmur2_random",
    "fnv1a",
    "fnv1a_random",
];

impl Config {
    fn connection(&self) -> Connection<'_> {
        Connection {
            brokers: &self.brokers,
            sasl: &self.sasl,
            tls: &self.tls,
            properties: &self.properties,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut cfg = self.connection().client_config();
        let acks = match self.acks {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        };
        let compression = match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        };
        let mut defaults = ClientConfig::new();
        defaults
            .set("acks", acks)
            .set("enable.idempotence", self.idempotent.to_string())
            .set("partitioner", &self.partitioner)
            .set("compression.type", compression)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        if let Some(b) = self.batch_size {
            defaults.set("batch.size", b.to_string());
        }
        // The typed options first; `properties:` may still override them.
        for (k, v) in defaults.config_map() {
            if !self.properties.contains_key(k) {
                cfg.set(k, v);
            }
        }
        cfg
    }
}

/// One delivery report: the write it belongs to, the record's index in that batch, the result.
type Report = (u32, u32, Result<(), KafkaError>);

/// Delivery reports land here, tagged with the write they belong to.
#[derive(Default)]
pub struct Reports {
    results: Mutex<Vec<Report>>,
}

pub struct SinkContextImpl {
    reports: Reports,
}

impl ClientContext for SinkContextImpl {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ProducerContext for SinkContextImpl {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let generation = (opaque >> 32) as u32;
        let index = (opaque & 0xffff_ffff) as u32;
        let r = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        self.reports
            .results
            .lock()
            .expect("reports lock")
            .push((generation, index, r));
    }
}

type Producer_ = BaseProducer<SinkContextImpl>;

/// How long a write sleeps when a poll brought no delivery report.
const REPORT_WAIT: Duration = Duration::from_micros(200);

pub struct KafkaSink {
    config: Config,
    topic: Template,
    key_field: Option<Vec<String>>,
    client_config: ClientConfig,
    producer: Option<Producer_>,
    generation: u32,
    /// `message.timeout.ms` in effect (`delivery_timeout`, or a `properties:` override): how
    /// long librdkafka may hold a message before reporting it.
    delivery_timeout: Duration,
    /// Topics known to exist (created or checked), for `create_topic`.
    known_topics: HashSet<String>,
}

impl KafkaSink {
    fn producer(&mut self) -> Result<&Producer_, PluginError> {
        if self.producer.is_none() {
            // A new producer may face a new cluster (a broker replaced): check topics again.
            self.known_topics.clear();
            let producer: Producer_ = self
                .client_config
                .create_with_context(SinkContextImpl {
                    reports: Reports::default(),
                })
                .map_err(|e| {
                    PluginError::config(format!(
                        "cannot create the Kafka producer: {}",
                        client::scrub(&self.client_config, &e.to_string())
                    ))
                })?;
            let fixed = self.topic.as_static().map(str::to_string);
            client::check_reachable(
                producer.client(),
                &self.client_config,
                None,
                self.config.connect_timeout,
            )?;
            if let Some(t) = &fixed {
                if self.config.create_topic.is_some() {
                    self.ensure_topic(t)?;
                } else {
                    client::check_reachable(
                        producer.client(),
                        &self.client_config,
                        Some(t),
                        self.config.connect_timeout,
                    )?;
                }
            }
            tracing::info!(
                config = %client::describe(&self.client_config),
                "producer connected"
            );
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("just created"))
    }

    fn ensure_topic(&mut self, topic: &str) -> Result<(), PluginError> {
        let Some(create) = &self.config.create_topic else {
            return Ok(());
        };
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config
            .create()
            .map_err(|e| PluginError::retriable(format!("cannot create an admin client: {e}")))?;
        let new = NewTopic::new(
            topic,
            create.partitions,
            TopicReplication::Fixed(create.replication_factor),
        );
        // Bounded: with the cluster away the request would otherwise wait for it.
        let options = AdminOptions::new()
            .operation_timeout(Some(self.config.connect_timeout))
            .request_timeout(Some(self.config.connect_timeout));
        let results = block_on(admin.create_topics([&new], &options))
            .map_err(|e| PluginError::retriable(format!("cannot create topic `{topic}`: {e}")))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, partitions = create.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) if client::is_auth(code) => {
                    return Err(PluginError::config(format!(
                        "cannot create topic `{topic}`: {code}; grant the CREATE permission or \
                         create the topic yourself and remove `create_topic`"
                    )))
                }
                Err((
                    _,
                    code @ (RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::InvalidConfig),
                )) => {
                    return Err(PluginError::config(format!(
                        "cannot create topic `{topic}`: the cluster refused it ({code}); fix \
                         `create_topic` (partitions, replication_factor) or create the topic \
                         yourself"
                    )))
                }
                Err((_, code)) => {
                    return Err(PluginError::retriable(format!(
                        "cannot create topic `{topic}`: {code}"
                    )))
                }
            }
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    fn key<'r>(&self, r: &'r Record) -> Result<Option<std::borrow::Cow<'r, [u8]>>, String> {
        let Some(path) = &self.key_field else {
            return Ok(r.key().map(std::borrow::Cow::Borrowed));
        };
        let doc: serde_json::Value = serde_json::from_slice(r.value())
            .map_err(|e| format!("`key_field` needs a JSON value: {e}"))?;
        let v = orbit_plugin_api::template::field(&doc, path)
            .ok_or_else(|| format!("key field `{}` is missing", path.join(".")))?;
        Ok(Some(std::borrow::Cow::Owned(match v {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        })))
    }

    fn produce(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.producer()?;
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut outcome = WriteOutcome::ok();
        let mut failed = vec![false; batch.len()];
        let mut sent = 0usize;
        let deadline = Instant::now() + self.delivery_timeout + Duration::from_secs(5);
        // Topics from a template, resolved per record; created first when asked to.
        let topics: Vec<Result<String, String>> = batch
            .iter()
            .map(|r| {
                let t = self.topic.render(r).map_err(|e| format!("topic: {e}"))?;
                if self.topic.as_static().is_some() {
                    return Ok(t); // checked once, at validate
                }
                match topic_name_problem(&t) {
                    // Rejected here: the broker would refuse it for ever (retried in vain).
                    Some(problem) => Err(format!(
                        "the topic template gave `{t}`, not a valid Kafka topic name: it {problem}"
                    )),
                    None => Ok(t),
                }
            })
            .collect();
        if self.config.create_topic.is_some() {
            if let Some(t) = self.topic.as_static() {
                let t = t.to_string();
                self.ensure_topic(&t)?;
            } else {
                let distinct: HashSet<&String> = topics.iter().flatten().collect();
                for t in distinct {
                    self.ensure_topic(t)?;
                }
            }
        }
        let producer = self.producer.as_ref().expect("created above");
        for (i, r) in batch.iter().enumerate() {
            let topic = match &topics[i] {
                Ok(t) => t,
                Err(reason) => {
                    outcome.fail(i, PluginError::rejected(reason.clone()));
                    failed[i] = true;
                    continue;
                }
            };
            let key = match self.key(r) {
                Ok(k) => k,
                Err(reason) => {
                    outcome.fail(i, PluginError::rejected(reason));
                    failed[i] = true;
                    continue;
                }
            };
            let position;
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
            for h in r.headers.iter() {
                headers = headers.insert(Header {
                    key: h.name.as_str(),
                    value: Some(h.value.as_slice()),
                });
            }
            if self.config.position_header {
                position = r.position_id();
                headers = headers.insert(Header {
                    key: "orbit.position",
                    value: Some(position.as_bytes()),
                });
            }
            let opaque = ((generation as usize) << 32) | i;
            let mut record = BaseRecord::with_opaque_to(topic, opaque)
                .payload(r.value())
                .headers(headers);
            if let Some(k) = &key {
                record = record.key(k.as_ref());
            }
            if let Some(ts) = r.timestamp_ms.into_option() {
                record = record.timestamp(ts);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        // librdkafka's queue is full: serve delivery reports, then try again.
                        producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                    Err((e, _)) => {
                        outcome.fail(i, client::classify(&e, "cannot enqueue the message"));
                        failed[i] = true;
                        break;
                    }
                }
            }
        }
        // Send now, whatever `linger` says: the batch is complete. (`flush` with a zero timeout
        // only wakes the brokers; rdkafka's `flush` with a timeout polls in 100 ms steps.) Then
        // serve the reports without blocking, and sleep briefly when none came: rdkafka's
        // `poll(timeout)` always waits out its timeout and hands librdkafka the remaining time
        // in whole milliseconds, 0 below one, so a `poll(1 ms)` loop spun a core (41% of a
        // relay's CPU samples were its clock reads; docs/BENCHMARKS.md).
        let _ = producer.flush(Duration::ZERO);
        let reported = |p: &Producer_| {
            let results = p.context().reports.results.lock().expect("lock");
            results.iter().filter(|(g, _, _)| *g == generation).count()
        };
        while Instant::now() < deadline {
            let before = reported(producer);
            if before >= sent {
                break;
            }
            producer.poll(Duration::ZERO);
            if reported(producer) == before {
                std::thread::sleep(REPORT_WAIT);
            }
        }
        let mut reported = 0usize;
        let mut delivered = 0usize;
        let mut retriable_failures = 0usize;
        {
            let mut results = producer.context().reports.results.lock().expect("lock");
            for (g, i, r) in results.drain(..) {
                if g != generation {
                    continue; // a report for an earlier, abandoned write
                }
                reported += 1;
                match r {
                    Ok(()) => delivered += 1,
                    Err(e) => {
                        let i = i as usize;
                        let error = client::classify(&e, "delivery failed");
                        if error.kind() == ErrorKind::Retriable {
                            retriable_failures += 1;
                        }
                        outcome.fail(i, error);
                        failed[i] = true;
                    }
                }
            }
        }
        if delivered < reported {
            // Check the topics again on the next write (creating them if `create_topic` says
            // so): the cluster may have been replaced and the topic lost with it.
            self.known_topics.clear();
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(%code, reason, "fatal producer error; a new producer will be created");
            self.producer = None;
            if reported < sent {
                return Err(PluginError::retriable(format!(
                    "the producer failed fatally ({code}: {reason}); the batch will be retried \
                     with a new producer"
                )));
            }
        }
        if reported < sent {
            // Reports still missing after the deadline: whatever is outstanding is unknown.
            // Start over with a new producer so that its late reports cannot be confused.
            self.producer = None;
            return Err(PluginError::retriable(format!(
                "{} of {sent} messages had no delivery report within {}",
                sent - reported,
                humantime::format_duration(self.delivery_timeout)
            )));
        }
        if retriable_failures > 0 && delivered == 0 {
            // Nothing got through. Start the next write with a new producer: one that lived
            // through an outage can hold state the cluster no longer matches (a broker replaced
            // with empty storage: cached leader epochs, an idempotent producer id it does not
            // know), and then times out every message however long the cluster is back.
            self.producer = None;
        }
        Ok(outcome)
    }
}

/// The admin client's futures are driven by librdkafka's threads; a minimal executor waits.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// What is wrong with `name` as a Kafka topic name (Kafka's own rule: 1 to 249 characters of
/// ASCII letters, digits, `.`, `_` and `-`, and neither `.` nor `..`), if anything.
fn topic_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("cannot be `.` or `..`")
    } else if name.len() > 249 {
        Some("is longer than 249 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only hold ASCII letters, digits, `.`, `_` and `-`")
    } else {
        None
    }
}

impl Sink for KafkaSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.connection().validate()?;
        let topic = Template::parse("topic", &config.topic)?;
        if config.topic.trim().is_empty() {
            return Err(ConfigError::new("topic", "name the topic to write to"));
        }
        if let Some(problem) = topic.as_static().and_then(topic_name_problem) {
            return Err(ConfigError::new(
                "topic",
                format!(
                    "`{}` is not a valid Kafka topic name: it {problem}",
                    config.topic
                ),
            ));
        }
        if !PARTITIONERS.contains(&config.partitioner.as_str()) {
            return Err(ConfigError::new(
                "partitioner",
                format!(
                    "unknown partitioner; use one of {}",
                    PARTITIONERS.join(", ")
                ),
            ));
        }
        if config.idempotent && config.acks != Acks::All {
            return Err(ConfigError::new(
                "acks",
                "the idempotent producer needs `acks: all`; set `idempotent: false` to use fewer acks",
            ));
        }
        if let Some(c) = &config.create_topic {
            if c.partitions < 1 || c.replication_factor < 1 {
                return Err(ConfigError::new(
                    "create_topic",
                    "partitions and replication_factor must be at least 1",
                ));
            }
        }
        Ok(())
    }

    fn open(config: Config, _ctx: SinkContext) -> Result<Self, PluginError> {
        let topic = Template::parse("topic", &config.topic)?;
        let key_field = config
            .key_field
            .as_ref()
            .map(|k| k.split('.').map(str::to_string).collect());
        let client_config = config.client_config();
        let delivery_timeout = client_config
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(config.delivery_timeout);
        let mut sink = KafkaSink {
            config,
            topic,
            key_field,
            client_config,
            producer: None,
            generation: 0,
            delivery_timeout,
            known_topics: HashSet::new(),
        };
        // Connect now so that unreachable brokers show at start.
        sink.producer()?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.produce(batch)
    }

    fn close(&mut self) -> Result<(), PluginError> {
        if let Some(p) = self.producer.take() {
            let _ = p.flush(Duration::from_secs(5));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topic: &str) -> Config {
        serde_json::from_value(serde_json::json!({ "brokers": "127.0.0.1:9092", "topic": topic }))
            .expect("a valid config")
    }

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for good in ["orders", "orders.eu-1", "_internal", "a", &"x".repeat(249)] {
            assert_eq!(topic_name_problem(good), None, "{good}");
        }
        assert_eq!(topic_name_problem(""), Some("is empty"));
        assert!(topic_name_problem("..").unwrap().contains("`..`"));
        assert!(topic_name_problem(&"x".repeat(250))
            .unwrap()
            .contains("249"));
        for bad in ["orders eu", "orders/eu", "ordres!", "café"] {
            assert!(
                topic_name_problem(bad).unwrap().contains("ASCII letters"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_fixed_invalid_topic_is_a_config_error_and_a_template_is_checked_per_record() {
        let e = KafkaSink::validate(&config("my topic")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("topic") && text.contains("`my topic` is not a valid Kafka topic name"),
            "{text}"
        );
        // A template cannot be checked before it is rendered: validate accepts it.
        KafkaSink::validate(&config("orders.{status}")).unwrap();
    }
}
