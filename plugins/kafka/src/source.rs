//! `kafka` source: a consumer group whose offsets move only for delivered records.
//!
//! A poll thread owns the consumer's fetch loop and hands records to `poll` through a bounded
//! channel. When the channel is full (the host is slower than Kafka) it stops taking records
//! from librdkafka, whose prefetch queue is bounded too. When the host takes nothing for
//! `pause_after` (a sink stuck behind its circuit breaker), it pauses the assigned partitions and
//! keeps calling `poll` on the consumer, so the group membership stays alive without buffering
//! more; it resumes them once the host has caught up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orbit_plugin_api::{
    ConfigError, PluginError, Position, Record, Source, SourceBatch, SourceContext,
};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::client::{self, Brokers, Connection, Sasl, Tls};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The group's committed offsets; where there are none, the oldest record.
    #[default]
    Earliest,
    /// The group's committed offsets; where there are none, only new records.
    Latest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub brokers: Brokers,
    /// One topic or a list.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    /// The consumer group (`group.id`). Hosts running the same pipeline with the same group
    /// share the topics' partitions.
    pub group: String,
    /// Where to start in a partition the group has no committed offset for.
    #[serde(default)]
    pub start: Start,
    /// How often delivered offsets are committed (`auto.commit.interval.ms`). Also committed on
    /// partition revocation and on close. After a crash, up to this much acknowledged work is
    /// read again.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Records fetched but not yet polled by the host, at most; beyond it the source pauses its
    /// partitions.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// When the host has taken nothing for this long, pause fetching (and keep the group
    /// membership alive) until it catches up. Keep it well below `max.poll.interval.ms`.
    #[serde(default = "default_pause_after", with = "humantime_serde")]
    pub pause_after: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Any other librdkafka consumer property.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_buffer() -> usize {
    10_000
}
fn default_pause_after() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    fn topics(&self) -> Vec<String> {
        self.topic
            .iter()
            .chain(self.topics.iter())
            .cloned()
            .collect()
    }

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
        cfg.set("group.id", &self.group)
            // librdkafka commits what was stored, and only acknowledged offsets are stored.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.as_millis().to_string(),
            );
        let defaults = [
            (
                "auto.offset.reset",
                match self.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            ),
            // Bound what librdkafka prefetches per partition (its default is 64 MB).
            ("queued.max.messages.kbytes", "16384"),
        ];
        for (k, v) in defaults {
            if !self.properties.contains_key(k) {
                cfg.set(k, v);
            }
        }
        cfg
    }
}

/// Logs rebalances and commits stored offsets before partitions are taken away.
pub struct GroupContext {
    rebalances: AtomicU64,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked; committing delivered offsets"
            );
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revocation");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = %parts.join(","), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

type Consumer_ = BaseConsumer<GroupContext>;

type Item = Result<Record, PluginError>;

pub struct KafkaSource {
    consumer: Arc<Consumer_>,
    rx: Receiver<Item>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    /// An error that arrived after records in the same poll; returned by the next poll.
    held: Option<PluginError>,
}

fn record(m: &BorrowedMessage<'_>) -> Record {
    let mut r = Record::new(m.payload().unwrap_or_default()).with_position(
        m.topic(),
        m.partition(),
        m.offset().to_be_bytes(),
    );
    if let Some(k) = m.key() {
        r = r.with_key(k);
    }
    if let Some(ts) = m.timestamp().to_millis() {
        r = r.with_timestamp_ms(ts);
    }
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            r.push_header(h.key, h.value.unwrap_or_default());
        }
    }
    r
}

/// Errors the consumer reports while it keeps going (a broker away, a partition moving) are
/// logged; the ones that will not heal by themselves stop the source.
fn consumer_error(e: KafkaError) -> Option<PluginError> {
    match e.rdkafka_error_code() {
        Some(code) if client::is_auth(code) => Some(PluginError::config(format!(
            "the Kafka consumer was refused: {e}; check the credentials and ACLs"
        ))),
        _ => {
            tracing::warn!(error = %e, "consumer error (librdkafka retries by itself)");
            None
        }
    }
}

struct Poller {
    consumer: Arc<Consumer_>,
    tx: SyncSender<Item>,
    stop: Arc<AtomicBool>,
    overflow: VecDeque<Item>,
    /// The rebalance count when the partitions were paused, if they are.
    paused_at: Option<u64>,
    /// Since when a record waits for room in the channel.
    waiting_since: Instant,
    pause_after: Duration,
}

