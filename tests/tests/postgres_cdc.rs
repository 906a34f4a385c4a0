//! The `postgres_cdc` source against the real PostgreSQL on 127.0.0.1:5432 (wal_level=logical,
//! set by scripts/test). Changes are made and results checked with an independent client (the
//! `postgres` crate). Every test makes its own tables, slot and publication and drops them.

use std::collections::BTreeMap;
use std::time::Duration;

use orbit_e2e::pg::{self, Cleanup};
use orbit_e2e::*;
use serde_json::{json, Value};

/// A pipeline from `postgres_cdc` on `tables` into `out.jsonl`.
fn cdc_pipeline(s: &Scratch, name: &str, slot: &str, tables: &[&str], extra: &str, sink: &str) {
    let tables: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
    s.write(
        "p.yaml",
        &format!(
            "name: {name}\nsource: {{ plugin: postgres_cdc, config: {{ url: \"{}\", tables: [{}], slot: {slot}, heartbeat_interval: 200ms{extra} }} }}\n\
             sink: {sink}\nbatch: {{ max_records: 100, max_wait: 20ms }}\n",
            pg::URL,
            tables.join(", ")
        ),
    );
}

const FILE_SINK: &str = "{ plugin: file, config: { path: out.jsonl } }";

fn events(s: &Scratch) -> Vec<Value> {
    s.lines("out.jsonl")
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_slot(c: &mut postgres::Client, slot: &str, s: &Scratch, log: &str) {
    wait_for_explained(
        "the replication slot",
        Duration::from_secs(60),
        || pg::confirmed_flush(c, slot).is_some(),
        || s.tail(log, 30),
    );
}

/// Applies change events in order: the table they describe, keyed by `id`.
fn replay(events: &[Value]) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    for e in events {
        let id = |v: &Value| v["id"].as_i64().unwrap();
        match e["operation"].as_str().unwrap() {
            "read" | "insert" => {
                rows.insert(id(&e["new_values"]), e["new_values"].clone());
            }
            "update" => {
                rows.remove(&id(&e["old_values"]));
                rows.insert(id(&e["new_values"]), e["new_values"].clone());
            }
            "delete" => {
                rows.remove(&id(&e["old_values"]));
            }
            "truncate" => rows.clear(),
            other => panic!("operation {other}"),
        }
    }
    rows
}

fn table_rows(c: &mut postgres::Client, t: &str) -> BTreeMap<i64, Value> {
    c.query(
        &format!("SELECT id::int8, row_to_json(t)::text FROM {t} t"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<_, i64>(0),
            serde_json::from_str(&r.get::<_, String>(1)).unwrap(),
        )
    })
    .collect()
}

