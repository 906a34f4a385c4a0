//! The `postgres` sink against the real PostgreSQL on 127.0.0.1:5432, results read back with an
//! independent client (the `postgres` crate).

use orbit_e2e::pg::{self, Cleanup};
use orbit_e2e::*;
use serde_json::Value;

fn rows(c: &mut postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// `dlq.jsonl` holds `count` dead letters, which between them mention every one of `needles`.
fn assert_dead_letters(s: &Scratch, count: usize, needles: &[&str]) {
    let dlq: Vec<Value> = s
        .lines("dlq.jsonl")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let all = serde_json::to_string(&dlq).unwrap();
    assert_eq!(dlq.len(), count, "{all}");
    for needle in needles {
        assert!(
            all.contains(needle),
            "no `{needle}` in the dead letters: {all}"
        );
    }
}

#[test]
fn inserts_commit_and_each_refused_row_is_dead_lettered_alone_with_the_database_message() {
    let _server = pg::shared();
    let mut c = pg::client();
    let t = pg::unique("sink_ins");
    let _clean = Cleanup::tables(&[&t]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, name text NOT NULL, qty int CHECK (qty >= 0), \
         tags text[], doc jsonb, raw bytea, at timestamptz); INSERT INTO {t} VALUES (5, 'already', 1)"
    ))
    .unwrap();
    let s = Scratch::new();
    let mut input = Vec::new();
    for i in 0..20 {
        let row = match i {
            5 => r#"{"id":5,"name":"duplicate key"}"#.to_string(),
            9 => r#"{"id":9,"name":null}"#.to_string(),
            13 => r#"{"id":13,"name":"negative","qty":-1}"#.to_string(),
            17 => r#"{"id":17,"name":"unknown field","colour":"red"}"#.to_string(),
            _ => format!(
                r#"{{"id":{i},"name":"n{i}","qty":{i},"tags":["a","b c"],"doc":{{"k":{i}}},"raw":"AP8Q","at":"2024-05-01T12:34:56.5Z"}}"#
            ),
        };
        input.push(row);
    }
    s.write("in.jsonl", &(input.join("\n") + "\n"));
    s.write(
        "p.yaml",
        &format!(
            "name: pg-insert
source: {{ plugin: file, config: {{ path: in.jsonl }} }}
sink: {{ plugin: postgres, config: {{ url: \"{}\", table: public.{t}, mode: insert }} }}
batch: {{ max_records: 8 }}
errors:
  tolerance: all
  dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl, format: envelope }} }}
",
            pg::URL
        ),
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: Vec<String> = rows(&mut c, &format!("SELECT id::text FROM {t} x ORDER BY x.id"));
    let expected: Vec<String> = (0..20)
        .filter(|i| ![9, 13, 17].contains(i))
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        ids, expected,
        "every good row written once, the refused ones not"
    );
    assert_eq!(
        rows(&mut c, &format!("SELECT name FROM {t} WHERE id = 5")),
        ["already"],
        "the duplicate did not overwrite the row"
    );
    // Values arrive typed: arrays, JSON, base64 bytea, timestamps.
    assert_eq!(
        rows(&mut c, &format!("SELECT concat_ws('|', tags::text, doc::text, encode(raw, 'hex'), at AT TIME ZONE 'UTC') FROM {t} WHERE id = 3")),
        [r#"{a,"b c"}|{"k": 3}|00ff10|2024-05-01 12:34:56.5"#]
    );
    assert_dead_letters(
        &s,
        4,
        &[
            "duplicate key value",
            "not-null constraint",
            "check constraint",
            "colour",
        ],
    );
}

