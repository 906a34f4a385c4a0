//! The `postgres` sink: one transaction per batch. Consecutive operations of one kind over the
//! same columns go to the server as one statement (the rows as column arrays, see [`wire`]), so
//! a batch of inserts is one round trip. A record the database refuses (a constraint, a bad
//! value) is found by replaying the batch with a savepoint per record and is rejected alone;
//! the others commit. A lost connection fails the whole batch as retriable (nothing of it
//! committed).
//!
//! Batches are pipelined: `begin_write` plans and encodes a batch on the host's thread and
//! queues it for the connection's task ([`writer`]), which writes batches one after the other;
//! so the next batch is prepared while the database writes this one.
//!
//! * `plan`, `row`: a record → row operations, checked against the table;
//! * `batch`, `wire`: operations → statements and their encoded parameters;
//! * `table`: the table's columns and key, the SQL; `writer`: the connection's task.

mod batch;
mod config;
mod plan;
mod row;
mod table;
mod wire;
mod writer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use orbit_plugin_api::{
    runtime, write_by_parts, PipelinedSink, PluginError, Record, Sink, SinkContext, WriteOutcome,
};

use config::Mode;
pub use config::SinkConfig;
use table::Table;
use writer::{Settings, Writer, Written};

use crate::client::connect;

pub struct PgSink {
    config: SinkConfig,
    writer: Option<Writer>,
    /// Batches begun and not finished, oldest first.
    pending: VecDeque<Pending>,
}

struct Pending {
    /// Records refused before the database saw them: (index in the batch, why).
    refused: Vec<(usize, String)>,
    written: tokio::sync::oneshot::Receiver<Written>,
}

impl Sink for PgSink {
    type Config = SinkConfig;

    fn validate(config: &SinkConfig) -> Result<(), orbit_plugin_api::ConfigError> {
        config.validate()
    }

    fn open(config: SinkConfig, _ctx: SinkContext) -> Result<Self, PluginError> {
        let mut sink = PgSink {
            config,
            writer: None,
            pending: VecDeque::new(),
        };
        // Fail at start on what will never work (no table, bad credentials); a server that is
        // down is retried by the host.
        sink.connect()?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }
}

impl PipelinedSink for PgSink {
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        let c = &self.config;
        let (mode, ignore) = (c.mode, c.ignore_unknown_fields);
        let table = self.connect()?;
        let mut prepared = batch::prepare(mode, &table, ignore, batch)?;
        let refused = std::mem::take(&mut prepared.refused);
        let written = self.writer.as_ref().expect("connected").begin(prepared);
        self.pending.push_back(Pending { refused, written });
        Ok(())
    }

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        let Some(front) = self.pending.front_mut() else {
            return Err(PluginError::fatal("finish_write with no batch begun"));
        };
        let answer =
            runtime().block_on(async { tokio::time::timeout(wait, &mut front.written).await });
        let Ok(answer) = answer else {
            return Ok(None);
        };
        let front = self.pending.pop_front().expect("a batch is pending");
        let written = answer.unwrap_or_else(|_| {
            Err(PluginError::retriable(
                "the connection's task stopped before the batch was written",
            ))
        });
        match written {
            Ok(refused_by_db) => {
                let mut failures: Vec<(usize, PluginError)> = front
                    .refused
                    .into_iter()
                    .map(|(i, why)| (i, PluginError::rejected(why)))
                    .chain(refused_by_db)
                    .collect();
                failures.sort_by_key(|f| f.0);
                let mut outcome = WriteOutcome::ok();
                for (i, e) in failures {
                    outcome.fail(i, e);
                }
                Ok(Some(outcome))
            }
            Err(e) => {
                // Batches queued behind this one fail too; the next begins on a fresh connection.
                self.writer = None;
                Err(e)
            }
        }
    }
}

impl PgSink {
    /// The table, connecting (and reading it) first when there is no connection.
    fn connect(&mut self) -> Result<Arc<Table>, PluginError> {
        if let Some(w) = &self.writer {
            return Ok(w.table());
        }
        let c = &self.config;
        let writer = runtime().block_on(async {
            let client = connect(&c.url, c.connect_timeout).await?;
            let (schema, name) = c.schema_table();
            let table = Table::describe(&client, schema, name, &c.key, &c.url).await?;
            if c.mode != Mode::Insert && table.key.is_empty() {
                return Err(PluginError::config(format!(
                    "{} has no primary key, which mode {:?} needs to find rows: add one, or give `key:`",
                    table.quoted, c.mode
                )));
            }
            let settings = Settings {
                table: Arc::new(table),
                mode: c.mode,
                ignore_unknown: c.ignore_unknown_fields,
                url: c.url.clone(),
            };
            Ok(Writer::spawn(client, settings))
        })?;
        let table = writer.table();
        self.writer = Some(writer);
        Ok(table)
    }
}
