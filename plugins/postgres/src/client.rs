//! What the source and the sink share: the connection (URL parsing, session settings, connect
//! with a deadline) and the translation of PostgreSQL errors into the host's error kinds, with
//! the password kept out of every message.

use std::time::Duration;

use orbit_plugin_api::redact::{redact_url, scrub_password};
use orbit_plugin_api::{ConfigError, ErrorKind, PluginError};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Session settings on every connection: values are formatted the same way by the walsender
/// (change events) and by our own queries (snapshot), whatever the server's defaults.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 \
                                   -c bytea_output=hex -c extra_float_digits=1";

/// A `postgres://` URL checked at validation (never connects).
pub fn check_url(path: &str, url: &str) -> Result<tokio_postgres::Config, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            path,
            format!(
                "`{}` is not a postgres:// URL; write postgres://user:password@host:5432/database",
                redact_url(url)
            ),
        ));
    }
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        ConfigError::new(
            path,
            scrub_password(&format!("bad URL `{}`: {e}", redact_url(url)), url),
        )
    })?;
    if config.get_dbname().is_none() {
        return Err(ConfigError::new(
            path,
            format!(
                "`{}` names no database: add /<database> to the URL",
                redact_url(url)
            ),
        ));
    }
    if matches!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    ) {
        return Err(ConfigError::new(
            path,
            "sslmode=require is not supported yet: TLS is not built in; use sslmode=disable or \
             prefer, or a local connection",
        ));
    }
    Ok(config)
}

/// Connects with a deadline; the connection task runs on the plugin's runtime.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client, PluginError> {
    let mut config =
        check_url("url", url).map_err(|e| PluginError::config(e.message.to_string()))?;
    config.options(SESSION_OPTIONS);
    config.connect_timeout(timeout);
    config.application_name("orbit");
    let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await;
    let (client, connection) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(error(&e, "connecting", url)),
        Err(_) => {
            return Err(PluginError::retriable(format!(
                "connecting to {} timed out after {}; is the server up and reachable?",
                redact_url(url),
                humantime::format_duration(timeout)
            )))
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// What an error says about the record, the connection or the config.
pub fn fault(e: &tokio_postgres::Error) -> ErrorKind {
    if e.is_closed() {
        return ErrorKind::Retriable;
    }
    let Some(db) = e.as_db_error() else {
        // I/O, a dropped connection, a timeout: try again.
        return ErrorKind::Retriable;
    };
    sqlstate_kind(db.code().code())
}

/// The host's error kind for an SQLSTATE.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    match &code[..code.len().min(2)] {
        // data exceptions and integrity violations: the record is at fault; a cardinality
        // violation (one statement touching a row twice: keys the sink told apart by their JSON
        // text, `1` and `1.0`) too: the sink's record-by-record replay applies them one by one
        "21" | "22" | "23" => ErrorKind::Rejected,
        // connection exceptions, serialization failures and deadlocks, insufficient
        // resources, operator intervention (shutdown, restart), system errors
        "08" | "40" | "53" | "57" | "58" => ErrorKind::Retriable,
        // an object in use (a slot held by another connection)
        "55" if code == "55006" => ErrorKind::Retriable,
        _ => ErrorKind::Config,
    }
}

/// A PostgreSQL error as the host's error: what failed, the server's message, detail and hint,
/// and what to do; the URL's password scrubbed from all of it.
pub fn error(e: &tokio_postgres::Error, doing: &str, url: &str) -> PluginError {
    let kind = fault(e);
    let text = match e.as_db_error() {
        Some(db) => {
            let mut t = format!("{doing}: {} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                t.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                t.push_str(&format!("; hint: {h}"));
            }
            if *db.code() == SqlState::INVALID_PASSWORD
                || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                t.push_str(&format!(
                    "; check the user and password in the URL ({})",
                    redact_url(url)
                ));
            }
            t
        }
        None => format!("{doing} ({}): {e}", redact_url(url)),
    };
    PluginError::new(kind, scrub_password(&text, url))
}

/// Quotes an identifier (`"my table"`), doubling embedded quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(sqlstate_kind("23505"), ErrorKind::Rejected);
        assert_eq!(sqlstate_kind("22P02"), ErrorKind::Rejected);
        assert_eq!(sqlstate_kind("21000"), ErrorKind::Rejected);
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Retriable);
        assert_eq!(sqlstate_kind("57P01"), ErrorKind::Retriable);
        assert_eq!(sqlstate_kind("40P01"), ErrorKind::Retriable);
        assert_eq!(sqlstate_kind("55006"), ErrorKind::Retriable);
        assert_eq!(sqlstate_kind("55000"), ErrorKind::Config);
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::Config);
    }

    #[test]
    fn urls_are_checked_without_leaking_the_password() {
        assert!(check_url("url", "postgres://u:pw@127.0.0.1:5432/test").is_ok());
        let e = check_url("url", "mysql://u:s3cret@h/db").unwrap_err();
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        let e = check_url("url", "postgres://u:s3cret@h:5432").unwrap_err();
        assert!(e.message.contains("no database"), "{}", e.message);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