#[test]
fn upsert_and_cdc_modes_apply_changes_so_rows_end_as_the_last_change_says() {
    let _server = pg::shared();
    let mut c = pg::client();
    let t = pg::unique("sink_cdc");
    let _clean = Cleanup::tables(&[&t]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text, n int)"
    ))
    .unwrap();
    let s = Scratch::new();
    let ev = |op: &str, new: &str, old: &str| {
        format!(
            r#"{{"operation":"{op}","table":"public.x","new_values":{new},"old_values":{old}}}"#
        )
    };
    let events = [
        ev("read", r#"{"id":1,"v":"a","n":1}"#, "null"),
        ev("insert", r#"{"id":2,"v":"b","n":2}"#, "null"),
        ev("update", r#"{"id":1,"v":"a2","n":10}"#, r#"{"id":1}"#),
        ev(
            "update",
            r#"{"id":1,"v":"a3","n":"__orbit_unchanged_toast__"}"#,
            r#"{"id":1}"#,
        ),
        ev("insert", r#"{"id":3,"v":"c","n":3}"#, "null"),
        ev("update", r#"{"id":4,"v":"c","n":3}"#, r#"{"id":3}"#),
        ev("delete", "null", r#"{"id":2}"#),
        ev("truncate", "null", "null"),
        ev("insert", r#"{"id":7,"v":"after","n":7}"#, "null"),
        ev("update", r#"{"id":7,"v":"after2","n":8}"#, r#"{"id":7}"#),
        ev("insert", r#"{"id":8,"v":"x","n":8}"#, "null"),
        ev("update", r#"{"id":9,"v":"moved","n":8}"#, r#"{"id":8}"#),
        ev(
            "update",
            r#"{"id":10,"v":"moved again","n":8}"#,
            r#"{"id":9}"#,
        ),
        ev("insert", r#"{"id":1,"v":"a4","n":1}"#, "null"),
        ev(
            "update",
            r#"{"id":1,"v":"a5","n":"__orbit_unchanged_toast__"}"#,
            r#"{"id":1}"#,
        ),
    ];
    s.write("in.jsonl", &(events.join("\n") + "\n"));
    s.write(
        "p.yaml",
        &format!(
            "name: pg-cdc\nsource: {{ plugin: file, config: {{ path: in.jsonl }} }}\n\
             sink: {{ plugin: postgres, config: {{ url: \"{}\", table: {t}, mode: cdc }} }}\nbatch: {{ max_records: 100 }}\n",
            pg::URL
        ),
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        rows(
            &mut c,
            &format!("SELECT concat_ws(',', id, v, n) FROM {t} ORDER BY id")
        ),
        ["1,a5,1", "7,after2,8", "10,moved again,8"]
    );

    // One key written two ways in one batch: one statement would touch the row twice
    // (cardinality violation); the replay applies the two one by one, in order.
    s.write(
        "twice.jsonl",
        "{\"id\":20,\"v\":\"first\"}\n{\"id\":\"20\",\"v\":\"second\"}\n",
    );
    s.write(
        "twice.yaml",
        &format!(
            "name: pg-twice\nsource: {{ plugin: file, config: {{ path: twice.jsonl }} }}\n\
             sink: {{ plugin: postgres, config: {{ url: \"{}\", table: {t}, mode: upsert }} }}\n",
            pg::URL
        ),
    );
    let out = s.run(&["twice.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(finished_once(&text(&out.stderr)).dead_lettered, 0);
    assert_eq!(
        rows(&mut c, &format!("SELECT v FROM {t} WHERE id = 20")),
        ["second"]
    );
}

#[test]
fn a_missing_table_or_a_server_that_is_down_is_named_without_the_password() {
    let _server = pg::shared();
    let s = Scratch::new();
    s.write("in.jsonl", "{\"id\":1}\n");
    s.write(
        "missing.yaml",
        "name: pg-missing\nsource: { plugin: file, config: { path: in.jsonl } }\n\
         sink: { plugin: postgres, config: { url: \"postgres://postgres:hunter2secret@127.0.0.1:5432/test\", table: no_such_table_here } }\n",
    );
    let out = s.run(&["missing.yaml"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no_such_table_here") && err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains("create the table"), "{err}");
    assert!(!err.contains("hunter2secret"), "{err}");

    let port = free_port();
    s.write(
        "down.yaml",
        &format!(
            "name: pg-down\nsource: {{ plugin: file, config: {{ path: in.jsonl }} }}\n\
             sink: {{ plugin: postgres, config: {{ url: \"postgres://postgres:hunter2secret@127.0.0.1:{port}/test\", table: t, connect_timeout: 1s }}, \
             policy: {{ retry: {{ max_attempts: 2, initial_backoff: 10ms }} }} }}\n"
        ),
    );
    let out = s.run(&["down.yaml"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) || err.contains("connect"),
        "{err}"
    );
    assert!(!err.contains("hunter2secret"), "{err}");
}

#[test]
fn scalar_columns_go_as_typed_arrays_and_each_value_the_type_refuses_is_dead_lettered_alone() {
    let _server = pg::shared();
    let mut c = pg::client();
    let t = pg::unique("sink_types");
    let _clean = Cleanup::tables(&[&t]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int8 PRIMARY KEY, s int2, i int4, f float8, b bool, txt text, \
         vc varchar(5), num numeric, at timestamptz, u uuid, j jsonb, js json, raw bytea, \
         d date DEFAULT '2000-01-01')"
    ))
    .unwrap();
    let full = |id: u32, rest: &str| format!(r#"{{"id":{id},{rest}}}"#);
    let input = [
        // Every value in the JSON form of its column's type.
        full(
            1,
            r#""s":2,"i":3,"f":1.5,"b":true,"txt":"t","vc":"abc","num":"12.345","at":"2024-05-01T12:34:56.5Z","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","j":{"k":[1,"x"]},"js":[1,2],"raw":"AP8Q""#,
        ),
        // The same columns, the values in forms the types read from text.
        full(
            2,
            r#""s":"2","i":"3","f":"1.5","b":"yes","txt":42,"vc":"x","num":7,"at":"2024-05-01 12:34:56+02","u":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","j":"str","js":null,"raw":null"#,
        ),
        full(3, r#""s":40000"#),
        full(4, r#""vc":"toolong""#),
        full(5, r#""u":"nope""#),
        full(6, r#""txt":{"nested":[true]}"#),
        full(7, r#""i":2147483648"#),
        full(8, r#""txt":"a\u0000b""#),
        full(9, r#""f":1e300,"b":false"#),
        full(10, r#""i":-5,"num":1.25"#),
    ];
    let s = Scratch::new();
    s.write("in.jsonl", &(input.join("\n") + "\n"));
    s.write(
        "p.yaml",
        &format!(
            "name: pg-types
source: {{ plugin: file, config: {{ path: in.jsonl }} }}
sink: {{ plugin: postgres, config: {{ url: \"{}\", table: {t}, mode: insert }} }}
batch: {{ max_records: 100 }}
errors:
  tolerance: all
  dead_letter: {{ plugin: file, config: {{ path: dlq.jsonl, format: envelope }} }}
",
            pg::URL
        ),
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = rows(
        &mut c,
        &format!(
            "SELECT concat_ws('|', id, s, i, f, b, txt, vc, num, at AT TIME ZONE 'UTC', u, j, js, \
             encode(raw, 'hex'), d) FROM {t} ORDER BY id"
        ),
    );
    assert_eq!(
        got,
        [
            r#"1|2|3|1.5|t|t|abc|12.345|2024-05-01 12:34:56.5|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{"k": [1, "x"]}|[1,2]|00ff10|2000-01-01"#,
            r#"2|2|3|1.5|t|42|x|7|2024-05-01 10:34:56|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|"str"|2000-01-01"#,
            r#"6|{"nested":[true]}|2000-01-01"#,
            "9|1e+300|f|2000-01-01",
            "10|-5|1.25|2000-01-01",
        ]
    );
    // Ids 3, 4, 5, 7 and 8 are refused.
    assert_dead_letters(
        &s,
        5,
        &[
            "smallint",
            "character varying(5)",
            "uuid",
            "integer",
            "0x00",
        ],
    );
}

/// Batches are pipelined on one connection. Killing that connection mid-stream fails a batch
/// and every batch queued behind it; the host resends them in order, so no upsert of a key
/// lands after a later one of the same key, and every key ends at its last version.
#[test]
fn killed_connections_lose_nothing_and_no_batch_overtakes_an_earlier_one() {
    let _server = pg::shared();
    let mut c = pg::client();
    let t = pg::unique("sink_kill");
    let _clean = Cleanup::tables(&[&t]);
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, version int NOT NULL)"
    ))
    .unwrap();
    const KEYS: usize = 997;
    const N: usize = 300_000;
    let input: String = (0..N)
        .map(|i| format!("{{\"id\":{},\"version\":{i}}}\n", i % KEYS))
        .collect();
    let s = Scratch::new();
    s.write("in.jsonl", &input);
    s.write(
        "p.yaml",
        &format!(
            "name: pg-kill
source: {{ plugin: file, config: {{ path: in.jsonl }} }}
sink:
  plugin: postgres
  config: {{ url: \"{}\", table: {t}, mode: upsert }}
  max_in_flight: 4
  policy: {{ retry: {{ initial_backoff: 5ms, max_backoff: 50ms }}, circuit_breaker: {{ failure_threshold: 1000 }} }}
batch: {{ max_records: 250 }}
",
            pg::URL
        ),
    );
    let mut host = s.spawn_logged(&["p.yaml"], "host.log");
    // Kill the sink's connection whenever it is busy with the table, until the host is done.
    let mut killer = pg::client();
    let kill = format!(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'orbit' AND query LIKE '%{t}%') k"
    );
    let mut kills = 0;
    let status = loop {
        if let Some(status) = host.try_wait().unwrap() {
            break status;
        }
        if kills < 20 {
            kills += killer.query_one(&kill, &[]).unwrap().get::<_, i64>(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let log = s.read("host.log");
    assert!(status.success(), "{log}");
    assert!(
        kills > 0,
        "no connection was killed: the run was too short\n{log}"
    );
    let done = finished_once(&log);
    assert_eq!((done.written, done.dead_lettered), (N as u64, 0), "{log}");
    assert!(
        sink_in_flight_max(&log) > 1,
        "batches were not pipelined\n{log}"
    );
    let wrong: Vec<String> = rows(
        &mut c,
        &format!(
            "SELECT concat_ws(' ', id, version) FROM {t} \
             WHERE version <> (SELECT max(v) FROM generate_series(id, {N} - 1, {KEYS}) v) ORDER BY id"
        ),
    );
    assert!(
        wrong.is_empty(),
        "keys not at their last version: {wrong:?}"
    );
    let count: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(count, KEYS as i64);
}
