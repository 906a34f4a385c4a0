//! `postgres_cdc` when things go wrong: the host killed mid-stream, the server restarted
//! mid-stream; and a table mirrored into another database through the `postgres` sink.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orbit_e2e::pg::{self, Cleanup};
use orbit_e2e::*;
use serde_json::Value;

fn pipeline(s: &Scratch, name: &str, slot: &str, table: &str, extra: &str, sink: &str) {
    s.write(
        "p.yaml",
        &format!(
            "name: {name}\nsource: {{ plugin: postgres_cdc, config: {{ url: \"{}\", tables: [public.{table}], slot: {slot}, heartbeat_interval: 100ms{extra} }} }}\n\
             sink: {sink}\nbatch: {{ max_records: 100, max_wait: 20ms }}\n",
            pg::URL
        ),
    );
}

/// The `id`s of the new rows in the output (inserts).
fn inserted_ids(s: &Scratch) -> Vec<i64> {
    s.lines("out.jsonl")
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["new_values"]["id"].as_i64())
        .collect()
}

#[test]
fn sigkill_mid_stream_loses_nothing_and_the_slot_is_never_confirmed_past_what_was_written() {
    let _server = pg::shared();
    let mut c = pg::client();
    let (t, slot) = (pg::unique("cdc_kill"), pg::unique("orbit_kill"));
    let _clean = Cleanup::cdc(&slot, &[&t]);
    c.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v int)"))
        .unwrap();
    let s = Scratch::new();
    pipeline(
        &s,
        "cdc-kill",
        &slot,
        &t,
        ", snapshot: never",
        "{ plugin: file, config: { path: out.jsonl } }",
    );
    let mut host = KillOnDrop(s.spawn_logged(&["p.yaml"], "first.log"));
    wait_for("the slot", Duration::from_secs(60), || {
        pg::confirmed_flush(&mut c, &slot).is_some()
    });

    // The writer: 400 transactions of 50 rows; after each, the server's WAL position, which is
    // past that transaction's end.
    const TXS: i64 = 400;
    let committed: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let writer = {
        let (committed, t) = (committed.clone(), t.clone());
        std::thread::spawn(move || {
            let mut w = pg::client();
            for i in 0..TXS {
                w.batch_execute(&format!(
                    "INSERT INTO {t} SELECT g, {i} FROM generate_series({}, {}) g",
                    i * 50,
                    i * 50 + 49
                ))
                .unwrap();
                let after = pg::current_lsn(&mut w);
                committed.lock().unwrap().push((i, after));
                std::thread::sleep(Duration::from_millis(5)); // pacing the load, not synchronisation
            }
        })
    };
    // The monitor: whenever the slot's confirmed position covers a transaction, all of that
    // transaction's rows must already be in the output.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (committed, stop, slot, out) = (
            committed.clone(),
            stop.clone(),
            slot.clone(),
            s.path("out.jsonl"),
        );
        std::thread::spawn(move || {
            let mut m = pg::client();
            let (mut checks, mut violations) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let Some(confirmed) = pg::confirmed_flush(&mut m, &slot) else {
                    continue;
                };
                let covered: Vec<i64> = committed
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, after)| *after <= confirmed)
                    .map(|(i, _)| *i)
                    .collect();
                let written: BTreeSet<i64> = read_lines(&out)
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| v["new_values"]["id"].as_i64())
                    .collect();
                for i in covered {
                    checks += 1;
                    if !(i * 50..i * 50 + 50).all(|id| written.contains(&id)) {
                        violations.push(format!(
                            "transaction {i} confirmed at {confirmed:X} but not all written"
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (checks, violations)
        })
    };
    wait_for("some output", Duration::from_secs(60), || {
        s.lines("out.jsonl").len() > 5_000
    });
    host.kill().unwrap();
    host.wait().unwrap();
    let at_kill = s.lines("out.jsonl").len();
    let _host = KillOnDrop(s.spawn_logged(&["p.yaml"], "second.log"));
    writer.join().unwrap();
    wait_for_explained(
        "every row",
        Duration::from_secs(120),
        || inserted_ids(&s).into_iter().collect::<BTreeSet<_>>().len() == (TXS * 50) as usize,
        || s.tail("second.log", 20),
    );
    // The slot catches up once everything is written.
    let end = pg::current_lsn(&mut c);
    wait_for(
        "the slot to be confirmed to the end",
        Duration::from_secs(60),
        || pg::confirmed_flush(&mut c, &slot).is_some_and(|f| f >= end),
    );
    stop.store(true, Ordering::Relaxed);
    let (checks, violations) = monitor.join().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(checks > 1000, "the monitor checked {checks} transactions");
    let ids = inserted_ids(&s);
    let duplicates = ids.len() - (TXS * 50) as usize;
    eprintln!("SIGKILL at {at_kill} lines: {duplicates} duplicates");
    assert!(at_kill < (TXS * 50) as usize, "killed too late");
    assert!(duplicates <= at_kill, "{duplicates} duplicates");
}

