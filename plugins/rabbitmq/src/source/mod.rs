//! `rabbitmq` source: consume a queue; ack deliveries once the host delivered their records.
//!
//! This file holds the [`Source`] implementation (`open`, `poll`, `ack`, `close`), which runs
//! the async parts on the instance's [`Driver`]; `config` holds the configuration, `session`
//! the connection state and (re)connecting, `fetch` filling a batch from the consumer, and
//! `offsets` the positions (generation and delivery tag) and acknowledgements.

mod config;
mod fetch;
mod offsets;
mod session;

use std::time::Duration;

use orbit_plugin_api::{ConfigError, PluginError, Position, Source, SourceBatch, SourceContext};

use crate::connection::Endpoint;
use crate::driver::Driver;
use config::Config;
use session::Inner;

pub struct RabbitSource {
    inner: Inner,
    /// Declared last: dropped after the session that runs on it.
    driver: Driver,
}

impl Source for RabbitSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.validate()
    }

    fn open(config: Config, _ctx: SourceContext) -> Result<Self, PluginError> {
        // Stored offsets mean nothing here: the broker keeps unacked messages and redelivers.
        let endpoint = Endpoint::new(
            &config.url,
            config.username.as_deref(),
            config.password.as_deref(),
            config.tls.as_ref(),
        )?;
        let driver = Driver::new("orbit-rabbitmq-source").map_err(|e| {
            PluginError::fatal(format!("cannot start the source's runtime thread: {e}"))
        })?;
        let mut inner = Inner {
            config,
            endpoint,
            session: None,
        };
        driver.run(inner.session())?;
        let source = RabbitSource { inner, driver };
        Ok(source)
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        self.driver.run(self.inner.fetch(max_records, max_wait))
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let result = self.driver.run(self.inner.acknowledge(positions));
        if result.is_err() {
            self.inner.session = None;
        }
        result
    }

    fn close(&mut self) -> Result<(), PluginError> {
        // Closing the channel releases unacked deliveries back to the queue.
        if let Some(s) = self.inner.session.take() {
            let _ = self
                .driver
                .run(s.connection.close(200, "orbit source closing".into()));
        }
        Ok(())
    }
}
