//! The file source in follow mode when the file is truncated, rotated or replaced, and on a
//! restart onto another file: every line exactly once, no half line, and a log line saying so.

use std::io::Write as _;
use std::process::Child;
use std::time::Duration;

use orbit_e2e::*;

const WAIT: Duration = Duration::from_secs(60);

const PIPELINE: &str = "name: tail\n\
    source: { plugin: file, config: { path: f.txt, follow: true, poll_interval: 20ms } }\n\
    sink: { plugin: file, config: { path: out.txt } }\n";

/// A line longer than the three first lines together: read from their old end, the old code
/// emitted its tail.
fn long_line(tag: &str) -> String {
    format!("{tag}-{}", "x".repeat(200))
}

fn start(s: &Scratch, log: &str) -> Child {
    s.write("p.yaml", PIPELINE);
    s.spawn_logged(&["p.yaml", "--progress", "0s"], log)
}

/// Waits until out.txt holds exactly `expected` (a wrong line fails at once, with the output).
fn wait_for_output(s: &Scratch, expected: &[String]) {
    wait_for(&format!("output {expected:?}"), WAIT, || {
        let out = s.lines("out.txt");
        assert!(
            expected.starts_with(&out),
            "unexpected output: {out:?}, expected {expected:?}"
        );
        out.len() == expected.len()
    });
}

fn stop(s: &Scratch, mut child: Child, log: &str) -> String {
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, WAIT);
    let log = s.read(log);
    assert!(status.success(), "exit {status:?}: {log}");
    log
}

fn append(s: &Scratch, name: &str, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(s.path(name))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|l| l.to_string()).collect()
}

#[test]
fn a_truncated_file_is_read_again_from_its_start() {
    let s = Scratch::new();
    s.write("f.txt", "a1\na2\na3\n");
    let child = start(&s, "host.log");
    let mut expected = lines(&["a1", "a2", "a3"]);
    wait_for_output(&s, &expected);

    // `: > f.txt`, then two short lines and one long one.
    std::fs::File::create(s.path("f.txt")).unwrap();
    wait_for("the truncation warning", WAIT, || {
        s.read("host.log").contains(
            "f.txt: truncated to 0 bytes, below the 9 bytes read; reading it again from the start",
        )
    });
    let long = long_line("b3");
    append(&s, "f.txt", &format!("b1\nb2\n{long}\n"));
    expected.extend(lines(&["b1", "b2", &long]));
    wait_for_output(&s, &expected);

    // Truncated and at once written past the old length, as `echo … > f.txt` does: the first
    // bytes tell that it is not an append.
    let long = long_line("c2");
    std::fs::write(s.path("f.txt"), format!("c1\n{long}\n")).unwrap();
    expected.extend(lines(&["c1", &long]));
    wait_for_output(&s, &expected);

    let log = stop(&s, child, "host.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert_eq!(
        log.matches("reading it again from the start").count(),
        2,
        "one warning per truncation: {log}"
    );
}

