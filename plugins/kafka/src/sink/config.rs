//! The `kafka` sink's config: its keys, the checks serde cannot express, the librdkafka
//! producer properties they become, and what `open` derives from them once ([`Settings`]).

use std::collections::BTreeMap;
use std::time::Duration;

use orbit_plugin_api::{ConfigError, PluginError, Template};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::client::{Brokers, Connection, Sasl, Tls};

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
    pub(super) fn connection(&self) -> Connection<'_> {
        Connection {
            brokers: &self.brokers,
            sasl: &self.sasl,
            tls: &self.tls,
            properties: &self.properties,
        }
    }

    pub(super) fn client_config(&self) -> ClientConfig {
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

    /// Checks beyond serde; connects nowhere.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let config = self;
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
}

/// What a sink instance works from: the config, and what is derived from it once.
pub(super) struct Settings {
    pub config: Config,
    pub topic: Template,
    /// `key_field` split into its path.
    pub key_field: Option<Vec<String>>,
    pub client_config: ClientConfig,
    /// `message.timeout.ms` in effect (`delivery_timeout`, or a `properties:` override): how
    /// long librdkafka may hold a message before reporting it.
    pub delivery_timeout: Duration,
}

impl Settings {
    pub(super) fn new(config: Config) -> Result<Self, PluginError> {
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
        Ok(Settings {
            config,
            topic,
            key_field,
            client_config,
            delivery_timeout,
        })
    }
}

/// What is wrong with `name` as a Kafka topic name (Kafka's own rule: 1 to 249 characters of
/// ASCII letters, digits, `.`, `_` and `-`, and neither `.` nor `..`), if anything.
pub(super) fn topic_name_problem(name: &str) -> Option<&'static str> {
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
        let e = config("my topic").check().unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("topic") && text.contains("`my topic` is not a valid Kafka topic name"),
            "{text}"
        );
        // A template cannot be checked before it is rendered: validate accepts it.
        config("orders.{status}").check().unwrap();
    }
}
