//! `rabbitmq` source: consume a queue; ack deliveries once the host delivered their records.

use std::sync::atomic::{AtomicU32, Ordering};
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

use crate::connection::{validate_connection, Endpoint, Tls};
use crate::driver::Driver;

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
    /// The highest delivery tag received and the highest acknowledged: the broker sends
    /// nothing more while `received - acked` is `prefetch`.
    received: u64,
    acked: u64,
}

/// The connection state; everything async runs on `RabbitSource::driver`.
struct Inner {
    config: Config,
    endpoint: Endpoint,
    session: Option<Session>,
}

/// Connection generations, unique in the process: an instance that replaces another (after a
/// panic or a timeout) never reuses one, so a delivery tag of an earlier connection can never
/// pass for a tag of the current one, and `basic_ack(tag, multiple)` never acknowledges
/// deliveries the host has not written.
static GENERATIONS: AtomicU32 = AtomicU32::new(1);

fn next_generation() -> u32 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

pub struct RabbitSource {
    inner: Inner,
    /// Declared last: dropped after the session that runs on it.
    driver: Driver,
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

/// How long the source sleeps between rounds of taking ready deliveries while it fills a batch
/// (with the thread blocked; see `Inner::fetch`).
const FILL_TICK: Duration = Duration::from_millis(1);

/// The consumer failed (`Some`) or the broker cancelled it (`None`).
fn session_error(endpoint: &Endpoint, e: Option<lapin::Error>) -> PluginError {
    match e {
        Some(e) => endpoint.classify(&e, "consuming from"),
        None => PluginError::retriable(format!(
            "the broker cancelled the consumer on {}",
            endpoint.shown()
        )),
    }
}

impl Inner {
    async fn session(&mut self) -> Result<&mut Session, PluginError> {
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
        let prefetch = u64::from(self.config.prefetch);
        let session = self.session().await?;
        let generation = session.generation;
        let mut deliveries = Vec::new();
        // Wait up to max_wait for the first delivery, then fill the batch in rounds: take what
        // is ready, sleep a tick, again, as long as each round brings more (deliveries still
        // streaming in). Small batches cost a sink write (and an fsync) each, and a wake-up per
        // message costs more than the message. Stop at `max`, at max_wait, when a round brings
        // nothing (the broker paused: return promptly, the host may have acks to send), or when
        // the prefetch credit is used up (nothing more comes before the host acknowledges).
        let mut progressed = false;
        let failed = loop {
            // While earlier records await their acknowledgement, do not block waiting for the
            // first delivery: the host waits instead, and wakes as soon as a batch completes
            // to send its ack (which is what lets the broker send more).
            let ready = if deliveries.is_empty() && session.received == session.acked {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let next = match tokio::time::timeout(ready, session.consumer.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => break Some(session_error(&self.endpoint, Some(e))),
                Ok(None) => break Some(session_error(&self.endpoint, None)),
                Err(_) => {
                    let now = Instant::now();
                    if deliveries.is_empty()
                        || !progressed
                        || now >= deadline
                        || session.received - session.acked >= prefetch
                    {
                        break None;
                    }
                    progressed = false;
                    // Block the thread, not a tokio timer: lapin's wake-ups during the tick
                    // coalesce into one round of ready deliveries instead of a park and unpark
                    // each, and its I/O thread reads larger gulps (1 KB messages: 29k msg/s
                    // against 24k with the timer). This runtime runs only this source.
                    std::thread::sleep(FILL_TICK.min(deadline - now));
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            session.received = session.received.max(next.delivery_tag);
            deliveries.push(next);
            progressed = true;
            if deliveries.len() >= max {
                break None;
            }
        };
        if let Some(e) = failed {
            // Unacked deliveries of this connection come again from the broker.
            self.session = None;
            return Err(e);
        }
        let mut batch = SourceBatch::with_capacity(deliveries.len());
        for d in deliveries {
            batch.push(self.record(generation, d));
        }
        Ok(batch)
    }

    async fn acknowledge(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let Some(session) = &mut self.session else {
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
            if tag > session.received {
                // Never handed out by this connection: acknowledging it would cover messages
                // the host has not written.
                tracing::warn!(tag, received = session.received, "ignoring an acknowledgement of a delivery tag this connection did not hand out");
                continue;
            }
            session
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| self.endpoint.classify(&e, "acking on"))?;
            session.acked = session.acked.max(tag);
        }
        Ok(())
    }
}

impl Source for RabbitSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        validate_connection(
            &config.url,
            config.username.as_deref(),
            config.password.as_deref(),
            config.tls.as_ref(),
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_unique_in_the_process() {
        let a = next_generation();
        let b = next_generation();
        assert_ne!(a, b);
        assert_eq!(decode(&encode(a, 42)), Some((a, 42)));
    }
}
