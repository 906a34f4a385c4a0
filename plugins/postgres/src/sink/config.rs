//! The `postgres` sink's `config:` block.

use std::time::Duration;

use orbit_plugin_api::ConfigError;
use serde::Deserialize;

/// How a record becomes rows.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `INSERT`: the record's JSON object is the row.
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: the record's JSON object is the row.
    Upsert,
    /// The record is a `postgres_cdc` change event, applied to the table (mirror).
    Cdc,
}

// No Debug: the URL holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `postgres://user:password@host:5432/database`
    pub url: String,
    /// `table` or `schema.table`.
    pub table: String,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Key columns for upsert and cdc; the table's primary key when left out.
    #[serde(default)]
    pub key: Vec<String>,
    /// Fields of the record that are not columns of the table are ignored instead of refused.
    #[serde(default)]
    pub ignore_unknown_fields: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_mode() -> Mode {
    Mode::Insert
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SinkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::client::check_url("url", &self.url)?;
        crate::catalog::check_table_name("table", &self.table)?;
        if self.mode == Mode::Insert && !self.key.is_empty() {
            return Err(ConfigError::new(
                "key",
                "`key` applies to mode upsert and cdc; mode insert has no key: remove it",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    /// `(schema, table)`, with `public` when no schema is given.
    pub fn schema_table(&self) -> (&str, &str) {
        crate::catalog::split_table(&self.table)
    }
}
