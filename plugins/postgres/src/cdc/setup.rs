//! The control plane, on an ordinary connection: checks that the server and the tables can be
//! replicated, the publication, and the replication slot's state. Every refusal says what to do.

use orbit_plugin_api::PluginError;
use tokio_postgres::Client;

use super::config::CdcConfig;
use super::lsn::parse_lsn;
use crate::catalog::{self, quoted_table, split_table};
use crate::client::error;

/// A replicated table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `schema.table`: the records' `table` field and stream.
    pub name: String,
    /// Primary key columns, in key order (empty when the table has none).
    pub key: Vec<String>,
}

pub async fn check_server(client: &Client, url: &str) -> Result<(), PluginError> {
    let row = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| error(&e, "reading wal_level", url))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(PluginError::config(format!(
            "the server runs with wal_level = {level}; change data capture needs wal_level = logical: \
             run `ALTER SYSTEM SET wal_level = logical` as a superuser and restart PostgreSQL"
        )));
    }
    Ok(())
}

/// Each table exists and can be replicated with the configured operations.
pub async fn describe_tables(
    client: &Client,
    config: &CdcConfig,
    url: &str,
) -> Result<Vec<TableInfo>, PluginError> {
    let mut out = Vec::new();
    for t in &config.tables {
        let (schema, name) = split_table(t);
        let quoted = quoted_table(schema, name);
        let row = client
            .query_opt(
                "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &name],
            )
            .await
            .map_err(|e| error(&e, "looking up the tables", url))?;
        let Some(row) = row else {
            return Err(PluginError::config(format!(
                "table {schema}.{name} (in `tables`) does not exist in this database; create it or fix `tables:`"
            )));
        };
        let identity: String = row.get(0);
        let key = catalog::primary_key(client, &quoted)
            .await
            .map_err(|e| error(&e, "reading the primary keys", url))?;
        let updates = config.publishes(super::config::Operation::Update)
            || config.publishes(super::config::Operation::Delete);
        let identified = match identity.as_str() {
            "f" | "i" => true,
            "d" => !key.is_empty(),
            _ => false,
        };
        if updates && !identified {
            return Err(PluginError::config(format!(
                "table {schema}.{name} has no primary key or replica identity, so its updates and deletes \
                 cannot be captured: add a primary key, or run `ALTER TABLE {quoted} REPLICA IDENTITY FULL`, \
                 or capture inserts only (`operations: [insert]`)"
            )));
        }
        out.push(TableInfo {
            name: format!("{schema}.{name}"),
            key,
        });
    }
    Ok(out)
}

/// Creates the publication when it is missing (and allowed to), or checks that it covers the
/// tables. An existing publication is never altered.
pub async fn ensure_publication(
    client: &Client,
    config: &CdcConfig,
    publication: &str,
    url: &str,
) -> Result<(), PluginError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| error(&e, "looking up the publication", url))?
        .is_some();
    if !exists {
        if !config.create_publication {
            return Err(PluginError::config(format!(
                "publication {publication} does not exist and create_publication is false: create it \
                 (CREATE PUBLICATION {publication} FOR TABLE ...) or set create_publication: true"
            )));
        }
        let tables: Vec<String> = config
            .tables
            .iter()
            .map(|t| {
                let (s, n) = split_table(t);
                quoted_table(s, n)
            })
            .collect();
        let ops: Vec<&str> = config.operations.iter().map(|o| o.as_str()).collect();
        let sql = format!(
            "CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish = '{}')",
            tables.join(", "),
            ops.join(", ")
        );
        client.batch_execute(&sql).await.map_err(|e| {
            error(
                &e,
                &format!("creating the publication ({sql}); the user must own the tables"),
                url,
            )
        })?;
        tracing::info!(publication, "created the publication");
        return Ok(());
    }
    let published: Vec<String> = client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| error(&e, "reading the publication's tables", url))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<String> = config
        .qualified_tables()
        .into_iter()
        .filter(|t| !published.contains(t))
        .collect();
    if !missing.is_empty() {
        return Err(PluginError::config(format!(
            "publication {publication} does not publish {}: run ALTER PUBLICATION {publication} ADD TABLE {}, \
             or name another `publication:`",
            missing.join(", "),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The replication slot as `pg_replication_slots` shows it.
#[derive(Debug)]
pub struct SlotState {
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<u64>,
    pub lost: bool,
}

pub async fn slot_state(
    client: &Client,
    slot: &str,
    url: &str,
) -> Result<Option<SlotState>, PluginError> {
    let row = client
        .query_opt(
            "SELECT active_pid, confirmed_flush_lsn::text, coalesce(wal_status, '') = 'lost', plugin::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| error(&e, "reading the replication slot", url))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(3);
    if plugin.as_deref() != Some("pgoutput") {
        return Err(PluginError::config(format!(
            "replication slot {slot} exists but is not a pgoutput logical slot (plugin {plugin:?}): name another `slot:`"
        )));
    }
    Ok(Some(SlotState {
        active_pid: row.get(0),
        confirmed_flush: row
            .get::<_, Option<String>>(1)
            .as_deref()
            .and_then(parse_lsn),
        lost: row.get(2),
    }))
}

pub fn slot_in_use(slot: &str, pid: Option<i32>) -> PluginError {
    let by = pid
        .map(|p| format!(" (server process {p})"))
        .unwrap_or_default();
    PluginError::retriable(format!(
        "replication slot {slot} is in use by another connection{by}: stop the other \
         consumer, or give this pipeline its own `slot:`; a previous instance's connection ends within \
         the server's wal_sender_timeout"
    ))
    .with_retry_after(std::time::Duration::from_secs(5))
}

pub async fn drop_slot(client: &Client, slot: &str, url: &str) -> Result<(), PluginError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| error(&e, &format!("dropping replication slot {slot}"), url))?;
    Ok(())
}

/// A slot without a snapshot, created over SQL.
pub async fn create_slot(client: &Client, slot: &str, url: &str) -> Result<(), PluginError> {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| error(&e, &format!("creating replication slot {slot}"), url))?;
    Ok(())
}