#[test]
fn a_postgres_restart_mid_stream_reconnects_and_loses_nothing() {
    let _server = pg::exclusive();
    let mut c = pg::client();
    let (t, slot) = (pg::unique("cdc_restart"), pg::unique("orbit_restart"));
    let _clean = Cleanup::cdc(&slot, &[&t]);
    c.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v int)"))
        .unwrap();
    let s = Scratch::new();
    pipeline(
        &s,
        "cdc-restart",
        &slot,
        &t,
        ", snapshot: never",
        "{ plugin: file, config: { path: out.jsonl } }",
    );
    let _host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    wait_for("the slot", Duration::from_secs(60), || {
        pg::confirmed_flush(&mut c, &slot).is_some()
    });
    for i in 0..10 {
        c.batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 0 FROM generate_series({}, {}) g",
            i * 100,
            i * 100 + 99
        ))
        .unwrap();
    }
    wait_for("the first 1000 rows", Duration::from_secs(60), || {
        inserted_ids(&s).len() >= 1000
    });
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    // Writes committed just before the restart must come through too.
    for i in 10..20 {
        c.batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 1 FROM generate_series({}, {}) g",
            i * 100,
            i * 100 + 99
        ))
        .unwrap();
    }
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the server", Duration::from_secs(60), || {
        postgres::Client::connect("host=127.0.0.1 user=postgres dbname=test", postgres::NoTls)
            .is_ok()
    });
    let mut c = pg::client();
    for i in 20..30 {
        c.batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 2 FROM generate_series({}, {}) g",
            i * 100,
            i * 100 + 99
        ))
        .unwrap();
    }
    wait_for_explained(
        "all 3000 rows",
        Duration::from_secs(120),
        || inserted_ids(&s).into_iter().collect::<BTreeSet<_>>().len() == 3000,
        || s.tail("host.log", 30),
    );
    let log = s.read("host.log");
    assert!(
        log.contains("retr") || log.contains("reconnect"),
        "the restart was noticed:\n{log}"
    );
}

#[test]
fn a_table_mirrored_into_another_database_is_equal_after_50000_mixed_changes() {
    let _server = pg::shared();
    let mut c = pg::client();
    let (t, slot, db) = (
        pg::unique("cdc_src"),
        pg::unique("orbit_mirror"),
        pg::unique("orbit_mirror_db"),
    );
    let mut clean = Cleanup::cdc(&slot, &[&t]);
    clean.databases.push(db.clone());
    let ddl = format!("CREATE TABLE {t} (id int PRIMARY KEY, name text, qty int, price numeric(10,2), tags text[], doc jsonb, at timestamptz)");
    c.batch_execute(&ddl).unwrap();
    c.batch_execute(&format!("INSERT INTO {t} SELECT i, 'seed ' || i, i, i / 100.0, ARRAY['s'], '{{\"seed\":true}}', now() FROM generate_series(1, 2000) i")).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut m = pg::client_for(&db);
    m.batch_execute(&ddl).unwrap();
    let s = Scratch::new();
    let sink = format!(
        "{{ plugin: postgres, config: {{ url: \"{}\", table: {t}, mode: cdc }} }}",
        pg::url_for(&db)
    );
    pipeline(&s, "cdc-mirror", &slot, &t, "", &sink);
    let _host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    // 50,000 changes: 30,000 inserts, 10,000 updates, 5,000 key changes, 5,000 deletes.
    // Each statement its own transaction over `n` consecutive ranges of 1,000 ids.
    let in_thousands =
        |c: &mut postgres::Client, n: i64, first: i64, sql: &dyn Fn(i64, i64) -> String| {
            for i in 0..n {
                c.batch_execute(&sql(first + i * 1000, first + i * 1000 + 999))
                    .unwrap();
            }
        };
    in_thousands(&mut c, 30, 10_000, &|lo, hi| {
        format!(
            "INSERT INTO {t} SELECT i, 'n' || i, i % 97, (i % 1000) / 10.0, ARRAY['a', 'b' || i], jsonb_build_object('i', i), now() FROM generate_series({lo}, {hi}) i"
        )
    });
    in_thousands(&mut c, 10, 10_000, &|lo, hi| {
        format!("UPDATE {t} SET qty = qty + 1, doc = doc || '{{\"u\":1}}' WHERE id BETWEEN {lo} AND {hi}")
    });
    in_thousands(&mut c, 5, 20_000, &|lo, hi| {
        format!("UPDATE {t} SET id = id + 100000 WHERE id BETWEEN {lo} AND {hi}")
    });
    in_thousands(&mut c, 5, 30_000, &|lo, hi| {
        format!("DELETE FROM {t} WHERE id BETWEEN {lo} AND {hi}")
    });
    let dump = |c: &mut postgres::Client| -> BTreeSet<String> {
        c.query(&format!("SELECT row_to_json(t)::text FROM {t} t"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let source = dump(&mut c);
    assert_eq!(source.len(), 2000 + 30_000 - 5_000);
    wait_for_explained(
        "the mirror to equal the source",
        Duration::from_secs(180),
        || dump(&mut m) == source,
        || s.tail("host.log", 20),
    );
    // EXCEPT both ways, as the server sees it: the mirror's rows copied back beside the source.
    let rows: Vec<String> = dump(&mut m).into_iter().collect();
    c.batch_execute("CREATE TEMP TABLE mirrored (r json)")
        .unwrap();
    let mut tx = c.transaction().unwrap();
    for r in &rows {
        tx.execute("INSERT INTO mirrored VALUES ($1::text::json)", &[r])
            .unwrap();
    }
    tx.commit().unwrap();
    let diff: i64 = c
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM (SELECT row_to_json(t)::text FROM {t} t EXCEPT SELECT r::text FROM mirrored) a) + \
                 (SELECT count(*) FROM (SELECT r::text FROM mirrored EXCEPT SELECT row_to_json(t)::text FROM {t} t) b)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(diff, 0);
}