#[test]
fn changes_on_two_tables_arrive_once_in_commit_order_with_typed_values() {
    let _server = pg::shared();
    let mut c = pg::client();
    let (a, b, slot) = (
        pg::unique("cdc_a"),
        pg::unique("cdc_b"),
        pg::unique("orbit_cdc"),
    );
    let _clean = Cleanup::cdc(&slot, &[&a, &b]);
    c.batch_execute(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], doc jsonb, ok boolean, \
         at timestamptz, raw bytea, big bigint); CREATE TABLE {b} (k text PRIMARY KEY, n int); \
         ALTER TABLE {b} REPLICA IDENTITY FULL"
    ))
    .unwrap();
    let s = Scratch::new();
    let envelope = "{ plugin: file, config: { path: out.jsonl, format: envelope } }";
    cdc_pipeline(
        &s,
        "cdc-order",
        &slot,
        &[&a, &b],
        ", snapshot: never",
        envelope,
    );
    let _host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    wait_slot(&mut c, &slot, &s, "host.log");
    for sql in [
        format!("INSERT INTO {a} VALUES (1, 'one', 9.99, '{{x,\"y z\"}}', '{{\"k\":[1,2]}}', true, '2024-05-01 12:34:56.5+00', '\\x00ff10', 9007199254740993)"),
        format!("INSERT INTO {b} VALUES ('k1', 1)"),
        format!("BEGIN; UPDATE {a} SET name = 'uno' WHERE id = 1; UPDATE {b} SET n = 2 WHERE k = 'k1'; COMMIT"),
        format!("INSERT INTO {a} (id, name) VALUES (2, 'two')"),
        format!("UPDATE {a} SET id = 3 WHERE id = 2"),
        format!("DELETE FROM {a} WHERE id = 3"),
        format!("DELETE FROM {b} WHERE k = 'k1'"),
        format!("ALTER TABLE {a} ADD COLUMN extra int; INSERT INTO {a} (id, name, extra) VALUES (4, 'four', 44)"),
        format!("TRUNCATE {a}"),
        format!("INSERT INTO {b} VALUES ('end', 0)"),
    ] {
        c.batch_execute(&sql).unwrap();
    }
    wait_for_explained(
        "11 change events",
        Duration::from_secs(60),
        || s.lines("out.jsonl").len() >= 11,
        || s.tail("host.log", 30),
    );
    let lines: Vec<Value> = events(&s);
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l["value"].as_str().unwrap()).unwrap())
        .collect();
    let summary: Vec<(String, String, Value)> = values
        .iter()
        .map(|v| {
            (
                v["operation"].as_str().unwrap().to_string(),
                v["table"].as_str().unwrap().to_string(),
                v["row_id"].clone(),
            )
        })
        .collect();
    let (pa, pb) = (format!("public.{a}"), format!("public.{b}"));
    let expect = |op: &str, t: &str, id: Value| (op.to_string(), t.to_string(), id);
    assert_eq!(
        summary,
        [
            expect("insert", &pa, json!("1")),
            expect("insert", &pb, json!("k1")),
            expect("update", &pa, json!("1")),
            expect("update", &pb, json!("k1")),
            expect("insert", &pa, json!("2")),
            expect("update", &pa, json!("3")),
            expect("delete", &pa, json!("3")),
            expect("delete", &pb, json!("k1")),
            expect("insert", &pa, json!("4")),
            expect("truncate", &pa, Value::Null),
            expect("insert", &pb, json!("end")),
        ],
        "every change once, in commit order"
    );
    assert_eq!(
        values[0]["new_values"],
        json!({"id": 1, "name": "one", "price": "9.99", "tags": ["x", "y z"], "doc": {"k": [1, 2]}, "ok": true,
               "at": "2024-05-01T12:34:56.5Z", "raw": "AP8Q", "big": 9007199254740993_i64})
    );
    assert_eq!(values[0]["old_values"], Value::Null);
    assert_eq!(lines[0]["key"], json!("{\"id\":1}"));
    assert_eq!(lines[0]["stream"], json!(pa));
    assert_eq!(lines[0]["headers"]["operation"], json!("insert"));
    assert_eq!(lines[0]["headers"]["table"], json!(pa));
    assert_eq!(lines[0]["headers"]["lsn"], values[0]["lsn"]);
    // Default replica identity: the old key; FULL: the whole old row.
    assert_eq!(values[2]["old_values"], json!({"id": 1}));
    assert_eq!(values[3]["old_values"], json!({"k": "k1", "n": 1}));
    assert_eq!(values[3]["new_values"], json!({"k": "k1", "n": 2}));
    assert_eq!(
        values[2]["transaction_id"], values[3]["transaction_id"],
        "one transaction"
    );
    assert_ne!(values[2]["event_id"], values[3]["event_id"]);
    assert_eq!(
        values[5]["old_values"],
        json!({"id": 2}),
        "a key change carries the old key"
    );
    assert_eq!(values[6]["old_values"], json!({"id": 3}));
    assert_eq!(values[6]["new_values"], Value::Null);
    assert_eq!(values[7]["old_values"], json!({"k": "k1", "n": 2}));
    assert_eq!(
        values[8]["new_values"]["extra"],
        json!(44),
        "a column added mid-stream appears"
    );
    assert_eq!(values[9]["new_values"], Value::Null);
    let lsns: Vec<u64> = values
        .iter()
        .map(|v| pg::parse_lsn(v["lsn"].as_str().unwrap()).unwrap())
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[0] <= w[1]),
        "LSNs in commit order: {lsns:?}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = values[0]["timestamp"].as_i64().unwrap();
    assert!(
        (now_ms - ts).abs() < 120_000,
        "commit time in ms: {ts} vs now {now_ms}"
    );
}

