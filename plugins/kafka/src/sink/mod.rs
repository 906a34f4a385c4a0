//! `kafka` sink: produces batches and settles each from its delivery reports. Several batches
//! may be in flight (the host's `sink.max_in_flight`): librdkafka keeps produce order per
//! partition, across its own retries too with the idempotent producer (the default).
//!
//! * `config`: the keys, their checks, the producer properties, what `open` derives once;
//! * `produce`: batches as tickets, delivery reports filed to them, the outcome rules;
//! * `topics`: `create_topic`.

mod config;
mod produce;
mod topics;

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use rdkafka::producer::Producer;

use orbit_plugin_api::{
    write_by_parts, ConfigError, PipelinedSink, PluginError, Record, Sink, SinkContext,
    WriteOutcome,
};

use crate::client;
pub use config::Config;
use config::Settings;
use produce::{Producer_, SinkContextImpl, Ticket};

pub struct KafkaSink {
    settings: Settings,
    producer: Option<Producer_>,
    /// The number of the last ticket begun.
    ticket: u32,
    /// Batches begun and not finished, oldest first.
    pending: VecDeque<Ticket>,
    /// Topics known to exist (created or checked), for `create_topic`.
    known_topics: HashSet<String>,
}

impl KafkaSink {
    fn producer(&mut self) -> Result<&Producer_, PluginError> {
        if self.producer.is_none() {
            // A new producer may face a new cluster (a broker replaced): check topics again.
            self.known_topics.clear();
            let producer: Producer_ = self
                .settings
                .client_config
                .create_with_context(SinkContextImpl::new())
                .map_err(|e| {
                    PluginError::config(format!(
                        "cannot create the Kafka producer: {}",
                        client::scrub(&self.settings.client_config, &e.to_string())
                    ))
                })?;
            let fixed = self.settings.topic.as_static().map(str::to_string);
            client::check_reachable(
                producer.client(),
                &self.settings.client_config,
                None,
                self.settings.config.connect_timeout,
            )?;
            if let Some(t) = &fixed {
                if self.settings.config.create_topic.is_some() {
                    self.ensure_topic(t)?;
                } else {
                    client::check_reachable(
                        producer.client(),
                        &self.settings.client_config,
                        Some(t),
                        self.settings.config.connect_timeout,
                    )?;
                }
            }
            tracing::info!(
                config = %client::describe(&self.settings.client_config),
                "producer connected"
            );
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("just created"))
    }

    fn key<'r>(&self, r: &'r Record) -> Result<Option<std::borrow::Cow<'r, [u8]>>, String> {
        let Some(path) = &self.settings.key_field else {
            return Ok(r.key().map(std::borrow::Cow::Borrowed));
        };
        let doc: serde_json::Value = serde_json::from_slice(r.value())
            .map_err(|e| format!("`key_field` needs a JSON value: {e}"))?;
        let v = orbit_plugin_api::template::field(&doc, path)
            .ok_or_else(|| format!("key field `{}` is missing", path.join(".")))?;
        Ok(Some(std::borrow::Cow::Owned(match v {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        })))
    }
}

impl Sink for KafkaSink {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        config.check()
    }

    fn open(config: Config, _ctx: SinkContext) -> Result<Self, PluginError> {
        let mut sink = KafkaSink {
            settings: Settings::new(config)?,
            producer: None,
            ticket: 0,
            pending: VecDeque::new(),
            known_topics: HashSet::new(),
        };
        // Connect now so that unreachable brokers show at start.
        sink.producer()?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }

    fn close(&mut self) -> Result<(), PluginError> {
        // Batches still in flight are not acknowledged: the host sends them again.
        self.pending.clear();
        if let Some(p) = self.producer.take() {
            let _ = p.flush(Duration::from_secs(5));
        }
        Ok(())
    }
}

impl PipelinedSink for KafkaSink {
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        self.begin(batch)
    }

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        self.finish(wait)
    }
}
