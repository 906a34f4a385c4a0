//! The target table as the sink sees it: its columns and key, read from the catalog once per
//! connection, and the statements that write a run of rows in one round trip, whatever its
//! length: the rows as column arrays (see [`super::wire`]), or as one JSON array.

use std::collections::HashMap;

use orbit_plugin_api::PluginError;
use tokio_postgres::{Client, Statement};

use super::wire::Wire;
use crate::catalog::{self, quoted_table, Column};
use crate::client::{error, quote_ident};

pub const BYTEA_OID: u32 = 17;

pub struct Table {
    /// `"schema"."table"`
    pub quoted: String,
    pub columns: Vec<Column>,
    pub key: Vec<String>,
    /// The key's columns, as indices into `columns`.
    pub key_columns: Vec<u16>,
    /// Column name → index into `columns`.
    by_name: HashMap<String, u16>,
}

/// What one statement does to a run of rows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Insert,
    Upsert,
    Delete,
    Truncate,
}

impl Table {
    /// Reads the columns and the key; `key` overrides the primary key.
    pub async fn describe(
        client: &Client,
        schema: &str,
        table: &str,
        key: &[String],
        url: &str,
    ) -> Result<Table, PluginError> {
        let quoted = quoted_table(schema, table);
        let columns: Vec<Column> = catalog::columns(client, &quoted).await.map_err(|e| {
            let mut err = error(&e, &format!("reading the columns of {schema}.{table}"), url);
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                err = PluginError::config(format!(
                    "{}; create the table first, or fix `table:`",
                    err.message()
                ));
            }
            err
        })?;
        let key = if key.is_empty() {
            catalog::primary_key(client, &quoted)
                .await
                .map_err(|e| error(&e, "reading the primary key", url))?
        } else {
            for k in key {
                if !columns.iter().any(|c| &c.name == k) {
                    return Err(PluginError::config(format!(
                        "key column `{k}` is not a column of {schema}.{table}; fix `key:`"
                    )));
                }
            }
            key.to_vec()
        };
        Ok(Table::new(quoted, columns, key))
    }

    fn new(quoted: String, columns: Vec<Column>, key: Vec<String>) -> Table {
        let key_columns = key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .map(|i| i as u16)
            .collect();
        let by_name = (0..columns.len() as u16)
            .map(|i| (columns[i as usize].name.clone(), i))
            .collect();
        Table {
            quoted,
            columns,
            key,
            key_columns,
            by_name,
        }
    }

    /// A table as `describe` would read it, for tests.
    #[cfg(test)]
    pub fn for_test(columns: &[(&str, u32)], key: &[&str]) -> Table {
        Table::new(
            "\"public\".\"t\"".into(),
            columns
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    type_oid: *t,
                    sql_type: format!("type{t}"),
                    structured: false,
                })
                .collect(),
            key.iter().map(|k| k.to_string()).collect(),
        )
    }

    /// The column named `name` and its index.
    pub fn column(&self, name: &str) -> Option<(u16, &Column)> {
        let &i = self.by_name.get(name)?;
        Some((i, &self.columns[i as usize]))
    }

    /// The columns at `cols` (indices into `columns`).
    pub fn columns_at(&self, cols: &[u16]) -> Vec<&Column> {
        cols.iter().map(|&i| &self.columns[i as usize]).collect()
    }

    /// The statement for `kind` over the columns `cols` (indices into `columns`), their
    /// values as `wires` say or as JSON.
    pub fn sql(&self, kind: Kind, cols: &[u16], wires: Option<&[Wire]>) -> String {
        let t = &self.quoted;
        let names: Vec<String> = cols
            .iter()
            .map(|&i| quote_ident(&self.columns[i as usize].name))
            .collect();
        let list = names.join(", ");
        let rows = match wires {
            None => format!("json_populate_recordset(NULL::{t}, $1::text::json)"),
            Some(wires) => {
                let params: Vec<String> = cols
                    .iter()
                    .zip(wires)
                    .enumerate()
                    .map(|(n, (&i, w))| {
                        format!("${}::{}", n + 1, w.param_type(&self.columns[i as usize]))
                    })
                    .collect();
                format!("unnest({}) AS r({list})", params.join(", "))
            }
        };
        match kind {
            Kind::Insert => format!("INSERT INTO {t} ({list}) SELECT {list} FROM {rows}"),
            Kind::Upsert => {
                let sets: Vec<String> = cols
                    .iter()
                    .zip(&names)
                    .filter(|(i, _)| !self.key_columns.contains(i))
                    .map(|(_, q)| format!("{q} = EXCLUDED.{q}"))
                    .collect();
                let action = if sets.is_empty() {
                    "NOTHING".to_string()
                } else {
                    format!("UPDATE SET {}", sets.join(", "))
                };
                let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
                format!(
                    "INSERT INTO {t} ({list}) SELECT {list} FROM {rows} ON CONFLICT ({}) DO {action}",
                    key.join(", ")
                )
            }
            // The run's columns are the key's.
            Kind::Delete => {
                format!("DELETE FROM {t} WHERE ({list}) IN (SELECT {list} FROM {rows})")
            }
            Kind::Truncate => format!("TRUNCATE {t}"),
        }
    }
}

/// The statements prepared on one connection, by what they do.
#[derive(Default)]
pub struct Statements(HashMap<Shape, Statement>);

/// What a statement does: its kind, its columns, how their values travel (`None`: JSON).
type Shape = (Kind, Vec<u16>, Option<Vec<Wire>>);

impl Statements {
    /// The prepared statement for `kind` over `cols`, their values as `wires` say or as JSON.
    pub async fn get(
        &mut self,
        client: &Client,
        table: &Table,
        kind: Kind,
        cols: &[u16],
        wires: Option<&[Wire]>,
        url: &str,
    ) -> Result<Statement, PluginError> {
        let cache_key = (kind, cols.to_vec(), wires.map(<[Wire]>::to_vec));
        if let Some(s) = self.0.get(&cache_key) {
            return Ok(s.clone());
        }
        let sql = table.sql(kind, cols, wires);
        let st = client
            .prepare(&sql)
            .await
            .map_err(|e| error(&e, &format!("preparing `{sql}`"), url))?;
        self.0.insert(cache_key, st.clone());
        Ok(st)
    }
}
