//! Producing batches and settling them from delivery reports. Each batch begun is a
//! [`Ticket`]: its messages carry the ticket's number in their opaque, so reports are filed to
//! the batch they belong to while later batches are already being produced. Batches finish
//! oldest first.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orbit_plugin_api::{ErrorKind, PluginError, Record, WriteOutcome};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::config::topic_name_problem;
use super::KafkaSink;
use crate::client;

/// One delivery report: the ticket it belongs to, the record's index in that batch, the result.
type Report = (u32, u32, Result<(), KafkaError>);

/// Delivery reports land here until a `finish_write` files them to their tickets.
#[derive(Default)]
pub struct Reports {
    results: Mutex<Vec<Report>>,
}

pub struct SinkContextImpl {
    reports: Reports,
}

impl ClientContext for SinkContextImpl {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

impl ProducerContext for SinkContextImpl {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let ticket = (opaque >> 32) as u32;
        let index = (opaque & 0xffff_ffff) as u32;
        let r = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        self.reports
            .results
            .lock()
            .expect("reports lock")
            .push((ticket, index, r));
    }
}

impl SinkContextImpl {
    pub(super) fn new() -> Self {
        SinkContextImpl {
            reports: Reports::default(),
        }
    }
}

pub(super) type Producer_ = BaseProducer<SinkContextImpl>;

/// How long a wait for reports sleeps when a poll brought none. rdkafka's `poll(timeout)`
/// hands librdkafka the remaining time in whole milliseconds, 0 below one, so a `poll(1 ms)`
/// loop spun a core (41% of a relay's CPU samples were its clock reads; docs/BENCHMARKS.md).
const REPORT_WAIT: Duration = Duration::from_micros(200);

/// A batch begun and not yet finished.
pub(super) struct Ticket {
    no: u32,
    outcome: WriteOutcome,
    /// Messages enqueued, and how many of them were reported.
    sent: usize,
    reported: usize,
    delivered: usize,
    retriable_failures: usize,
    deadline: Instant,
    /// The producer it was sent with is gone: reports still missing will never come.
    lost: bool,
}

impl KafkaSink {
    /// Enqueues a batch and wakes the brokers; records that cannot be produced (a bad topic or
    /// key) are failed in the ticket's outcome at once.
    pub(super) fn begin(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        self.producer()?;
        self.ticket = self.ticket.wrapping_add(1);
        let no = self.ticket;
        let mut ticket = Ticket {
            no,
            outcome: WriteOutcome::ok(),
            sent: 0,
            reported: 0,
            delivered: 0,
            retriable_failures: 0,
            deadline: Instant::now() + self.settings.delivery_timeout + Duration::from_secs(5),
            lost: false,
        };
        let topics = self.topics(batch)?;
        let producer = self.producer.as_ref().expect("created above");
        for (i, r) in batch.iter().enumerate() {
            let topic = match &topics[i] {
                Ok(t) => t,
                Err(reason) => {
                    ticket
                        .outcome
                        .fail(i, PluginError::rejected(reason.clone()));
                    continue;
                }
            };
            let key = match self.key(r) {
                Ok(k) => k,
                Err(reason) => {
                    ticket.outcome.fail(i, PluginError::rejected(reason));
                    continue;
                }
            };
            let position;
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
            for h in r.headers.iter() {
                headers = headers.insert(Header {
                    key: h.name.as_str(),
                    value: Some(h.value.as_slice()),
                });
            }
            if self.settings.config.position_header {
                position = r.position_id();
                headers = headers.insert(Header {
                    key: "orbit.position",
                    value: Some(position.as_bytes()),
                });
            }
            let opaque = ((no as usize) << 32) | i;
            let mut record = BaseRecord::with_opaque_to(topic, opaque)
                .payload(r.value())
                .headers(headers);
            if let Some(k) = &key {
                record = record.key(k.as_ref());
            }
            if let Some(ts) = r.timestamp_ms.into_option() {
                record = record.timestamp(ts);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        ticket.sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < ticket.deadline =>
                    {
                        // librdkafka's queue is full: serve delivery reports (they wait for
                        // their tickets), then try again.
                        producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                    Err((e, _)) => {
                        let error = client::classify(&e, "cannot enqueue the message");
                        ticket.outcome.fail(i, error);
                        break;
                    }
                }
            }
        }
        // Send now, whatever `linger` says: the batch is complete. (`flush` with a zero timeout
        // only wakes the brokers; rdkafka's `flush` with a timeout polls in 100 ms steps.)
        let _ = producer.flush(Duration::ZERO);
        self.pending.push_back(ticket);
        Ok(())
    }