#[test]
fn a_file_renamed_over_the_followed_one_is_read_after_the_old_one_ends() {
    let s = Scratch::new();
    s.write("f.txt", "a1\na2\n");
    let child = start(&s, "host.log");
    let mut expected = lines(&["a1", "a2"]);
    wait_for_output(&s, &expected);

    // The writer's last lines go to the old file just before a new one is renamed over it.
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(s.path("f.txt"))
        .unwrap();
    let long = long_line("b2");
    s.write("new.txt", &format!("b1\n{long}\n"));
    old.write_all(b"a3\n").unwrap();
    std::fs::rename(s.path("new.txt"), s.path("f.txt")).unwrap();
    expected.extend(lines(&["a3", "b1", &long]));
    wait_for_output(&s, &expected);
    wait_for("the rotation in the log", WAIT, || {
        s.read("host.log").contains(
            "f.txt was replaced (rotated): read the old file to its end (9 bytes); reading the new one from the start",
        )
    });

    // The new file is followed.
    append(&s, "f.txt", "b3\n");
    expected.push("b3".into());
    wait_for_output(&s, &expected);

    let log = stop(&s, child, "host.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert_eq!(log.matches("was replaced (rotated)").count(), 1, "{log}");
}

#[test]
fn copytruncate_loses_no_line_written_after_the_copy() {
    let s = Scratch::new();
    // The application keeps its file open in append mode throughout, as with copytruncate.
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(s.path("f.txt"))
        .unwrap();
    writer.write_all(b"a1\na2\na3\n").unwrap();
    let child = start(&s, "host.log");
    let mut expected = lines(&["a1", "a2", "a3"]);
    wait_for_output(&s, &expected);

    // logrotate's copytruncate: copy, truncate in place; the application writes on at once,
    // past the old length.
    std::fs::copy(s.path("f.txt"), s.path("f.txt.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("f.txt"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let long = long_line("b1");
    writer
        .write_all(format!("{long}\nb2\n").as_bytes())
        .unwrap();
    expected.extend(lines(&[&long, "b2"]));
    wait_for_output(&s, &expected);
    wait_for("the truncation warning", WAIT, || {
        s.read("host.log")
            .contains("reading it again from the start")
    });

    writer.write_all(b"b3\n").unwrap();
    expected.push("b3".into());
    wait_for_output(&s, &expected);

    let log = stop(&s, child, "host.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert_eq!(
        log.matches("reading it again from the start").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("f.txt: truncated to") || log.contains("f.txt: its first 9 bytes changed")
    );
    assert_eq!(s.read("f.txt.1"), "a1\na2\na3\n");
}

#[test]
fn a_restart_onto_a_replaced_or_rewritten_file_reads_it_whole_once() {
    let s = Scratch::new();
    s.write("f.txt", "a1\na2\na3\n");
    let child = start(&s, "first.log");
    let mut expected = lines(&["a1", "a2", "a3"]);
    wait_for_output(&s, &expected);
    stop(&s, child, "first.log");

    // Replaced while the host was down by a longer, different file: the stored position (9)
    // falls in the middle of its first line.
    let new = ["b-first-line".to_string(), long_line("b2"), "b3".into()];
    s.write("new.txt", &format!("{}\n", new.join("\n")));
    std::fs::rename(s.path("new.txt"), s.path("f.txt")).unwrap();
    let child = start(&s, "second.log");
    expected.extend(new.iter().cloned());
    wait_for_output(&s, &expected);
    let log = stop(&s, child, "second.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert!(
        log.contains("f.txt: not the file the stored position 9 belongs to")
            && log.contains("replaced or rotated; reading it from the start"),
        "{log}"
    );

    // Rewritten in place (same inode) while the host was down, longer, with a line ending
    // where the stored position is: only the fingerprint of the first bytes tells.
    let stored = std::fs::metadata(s.path("f.txt")).unwrap().len() as usize;
    let first = format!("c1-{}", "y".repeat(stored - 4));
    let rewritten = [first, "c2".into(), long_line("c3")];
    std::fs::write(s.path("f.txt"), format!("{}\n", rewritten.join("\n"))).unwrap();
    assert_eq!(std::fs::read(s.path("f.txt")).unwrap()[stored - 1], b'\n');
    let child = start(&s, "third.log");
    expected.extend(rewritten.iter().cloned());
    wait_for_output(&s, &expected);
    let log = stop(&s, child, "third.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert!(
        log.contains("bytes are not the ones read before: rewritten in place")
            && log.contains("reading it from the start"),
        "{log}"
    );

    // Unchanged since: resumed after the last line, nothing read twice.
    let child = start(&s, "fourth.log");
    append(&s, "f.txt", "c4\n");
    expected.push("c4".into());
    wait_for_output(&s, &expected);
    let log = stop(&s, child, "fourth.log");
    assert_eq!(s.lines("out.txt"), expected, "{log}");
    assert!(
        log.contains("resuming") && !log.contains("from the start"),
        "{log}"
    );
}

#[test]
fn a_position_stored_by_an_earlier_version_is_resumed_only_at_a_line_start() {
    use base64::Engine as _;
    let s = Scratch::new();
    s.write("f.txt", "a1\na2\na3\n");
    s.write(
        "p.yaml",
        "name: once\nsource: { plugin: file, config: { path: f.txt } }\nsink: { plugin: file, config: { path: out.txt } }\n",
    );
    let legacy = |position: u64| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(position.to_be_bytes());
        s.write(
            ".orbit/offsets/once.json",
            &format!(r#"{{"pipeline":"once","offsets":[{{"stream":"f.txt","partition":0,"offset":"{b64}"}}]}}"#),
        );
    };
    // At a line start (after `a1\na2\n`): resumed there.
    legacy(6);
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(s.lines("out.txt"), ["a3"]);
    // In the middle of a line: the whole file, with a warning, and no half line.
    legacy(7);
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(s.lines("out.txt"), ["a3", "a1", "a2", "a3"], "{err}");
    assert!(
        err.contains(
            "f.txt: the stored position 7 is not at the start of a line; reading it from the start"
        ),
        "{err}"
    );
}
