//! The `rabbitmq` source's connection state: [`Inner`] (the config, the endpoint and the
//! current [`Session`]) and (re)connecting: channel, prefetch, optional queue declaration and
//! bindings, and the consumer.

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use orbit_plugin_api::PluginError;

use super::config::Config;
use super::offsets::next_generation;
use crate::connection::Endpoint;

pub(super) struct Session {
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    pub(super) consumer: Consumer,
    /// Distinguishes delivery tags of this connection from those of an earlier one.
    pub(super) generation: u32,
    /// The highest delivery tag received and the highest acknowledged: the broker sends
    /// nothing more while `received - acked` is `prefetch`.
    pub(super) received: u64,
    pub(super) acked: u64,
}

/// The connection state; everything async runs on `RabbitSource::driver`.
pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) endpoint: Endpoint,
    pub(super) session: Option<Session>,
}

/// The consumer failed (`Some`) or the broker cancelled it (`None`).
pub(super) fn session_error(endpoint: &Endpoint, e: Option<lapin::Error>) -> PluginError {
    match e {
        Some(e) => endpoint.classify(&e, "consuming from"),
        None => PluginError::retriable(format!(
            "the broker cancelled the consumer on {}",
            endpoint.shown()
        )),
    }
}

impl Inner {
    pub(super) async fn session(&mut self) -> Result<&mut Session, PluginError> {
        let alive = self
            .session
            .as_ref()
            .is_some_and(|s| s.connection.status().connected() && s.channel.status().connected());
        if !alive {
            if self.session.is_some() {
                tracing::warn!(url = %self.endpoint.shown(), "connection lost; reconnecting (unacked messages will be redelivered)");
            }
            self.session = None;
            let connection = self.endpoint.connect(self.config.connect_timeout).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| self.endpoint.classify(&e, "cannot open a channel on"))?;
            channel
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| self.endpoint.classify(&e, "cannot set prefetch on"))?;
            let queue = ShortString::from(self.config.queue.as_str());
            if let Some(d) = &self.config.declare {
                channel
                    .queue_declare(
                        queue.clone(),
                        QueueDeclareOptions {
                            durable: d.durable,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| self.endpoint.classify(&e, "cannot declare the queue on"))?;
                for b in &d.bindings {
                    channel
                        .queue_bind(
                            queue.clone(),
                            ShortString::from(b.exchange.as_str()),
                            ShortString::from(b.routing_key.as_str()),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| self.endpoint.classify(&e, "cannot bind the queue on"))?;
                }
            }
            let consumer = channel
                .basic_consume(
                    queue,
                    ShortString::from("orbit"),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.endpoint.classify(&e, "cannot consume from"))?;
            tracing::info!(url = %self.endpoint.shown(), queue = %self.config.queue, "consuming");
            self.session = Some(Session {
                connection,
                channel,
                consumer,
                generation: next_generation(),
                received: 0,
                acked: 0,
            });
        }
        Ok(self.session.as_mut().expect("just made"))
    }
}
