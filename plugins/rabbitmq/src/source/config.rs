//! The `rabbitmq` source's configuration: the `config:` block ([`Config`], with the queue
//! declaration and bindings it may ask for) and its checks.

use std::time::Duration;

use orbit_plugin_api::ConfigError;
use serde::Deserialize;

use crate::connection::{validate_connection, Tls};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub(super) exchange: String,
    #[serde(default)]
    pub(super) routing_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareQueue {
    #[serde(default = "yes")]
    pub(super) durable: bool,
    #[serde(default)]
    pub(super) bindings: Vec<Binding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub(super) url: String,
    pub(super) queue: String,
    /// Declare the queue (and its bindings) on connect.
    #[serde(default)]
    pub(super) declare: Option<DeclareQueue>,
    /// Deliveries the broker sends ahead of acknowledgements; bounds the duplicate window.
    #[serde(default = "default_prefetch")]
    pub(super) prefetch: u16,
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
fn default_prefetch() -> u16 {
    2000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Semantic checks for `validate`; connects nowhere.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        validate_connection(
            &self.url,
            self.username.as_deref(),
            self.password.as_deref(),
            self.tls.as_ref(),
        )?;
        if self.queue.is_empty() {
            return Err(ConfigError::new("queue", "must not be empty"));
        }
        if self.prefetch == 0 {
            return Err(ConfigError::new("prefetch", "must be at least 1"));
        }
        Ok(())
    }
}
