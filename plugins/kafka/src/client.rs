//! What source and sink share: brokers, security, pass-through librdkafka properties, error
//! classification, and keeping secrets out of logs.

use std::collections::BTreeMap;
use std::time::Duration;

use orbit_plugin_api::{ConfigError, PluginError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use serde::Deserialize;

/// `brokers: "a:9092,b:9092"` or `brokers: [a:9092, b:9092]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Brokers {
    One(String),
    Many(Vec<String>),
}

impl Brokers {
    pub fn joined(&self) -> String {
        match self {
            Brokers::One(s) => s.clone(),
            Brokers::Many(v) => v.join(","),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificate (PEM) to verify the brokers; the system's roots when absent.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub key_password: Option<String>,
    /// Verify the broker's host name against its certificate (on by default).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// The connection settings both components take (flattened into each config by hand: serde's
/// `flatten` does not combine with `deny_unknown_fields`).
pub struct Connection<'a> {
    pub brokers: &'a Brokers,
    pub sasl: &'a Option<Sasl>,
    pub tls: &'a Option<Tls>,
    pub properties: &'a BTreeMap<String, String>,
}

/// Properties Orbit sets itself; overriding them through `properties:` would break delivery.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    // Without success reports the sink could never tell a batch was delivered.
    "delivery.report.only.error",
    // Transactions are not what the sink does; it would wait on a transaction never committed.
    "transactional.id",
];

impl Connection<'_> {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.joined().trim().is_empty() {
            return Err(ConfigError::new(
                "brokers",
                "no brokers: give `host:port`, or a list of them",
            ));
        }
        for key in self.properties.keys() {
            if RESERVED.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    format!("properties.{key}"),
                    "Orbit sets this property itself; use the component's own option instead",
                ));
            }
        }
        if let Some(tls) = self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::new(
                    "tls",
                    "`cert_file` and `key_file` go together for mutual TLS",
                ));
            }
        }
        // Let librdkafka judge the properties now, so that a typo is a config error at start.
        let mut cfg = self.client_config();
        cfg.set("client.id", "orbit-validate");
        cfg.create::<rdkafka::producer::BaseProducer>()
            .map(drop)
            .map_err(|e| {
                ConfigError::new(
                    "properties",
                    format!("librdkafka refused: {}", scrub(&cfg, &e.to_string())),
                )
            })
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.brokers.joined());
        let protocol = match (self.sasl.is_some(), self.tls.is_some()) {
            (false, false) => None,
            (false, true) => Some("ssl"),
            (true, false) => Some("sasl_plaintext"),
            (true, true) => Some("sasl_ssl"),
        };
        if let Some(p) = protocol {
            cfg.set("security.protocol", p);
        }
        if let Some(s) = self.sasl {
            cfg.set("sasl.mechanism", s.mechanism.as_str());
            cfg.set("sasl.username", &s.username);
            cfg.set("sasl.password", &s.password);
        }
        if let Some(t) = self.tls {
            if let Some(ca) = &t.ca_file {
                cfg.set("ssl.ca.location", ca);
            }
            if let Some(c) = &t.cert_file {
                cfg.set("ssl.certificate.location", c);
            }
            if let Some(k) = &t.key_file {
                cfg.set("ssl.key.location", k);
            }
            if let Some(p) = &t.key_password {
                cfg.set("ssl.key.password", p);
            }
            if !t.verify_hostname {
                cfg.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        for (k, v) in self.properties {
            cfg.set(k, v);
        }
        cfg
    }
}

/// Whether a property's value must not be shown.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "key.pem",
        "credentials",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The effective properties for a log line, secrets masked.
pub fn describe(cfg: &ClientConfig) -> String {
    let map = cfg.config_map();
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| {
            if is_secret(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes secret values from an error text librdkafka may have echoed them into.
pub fn scrub(cfg: &ClientConfig, text: &str) -> String {
    let mut out = text.to_string();
    // `config_map` already hides the values rdkafka knows to be sensitive: read the real ones.
    for k in cfg.config_map().keys() {
        if let Some(v) = cfg.get(k).filter(|v| is_secret(k) && !v.is_empty()) {
            out = out.replace(v, "***");
        }
    }
    out
}

/// Waits for the cluster's metadata so that unreachable brokers, refused credentials or a
/// missing topic show at start with a clear message instead of as silent retries inside
/// librdkafka.
pub fn check_reachable<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    cfg: &ClientConfig,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<(), PluginError> {
    let brokers = cfg.get("bootstrap.servers").unwrap_or_default().to_string();
    let metadata = client.fetch_metadata(topic, timeout).map_err(|e| {
        let text = scrub(cfg, &e.to_string());
        let err = format!(
            "cannot reach the Kafka brokers `{brokers}` within {}: {text}; check `brokers`, that \
             the cluster is up, and the security settings",
            humantime::format_duration(timeout)
        );
        match e.rdkafka_error_code() {
            Some(code) if is_auth(code) => PluginError::config(err),
            _ => PluginError::retriable(err),
        }
    })?;
    if let Some(t) = topic {
        if let Some(mt) = metadata.topics().iter().find(|mt| mt.name() == t) {
            if let Some(e) = mt.error() {
                let code = RDKafkaErrorCode::from(e);
                return Err(PluginError::retriable(format!(
                    "topic `{t}` on `{brokers}`: {code}; create the topic (or set \
                     `create_topic` on the sink)"
                )));
            }
        }
    }
    Ok(())
}

pub fn is_auth(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
    )
}

/// A delivery or produce error as the host should treat it.
pub fn classify(e: &KafkaError, what: &str) -> PluginError {
    let message = format!("{what}: {e}");
    let Some(code) = e.rdkafka_error_code() else {
        return PluginError::retriable(message);
    };
    if is_auth(code) {
        return PluginError::config(format!(
            "{message}; check the credentials and the ACLs for this topic"
        ));
    }
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::InvalidMessage
        | RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::InvalidTimestamp
        | RDKafkaErrorCode::InvalidArgument
        | RDKafkaErrorCode::BadMessage => PluginError::rejected(message),
        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => {
            PluginError::retriable(format!(
                "{message}; create the topic, or set `create_topic` on the sink"
            ))
        }
        _ => PluginError::retriable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "b:9092");
        cfg.set("sasl.password", "hunter2");
        cfg.set("ssl.key.password", "k3y");
        let d = describe(&cfg);
        assert!(d.contains("bootstrap.servers=b:9092"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("k3y"), "{d}");
        assert_eq!(scrub(&cfg, "bad hunter2"), "bad ***");
    }

    #[test]
    fn reserved_and_bad_properties_are_config_errors() {
        let brokers = Brokers::One("127.0.0.1:9".into());
        let mut props = BTreeMap::new();
        props.insert("enable.auto.commit".to_string(), "true".to_string());
        let c = Connection {
            brokers: &brokers,
            sasl: &None,
            tls: &None,
            properties: &props,
        };
        assert_eq!(
            c.validate().unwrap_err().path.as_str(),
            "properties.enable.auto.commit"
        );
        let mut props = BTreeMap::new();
        props.insert("no.such.property".to_string(), "1".to_string());
        let c = Connection {
            properties: &props,
            ..c
        };
        let e = c.validate().unwrap_err();
        assert!(e.message.contains("no.such.property"), "{e}");
    }

    #[test]
    fn error_codes_decide_the_kind() {
        use orbit_plugin_api::ErrorKind;
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&too_large, "x").kind(), ErrorKind::Rejected);
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify(&timeout, "x").kind(), ErrorKind::Retriable);
        let auth = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(classify(&auth, "x").kind(), ErrorKind::Config);
    }
}
