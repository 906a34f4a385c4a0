//! Baselines for bench/postgres.sh: what a user would write with the same crates, doing what
//! the Orbit pipelines do.
//!
//!   baseline-postgres cdc URL SLOT PUBLICATION COUNT FILE BATCH
//!       pgwire-replication consumer of an existing pgoutput slot: each change as the same
//!       JSON event line as `postgres_cdc` (decoded with the plugin's decoder and value
//!       conversion), buffered, fsynced every BATCH records (at the next commit), then the
//!       commit's end LSN acknowledged; exits after COUNT changes.
//!   baseline-postgres insert URL TABLE COUNT BATCH [json]
//!       tokio-postgres: rows {id, name: "name <id>", qty: id} for id 0..COUNT, one
//!       transaction per BATCH rows, each batch one `INSERT ... SELECT * FROM unnest(...)`;
//!       `json`: instead the postgres sink's statement, `... FROM json_populate_recordset(...)`
//!       with the batch as one JSON array.
//!   baseline-postgres until-row FILE COUNT COMMAND...
//!       runs COMMAND (Orbit, or the cdc baseline) and prints COUNT / the time from its start
//!       until FILE's last line is the whole change of row COUNT, then stops it (SIGTERM).
//!       A poll every 10 ms costs next to nothing, unlike a shell loop forking `stat`/`tail`.
//!
//! Prints records per second, connecting included (as in Orbit's own figure).
//! PG_WORKERS=N runs on a multi-thread runtime with N workers (default: current-thread).

#[path = "rt.rs"]
mod rt;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orbit_plugin_postgres::decode::{decode, Col, Decoded, Relation};
use orbit_plugin_postgres::types::col_to_json;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde_json::{Map, Value};
use tokio_postgres::NoTls;

/// The session settings `postgres_cdc` uses, so values are formatted the same way.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 \
                               -c bytea_output=hex -c extra_float_digits=1";

/// Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

fn main() {
    let rt = rt::runtime("PG_WORKERS");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .unwrap_or_else(|| panic!("argument {i} missing"))
    };
    let start = Instant::now();
    let (count, secs) = match args.first().map(String::as_str) {
        Some("cdc") => {
            let count = arg(4).parse().unwrap();
            let batch = arg(6).parse().unwrap();
            rt.block_on(cdc(arg(1), arg(2), arg(3), count, arg(5), batch));
            (count, start.elapsed())
        }
        Some("insert") => {
            let count = arg(3).parse().unwrap();
            let json = args.get(5).map(String::as_str) == Some("json");
            rt.block_on(insert(arg(1), arg(2), count, arg(4).parse().unwrap(), json));
            (count, start.elapsed())
        }
        Some("until-row") => {
            let count = arg(2).parse().unwrap();
            (count, until_row(arg(1), count, &args[3..]))
        }
        _ => panic!("usage: baseline-postgres cdc|insert|until-row ..."),
    };
    println!("{:.0}", count as f64 / secs.as_secs_f64());
}

/// Runs `cmd` until `file`'s last line is whole and is the change of row `count` (the last
/// inserted); returns the time from its start to then, and stops it (SIGTERM).
fn until_row(file: &str, count: usize, cmd: &[String]) -> Duration {
    let needle = format!("\"row_id\":\"{count}\"");
    let start = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the command");
    loop {
        let exited = child.try_wait().expect("wait").is_some();
        if last_line(file).is_some_and(|l| l.contains(&needle)) {
            break;
        }
        assert!(!exited, "{cmd:?} exited before writing row {count}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    if child.try_wait().expect("wait").is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
    took
}

/// The last line of `path` if it ends with a newline.
fn last_line(path: &str) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(1024))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let line = tail.strip_suffix(b"\n")?.rsplit(|&b| b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).into_owned())
}

