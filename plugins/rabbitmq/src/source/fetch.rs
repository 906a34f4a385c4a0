//! Taking deliveries from the `rabbitmq` source's consumer: filling a batch within the poll's
//! `max_wait` and the prefetch credit, and turning each delivery into a record (position,
//! AMQP headers and properties).

use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use orbit_plugin_api::{PluginError, Record, SourceBatch};

use super::offsets::encode;
use super::session::{session_error, Inner};

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

impl Inner {
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

    pub(super) async fn fetch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, PluginError> {
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
}
