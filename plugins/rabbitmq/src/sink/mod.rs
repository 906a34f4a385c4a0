//! `rabbitmq` sink: publishes with publisher confirms. Several batches may be in flight (the
//! host's `sink.max_in_flight`): a batch is published in `begin_write` and its confirms are
//! awaited in `finish_write`, oldest batch first; `confirm_window` bounds the messages
//! unconfirmed across all of them. One channel keeps publish order, so a queue receives the
//! batches in the order they began.
//!
//! * `config`: the keys and their checks;
//! * `publish`: publishing a batch and settling it from its confirms.

mod config;
mod publish;

use std::collections::VecDeque;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use orbit_plugin_api::{
    write_by_parts, ConfigError, PipelinedSink, PluginError, Record, Sink, SinkContext, Template,
    WriteOutcome,
};

use crate::connection::Endpoint;
pub use config::Config;
use config::Kind;
use publish::Pending;

pub struct RabbitSink {
    config: Config,
    endpoint: Endpoint,
    template: Template,
    connection: Option<(Connection, Channel)>,
    /// Batches published and not finished, oldest first.
    pending: VecDeque<Pending>,
    /// Messages published and not confirmed, across `pending`.
    unconfirmed: usize,
}

impl RabbitSink {
    fn connected(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
    }

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
}

impl Sink for RabbitSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.check()
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
            pending: VecDeque::new(),
            unconfirmed: 0,
        };
        // Connect now so that a wrong password or an unreachable broker shows at start.
        orbit_plugin_api::runtime().block_on(sink.channel())?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }

    fn close(&mut self) -> Result<(), PluginError> {
        // Batches still in flight are not acknowledged: the host sends them again.
        self.pending.clear();
        self.unconfirmed = 0;
        if let Some((conn, _)) = self.connection.take() {
            let _ =
                orbit_plugin_api::runtime().block_on(conn.close(200, "orbit sink closing".into()));
        }
        Ok(())
    }
}

impl PipelinedSink for RabbitSink {
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        let result = orbit_plugin_api::runtime().block_on(self.begin(batch));
        self.after_error(&result);
        result
    }

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        // The timer is made inside the runtime (it needs its time driver).
        let finishing = async { tokio::time::timeout(wait, self.finish_front()).await };
        match orbit_plugin_api::runtime().block_on(finishing) {
            Err(_) => Ok(None),
            Ok(result) => {
                self.after_error(&result);
                result.map(Some)
            }
        }
    }
}

impl RabbitSink {
    /// Whatever went wrong, the next batch starts on a fresh connection, once nothing is in
    /// flight on this one.
    fn after_error<T>(&mut self, result: &Result<T, PluginError>) {
        if result.is_err() && self.pending.is_empty() {
            self.connection = None;
        }
    }
}
