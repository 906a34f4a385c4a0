//! The task that owns the connection and writes prepared batches, strictly one after the
//! other, in the order they began: one transaction per batch (a batch of one statement is that
//! statement alone, atomic by itself). A batch the database refuses part of is replayed with a
//! savepoint per record, before the next batch starts. After a batch failed as a whole,
//! nothing more is written on this connection: the batches queued behind it fail too, so the
//! host resends them after the failed one, in order.

use std::sync::Arc;

use orbit_plugin_api::{ErrorKind, PluginError};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::batch::{encode, Prepared, Run};
use super::config::Mode;
use super::plan::plan;
use super::table::{Statements, Table};
use crate::client::error;

/// What a batch came to: the records the database refused, (index in the batch, why).
pub type Written = Result<Vec<(usize, PluginError)>, PluginError>;

struct Job {
    batch: Prepared,
    done: oneshot::Sender<Written>,
}

/// The writing half of a connection. Dropping it stops the task: a transaction not yet
/// committed is rolled back by the server when the connection closes.
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<()>,
    table: Arc<Table>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the writer needs besides the connection.
pub struct Settings {
    pub table: Arc<Table>,
    pub mode: Mode,
    pub ignore_unknown: bool,
    pub url: String,
}

impl Writer {
    /// Starts the task on the current runtime.
    pub fn spawn(client: Client, settings: Settings) -> Writer {
        let (jobs, rx) = mpsc::unbounded_channel();
        let table = settings.table.clone();
        let task = tokio::spawn(run(client, settings, rx));
        Writer { jobs, task, table }
    }

    /// The table as read when the connection opened.
    pub fn table(&self) -> Arc<Table> {
        self.table.clone()
    }

    /// Queues a batch behind those begun before it; the answer comes on the receiver.
    pub fn begin(&self, batch: Prepared) -> oneshot::Receiver<Written> {
        let (done, answer) = oneshot::channel();
        // A task that is gone drops the job: the receiver then says so.
        let _ = self.jobs.send(Job { batch, done });
        answer
    }
}

async fn run(client: Client, settings: Settings, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut statements = Statements::default();
    let mut broken: Option<PluginError> = None;
    while let Some(job) = jobs.recv().await {
        let written = match &broken {
            Some(e) => Err(PluginError::retriable(format!(
                "not written: an earlier batch failed on this connection ({})",
                e.message()
            ))),
            None => write(&client, &settings, &mut statements, &job.batch).await,
        };
        if let Err(e) = &written {
            broken.get_or_insert_with(|| e.clone());
        }
        let _ = job.done.send(written);
    }
}

async fn write(
    client: &Client,
    s: &Settings,
    statements: &mut Statements,
    batch: &Prepared,
) -> Written {
    let result = match batch.runs.as_slice() {
        [] => return Ok(Vec::new()),
        [one] => execute(client, s, statements, one).await,
        runs => in_transaction(client, s, statements, runs).await,
    };
    match result {
        Ok(()) => Ok(Vec::new()),
        Err(e) if e.kind() == ErrorKind::Rejected => {
            tracing::debug!(error = %e.message(), "a record was refused: replaying the batch record by record");
            replay(client, s, statements, batch).await
        }
        Err(e) => Err(e),
    }
}

/// Every statement in one transaction; rolled back on any error.
async fn in_transaction(
    client: &Client,
    s: &Settings,
    statements: &mut Statements,
    runs: &[Run],
) -> Result<(), PluginError> {
    simple(client, "BEGIN", &s.url).await?;
    for run in runs {
        if let Err(e) = execute(client, s, statements, run).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    simple(client, "COMMIT", &s.url).await
}

/// The batch again, one savepoint per record: a record the database refuses is rolled back
/// alone and reported; the rest commits.
async fn replay(
    client: &Client,
    s: &Settings,
    statements: &mut Statements,
    batch: &Prepared,
) -> Written {
    let url = &s.url;
    let mut refused = Vec::new();
    simple(client, "BEGIN; SET CONSTRAINTS ALL IMMEDIATE", url).await?;
    for (i, value) in batch.values.iter() {
        // Planned before without error: planning is a pure function of the value.
        let Ok(ops) = plan(s.mode, &s.table, s.ignore_unknown, value) else {
            continue;
        };
        simple(client, "SAVEPOINT orbit_record", url).await?;
        let mut fault = None;
        for op in &ops {
            let run = encode(&s.table, &[op])?;
            if let Err(e) = execute(client, s, statements, &run).await {
                if e.kind() != ErrorKind::Rejected {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
                fault = Some(e);
                break;
            }
        }
        let sql = match fault {
            Some(e) => {
                refused.push((i, e));
                "ROLLBACK TO SAVEPOINT orbit_record"
            }
            None => "RELEASE SAVEPOINT orbit_record",
        };
        simple(client, sql, url).await?;
    }
    simple(client, "COMMIT", url).await?;
    Ok(refused)
}

async fn execute(
    client: &Client,
    s: &Settings,
    statements: &mut Statements,
    run: &Run,
) -> Result<(), PluginError> {
    let statement = statements
        .get(
            client,
            &s.table,
            run.kind,
            &run.cols,
            run.wires.as_deref(),
            &s.url,
        )
        .await?;
    client
        .execute_raw(&statement, run.params.iter())
        .await
        .map(|_| ())
        .map_err(|e| error(&e, &format!("writing to {}", s.table.quoted), &s.url))
}

async fn simple(client: &Client, sql: &str, url: &str) -> Result<(), PluginError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| error(&e, sql, url))
}
