//! The `kafka` source's configuration: the `config:` block ([`Config`], [`Start`]), its
//! checks, and the librdkafka consumer properties it becomes (group, offset storage, commit
//! interval, prefetch bound).

use std::collections::BTreeMap;
use std::time::Duration;

use orbit_plugin_api::ConfigError;
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::client::{Brokers, Connection, Sasl, Tls};

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
    /// Semantic checks for `validate`; connects nowhere.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.connection().validate()?;
        if self.topics().is_empty() {
            return Err(ConfigError::new(
                "topic",
                "name the topic to consume (`topic: orders`, or `topics: [a, b]`)",
            ));
        }
        if self.group.trim().is_empty() {
            return Err(ConfigError::new("group", "name the consumer group"));
        }
        ConfigError::check_range("buffer", self.buffer, 1..=1_000_000)?;
        Ok(())
    }

    pub(super) fn topics(&self) -> Vec<String> {
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

    pub(super) fn client_config(&self) -> ClientConfig {
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
            // Consumer lag for `/metrics` (orbit_plugin_kafka_consumer_lag).
            ("statistics.interval.ms", "10000"),
        ];
        for (k, v) in defaults {
            if !self.properties.contains_key(k) {
                cfg.set(k, v);
            }
        }
        cfg
    }
}