impl Poller {
    fn set_paused(&mut self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "no assignment to pause or resume");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "cannot pause or resume partitions");
        }
        if pause {
            tracing::info!(
                waiting = self.overflow.len(),
                "the host took nothing for {}: partitions paused",
                humantime::format_duration(self.pause_after)
            );
            self.paused_at = Some(self.consumer.context().rebalances.load(Ordering::Relaxed));
        } else {
            tracing::info!("the host caught up: partitions resumed");
            self.paused_at = None;
        }
    }

    /// Hands waiting items to the host; false once the source is gone.
    fn drain(&mut self) -> bool {
        while let Some(item) = self.overflow.pop_front() {
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.overflow.push_front(item);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if !self.drain() {
                return;
            }
            if !self.overflow.is_empty() {
                // The host is behind. Wait for it without fetching more: librdkafka's own
                // prefetch is bounded (`queued.max.messages.kbytes`). If it stays behind for
                // `pause_after`, pause the partitions and keep polling so that the group
                // membership (`max.poll.interval.ms`) stays alive.
                if self.paused_at.is_none() && self.waiting_since.elapsed() < self.pause_after {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
                if self.paused_at != Some(rebalances) {
                    self.set_paused(true);
                }
            } else if self.paused_at.is_some() {
                self.set_paused(false);
            }
            let item = match self.consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Ok(m)) => Ok(record(&m)),
                Some(Err(e)) => match consumer_error(e) {
                    Some(e) => Err(e),
                    None => continue,
                },
            };
            if self.overflow.is_empty() {
                match self.tx.try_send(item) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(item)) => {
                        self.overflow.push_back(item);
                        self.waiting_since = Instant::now();
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            } else {
                self.overflow.push_back(item);
            }
        }
    }
}

impl Source for KafkaSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.connection().validate()?;
        if config.topics().is_empty() {
            return Err(ConfigError::new(
                "topic",
                "name the topic to consume (`topic: orders`, or `topics: [a, b]`)",
            ));
        }
        if config.group.trim().is_empty() {
            return Err(ConfigError::new("group", "name the consumer group"));
        }
        ConfigError::check_range("buffer", config.buffer, 1..=1_000_000)?;
        Ok(())
    }

    fn open(config: Config, _ctx: SourceContext) -> Result<Self, PluginError> {
        // Offsets live in Kafka (committed by the group), not in Orbit's offset file: with
        // several hosts in one group, only Kafka knows who read what.
        let cfg = config.client_config();
        let consumer: Consumer_ = cfg
            .create_with_context(GroupContext {
                rebalances: AtomicU64::new(0),
            })
            .map_err(|e| {
                PluginError::config(format!(
                    "cannot create the Kafka consumer: {}",
                    client::scrub(&cfg, &e.to_string())
                ))
            })?;
        let topics = config.topics();
        for t in &topics {
            client::check_reachable(consumer.client(), &cfg, Some(t), config.connect_timeout)?;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| PluginError::config(format!("cannot subscribe to {names:?}: {e}")))?;
        tracing::info!(
            topics = %names.join(","),
            group = %config.group,
            config = %client::describe(&cfg),
            "consumer subscribed"
        );
        let consumer = Arc::new(consumer);
        let (tx, rx) = sync_channel(config.buffer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            consumer: consumer.clone(),
            tx,
            stop: stop.clone(),
            overflow: VecDeque::new(),
            paused_at: None,
            waiting_since: Instant::now(),
            pause_after: config.pause_after,
        };
        let handle = std::thread::Builder::new()
            .name("orbit-kafka-poll".into())
            .spawn(move || poller.run())
            .map_err(|e| PluginError::fatal(format!("cannot start the poll thread: {e}")))?;
        Ok(KafkaSource {
            consumer,
            rx,
            stop,
            poller: Some(handle),
            held: None,
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        if let Some(e) = self.held.take() {
            return Err(e);
        }
        let mut batch = SourceBatch::with_capacity(max_records.min(4096));
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            let item = if batch.is_empty() {
                match self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(PluginError::fatal("the Kafka poll thread stopped"))
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            match item {
                Ok(r) => batch.push(r),
                Err(e) if batch.is_empty() => return Err(e),
                Err(e) => {
                    self.held = Some(e);
                    break;
                }
            }
        }
        Ok(batch)
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        for p in positions {
            let Ok(bytes) = <[u8; 8]>::try_from(p.offset.as_slice()) else {
                tracing::warn!(stream = %p.stream, "ignoring an offset that is not 8 bytes");
                continue;
            };
            let offset = i64::from_be_bytes(bytes);
            // librdkafka's `rd_kafka_offset_store` stores `offset + 1` (the next record to
            // read), which is what gets committed.
            if let Err(e) = self.consumer.store_offset(&p.stream, p.partition, offset) {
                // The partition moved to another member: it reads from the last commit.
                tracing::debug!(
                    topic = %p.stream,
                    partition = p.partition,
                    error = %e,
                    "offset not stored (partition no longer assigned)"
                );
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}
