//! Plugins built outside the workspace: the one docs/PLUGINS.md describes must build and run;
//! one built against a plugin-api with another layout must be refused with a clear error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use orbit_e2e::*;

/// The fenced code block of docs/PLUGINS.md whose first line is `first_line`.
fn doc_block(first_line: &str) -> String {
    let doc = std::fs::read_to_string(workspace_root().join("docs/PLUGINS.md")).unwrap();
    let mut in_block = false;
    let mut block = Vec::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            if in_block {
                if block.first().map(|l: &&str| l.trim()) == Some(first_line) {
                    return block.join("\n") + "\n";
                }
                block.clear();
            }
            in_block = !in_block;
            continue;
        }
        if in_block {
            block.push(line);
        }
    }
    panic!("docs/PLUGINS.md has no block starting with {first_line}");
}

/// The `[[package]]` entries of a Cargo.lock as (name, version, source, checksum) lines, for
/// comparing two lockfiles without a TOML parser.
fn locked_packages(lock: &str) -> BTreeSet<String> {
    lock.split("[[package]]")
        .skip(1)
        .map(|entry| {
            entry
                .lines()
                .filter(|l| {
                    ["name = ", "version = ", "source = ", "checksum = "]
                        .iter()
                        .any(|k| l.starts_with(k))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo {args:?} in {} failed",
        dir.display()
    );
}

/// Writes the documented plugin into `dir` as a crate named `name`, with `features` enabled on
/// orbit-plugin-api, builds it into a shared fixtures target dir and returns the library.
///
/// It builds against the workspace's Cargo.lock: the lockfile is copied in, resolved only for
/// the new crate itself (`cargo update --workspace` keeps every locked version), checked to pin
/// nothing the workspace does not, and the build is `--locked`. A new release of a dependency
/// can then neither break nor change the test.
fn build_doc_plugin(dir: &Path, name: &str, features: &str) -> PathBuf {
    let api = workspace_root().join("plugin-api");
    let manifest = doc_block("# Cargo.toml")
        .replace(
            "name = \"orbit-plugin-uppercase\"",
            &format!("name = \"{name}\""),
        )
        .replace(
            "orbit-plugin-api = { path = \"../orbit/plugin-api\" }",
            &format!(
                "orbit-plugin-api = {{ path = \"{}\", features = [{features}] }}",
                api.display()
            ),
        );
    assert!(
        manifest.contains(&api.display().to_string()),
        "the doc's dependency line changed"
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/lib.rs"), doc_block("// src/lib.rs")).unwrap();
    let workspace_lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("Cargo.lock"), &workspace_lock).unwrap();
    // Adds the fixture's own entry and drops what it does not use; every other version stays.
    cargo(dir, &["update", "--workspace", "--quiet"]);
    let fixture_lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    let pinned = locked_packages(&workspace_lock);
    let own = format!("name = \"{name}\" ");
    let foreign: Vec<String> = locked_packages(&fixture_lock)
        .into_iter()
        .filter(|p| !p.starts_with(&own) && !pinned.contains(p))
        .collect();
    assert!(
        foreign.is_empty(),
        "{name} resolved versions the workspace's Cargo.lock does not pin: {foreign:?}"
    );
    assert!(
        fixture_lock.contains("name = \"orbit-plugin-api\""),
        "{fixture_lock}"
    );
    let target = workspace_root().join("target/fixtures");
    let target_arg = target.display().to_string();
    cargo(
        dir,
        &["build", "--locked", "--quiet", "--target-dir", &target_arg],
    );
    target
        .join("debug")
        .join(format!("lib{}.so", name.replace('-', "_")))
}

/// A plugin directory holding the workspace's own plugins plus `extra`.
fn plugin_dir(s: &Scratch, extra: &[(&Path, &str)]) -> PathBuf {
    let dir = plugin_dir_with_core_plugins(s);
    for (from, name) in extra {
        std::fs::copy(from, dir.join(name)).unwrap();
    }
    dir
}

const PIPELINE: &str = r#"
name: upper
source: { plugin: generate, config: { count: 3000, template: 'order {{seq}}' } }
transforms:
  - plugin: uppercase
    config: { suffix: "!" }
sink: { plugin: file, config: { path: out.txt } }
"#;

#[test]
fn the_plugin_in_the_docs_builds_out_of_tree_and_runs() {
    let s = Scratch::new();
    let lib = build_doc_plugin(&s.path("uppercase"), "orbit-plugin-uppercase", "");
    let dir = plugin_dir(&s, &[(&lib, "liborbit_plugin_uppercase.so")]);
    s.write("p.yaml", PIPELINE);
    let dir_arg = dir.display().to_string();

    let listed = s.run(&["plugins", "--plugin-dir", &dir_arg]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("uppercase"),
        "{}",
        text(&listed.stdout)
    );

    let out = s.run(&["p.yaml", "--plugin-dir", &dir_arg, "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = s.lines("out.txt");
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines[0], "ORDER 0!");
    assert_eq!(lines[2999], "ORDER 2999!");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("ORDER {i}!"), "line {i}");
    }
    // The plugin's own log line reached the host's log, tagged with its name.
    assert!(
        err.contains("uppercase ready") && err.contains("plugin=\"uppercase\""),
        "{err}"
    );
}

#[test]
fn a_plugin_built_against_another_plugin_api_layout_is_refused() {
    let s = Scratch::new();
    let lib = build_doc_plugin(
        &s.path("mismatch"),
        "orbit-plugin-mismatch",
        "\"__layout_mismatch_for_tests\"",
    );
    let dir = plugin_dir(&s, &[(&lib, "liborbit_plugin_uppercase.so")]);
    s.write("p.yaml", PIPELINE);
    let out = s.run(&["p.yaml", "--plugin-dir", &dir.display().to_string()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("liborbit_plugin_uppercase.so refused: it was built against an incompatible orbit-plugin-api"),
        "{err}"
    );
    // abi_stable's own words name the type whose layout differs.
    assert!(err.contains("Manifest"), "{err}");
    assert!(!s.path("out.txt").exists(), "nothing may be written");
}

/// The last commit whose plugin-api is 0.1.0 (before pipelined sinks).
const PLUGIN_API_0_1_0: &str = "76a18f3be249a6f91bec1d4c505abc9a4c1d34f5";

/// The chaos plugin as it was at [`PLUGIN_API_0_1_0`], built from the repository's history
/// (a sink whose library has no ext root module).
fn build_chaos_0_1_0() -> PathBuf {
    let root = workspace_root();
    let src = root.join("target/fixtures-abi010/src");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src).unwrap();
        let archive = Command::new("git")
            .args(["archive", "--format=tar", PLUGIN_API_0_1_0])
            .current_dir(&root)
            .output()
            .expect("git archive");
        assert!(
            archive.status.success(),
            "git archive {PLUGIN_API_0_1_0}: {}",
            text(&archive.stderr)
        );
        let mut tar = Command::new("tar")
            .args(["-x", "-C"])
            .arg(&src)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&archive.stdout)
            .unwrap();
        assert!(tar.wait().unwrap().success());
    }
    let target = root.join("target/fixtures-abi010/target");
    cargo(
        &src,
        &[
            "build",
            "--locked",
            "--quiet",
            "-p",
            "orbit-plugin-chaos",
            "--target-dir",
            &target.display().to_string(),
        ],
    );
    target.join("debug/liborbit_plugin_chaos.so")
}