#[test]
fn an_initial_snapshot_taken_while_writing_replays_into_the_same_table() {
    let _server = pg::shared();
    let mut c = pg::client();
    let (t, slot) = (pg::unique("cdc_snap"), pg::unique("orbit_snap"));
    let _clean = Cleanup::cdc(&slot, &[&t]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text, n bigint); \
         INSERT INTO {t} SELECT i, 'row ' || i, i * 10 FROM generate_series(1, 100000) i"
    ))
    .unwrap();
    let s = Scratch::new();
    cdc_pipeline(&s, "cdc-snapshot", &slot, &[&t], "", FILE_SINK);
    // Another connection keeps writing from before the slot exists until the snapshot is out.
    let writer_table = t.clone();
    let out_path = s.path("out.jsonl");
    let writer = std::thread::spawn(move || {
        let mut w = pg::client();
        let mut i = 0i64;
        loop {
            let id = 100_001 + i;
            w.batch_execute(&format!(
                "INSERT INTO {writer_table} VALUES ({id}, 'new', {i}); \
                 UPDATE {writer_table} SET n = n + 1, v = 'updated' WHERE id = {}; \
                 DELETE FROM {writer_table} WHERE id = {}",
                1 + (i * 7919) % 100_000,
                1 + (i * 104_729 + 13) % 100_000
            ))
            .unwrap();
            i += 1;
            if i >= 300 && read_lines(&out_path).len() >= 100_000 {
                return i;
            }
        }
    });
    let _host = KillOnDrop(s.spawn_logged(&["p.yaml"], "host.log"));
    let writes = writer.join().unwrap();
    let expected = table_rows(&mut c, &t);
    wait_for_explained(
        "the replayed events to match the table",
        Duration::from_secs(120),
        || replay(&events(&s)) == expected,
        || {
            format!(
                "{} events; {}",
                s.lines("out.jsonl").len(),
                s.tail("host.log", 20)
            )
        },
    );
    let ev = events(&s);
    let reads = ev.iter().filter(|e| e["operation"] == "read").count();
    let changes = ev.len() - reads;
    eprintln!("snapshot: {reads} rows read, {changes} changes streamed, {writes} writer rounds");
    assert!(
        reads >= 99_000 && reads <= 100_000 + writes as usize,
        "{reads}"
    );
    assert!(
        changes > 0,
        "the writer's changes after the snapshot point were streamed"
    );
}

#[test]
fn a_missing_table_a_table_without_key_a_busy_slot_and_a_bad_login_are_named_with_what_to_do() {
    let _server = pg::shared();
    let mut c = pg::client();
    let (t, nopk, slot) = (
        pg::unique("cdc_ok"),
        pg::unique("cdc_nopk"),
        pg::unique("orbit_err"),
    );
    let _clean = Cleanup::cdc(&slot, &[&t, &nopk]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY); CREATE TABLE {nopk} (v int)"
    ))
    .unwrap();
    let s = Scratch::new();

    cdc_pipeline(
        &s,
        "cdc-missing",
        &slot,
        &["no_such_cdc_table"],
        ", snapshot: never",
        FILE_SINK,
    );
    let err = text(&s.run(&["p.yaml"]).stderr);
    assert!(
        err.contains("public.no_such_cdc_table") && err.contains("does not exist"),
        "{err}"
    );

    cdc_pipeline(
        &s,
        "cdc-nopk",
        &slot,
        &[&nopk],
        ", snapshot: never",
        FILE_SINK,
    );
    let err = text(&s.run(&["p.yaml"]).stderr);
    assert!(
        err.contains(&nopk)
            && err.contains("REPLICA IDENTITY FULL")
            && err.contains("operations: [insert]"),
        "{err}"
    );

    s.write(
        "login.yaml",
        &format!(
            "name: cdc-login\nsource: {{ plugin: postgres_cdc, config: {{ url: \"postgres://no_such_role_x:s3cretpw@127.0.0.1:5432/test\", tables: [public.{t}], slot: {slot} }} }}\nsink: {FILE_SINK}\n"
        ),
    );
    let err = text(&s.run(&["login.yaml"]).stderr);
    assert!(
        err.contains("no_such_role_x") && err.contains("check the user and password"),
        "{err}"
    );
    assert!(!err.contains("s3cretpw"), "{err}");

    // Two pipelines on one slot: the second is told who holds it, and keeps retrying.
    cdc_pipeline(&s, "cdc-busy", &slot, &[&t], ", snapshot: never", FILE_SINK);
    let _first = KillOnDrop(s.spawn_logged_in("first-state", &["p.yaml"], "first.log"));
    wait_for("the slot to be active", Duration::from_secs(60), || {
        c.query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
    });
    let _second = KillOnDrop(s.spawn_logged_in("second-state", &["p.yaml"], "second.log"));
    wait_for_explained(
        "the second host to name the busy slot",
        Duration::from_secs(60),
        || {
            s.read("second.log")
                .contains("is in use by another connection")
        },
        || s.tail("second.log", 20),
    );

    // The slot's lag and confirmed position are the plugin's metrics.
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .unwrap();
    let admin = orbit_e2e::admin::Admin::from_log(&s, "first.log");
    wait_for("the slot metrics", Duration::from_secs(60), || {
        let m = admin.metrics();
        m.value(
            "orbit_plugin_postgres_slot_lag_bytes",
            &[("pipeline", "cdc-busy")],
        )
        .is_some()
            && m.value(
                "orbit_plugin_postgres_confirmed_flush_lsn",
                &[("pipeline", "cdc-busy")],
            )
            .is_some_and(|v| v > 0.0)
    });
}
