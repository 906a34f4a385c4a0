//! `rabbitmq` source: consume a queue; ack deliveries once the host delivered their records.

use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use orbit_plugin_api::{
    ConfigError, PluginError, Position, Record, Source, SourceBatch, SourceContext,
};
use serde::Deserialize;

use crate::connection::{classify, connect, redact, validate_url};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    exchange: String,
    #[serde(default)]
    routing_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareQueue {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    bindings: Vec<Binding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    url: String,
    queue: String,
    /// Declare the queue (and its bindings) on connect.
    #[serde(default)]
    declare: Option<DeclareQueue>,
    /// Deliveries the broker sends ahead of acknowledgements; bounds the duplicate window.
    #[serde(default = "default_prefetch")]
    prefetch: u16,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
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

struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Distinguishes delivery tags of this connection from those of an earlier one.
    generation: u32,
}

pub struct RabbitSource {
    config: Config,
    session: Option<Session>,
    generation: u32,
}

/// Offset bytes: generation (4 bytes) then delivery tag (8 bytes), big-endian.
fn encode(generation: u32, tag: u64) -> Vec<u8> {
    let mut v = generation.to_be_bytes().to_vec();
    v.extend_from_slice(&tag.to_be_bytes());
    v
}

fn decode(offset: &[u8]) -> Option<(u32, u64)> {
    if offset.len() != 12 {
        return None;
    }
    Some((
        u32::from_be_bytes(offset[..4].try_into().ok()?),
        u64::from_be_bytes(offset[4..].try_into().ok()?),
    ))
}

fn header_bytes(v: &AMQPValue) -> Vec<u8> {
    match v {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}

impl RabbitSource {
    async fn session(&mut self) -> Result<&mut Session, PluginError> {
        let alive = self
            .session
            .as_ref()
            .is_some_and(|s| s.connection.status().connected() && s.channel.status().connected());
        if !alive {
            if self.session.is_some() {
                tracing::warn!(url = %redact(&self.config.url), "connection lost; reconnecting (unacked messages will be redelivered)");
            }
            self.session = None;
            let url = &self.config.url;
            let connection = connect(url, self.config.connect_timeout).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| classify(&e, url, "cannot open a channel on"))?;
            channel
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| classify(&e, url, "cannot set prefetch on"))?;
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
                    .map_err(|e| classify(&e, url, "cannot declare the queue on"))?;
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
                        .map_err(|e| classify(&e, url, "cannot bind the queue on"))?;
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
                .map_err(|e| classify(&e, url, "cannot consume from"))?;
            self.generation += 1;
            tracing::info!(url = %redact(url), queue = %self.config.queue, "consuming");
            self.session = Some(Session {
                connection,
                channel,
                consumer,
                generation: self.generation,
            });
        }
        Ok(self.session.as_mut().expect("just made"))
    }

    fn record(&self, generation: u32, d: Delivery) -> Record {
        let mut r = Record::new(d.data).with_position(
            self.config.queue.as_str(),
            0,
            encode(generation, d.delivery_tag),
        );
        if let Some(headers) = d.properties.headers() {
            for (k, v) in headers.inner() {
                r.push_header(k.as_str(), header_bytes(v));
            }
        }
        if let Some(id) = d.properties.message_id() {
            r.push_header("amqp.message_id", id.as_str());
        }
        r.push_header("amqp.exchange", d.exchange.as_str());
        r.push_header("amqp.routing_key", d.routing_key.as_str());
        r.push_header(
            "amqp.redelivered",
            if d.redelivered { "true" } else { "false" },
        );
        if let Some(ts) = d.properties.timestamp() {
            r = r.with_timestamp_ms((*ts as i64).saturating_mul(1000));
        }
        r
    }

    async fn fetch(&mut self, max: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let deadline = Instant::now() + max_wait;
        let url = self.config.url.clone();
        let session = self.session().await?;
        let generation = session.generation;
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            // Wait for the first delivery up to max_wait; after that take only what is ready.
            let wait = if deliveries.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let next = match tokio::time::timeout(wait, session.consumer.next()).await {
                Ok(n) => n,
                Err(_) => break,
            };
            match next {
                Some(Ok(d)) => deliveries.push(d),
                Some(Err(e)) => {
                    self.session = None;
                    return Err(classify(&e, &url, "consuming from"));
                }
                None => {
                    self.session = None;
                    return Err(PluginError::retriable(format!(
                        "the broker cancelled the consumer on {}",
                        redact(&url)
                    )));
                }
            }
        }
        let mut batch = SourceBatch::with_capacity(deliveries.len());
        for d in deliveries {
            batch.push(self.record(generation, d));
        }
        Ok(batch)
    }

    async fn acknowledge(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let Some(session) = &self.session else {
            return Ok(()); // nothing from this connection is pending
        };
        for p in positions
            .iter()
            .filter(|p| p.stream.as_str() == self.config.queue)
        {
            let Some((generation, tag)) = decode(&p.offset) else {
                continue;
            };
            if generation != session.generation {
                continue; // a tag of an earlier connection: the broker redelivers those
            }
            session
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| classify(&e, &self.config.url, "acking on"))?;
        }
        Ok(())
    }
}

impl Source for RabbitSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        validate_url(&config.url)?;
        if config.queue.is_empty() {
            return Err(ConfigError::new("queue", "must not be empty"));
        }
        if config.prefetch == 0 {
            return Err(ConfigError::new("prefetch", "must be at least 1"));
        }
        Ok(())
    }

    fn open(config: Config, _ctx: SourceContext) -> Result<Self, PluginError> {
        // Stored offsets mean nothing here: the broker keeps unacked messages and redelivers.
        let mut source = RabbitSource {
            config,
            session: None,
            generation: 0,
        };
        orbit_plugin_api::runtime().block_on(source.session())?;
        Ok(source)
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        orbit_plugin_api::runtime().block_on(self.fetch(max_records, max_wait))
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let result = orbit_plugin_api::runtime().block_on(self.acknowledge(positions));
        if result.is_err() {
            self.session = None;
        }
        result
    }

    fn close(&mut self) -> Result<(), PluginError> {
        // Closing the channel releases unacked deliveries back to the queue.
        if let Some(s) = self.session.take() {
            let _ = orbit_plugin_api::runtime()
                .block_on(s.connection.close(200, "orbit source closing".into()));
        }
        Ok(())
    }
}