    /// The topic of every record (rendered from the template, checked, created if asked).
    fn topics(&mut self, batch: &[Record]) -> Result<Vec<Result<String, String>>, PluginError> {
        let topic = &self.settings.topic;
        let topics: Vec<Result<String, String>> = batch
            .iter()
            .map(|r| {
                let t = topic.render(r).map_err(|e| format!("topic: {e}"))?;
                if topic.as_static().is_some() {
                    return Ok(t); // checked once, at validate
                }
                match topic_name_problem(&t) {
                    // Rejected here: the broker would refuse it for ever (retried in vain).
                    Some(problem) => Err(format!(
                        "the topic template gave `{t}`, not a valid Kafka topic name: it {problem}"
                    )),
                    None => Ok(t),
                }
            })
            .collect();
        if self.settings.config.create_topic.is_some() {
            if let Some(t) = self.settings.topic.as_static() {
                let t = t.to_string();
                self.ensure_topic(&t)?;
            } else {
                let distinct: HashSet<&String> = topics.iter().flatten().collect();
                for t in distinct {
                    self.ensure_topic(t)?;
                }
            }
        }
        Ok(topics)
    }

    /// Moves the reports received so far to their tickets (a report for a ticket no longer
    /// pending, from an abandoned write, is dropped).
    fn file_reports(&mut self) {
        let Some(producer) = &self.producer else {
            return;
        };
        let mut results = producer.context().reports.results.lock().expect("lock");
        for (no, i, r) in results.drain(..) {
            let Some(t) = self.pending.iter_mut().find(|t| t.no == no) else {
                continue;
            };
            t.reported += 1;
            match r {
                Ok(()) => t.delivered += 1,
                Err(e) => {
                    let error = client::classify(&e, "delivery failed");
                    if error.kind() == ErrorKind::Retriable {
                        t.retriable_failures += 1;
                    }
                    t.outcome.fail(i as usize, error);
                }
            }
        }
    }

    /// Drops the producer; what it still had in flight is lost (those batches fail).
    pub(super) fn reset_producer(&mut self) {
        self.file_reports();
        self.producer = None;
        for t in &mut self.pending {
            t.lost = true;
        }
    }

    /// The oldest ticket's outcome once every message of it was reported, waiting up to
    /// `wait`.
    pub(super) fn finish(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        let until = Instant::now() + wait;
        loop {
            self.file_reports();
            let Some(front) = self.pending.front() else {
                return Ok(None);
            };
            if front.reported >= front.sent || front.lost || Instant::now() >= front.deadline {
                break;
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            let before = front.reported;
            let producer = self
                .producer
                .as_ref()
                .expect("a ticket not lost has a producer");
            producer.poll(Duration::ZERO);
            self.file_reports();
            if self.pending.front().map(|t| t.reported) == Some(before) {
                std::thread::sleep(REPORT_WAIT);
            }
        }
        let ticket = self.pending.pop_front().expect("a front");
        self.settle(ticket).map(Some)
    }

    fn settle(&mut self, ticket: Ticket) -> Result<WriteOutcome, PluginError> {
        let Ticket {
            outcome,
            sent,
            reported,
            delivered,
            retriable_failures,
            lost,
            ..
        } = ticket;
        if delivered < reported {
            // Check the topics again on the next write (creating them if `create_topic` says
            // so): the cluster may have been replaced and the topic lost with it.
            self.known_topics.clear();
        }
        if lost && reported < sent {
            return Err(PluginError::retriable(format!(
                "{} of {sent} messages were in flight on a producer that was replaced",
                sent - reported
            )));
        }
        if let Some((code, reason)) = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error())
        {
            tracing::warn!(%code, reason, "fatal producer error; a new producer will be created");
            self.reset_producer();
            if reported < sent {
                return Err(PluginError::retriable(format!(
                    "the producer failed fatally ({code}: {reason}); the batch will be retried \
                     with a new producer"
                )));
            }
        }
        if reported < sent {
            // Reports still missing after the deadline: whatever is outstanding is unknown.
            // Start over with a new producer so that its late reports cannot be confused.
            self.reset_producer();
            return Err(PluginError::retriable(format!(
                "{} of {sent} messages had no delivery report within {}",
                sent - reported,
                humantime::format_duration(self.settings.delivery_timeout)
            )));
        }
        if retriable_failures > 0 && delivered == 0 {
            // Nothing got through. Start the next write with a new producer: one that lived
            // through an outage can hold state the cluster no longer matches (a broker replaced
            // with empty storage: cached leader epochs, an idempotent producer id it does not
            // know), and then times out every message however long the cluster is back.
            self.reset_producer();
        }
        Ok(outcome)
    }
}
