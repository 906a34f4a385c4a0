//! The `postgres_cdc` source's `config:` block.

use std::time::Duration;

use orbit_plugin_api::ConfigError;
use serde::Deserialize;

use crate::catalog::{check_table_name, split_table};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Copy the tables' rows (operation `read`) before streaming, consistent with the stream.
    Initial,
    /// Stream changes from the slot's creation on.
    Never,
}

// No Debug: the URL holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// `postgres://user:password@host:5432/database`
    pub url: String,
    /// `schema.table` (or `table`, in `public`).
    pub tables: Vec<String>,
    #[serde(default = "all_operations")]
    pub operations: Vec<Operation>,
    /// The replication slot; `orbit_<pipeline>_<stage>` when left out.
    pub slot: Option<String>,
    /// The publication; the slot's name when left out.
    pub publication: Option<String>,
    #[serde(default = "yes")]
    pub create_publication: bool,
    #[serde(default = "initial")]
    pub snapshot: SnapshotMode,
    /// How often the position is confirmed to the server and the slot's lag measured.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Warn when the slot holds more WAL than this behind the server's current position.
    #[serde(default = "one_gib")]
    pub lag_warn_bytes: u64,
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn all_operations() -> Vec<Operation> {
    vec![
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ]
}
fn yes() -> bool {
    true
}
fn initial() -> SnapshotMode {
    SnapshotMode::Initial
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn one_gib() -> u64 {
    1 << 30
}

/// Slot and publication names go unquoted into replication commands: keep them plain.
pub fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("`{name}` is not a valid name: use 1 to 63 of a-z, 0-9 and _"),
        ))
    }
}

/// The default slot name for a pipeline stage: its name folded to `[a-z0-9_]`.
pub fn default_slot(pipeline: &str, stage: &str) -> String {
    let raw = format!("orbit_{pipeline}_{stage}").to_ascii_lowercase();
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

impl CdcConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::client::check_url("url", &self.url)?;
        if self.tables.is_empty() {
            return Err(ConfigError::new(
                "tables",
                "list at least one table (`schema.table`)",
            ));
        }
        for (i, t) in self.tables.iter().enumerate() {
            check_table_name(&format!("tables[{i}]"), t)?;
        }
        if self.operations.is_empty() {
            return Err(ConfigError::new(
                "operations",
                "list at least one of insert, update, delete, truncate",
            ));
        }
        if let Some(s) = &self.slot {
            check_name("slot", s)?;
        }
        if let Some(p) = &self.publication {
            check_name("publication", p)?;
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "heartbeat_interval",
                "must be at least 100ms",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    /// The tables as the server names them: `schema.table`.
    pub fn qualified_tables(&self) -> Vec<String> {
        self.tables
            .iter()
            .map(|t| {
                let (s, n) = split_table(t);
                format!("{s}.{n}")
            })
            .collect()
    }

    pub fn publishes(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived() {
        assert!(check_name("slot", "orbit_a_1").is_ok());
        assert!(check_name("slot", "Orbit").is_err());
        assert!(check_name("slot", "a;drop").is_err());
        assert!(check_name("slot", &"a".repeat(64)).is_err());
        assert_eq!(default_slot("My-Pipe", "cdc"), "orbit_my_pipe_cdc");
        assert!(check_name("slot", &default_slot(&"x".repeat(80), "s")).is_ok());
    }
}
