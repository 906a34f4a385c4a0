//! `kafka` source: a consumer group whose offsets move only for delivered records.
//!
//! A poll thread owns the consumer's fetch loop and hands records to `poll` through a bounded
//! channel. When the channel is full (the host is slower than Kafka) it stops taking records
//! from librdkafka, whose prefetch queue is bounded too. When the host takes nothing for
//! `pause_after` (a sink stuck behind its circuit breaker), it pauses the assigned partitions and
//! keeps calling `poll` on the consumer, so the group membership stays alive without buffering
//! more; it resumes them once the host has caught up.
//!
//! This file holds the [`Source`] implementation (`open`, `poll`, `ack`, `close`); `config`
//! holds the configuration and the consumer properties it becomes, `consumer` the group
//! context and the poll thread.

mod config;
mod consumer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orbit_plugin_api::{ConfigError, PluginError, Position, Source, SourceBatch, SourceContext};
use rdkafka::consumer::{CommitMode, Consumer};

use crate::client;
use config::Config;
use consumer::{Consumer_, GroupContext, Item, Poller};

pub struct KafkaSource {
    consumer: Arc<Consumer_>,
    rx: Receiver<Item>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    /// An error that arrived after records in the same poll; returned by the next poll.
    held: Option<PluginError>,
}

impl Source for KafkaSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.validate()
    }

    fn open(config: Config, ctx: SourceContext) -> Result<Self, PluginError> {
        // Offsets live in Kafka (committed by the group), not in Orbit's offset file: with
        // several hosts in one group, only Kafka knows who read what.
        let cfg = config.client_config();
        let consumer: Consumer_ = cfg
            .create_with_context(GroupContext {
                rebalances: AtomicU64::new(0),
                metrics: ctx.metrics(),
            })
            .map_err(|e| {
                PluginError::config(format!(
                    "cannot create the Kafka consumer: {}",
                    client::scrub(&cfg, &e.to_string())
                ))
            })?;
        let topics = config.topics();
        for t in &topics {
            client::check_reachable(consumer.client(), &cfg, Some(t), config.connect_timeout)?;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| PluginError::config(format!("cannot subscribe to {names:?}: {e}")))?;
        tracing::info!(
            topics = %names.join(","),
            group = %config.group,
            config = %client::describe(&cfg),
            "consumer subscribed"
        );
        let consumer = Arc::new(consumer);
        let (tx, rx) = sync_channel(config.buffer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            consumer: consumer.clone(),
            tx,
            stop: stop.clone(),
            overflow: VecDeque::new(),
            paused_at: None,
            waiting_since: Instant::now(),
            pause_after: config.pause_after,
        };
        let handle = std::thread::Builder::new()
            .name("orbit-kafka-poll".into())
            .spawn(move || poller.run())
            .map_err(|e| PluginError::fatal(format!("cannot start the poll thread: {e}")))?;
        Ok(KafkaSource {
            consumer,
            rx,
            stop,
            poller: Some(handle),
            held: None,
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        if let Some(e) = self.held.take() {
            return Err(e);
        }
        let mut batch = SourceBatch::with_capacity(max_records.min(4096));
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            let item = if batch.is_empty() {
                match self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(PluginError::fatal("the Kafka poll thread stopped"))
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            match item {
                Ok(r) => batch.push(r),
                Err(e) if batch.is_empty() => return Err(e),
                Err(e) => {
                    self.held = Some(e);
                    break;
                }
            }
        }
        Ok(batch)
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        for p in positions {
            let Ok(bytes) = <[u8; 8]>::try_from(p.offset.as_slice()) else {
                tracing::warn!(stream = %p.stream, "ignoring an offset that is not 8 bytes");
                continue;
            };
            let offset = i64::from_be_bytes(bytes);
            // librdkafka's `rd_kafka_offset_store` stores `offset + 1` (the next record to
            // read), which is what gets committed.
            if let Err(e) = self.consumer.store_offset(&p.stream, p.partition, offset) {
                // The partition moved to another member: it reads from the last commit.
                tracing::debug!(
                    topic = %p.stream,
                    partition = p.partition,
                    error = %e,
                    "offset not stored (partition no longer assigned)"
                );
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}
