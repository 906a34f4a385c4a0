//! The `rabbitmq` sink's config and the checks serde cannot express.

use std::time::Duration;

use orbit_plugin_api::{ConfigError, Template};
use serde::Deserialize;

use crate::connection::{validate_connection, Tls};

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Direct,
    Topic,
    Fanout,
    Headers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declare {
    #[serde(default)]
    pub(super) kind: Kind,
    #[serde(default = "yes")]
    pub(super) durable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `amqp://user:password@host:port/vhost` (or `amqps://`).
    pub(super) url: String,
    /// The exchange to publish to; empty for the default exchange (routing key = queue name).
    #[serde(default)]
    pub(super) exchange: String,
    /// Declare the exchange on connect.
    #[serde(default)]
    pub(super) declare: Option<Declare>,
    /// Template: `{stream}`, `{key}`, `{partition}`, or `{field.path}` from a JSON value.
    #[serde(default)]
    pub(super) routing_key: String,
    /// Messages published but not yet confirmed, at most.
    #[serde(default = "default_window")]
    pub(super) confirm_window: usize,
    /// delivery_mode 2 (survives a broker restart in a durable queue).
    #[serde(default = "yes")]
    pub(super) persistent: bool,
    /// Unroutable messages come back and are rejected records instead of vanishing.
    #[serde(default = "yes")]
    pub(super) mandatory: bool,
    #[serde(default)]
    pub(super) content_type: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(super) connect_timeout: Duration,
    /// User name and password, instead of in the URL (keeps the password out of the URL).
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password: Option<String>,
    /// TLS for `amqps://` (system roots are always trusted).
    #[serde(default)]
    pub(super) tls: Option<Tls>,
}

fn yes() -> bool {
    true
}
fn default_window() -> usize {
    1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Checks beyond serde; connects nowhere.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let config = self;
        validate_connection(
            &config.url,
            config.username.as_deref(),
            config.password.as_deref(),
            config.tls.as_ref(),
        )?;
        Template::parse("routing_key", &config.routing_key)?;
        ConfigError::check_range("confirm_window", config.confirm_window, 1..=1_000_000)?;
        if config.declare.is_some() && config.exchange.is_empty() {
            return Err(ConfigError::new(
                "declare",
                "the default exchange cannot be declared; name an `exchange`",
            ));
        }
        Ok(())
    }
}
