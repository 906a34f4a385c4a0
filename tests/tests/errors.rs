//! Bad input gets a clear error with its location, a non-zero exit, and nothing written.

use orbit_e2e::*;

const GOOD: &str = "name: p
source:
  plugin: generate
  config: { count: 10 }
transforms:
  - plugin: json
    config: { set: { a: 1 } }
sink:
  plugin: file
  config:
    path: out.txt
";

/// Runs `yaml` as p.yaml and returns stderr, asserting failure and an untouched sink.
fn fails(yaml: &str, extra_args: &[&str]) -> String {
    let s = Scratch::new();
    s.write("p.yaml", yaml);
    let mut args = vec!["p.yaml"];
    args.extend_from_slice(extra_args);
    let out = s.run(&args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected failure: {err}");
    assert!(!s.path("out.txt").exists(), "the sink was written: {err}");
    // `validate` reports the same problem without running anything.
    let mut vargs = vec!["validate", "p.yaml"];
    vargs.extend_from_slice(extra_args);
    let v = s.run(&vargs);
    assert_eq!(v.status.code(), Some(1), "validate: {}", text(&v.stderr));
    err
}

#[test]
fn the_good_pipeline_runs_and_validates() {
    let s = Scratch::new();
    s.write("p.yaml", GOOD);
    let v = s.run(&["validate", "p.yaml"]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    assert!(
        !s.path("out.txt").exists(),
        "validate must not run anything"
    );
    let out = s.run(&["p.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = s.lines("out.txt");
    assert_eq!(lines.len(), 10);
    // Each record is the generated one, in order, with the transform applied.
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {i} is not JSON ({e}): {line:?}"));
        assert_eq!(v["seq"], i as u64, "{line}");
        assert_eq!(v["a"], 1, "the transform ran: {line}");
        assert!(v["ts"].is_string(), "{line}");
    }
}

#[test]
fn malformed_yaml() {
    let err = fails(
        &GOOD.replace("  plugin: generate\n", "  plugin: [generate\n"),
        &[],
    );
    // Where the parser noticed, and where the unclosed bracket opened.
    assert!(err.contains("p.yaml:4:9:"), "{err}");
    assert!(err.contains("flow sequence at line 3 column 11"), "{err}");
}

#[test]
fn unknown_key() {
    let err = fails(
        &GOOD.replace("  config:\n    path", "  confg:\n    path"),
        &[],
    );
    assert!(
        err.contains("p.yaml:10:3") && err.contains("unknown field `confg`"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn unknown_key_in_a_plugin_config_points_at_the_key() {
    let err = fails(
        &GOOD.replace("    path: out.txt", "    path: out.txt\n    pathh: x"),
        &[],
    );
    assert!(err.contains("p.yaml:12:5: at `sink.config.pathh`"), "{err}");
    assert!(err.contains("plugin `file` (sink"), "{err}");
    assert!(err.contains("unknown field `pathh`"), "{err}");
}

#[test]
fn unset_variable() {
    let err = fails(
        &GOOD.replace("path: out.txt", "path: ${ORBIT_TEST_UNSET_VAR}"),
        &[],
    );
    assert!(
        err.contains("p.yaml:11:11") && err.contains("`ORBIT_TEST_UNSET_VAR` is not set"),
        "{err}"
    );
}

#[test]
fn unknown_plugin_lists_what_was_found() {
    let err = fails(&GOOD.replace("plugin: generate", "plugin: genrate"), &[]);
    assert!(err.contains("p.yaml:3:3: at `source.plugin`"), "{err}");
    assert!(err.contains("unknown source plugin `genrate`"), "{err}");
    assert!(err.contains("chaos, file, generate"), "{err}");
}

#[test]
fn a_sink_used_as_a_source() {
    let err = fails(&GOOD.replace("plugin: generate", "plugin: stdout"), &[]);
    assert!(
        err.contains("`stdout` is a sink plugin and cannot be used as a source"),
        "{err}"
    );
}

#[test]
fn a_plugin_that_refuses_a_value() {
    let err = fails(
        &GOOD.replace(
            "config: { count: 10 }",
            "config: { count: 10, template: '{{nope}}' }",
        ),
        &[],
    );
    assert!(
        err.contains("p.yaml:4:") && err.contains("unknown placeholder"),
        "{err}"
    );
}

fn plugin_dir_with(s: &Scratch, extra_name: &str, bytes: &[u8]) -> String {
    let dir = plugin_dir_with_core_plugins(s);
    std::fs::write(dir.join(extra_name), bytes).unwrap();
    dir.display().to_string()
}

#[test]
fn a_garbage_library_is_refused_by_name() {
    let s = Scratch::new();
    let dir = plugin_dir_with(&s, "libgarbage.so", b"this is not an ELF file at all");
    let err = fails(GOOD, &["--plugin-dir", &dir]);
    assert!(
        err.contains("libgarbage.so refused: it is not a loadable library"),
        "{err}"
    );
}

#[test]
fn a_library_without_an_orbit_root_module_is_refused() {
    // A proc-macro from the build is a real shared library that is not an Orbit plugin.
    build_workspace();
    let deps = target_dir().join("deps");
    let other = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("libserde_derive-") && n.ends_with(".so")
        })
        .expect("serde_derive is built as a shared library");
    let s = Scratch::new();
    let dir = plugin_dir_with(&s, "libnotorbit.so", &std::fs::read(other).unwrap());
    let err = fails(GOOD, &["--plugin-dir", &dir]);
    assert!(
        err.contains("libnotorbit.so refused: it is a library but not an Orbit plugin"),
        "{err}"
    );
}

#[test]
fn two_libraries_claiming_one_component_are_refused_naming_both() {
    let s = Scratch::new();
    build_workspace();
    let copy = std::fs::read(target_dir().join("liborbit_plugin_json.so")).unwrap();
    let dir = plugin_dir_with(&s, "liborbit_plugin_json_copy.so", &copy);
    let err = fails(GOOD, &["--plugin-dir", &dir]);
    assert!(
        err.contains("liborbit_plugin_json_copy.so refused: it provides transform `json`, which")
            && err.contains("liborbit_plugin_json.so already provides"),
        "{err}"
    );
}

#[test]
fn every_example_pipeline_validates() {
    let s = Scratch::new();
    let dir = workspace_root().join("pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        // Examples for external services need their plugins; those come with their issues.
        let out = s.run(&["validate", &p.display().to_string()]);
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            text(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn bad_policy_values_point_at_their_key() {
    for (policy, position, key) in [
        (
            "rate_limit: { records_per_second: 10, burst: 0 }",
            "p.yaml:12:",
            "sink.policy.rate_limit.burst",
        ),
        (
            "circuit_breaker: { failure_threshold: 0 }",
            "p.yaml:12:",
            "sink.policy.circuit_breaker.failure_threshold",
        ),
        (
            "retry: { max_attempts: 0 }",
            "p.yaml:12:",
            "sink.policy.retry.max_attempts",
        ),
        ("timeout: 0s", "p.yaml:12:", "sink.policy.timeout"),
    ] {
        let err = fails(&format!("{GOOD}  policy: {{ {policy} }}\n"), &[]);
        assert!(
            err.contains(position) && err.contains(&format!("at `{key}`")),
            "{policy}: {err}"
        );
        assert!(err.contains("invalid policy value"), "{err}");
    }
    // A negative duration is not a duration: serde reports it at its position.
    let err = fails(&format!("{GOOD}  policy: {{ timeout: -1s }}\n"), &[]);
    assert!(
        err.contains("p.yaml:12:") && err.contains("timeout"),
        "{err}"
    );
    // Defaults are checked too.
    let err = fails(
        &format!("{GOOD}defaults:\n  policy:\n    circuit_breaker: {{ open_for: 0ms }}\n"),
        &[],
    );
    assert!(
        err.contains("p.yaml:14:") && err.contains("at `defaults.policy.circuit_breaker.open_for`"),
        "{err}"
    );
}

/// `${VAR}` is the string it holds, never YAML (issue 14 item 5): a digits-only value stays a
/// string (a file name here), a plugin's numeric key takes a string holding a number, a value
/// with YAML syntax in it adds no key, and an error shows `${NAME}`, never the value.
#[test]
fn a_variable_is_the_string_it_holds_and_is_never_shown_in_an_error() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: p\nsource:\n  plugin: generate\n  config: { count: ${COUNT} }\n\
         sink:\n  plugin: file\n  config:\n    path: ${OUT} # ${NOT_EXPANDED}\n",
    );
    let run = |count: &str, out: &str| {
        s.host(&["p.yaml"])
            .env("COUNT", count)
            .env("OUT", out)
            .env_remove("NOT_EXPANDED")
            .output()
            .expect("orbit-host runs")
    };
    let ok = run("7", "123456789");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(
        s.lines("123456789").len(),
        7,
        "the file named by the string"
    );

    for (count, out) in [
        ("7 #8", "a.txt"),
        ("9\", path: \"evil.txt", "b.txt"),
        ("null", "c.txt"),
    ] {
        let bad = run(count, out);
        let err = text(&bad.stderr);
        assert!(!bad.status.success(), "COUNT={count:?} ran: {err}");
        assert!(err.contains("p.yaml:4:"), "{err}");
        assert!(err.contains("${COUNT}"), "{err}");
        assert!(!err.contains(count), "the value is shown: {err}");
        assert!(!s.path(out).exists() && !s.path("evil.txt").exists());
    }
}
