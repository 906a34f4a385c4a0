//! Hot reload of a running host (`--watch`, `POST /reload`): edits applied, invalid edits kept
//! out with the error on `/status`, files that come and go, and a file put back while its
//! pipeline drains for removal.

use std::time::Duration;

use orbit_e2e::admin::Admin;
use orbit_e2e::*;

const LONG: Duration = Duration::from_secs(60);

/// Writes `text` to `path` the way many editors save: a temporary file renamed over it.
fn save_by_rename(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn hot_reload_applies_edits_keeps_bad_ones_out_and_follows_files_in_and_out() {
    build_workspace();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("pipes")).unwrap();
    let a = s.path("pipes/a.yaml");
    let v1 = "name: a\nsource: { plugin: generate, config: { rate: 500 } }\n\
              sink: { plugin: file, config: { path: out.jsonl } }\n";
    std::fs::write(&a, v1).unwrap();
    let mut host = KillOnDrop(s.spawn_logged(&["--watch", "pipes"], "host.log"));
    let admin = Admin::from_log(&s, "host.log");
    admin.wait_state("a", "RUNNING", LONG);
    wait_for("records", LONG, || s.lines("out.jsonl").len() > 100);

    // A transform added to the running pipeline shows in newly written records.
    let v2 = "name: a\nsource: { plugin: generate, config: { rate: 500 } }\n\
              transforms: [ { plugin: json, config: { set: { tag: v2 } } } ]\n\
              sink: { plugin: file, config: { path: out.jsonl } }\n";
    save_by_rename(&a, v2);
    wait_for_explained(
        "records of the new version",
        Duration::from_secs(20),
        || s.read("out.jsonl").contains(r#""tag":"v2""#),
        || s.tail("host.log", 20),
    );
    assert!(matches!(host.try_wait(), Ok(None)), "same process");

    // An edit that does not load keeps the running version, with the error on /status.
    save_by_rename(&a, "name: a\nsource: { plugin: generate\n");
    let mut status = serde_json::Value::Null;
    wait_for_explained(
        "the reload error on /status",
        Duration::from_secs(20),
        || {
            status = admin.get("/pipelines/a/status").json();
            status["reload_error"].is_string()
        },
        || s.tail("host.log", 20),
    );
    let error = status["reload_error"].as_str().unwrap();
    assert!(error.contains("a.yaml:"), "file:line:col in {error}");
    assert_eq!(status["state"], "RUNNING", "{status}");
    let n = s.lines("out.jsonl").len();
    wait_for("the old version to keep writing", LONG, || {
        s.lines("out.jsonl").len() > n + 50
    });

    // A new file starts a pipeline; removing it stops and forgets it.
    std::fs::write(
        s.path("pipes/b.yaml"),
        "name: b\nsource: { plugin: generate, config: { rate: 100 } }\n\
         sink: { plugin: file, config: { path: b.jsonl } }\n",
    )
    .unwrap();
    admin.wait_state("b", "RUNNING", Duration::from_secs(20));
    std::fs::remove_file(s.path("pipes/b.yaml")).unwrap();
    wait_for("b to be removed", Duration::from_secs(20), || {
        admin.get("/pipelines/b/status").status == 404
    });
    let m = admin.metrics();
    assert_eq!(m.value("orbit_pipeline_state", &[("pipeline", "b")]), None);

    // Fixing the file clears the error; POST /reload reports it unchanged.
    save_by_rename(&a, v2);
    wait_for("the reload error to clear", Duration::from_secs(20), || {
        admin.get("/pipelines/a/status").json()["reload_error"].is_null()
    });
    let report = admin.send("POST", "/reload", None);
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(
        report.json()["unchanged"],
        serde_json::json!(["a"]),
        "{}",
        report.body
    );

    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, LONG).success());
    // Across the reload every record was written once, in order (the old version drained
    // and saved its offsets before the new one started).
    let seq = seqs(&s.lines("out.jsonl"));
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());
}

/// A file removed and put back while its pipeline still drains for removal: the pipeline is not
/// lost; it runs the new version once drained, and no record is lost.
#[test]
fn a_file_put_back_while_its_pipeline_drains_for_removal_runs_again() {
    build_workspace();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("pipes")).unwrap();
    let c = s.path("pipes/c.yaml");
    // Each batch is confirmed 2 s after it began: a drain takes that long.
    let v1 = "name: c\nsource: { plugin: generate, config: { rate: 200 } }\n\
              sink: { plugin: chaos, config: { path: out.jsonl, finish_after: 2s } }\n";
    std::fs::write(&c, v1).unwrap();
    let mut host = KillOnDrop(s.spawn_logged(&["pipes"], "host.log"));
    let admin = Admin::from_log(&s, "host.log");
    admin.wait_state("c", "RUNNING", LONG);
    wait_for("records", LONG, || s.lines("out.jsonl").len() > 50);

    std::fs::rename(&c, s.path("c.yaml.away")).unwrap();
    let report = admin.send("POST", "/reload", None).json();
    assert_eq!(report["removed"], serde_json::json!(["c"]), "{report}");
    let v2 = "name: c\nsource: { plugin: generate, config: { rate: 200 } }\n\
              transforms: [ { plugin: json, config: { set: { tag: v2 } } } ]\n\
              sink: { plugin: chaos, config: { path: out.jsonl, finish_after: 2s } }\n";
    std::fs::write(&c, v2).unwrap();
    let report = admin.send("POST", "/reload", None).json();
    assert_eq!(report["restarted"], serde_json::json!(["c"]), "{report}");

    wait_for_explained(
        "records of the new version",
        LONG,
        || s.read("out.jsonl").contains(r#""tag":"v2""#),
        || {
            format!(
                "{}\n{}",
                admin.get("/pipelines").body,
                s.tail("host.log", 20)
            )
        },
    );
    assert_eq!(admin.state("c"), "RUNNING");
    signal(&host, libc::SIGTERM);
    assert!(wait_exit(&mut host, LONG).success());
    let mut seq = seqs(&s.lines("out.jsonl"));
    seq.sort_unstable();
    seq.dedup();
    assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>(), "none lost");
}
