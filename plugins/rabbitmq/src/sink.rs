//! `rabbitmq` sink: publish each batch with publisher confirms.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::future;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use orbit_plugin_api::{
    ConfigError, PluginError, Record, Sink, SinkContext, Template, WriteOutcome,
};
use serde::Deserialize;

use crate::connection::{validate_connection, Endpoint, Tls};

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
    kind: Kind,
    #[serde(default = "yes")]
    durable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `amqp://user:password@host:port/vhost` (or `amqps://`).
    url: String,
    /// The exchange to publish to; empty for the default exchange (routing key = queue name).
    #[serde(default)]
    exchange: String,
    /// Declare the exchange on connect.
    #[serde(default)]
    declare: Option<Declare>,
    /// Template: `{stream}`, `{key}`, `{partition}`, or `{field.path}` from a JSON value.
    #[serde(default)]
    routing_key: String,
    /// Messages published but not yet confirmed, at most.
    #[serde(default = "default_window")]
    confirm_window: usize,
    /// delivery_mode 2 (survives a broker restart in a durable queue).
    #[serde(default = "yes")]
    persistent: bool,
    /// Unroutable messages come back and are rejected records instead of vanishing.
    #[serde(default = "yes")]
    mandatory: bool,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    /// User name and password, instead of in the URL (keeps the password out of the URL).
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// TLS for `amqps://` (system roots are always trusted).
    #[serde(default)]
    tls: Option<Tls>,
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

pub struct RabbitSink {
    config: Config,
    endpoint: Endpoint,
    template: Template,
    connection: Option<(Connection, Channel)>,
}

impl RabbitSink {
    async fn channel(&mut self) -> Result<Channel, PluginError> {
        if let Some((c, ch)) = &self.connection {
            if c.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
            tracing::warn!(url = %self.endpoint.shown(), "connection lost; reconnecting");
        }
        self.connection = None;
        let conn = self.endpoint.connect(self.config.connect_timeout).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| self.endpoint.classify(&e, "cannot open a channel on"))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                self.endpoint
                    .classify(&e, "cannot enable publisher confirms on")
            })?;
        if let Some(d) = &self.config.declare {
            let kind = match d.kind {
                Kind::Direct => ExchangeKind::Direct,
                Kind::Topic => ExchangeKind::Topic,
                Kind::Fanout => ExchangeKind::Fanout,
                Kind::Headers => ExchangeKind::Headers,
            };
            ch.exchange_declare(
                ShortString::from(self.config.exchange.as_str()),
                kind,
                ExchangeDeclareOptions {
                    durable: d.durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.endpoint.classify(&e, "cannot declare the exchange on"))?;
        }
        tracing::info!(url = %self.endpoint.shown(), "connected");
        self.connection = Some((conn, ch.clone()));
        Ok(ch)
    }

    fn properties(&self, r: &Record) -> BasicProperties {
        let mut headers = FieldTable::default();
        for h in r.headers.iter() {
            headers.insert(
                ShortString::from(h.name.as_str()),
                AMQPValue::LongString(LongString::from(h.value.to_vec())),
            );
        }
        let id = match r.key() {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => r.position_id(),
        };
        let mut p = BasicProperties::default()
            .with_message_id(ShortString::from(id))
            .with_headers(headers);
        if self.config.persistent {
            p = p.with_delivery_mode(2);
        }
        if let Some(ct) = &self.config.content_type {
            p = p.with_content_type(ShortString::from(ct.as_str()));
        }
        if let Some(ts) = r.timestamp_ms.into_option() {
            p = p.with_timestamp((ts / 1000).max(0) as u64);
        }
        p
    }

    async fn publish(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        let ch = self.channel().await?;
        let mut outcome = WriteOutcome::ok();
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let exchange = ShortString::from(self.config.exchange.as_str());
        let endpoint = &self.endpoint;
        let lost = |e: lapin::Error| endpoint.classify(&e, "publishing to");
        // Messages published and not yet confirmed, oldest first. lapin queues a message's
        // frames (and takes its delivery tag) on the first poll of `basic_publish`, then waits
        // until its I/O thread has written them; polling each publish once, in order, and
        // awaiting the writes later keeps the batch's order while the I/O thread writes many
        // queued messages per system call instead of one.
        let mut in_flight: VecDeque<(usize, InFlight<_>)> = VecDeque::new();
        for (i, r) in batch.iter().enumerate() {
            let key = match self.template.render(r) {
                Ok(k) => k,
                Err(reason) => {
                    outcome.fail(i, PluginError::rejected(reason));
                    continue;
                }
            };
            let mut sending = Box::pin(ch.basic_publish(
                exchange.clone(),
                ShortString::from(key),
                options,
                r.value(),
                self.properties(r),
            ));
            let state = match future::poll_once(&mut sending).await {
                Some(written) => InFlight::Written(written.map_err(lost)?),
                None => InFlight::Writing(sending),
            };
            in_flight.push_back((i, state));
            if in_flight.len() >= self.config.confirm_window {
                let (i, state) = in_flight.pop_front().expect("non-empty");
                settle(i, state.confirmed().await.map_err(lost)?, &mut outcome);
            }
        }
        while let Some((i, state)) = in_flight.pop_front() {
            settle(i, state.confirmed().await.map_err(lost)?, &mut outcome);
        }
        Ok(outcome)
    }
}

/// One published message: its frames being written, or written and awaiting the confirm.
enum InFlight<F> {
    Writing(Pin<Box<F>>),
    Written(PublisherConfirm),
}

impl<F: Future<Output = lapin::Result<PublisherConfirm>>> InFlight<F> {
    async fn confirmed(self) -> lapin::Result<Confirmation> {
        match self {
            InFlight::Writing(sending) => sending.await?.await,
            InFlight::Written(confirm) => confirm.await,
        }
    }
}

fn settle(i: usize, confirmation: Confirmation, outcome: &mut WriteOutcome) {
    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) => outcome.fail(
            i,
            PluginError::rejected(format!(
                "unroutable: the broker returned the message ({} {})",
                returned.reply_code, returned.reply_text
            )),
        ),
        Confirmation::Nack(_) => {
            outcome.fail(i, PluginError::retriable("the broker nacked the message"))
        }
        Confirmation::NotRequested => outcome.fail(
            i,
            PluginError::retriable("publisher confirms are not enabled on the channel"),
        ),
    }
}

impl Sink for RabbitSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
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

    fn open(config: Config, _ctx: SinkContext) -> Result<Self, PluginError> {
        let template = Template::parse("routing_key", &config.routing_key)?;
        let endpoint = Endpoint::new(
            &config.url,
            config.username.as_deref(),
            config.password.as_deref(),
            config.tls.as_ref(),
        )?;
        let mut sink = RabbitSink {
            config,
            endpoint,
            template,
            connection: None,
        };
        // Connect now so that a wrong password or an unreachable broker shows at start.
        orbit_plugin_api::runtime().block_on(sink.channel())?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        let result = orbit_plugin_api::runtime().block_on(self.publish(batch));
        if result.is_err() {
            // Whatever went wrong, start the retry on a fresh connection.
            self.connection = None;
        }
        result
    }

    fn close(&mut self) -> Result<(), PluginError> {
        if let Some((conn, _)) = self.connection.take() {
            let _ =
                orbit_plugin_api::runtime().block_on(conn.close(200, "orbit sink closing".into()));
        }
        Ok(())
    }
}
