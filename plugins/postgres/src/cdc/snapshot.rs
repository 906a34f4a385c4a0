//! The initial snapshot: the rows of every table as of the replication slot's creation, read in
//! one REPEATABLE READ transaction that imports the slot's exported snapshot, so that streaming
//! from the slot's consistent point continues exactly where the snapshot ends.

use std::borrow::Cow;
use std::time::Duration;

use orbit_plugin_api::PluginError;
use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::event::Fields;
use super::types::to_json;
use crate::catalog::{self, quoted_table, split_table};
use crate::client::{connect, error, quote_ident};

struct SnapTable {
    quoted: String,
    columns: Vec<catalog::Column>,
}

/// One snapshot row: the table's index in `tables` and its values.
pub struct Row {
    pub table: u16,
    pub values: Fields<'static>,
    /// The row's number within its table.
    pub row: u64,
}

pub struct SnapshotReader {
    client: Client,
    tables: Vec<SnapTable>,
    /// The table being read and whether its cursor is open.
    current: usize,
    open: bool,
    row: u64,
}

impl SnapshotReader {
    /// Opens the transaction on the exported snapshot `name`.
    pub async fn begin(
        url: &str,
        timeout: Duration,
        name: &str,
        tables: &[String],
    ) -> Result<Self, PluginError> {
        let client = connect(url, timeout).await?;
        let name = name.replace('\'', "''");
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{name}'"
            ))
            .await
            .map_err(|e| error(&e, "opening the snapshot transaction", url))?;
        let mut snap = Vec::new();
        for t in tables {
            let (schema, table) = split_table(t);
            let quoted = quoted_table(schema, table);
            let columns = catalog::columns(&client, &quoted)
                .await
                .map_err(|e| error(&e, &format!("reading the columns of {t}"), url))?;
            snap.push(SnapTable { quoted, columns });
        }
        Ok(SnapshotReader {
            client,
            tables: snap,
            current: 0,
            open: false,
            row: 0,
        })
    }

    /// Up to `max` rows; empty when every table has been read.
    pub async fn next(&mut self, max: usize, url: &str) -> Result<Vec<Row>, PluginError> {
        while self.current < self.tables.len() {
            let t = &self.tables[self.current];
            if !self.open {
                let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
                let sql = format!(
                    "DECLARE orbit_snapshot NO SCROLL CURSOR FOR SELECT {} FROM ONLY {}",
                    if cols.is_empty() {
                        "NULL".to_string()
                    } else {
                        cols.join(", ")
                    },
                    t.quoted
                );
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| error(&e, "declaring the snapshot cursor", url))?;
                self.open = true;
                self.row = 0;
            }
            let messages = self
                .client
                .simple_query(&format!("FETCH FORWARD {} FROM orbit_snapshot", max.max(1)))
                .await
                .map_err(|e| error(&e, &format!("reading the snapshot of {}", t.quoted), url))?;
            let mut rows = Vec::new();
            for m in messages {
                if let SimpleQueryMessage::Row(r) = m {
                    let mut values = Vec::with_capacity(t.columns.len());
                    for (i, c) in t.columns.iter().enumerate() {
                        let v = r
                            .get(i)
                            .map_or(Value::Null, |text| to_json(c.type_oid, text));
                        values.push((Cow::Owned(c.name.clone()), v));
                    }
                    rows.push(Row {
                        table: self.current as u16,
                        values: Fields(values),
                        row: self.row,
                    });
                    self.row += 1;
                }
            }
            if !rows.is_empty() {
                return Ok(rows);
            }
            self.client
                .batch_execute("CLOSE orbit_snapshot")
                .await
                .map_err(|e| error(&e, "closing the snapshot cursor", url))?;
            self.open = false;
            self.current += 1;
        }
        Ok(Vec::new())
    }

    /// Ends the snapshot transaction.
    pub async fn finish(self, url: &str) -> Result<(), PluginError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| error(&e, "ending the snapshot transaction", url))
    }
}
