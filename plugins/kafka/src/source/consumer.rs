//! The `kafka` source's consumer side: the group context (rebalance logging, commit on
//! revocation), turning a Kafka message into a record, and the poll thread that feeds the
//! host through a bounded channel, pausing the partitions while the host takes nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbit_plugin_api::{Metrics, PluginError, Record};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;

use crate::client;

/// Logs rebalances, commits stored offsets before partitions are taken away, and reports
/// consumer lag from librdkafka's statistics.
pub struct GroupContext {
    pub(super) rebalances: AtomicU64,
    pub(super) metrics: Metrics,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }

    /// Every `statistics.interval.ms`: the lag of each partition this consumer reads, counted
    /// from the last offset Orbit acknowledged (stored), else the last one committed.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || !p.desired {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
                if lag < 0 {
                    continue;
                }
                self.metrics.gauge_with(
                    "consumer_lag",
                    "Records between the partition's end and the last offset delivered",
                    &[("topic", topic), ("partition", &id.to_string())],
                    lag as f64,
                );
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked; committing delivered offsets"
            );
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revocation");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = %parts.join(","), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

pub(super) type Consumer_ = BaseConsumer<GroupContext>;

pub(super) type Item = Result<Record, PluginError>;

fn record(m: &BorrowedMessage<'_>) -> Record {
    let mut r = Record::new(m.payload().unwrap_or_default()).with_position(
        m.topic(),
        m.partition(),
        m.offset().to_be_bytes(),
    );
    if let Some(k) = m.key() {
        r = r.with_key(k);
    }
    if let Some(ts) = m.timestamp().to_millis() {
        r = r.with_timestamp_ms(ts);
    }
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            r.push_header(h.key, h.value.unwrap_or_default());
        }
    }
    r
}

/// Errors the consumer reports while it keeps going (a broker away, a partition moving) are
/// logged; the ones that will not heal by themselves stop the source.
fn consumer_error(e: KafkaError) -> Option<PluginError> {
    match e.rdkafka_error_code() {
        Some(code) if client::is_auth(code) => Some(PluginError::config(format!(
            "the Kafka consumer was refused: {e}; check the credentials and ACLs"
        ))),
        _ => {
            tracing::warn!(error = %e, "consumer error (librdkafka retries by itself)");
            None
        }
    }
}

pub(super) struct Poller {
    pub(super) consumer: Arc<Consumer_>,
    pub(super) tx: SyncSender<Item>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) overflow: VecDeque<Item>,
    /// The rebalance count when the partitions were paused, if they are.
    pub(super) paused_at: Option<u64>,
    /// Since when a record waits for room in the channel.
    pub(super) waiting_since: Instant,
    pub(super) pause_after: Duration,
}

impl Poller {
    fn set_paused(&mut self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "no assignment to pause or resume");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "cannot pause or resume partitions");
        }
        if pause {
            tracing::info!(
                waiting = self.overflow.len(),
                "the host took nothing for {}: partitions paused",
                humantime::format_duration(self.pause_after)
            );
            self.paused_at = Some(self.consumer.context().rebalances.load(Ordering::Relaxed));
        } else {
            tracing::info!("the host caught up: partitions resumed");
            self.paused_at = None;
        }
    }

    /// Hands waiting items to the host; false once the source is gone.
    fn drain(&mut self) -> bool {
        while let Some(item) = self.overflow.pop_front() {
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.overflow.push_front(item);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }

    pub(super) fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if !self.drain() {
                return;
            }
            if !self.overflow.is_empty() {
                // The host is behind. Wait for it without fetching more: librdkafka's own
                // prefetch is bounded (`queued.max.messages.kbytes`). If it stays behind for
                // `pause_after`, pause the partitions and keep polling so that the group
                // membership (`max.poll.interval.ms`) stays alive.
                if self.paused_at.is_none() && self.waiting_since.elapsed() < self.pause_after {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
                if self.paused_at != Some(rebalances) {
                    self.set_paused(true);
                }
            } else if self.paused_at.is_some() {
                self.set_paused(false);
            }
            let item = match self.consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Ok(m)) => Ok(record(&m)),
                Some(Err(e)) => match consumer_error(e) {
                    Some(e) => Err(e),
                    None => continue,
                },
            };
            if self.overflow.is_empty() {
                match self.tx.try_send(item) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(item)) => {
                        self.overflow.push_back(item);
                        self.waiting_since = Instant::now();
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            } else {
                self.overflow.push_back(item);
            }
        }
    }
}
