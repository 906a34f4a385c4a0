//! The target table as the sink sees it: its columns and key, read from the catalog once per
//! connection, and the statements that write a run of rows through `json_populate_recordset`
//! (one round trip per run, whatever its length).

use std::collections::HashMap;

use orbit_plugin_api::PluginError;
use tokio_postgres::{Client, Statement};

use crate::catalog::{self, quoted_table};
use crate::client::{error, quote_ident};

pub const BYTEA_OID: u32 = 17;

pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

pub struct Table {
    /// `"schema"."table"`
    pub quoted: String,
    pub columns: Vec<Column>,
    pub key: Vec<String>,
    statements: HashMap<(Kind, Vec<String>), Statement>,
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
        let columns: Vec<Column> = catalog::columns(client, &quoted)
            .await
            .map_err(|e| {
                let mut err = error(&e, &format!("reading the columns of {schema}.{table}"), url);
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                    err = PluginError::config(format!(
                        "{}; create the table first, or fix `table:`",
                        err.message()
                    ));
                }
                err
            })?
            .into_iter()
            .map(|(name, type_oid)| Column { name, type_oid })
            .collect();
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
        Ok(Table {
            quoted,
            columns,
            key,
            statements: HashMap::new(),
        })
    }

    /// A table as `describe` would read it, for tests.
    #[cfg(test)]
    pub fn for_test(columns: &[(&str, u32)], key: &[&str]) -> Table {
        Table {
            quoted: "\"public\".\"t\"".into(),
            columns: columns
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    type_oid: *t,
                })
                .collect(),
            key: key.iter().map(|k| k.to_string()).collect(),
            statements: HashMap::new(),
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The prepared statement for `kind` over these columns (cached per connection).
    pub async fn statement(
        &mut self,
        client: &Client,
        kind: Kind,
        cols: &[String],
        url: &str,
    ) -> Result<Statement, PluginError> {
        let cache_key = (kind, cols.to_vec());
        if let Some(s) = self.statements.get(&cache_key) {
            return Ok(s.clone());
        }
        let sql = self.sql(kind, cols);
        let st = client
            .prepare(&sql)
            .await
            .map_err(|e| error(&e, &format!("preparing `{sql}`"), url))?;
        self.statements.insert(cache_key, st.clone());
        Ok(st)
    }

    fn sql(&self, kind: Kind, cols: &[String]) -> String {
        let t = &self.quoted;
        let list = |names: &[String]| {
            names
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rows = format!("json_populate_recordset(NULL::{t}, $1::text::json)");
        match kind {
            Kind::Insert => format!(
                "INSERT INTO {t} ({c}) SELECT {c} FROM {rows}",
                c = list(cols)
            ),
            Kind::Upsert => {
                let sets: Vec<String> = cols
                    .iter()
                    .filter(|c| !self.key.contains(c))
                    .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
                    .collect();
                let action = if sets.is_empty() {
                    "NOTHING".to_string()
                } else {
                    format!("UPDATE SET {}", sets.join(", "))
                };
                format!(
                    "INSERT INTO {t} ({c}) SELECT {c} FROM {rows} ON CONFLICT ({k}) DO {action}",
                    c = list(cols),
                    k = list(&self.key)
                )
            }
            Kind::Delete => format!(
                "DELETE FROM {t} WHERE ({k}) IN (SELECT {k} FROM {rows})",
                k = list(&self.key)
            ),
            Kind::Truncate => format!("TRUNCATE {t}"),
        }
    }
}
