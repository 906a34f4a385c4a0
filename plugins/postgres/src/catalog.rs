//! Table names and the catalog queries the source and the sink share: a table's columns (as
//! pgoutput sends them: no dropped or generated columns) and its primary key.

use orbit_plugin_api::ConfigError;
use tokio_postgres::{Client, Error};

use crate::client::quote_ident;

/// `(schema, table)` of `schema.table`, or of `table` in `public`.
pub fn split_table(t: &str) -> (&str, &str) {
    t.split_once('.').unwrap_or(("public", t))
}

/// `"schema"."table"`.
pub fn quoted_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A config's table name: `table` or `schema.table`, no empty part.
pub fn check_table_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = name.split('.').collect();
    if name.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::new(
            path,
            format!("`{name}` is not a table name: write `table` or `schema.table`"),
        ));
    }
    Ok(())
}

/// The columns of the table `quoted` (see [`quoted_table`]) with their type OIDs, in order.
pub async fn columns(client: &Client, quoted: &str) -> Result<Vec<(String, u32)>, Error> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid::int8 FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 \
             AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&quoted],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
        .collect())
}

/// The primary key columns of the table `quoted`, in key order; empty when it has none.
pub async fn primary_key(client: &Client, quoted: &str) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&quoted],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
