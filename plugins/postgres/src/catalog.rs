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

/// One column of a table, as the catalog describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// The type as SQL names it, without a type modifier (`character varying`, `integer`):
    /// what a cast to the column's type writes.
    pub sql_type: String,
    /// An array or a composite type (`pg_type.typcategory` `A` or `C`).
    pub structured: bool,
}

/// The columns of the table `quoted` (see [`quoted_table`]) with their types, in order.
pub async fn columns(client: &Client, quoted: &str) -> Result<Vec<Column>, Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, NULL), \
             t.typcategory IN ('A', 'C') FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
            &[&quoted],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_oid: r.get::<_, i64>(1) as u32,
            sql_type: r.get(2),
            structured: r.get(3),
        })
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