/// A sink library built against plugin-api 0.1.0 still loads and works: the host falls back
/// to one batch at a time, and says so when the pipeline asked for more.
#[test]
fn a_sink_built_against_plugin_api_0_1_0_still_loads_and_writes_one_batch_at_a_time() {
    let s = Scratch::new();
    let lib = build_chaos_0_1_0();
    let dir = plugin_dir(&s, &[(&lib, "liborbit_plugin_chaos.so")]);
    s.write(
        "p.yaml",
        r#"
name: old-abi
source: { plugin: generate, config: { count: 2000, template: '{"seq":{{seq}}}' } }
sink: { plugin: chaos, max_in_flight: 8, config: { path: out.txt, fail_calls: 2 } }
batch: { max_records: 100 }
"#,
    );
    let out = s.run(&[
        "p.yaml",
        "--plugin-dir",
        &dir.display().to_string(),
        "--progress",
        "0s",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = s.lines("out.txt");
    let want: Vec<String> = (0..2000).map(|i| format!("{{\"seq\":{i}}}")).collect();
    assert_eq!(lines, want, "{err}");
    assert!(
        err.contains("`max_in_flight` is 8 but this sink writes one batch at a time"),
        "{err}"
    );
    assert!(!err.contains("in_flight_max="), "{err}");
    assert!(err.contains("retries=2"), "{err}");
}
