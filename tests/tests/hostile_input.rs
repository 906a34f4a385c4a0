//! Careless and hostile input found by probing the release build: each is refused with the
//! file, the reason and what to do, and never crashes the host.

use orbit_e2e::*;

/// `orbit-host plugins --plugin-dir DIR`: its exit code (None when killed by a signal), stderr.
fn list(s: &Scratch, dir: &std::path::Path) -> (Option<i32>, String) {
    let out = s.run(&["plugins", "--plugin-dir", &dir.display().to_string()]);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_truncated_plugin_file_is_refused_naming_it_instead_of_crashing_the_host() {
    let s = Scratch::new();
    build_workspace();
    let whole = std::fs::read(target_dir().join("liborbit_plugin_json.so")).unwrap();
    let dir = s.path("bad");
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [4096, whole.len() / 2] {
        std::fs::write(dir.join("t.so"), &whole[..cut]).unwrap();
        let (code, err) = list(&s, &dir);
        assert_eq!(
            code,
            Some(1),
            "cut at {cut}: exit by signal or wrong code: {err}"
        );
        assert!(
            err.contains("t.so refused: it is truncated")
                && err.contains("copy the whole file again"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn a_directory_a_dangling_symlink_or_a_symlink_loop_on_the_plugin_path_is_reported() {
    let s = Scratch::new();
    let dir = plugin_dir_with_core_plugins(&s);
    std::fs::create_dir(dir.join("x.so")).unwrap();
    std::os::unix::fs::symlink(dir.join("missing.so.real"), dir.join("dangling.so")).unwrap();
    std::os::unix::fs::symlink(dir.join("loop-b.so"), dir.join("loop-a.so")).unwrap();
    std::os::unix::fs::symlink(dir.join("loop-a.so"), dir.join("loop-b.so")).unwrap();
    let (code, err) = list(&s, &dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("x.so refused: it is a directory"), "{err}");
    assert!(
        err.contains("dangling.so refused: it is a symbolic link that leads to no file"),
        "{err}"
    );
    assert!(
        err.contains("loop-a.so refused: it is a symbolic link"),
        "{err}"
    );
    assert!(
        err.contains("loop-b.so refused: it is a symbolic link"),
        "{err}"
    );
    // The good plugins beside them still load and are listed.
    let out = s.run(&["plugins", "--plugin-dir", &dir.display().to_string()]);
    assert!(text(&out.stdout).contains("json"), "{}", text(&out.stdout));
}

#[test]
fn sizes_that_would_panic_at_run_time_are_refused_by_validate() {
    let s = Scratch::new();
    let huge = u64::MAX;
    for (name, yaml, key) in [
        (
            "buffer.yaml",
            format!("name: b\nsource: {{ plugin: generate, config: {{ count: 1 }} }}\nsink: {{ plugin: blackhole }}\nbatch: {{ buffer: {huge} }}\n"),
            "batch.buffer",
        ),
        (
            "sse.yaml",
            format!("name: s\nsource: {{ plugin: generate, config: {{ count: 1 }} }}\nsink: {{ plugin: sse, config: {{ address: \"127.0.0.1:0\", client_buffer: {huge} }} }}\n"),
            "client_buffer",
        ),
    ] {
        s.write(name, &yaml);
        let out = s.run(&["validate", name]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(key) && err.contains("out of range") || err.contains("it must be from 1 to"),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn the_json_transform_leaves_numbers_byte_for_byte_and_never_replaces_a_scalar() {
    let s = Scratch::new();
    let lines = [
        r#"{"a":12345678901234567890123,"b":-9223372036854775809,"c":0.1000000000000000055511151231257827,"d":1e2}"#,
        r#"{"n":{"x":1.50},"m":[1e400]}"#,
        r#"{"meta":5}"#,
    ];
    s.write("in.jsonl", &(lines.join("\n") + "\n"));
    s.write(
        "p.yaml",
        "name: numbers
source: { plugin: file, config: { path: in.jsonl } }
transforms:
  - plugin: json
    config: { set: { meta.source: orbit } }
sink: { plugin: file, config: { path: out.jsonl } }
errors:
  tolerance: all
  dead_letter: { plugin: file, config: { path: dlq.jsonl, format: envelope } }
",
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        s.lines("out.jsonl"),
        [
            format!(
                "{},\"meta\":{{\"source\":\"orbit\"}}}}",
                &lines[0][..lines[0].len() - 1]
            ),
            format!(
                "{},\"meta\":{{\"source\":\"orbit\"}}}}",
                &lines[1][..lines[1].len() - 1]
            ),
        ]
    );
    // `meta` is a number in the third record: rejected with the reason, not overwritten.
    let dlq = s.lines("dlq.jsonl");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let v: serde_json::Value = serde_json::from_str(&dlq[0]).unwrap();
    assert_eq!(v["value"], lines[2]);
    let reason = v["headers"]["orbit.dlq.error"].as_str().unwrap_or_default();
    assert!(reason.contains("`meta` is a number, not an object"), "{v}");
}

#[test]
fn deep_nesting_a_bom_and_a_non_utf8_byte_get_clear_answers_at_once() {
    let s = Scratch::new();
    let good = "name: g\nsource: { plugin: generate, config: { count: 1 } }\nsink: { plugin: blackhole }\n";
    s.write("deep.yaml", &format!("{good}x: {}\n", "[".repeat(100_000)));
    // Took 40 s and more in the YAML scanner; refused before parsing now.
    let out = s.run_within(
        &["validate", "deep.yaml"],
        std::time::Duration::from_secs(20),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("deep.yaml:4:") && err.contains("nests deeper than 64 levels"),
        "{err}"
    );

    std::fs::write(s.path("bom.yaml"), format!("\u{feff}{good}")).unwrap();
    let out = s.run(&["validate", "bom.yaml"]);
    assert!(
        out.status.success(),
        "a BOM is refused: {}",
        text(&out.stderr)
    );

    let mut latin1 = good.as_bytes().to_vec();
    latin1.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(s.path("latin1.yaml"), latin1).unwrap();
    let out = s.run(&["validate", "latin1.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("latin1.yaml:4:6")
            && err.contains("not valid UTF-8")
            && err.contains("save the file as UTF-8"),
        "{err}"
    );
}

#[test]
fn a_max_wait_the_source_timeout_cannot_hold_is_refused_by_validate() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: w\nsource:\n  plugin: generate\n  config: { count: 1 }\n  policy: { timeout: 2s }\nsink: { plugin: blackhole }\nbatch: { max_wait: 5s }\n",
    );
    let out = s.run(&["validate", "p.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("p.yaml:7:")
            && err.contains("`max_wait` is 5s, more than half the source's call timeout (2s)"),
        "{err}"
    );
    // The default timeout (60s) holds a 20s max_wait.
    s.write(
        "ok.yaml",
        "name: w\nsource: { plugin: generate, config: { count: 1 } }\nsink: { plugin: blackhole }\nbatch: { max_wait: 20s }\n",
    );
    let out = s.run(&["validate", "ok.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