async fn cdc(url: &str, slot: &str, publication: &str, count: usize, path: &str, batch: usize) {
    let pg: tokio_postgres::Config = url.parse().expect("a postgres:// URL");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let cfg = ReplicationConfig::new(
        host,
        pg.get_user().unwrap_or("postgres"),
        password,
        pg.get_dbname().unwrap_or("postgres"),
        slot,
        publication,
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    .with_options(SESSION_OPTIONS);
    let mut client = ReplicationClient::connect(cfg)
        .await
        .expect("replication connect");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create output"));

    let mut relations: HashMap<u32, Relation> = HashMap::new();
    // The open transaction: (commit LSN, xid, commit time ms, changes so far).
    let mut tx = (0u64, 0u32, 0i64, 0u32);
    let (mut done, mut pending, mut committed) = (0usize, 0usize, 0u64);
    while done < count {
        let event = client
            .recv()
            .await
            .expect("replication")
            .expect("stream ended");
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let ms = commit_time_micros.div_euclid(1000) + PG_EPOCH_MS;
                tx = (final_lsn.as_u64(), xid, ms, 0);
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let decoded = decode(&data).expect("pgoutput");
                let (rel, operation, new, old) = match decoded {
                    Decoded::Relation(r) => {
                        relations.insert(r.oid, r);
                        continue;
                    }
                    Decoded::Insert { rel, new } => (rel, "insert", Some(new), None),
                    Decoded::Update { rel, old, new } => (rel, "update", Some(new), old),
                    Decoded::Delete { rel, old } => (rel, "delete", None, Some(old)),
                    _ => continue,
                };
                let rel = &relations[&rel];
                let index = tx.3;
                tx.3 += 1;
                let lsn = match wal_start.as_u64() {
                    0 => tx.0,
                    l => l,
                };
                let new = new.map(|cols| values(rel, &cols, false));
                let old = old.map(|(_, cols)| values(rel, &cols, true));
                let row = if operation == "delete" { &old } else { &new };
                let event = event_json(
                    format!("{}:{index}", fmt_lsn(tx.0)),
                    tx.2,
                    operation,
                    rel,
                    row_id(rel, row.as_ref()),
                    new,
                    old,
                    tx.1,
                    lsn,
                );
                serde_json::to_writer(&mut out, &event).expect("write");
                out.write_all(b"\n").expect("write");
                done += 1;
                pending += 1;
                if pending >= 8 * batch {
                    // A big transaction: make what is written durable, acknowledge nothing new.
                    sync(&mut out);
                    pending = 0;
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                committed = end_lsn.as_u64();
                if pending >= batch || done >= count {
                    sync(&mut out);
                    client.update_applied_lsn(Lsn::from_u64(committed));
                    pending = 0;
                }
            }
            _ => {}
        }
    }
    sync(&mut out);
    if committed > 0 {
        client.update_applied_lsn(Lsn::from_u64(committed));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
}

fn sync(out: &mut BufWriter<File>) {
    out.flush().expect("write");
    out.get_ref().sync_data().expect("fsync");
}

/// A tuple as a JSON object; `only_key`: the key columns of an old key tuple.
fn values(rel: &Relation, cols: &[Col], only_key: bool) -> Map<String, Value> {
    rel.columns
        .iter()
        .zip(cols)
        .filter(|(c, _)| c.is_key || !only_key)
        .map(|(c, v)| (c.name.clone(), col_to_json(c.type_oid, v)))
        .collect()
}

/// The key columns' values: the value itself for one column, else a JSON array.
fn row_id(rel: &Relation, row: Option<&Map<String, Value>>) -> Value {
    let Some(row) = row else { return Value::Null };
    let key: Vec<&Value> = rel
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| row.get(&c.name).unwrap_or(&Value::Null))
        .collect();
    match key.as_slice() {
        [] => Value::Null,
        [Value::String(s)] => Value::String(s.clone()),
        [v] => Value::String(v.to_string()),
        _ => Value::String(serde_json::to_string(&key).unwrap()),
    }
}

/// The `postgres_cdc` change event.
#[allow(clippy::too_many_arguments)]
fn event_json(
    event_id: String,
    timestamp_ms: i64,
    operation: &str,
    rel: &Relation,
    row_id: Value,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
    xid: u32,
    lsn: u64,
) -> Value {
    let mut event = Map::with_capacity(9);
    event.insert("event_id".into(), Value::String(event_id));
    event.insert("timestamp".into(), Value::from(timestamp_ms));
    event.insert("operation".into(), Value::String(operation.into()));
    event.insert("table".into(), Value::String(rel.qualified()));
    event.insert("row_id".into(), row_id);
    event.insert("new_values".into(), new.map_or(Value::Null, Value::Object));
    event.insert("old_values".into(), old.map_or(Value::Null, Value::Object));
    event.insert("transaction_id".into(), Value::from(xid));
    event.insert("lsn".into(), Value::String(fmt_lsn(lsn)));
    Value::Object(event)
}

fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v as u32)
}

async fn insert(url: &str, table: &str, count: usize, batch: usize, json: bool) {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection: {e}");
        }
    });
    let sql = if json {
        format!("INSERT INTO {table} (id, name, qty) SELECT id, name, qty FROM json_populate_recordset(NULL::{table}, $1::text::json)")
    } else {
        format!("INSERT INTO {table} (id, name, qty) SELECT * FROM unnest($1::int[], $2::text[], $3::int[])")
    };
    let statement = client.prepare(&sql).await.expect("prepare");
    let mut next = 0;
    while next < count {
        let end = (next + batch).min(count);
        let ids: Vec<i32> = (next as i32..end as i32).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name {i}")).collect();
        let tx = client.transaction().await.expect("begin");
        if json {
            let rows: Vec<Value> = ids
                .iter()
                .zip(&names)
                .map(|(i, n)| serde_json::json!({"id": i, "name": n, "qty": i}))
                .collect();
            let rows = serde_json::to_string(&rows).unwrap();
            tx.execute(&statement, &[&rows]).await.expect("insert");
        } else {
            tx.execute(&statement, &[&ids, &names, &ids])
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
        next = end;
    }
}
