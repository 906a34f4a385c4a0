//! The `postgres` sink: one transaction per batch. Consecutive operations of one kind over the
//! same columns go to the server as one statement (the rows as column arrays, see [`wire`]), so
//! a batch of inserts is one round trip. A record the database refuses (a constraint, a bad value) is
//! found by replaying the batch with a savepoint per record and is rejected alone; the others
//! commit. A lost connection fails the whole batch as retriable (nothing of it committed).

mod config;
mod plan;
mod table;
mod wire;

use orbit_plugin_api::{runtime, ErrorKind, PluginError, Record, Sink, SinkContext, WriteOutcome};
use serde_json::Value;
use tokio_postgres::Client;

use config::Mode;
pub use config::SinkConfig;
use plan::{plan, Op};
use table::{Kind, Table};

use crate::client::{connect, error};

pub struct PgSink {
    config: SinkConfig,
    conn: Option<(Client, Table)>,
}

impl Sink for PgSink {
    type Config = SinkConfig;

    fn validate(config: &SinkConfig) -> Result<(), orbit_plugin_api::ConfigError> {
        config.validate()
    }

    fn open(config: SinkConfig, _ctx: SinkContext) -> Result<Self, PluginError> {
        let mut sink = PgSink { config, conn: None };
        // Fail at start on what will never work (no table, bad credentials); a server that is
        // down is retried by the host.
        runtime().block_on(sink.connection())?;
        Ok(sink)
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        let result = runtime().block_on(self.write_batch(batch));
        if let Err(e) = &result {
            if e.kind() == ErrorKind::Retriable {
                // The connection may be gone: start again from a fresh one.
                self.conn = None;
            }
        }
        result
    }
}

/// The operations of one record, or why it is refused.
type Planned = Result<Vec<Op>, String>;

impl PgSink {
    async fn connection(&mut self) -> Result<&mut (Client, Table), PluginError> {
        if self.conn.is_none() {
            let c = &self.config;
            let client = connect(&c.url, c.connect_timeout).await?;
            let (schema, name) = c.schema_table();
            let table = Table::describe(&client, schema, name, &c.key, &c.url).await?;
            if c.mode != Mode::Insert && table.key.is_empty() {
                return Err(PluginError::config(format!(
                    "{} has no primary key, which mode {:?} needs to find rows: add one, or give `key:`",
                    table.quoted, c.mode
                )));
            }
            self.conn = Some((client, table));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        let mode = self.config.mode;
        let ignore = self.config.ignore_unknown_fields;
        let url = self.config.url.clone();
        let (client, table) = self.connection().await?;
        let planned: Vec<Planned> = batch
            .iter()
            .map(|r| plan(mode, table, ignore, r.value()))
            .collect();
        let mut outcome = WriteOutcome::ok();
        for (i, p) in planned.iter().enumerate() {
            if let Err(reason) = p {
                outcome.fail(i, PluginError::rejected(reason.clone()));
            }
        }
        let ops: Vec<&Op> = planned
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flatten()
            .collect();
        if ops.is_empty() {
            return Ok(outcome);
        }
        match apply_all(client, table, &ops, &url).await {
            Ok(()) => return Ok(outcome),
            Err(e) if e.kind() == ErrorKind::Rejected => {
                tracing::debug!(error = %e.message(), "a record was refused: replaying the batch record by record");
            }
            Err(e) => return Err(e),
        }
        // Some record is at fault: one savepoint per record finds which, the rest commits.
        client
            .batch_execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .map_err(|e| error(&e, "BEGIN", &url))?;
        for (i, p) in planned.iter().enumerate() {
            let Ok(ops) = p else { continue };
            client
                .batch_execute("SAVEPOINT orbit_record")
                .await
                .map_err(|e| error(&e, "SAVEPOINT", &url))?;
            let mut refused = None;
            for op in ops {
                if let Err(e) = run(client, table, &[op], &url).await {
                    if e.kind() != ErrorKind::Rejected {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(e);
                    }
                    refused = Some(e);
                    break;
                }
            }
            let sql = match refused {
                Some(e) => {
                    outcome.fail(i, e);
                    "ROLLBACK TO SAVEPOINT orbit_record"
                }
                None => "RELEASE SAVEPOINT orbit_record",
            };
            client
                .batch_execute(sql)
                .await
                .map_err(|e| error(&e, sql, &url))?;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| error(&e, "COMMIT", &url))?;
        Ok(outcome)
    }
}

/// Every operation in one transaction; rolled back on any error.
async fn apply_all(
    client: &Client,
    table: &mut Table,
    ops: &[&Op],
    url: &str,
) -> Result<(), PluginError> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| error(&e, "BEGIN", url))?;
    let mut start = 0;
    while start < ops.len() {
        let end = run_end(table, ops, start);
        if let Err(e) = run(client, table, &ops[start..end], url).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        start = end;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| error(&e, "COMMIT", url))
}

/// Where the run that starts at `start` ends: the same kind over the same columns, each row at
/// most once (one statement cannot touch a row twice).
fn run_end(table: &Table, ops: &[&Op], start: usize) -> usize {
    let first = ops[start];
    if first.kind == Kind::Truncate {
        return start + 1;
    }
    let mut keys = std::collections::HashSet::new();
    let mut end = start;
    while end < ops.len() {
        let op = ops[end];
        if op.kind != first.kind || op.cols != first.cols {
            break;
        }
        if first.kind != Kind::Insert && !keys.insert(op.key_text(table)) {
            break;
        }
        end += 1;
    }
    end
}

/// One statement for a run of operations of one kind over the same columns.
async fn run(
    client: &Client,
    table: &mut Table,
    ops: &[&Op],
    url: &str,
) -> Result<(), PluginError> {
    let kind = ops[0].kind;
    let cols = &ops[0].cols;
    let result = if kind == Kind::Truncate {
        let statement = table.statement(client, kind, cols, None, url).await?;
        client.execute(&statement, &[]).await
    } else {
        let rows: Vec<&serde_json::Map<String, Value>> = ops.iter().map(|op| &op.row).collect();
        let wires = wire::wires(&table.columns_at(cols), &rows);
        let statement = table
            .statement(client, kind, cols, wires.as_deref(), url)
            .await?;
        match wires {
            Some(wires) => {
                let params = wire::params(&table.columns_at(cols), &wires, &rows);
                client
                    .execute_raw(&statement, params.iter().map(|p| p.as_ref()))
                    .await
            }
            None => {
                let rows = serde_json::to_string(&rows).expect("JSON values serialize");
                client.execute(&statement, &[&rows]).await
            }
        }
    };
    result
        .map(|_| ())
        .map_err(|e| error(&e, &format!("writing to {}", table.quoted), url))
}
