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
