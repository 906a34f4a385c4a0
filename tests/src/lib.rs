//! Helpers for end-to-end tests: build the workspace once, run `orbit-host` in a scratch
//! directory, wait for conditions with a deadline (never a bare sleep), read outputs.

pub mod admin;
pub mod pg;
pub mod raw_http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long [`Scratch::run`] lets a host run before it fails the test: generous for a debug
/// build moving 100,000 records through a broker, short of hanging CI.
pub const RUN_DEADLINE: Duration = Duration::from_secs(300);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Where cargo puts the workspace's debug build.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// Builds the host and every plugin once per test binary, so a test never runs stale `.so`s.
pub fn build_workspace() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--quiet"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --workspace failed");
    });
}

pub fn host_binary() -> PathBuf {
    build_workspace();
    target_dir().join("orbit-host")
}

/// A scratch directory with a state dir, and a way to run the host in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file (a pipeline, an input) and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }

    /// `orbit-host ARGS` with the scratch dir as working directory and `.orbit` in it as state
    /// directory: one state directory per scratch.
    pub fn host(&self, args: &[&str]) -> Command {
        self.host_in(".orbit", args)
    }

    /// [`Scratch::host`] with the state directory `state` (in the scratch dir): for a test that
    /// runs two hosts side by side, each with its own offsets.
    pub fn host_in(&self, state: &str, args: &[&str]) -> Command {
        let mut c = Command::new(host_binary());
        c.args(args)
            .current_dir(self.dir.path())
            .env("ORBIT_STATE_DIR", self.path(state))
            .env_remove("ORBIT_PLUGIN_PATH")
            .env("NO_COLOR", "1")
            .env("ORBIT_LOG", "info")
            // Hosts run side by side in tests: each admin server takes a free port.
            .env("ORBIT_ADMIN_ADDR", "127.0.0.1:0");
        c
    }

    /// Runs the host to its exit and returns what it printed. A run that has not exited after
    /// [`RUN_DEADLINE`] is killed and the test fails with its log's tail (a regression that
    /// retries for ever fails instead of hanging the suite).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_within(args, RUN_DEADLINE)
    }

    /// [`Scratch::run`] with its own deadline. Output goes to files, not pipes, so a chatty run
    /// never blocks on a full pipe.
    pub fn run_within(&self, args: &[&str], deadline: Duration) -> Output {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let (out, err) = (format!(".run-{n}.out"), format!(".run-{n}.err"));
        let mut child = self
            .host(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path(&out)).expect("stdout file"))
            .stderr(std::fs::File::create(self.path(&err)).expect("stderr file"))
            .spawn()
            .expect("orbit-host starts");
        let Some(status) = exit_within(&mut child, deadline) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "orbit-host {args:?} did not exit within {deadline:?}; its log ends with:\n{}",
                self.tail(&err, 40)
            );
        };
        Output {
            status,
            stdout: std::fs::read(self.path(&out)).expect("stdout file"),
            stderr: std::fs::read(self.path(&err)).expect("stderr file"),
        }
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.host(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orbit-host starts")
    }

    /// Like [`Scratch::spawn`], with stderr going to the file `log` in the scratch dir: for runs
    /// that log more than a pipe holds while nobody reads it (outages, retries).
    pub fn spawn_logged(&self, args: &[&str], log: &str) -> Child {
        self.spawn_logged_in(".orbit", args, log)
    }

    /// [`Scratch::spawn_logged`] with its own state directory (see [`Scratch::host_in`]).
    pub fn spawn_logged_in(&self, state: &str, args: &[&str], log: &str) -> Child {
        let file = std::fs::File::create(self.path(log)).expect("log file");
        self.host_in(state, args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("orbit-host starts")
    }

    /// The whole text of the file `name` (a log), empty if it does not exist.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.path(name))
    }

    /// The last `n` lines of the file `name`, for a failure message.
    pub fn tail(&self, name: &str, n: usize) -> String {
        let lines = self.lines(name);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// A pipeline's closing summary as the host logs it: `finished: 25000 records in, 20000 written,
/// 5000 dropped by transforms, 0 dead-lettered in 1.23s (…)`. Its clock is the pipeline's own,
/// not the process's start-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    pub records_in: u64,
    pub written: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub secs: f64,
}

/// Every `finished:` summary in a host's log, in the order logged.
pub fn finished(log: &str) -> Vec<Finished> {
    log.lines()
        .filter_map(|l| l.split_once("finished: "))
        .map(|(_, rest)| {
            parse_finished(rest).unwrap_or_else(|| panic!("unparsable summary: finished: {rest}"))
        })
        .collect()
}

/// The one `finished:` summary in `log`; panics with the log if there is none or several.
pub fn finished_once(log: &str) -> Finished {
    let all = finished(log);
    assert_eq!(all.len(), 1, "expected one `finished:` summary in:\n{log}");
    all[0]
}

fn parse_finished(s: &str) -> Option<Finished> {
    let (records_in, s) = s.split_once(" records in, ")?;
    let (written, s) = s.split_once(" written, ")?;
    let (dropped, s) = s.split_once(" dropped by transforms, ")?;
    let (dead_lettered, s) = s.split_once(" dead-lettered in ")?;
    let (secs, _) = s.split_once("s ")?;
    Some(Finished {
        records_in: records_in.trim().parse().ok()?,
        written: written.parse().ok()?,
        dropped: dropped.parse().ok()?,
        dead_lettered: dead_lettered.parse().ok()?,
        secs: secs.parse().ok()?,
    })
}

/// The (records in, written) of every `progress:` line in a host's log, in order.
pub fn progress(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| l.split_once("progress: "))
        .filter_map(|(_, rest)| {
            let (records_in, rest) = rest.split_once(" in, ")?;
            let (written, _) = rest.split_once(" written")?;
            Some((records_in.parse().ok()?, written.parse().ok()?))
        })
        .collect()
}

/// Waits until `cond` holds, checking every 10 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_for_explained(what, timeout, cond, String::new)
}

/// [`wait_for`], with `explain()` (a log's tail, say) in the panic message on timeout.
pub fn wait_for_explained(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", explain());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child to exit, with a deadline; kills it and panics on timeout.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    exit_within(child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("orbit-host did not exit within {timeout:?}");
    })
}

/// The child's exit status, checking every 10 ms; `None` if it is still running after `timeout`.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A plugin directory in `s` holding copies of the workspace's generate, file and json plugins,
/// for tests that add a library of their own beside them.
pub fn plugin_dir_with_core_plugins(s: &Scratch) -> PathBuf {
    build_workspace();
    let dir = s.path("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for lib in ["generate", "file", "json"] {
        let name = format!("liborbit_plugin_{lib}.so");
        std::fs::copy(target_dir().join(&name), dir.join(&name)).unwrap();
    }
    dir
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test's own server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A tansu broker (Kafka protocol, in-memory storage) on its own port, stopped on drop.
/// `.ci/run` installs it; `TANSU` names another binary.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Tansu {
        let bin = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let listener = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` (.ci/run installs tansu): {e}"));
        let mut t = Tansu {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(port) {
            if let Some(status) = t.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tansu exited ({status}): {}", t.log_text());
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Kills the broker (its in-memory data goes with it) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for(
            "the broker's port to close",
            Duration::from_secs(10),
            || !port_open(self.port),
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process killed (and reaped) when dropped, so a failed assertion does not leave a
/// host running after its test.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The counters of the `policy events:` line the host logged for `stage` at the end of a run
/// (`retries`, `timeouts`, `in_flight_max`, … and `calls`); `None` if it logged none.
pub fn policy_events(stderr: &str, stage: &str) -> Option<std::collections::HashMap<String, u64>> {
    let line = stderr
        .lines()
        .find(|l| l.contains("policy events:") && l.contains(&format!("stage={stage} ")))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            .collect(),
    )
}

/// The most batches the sink held in flight at once, from its `policy events:` line (1 when
/// it logged none: a window of one batch is no event).
pub fn sink_in_flight_max(stderr: &str) -> u64 {
    policy_events(stderr, "sink")
        .and_then(|e| e.get("in_flight_max").copied())
        .unwrap_or(1)
}

/// The `seq` field of each JSON line (the chaos source's records).
pub fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Runs `yaml` (as `p.yaml` in `s`) to success; returns the log and the pipeline's own summary
/// (its clock starts with the pipeline, not with the process).
pub fn run_ok(s: &Scratch, yaml: &str) -> (String, Finished) {
    s.write("p.yaml", yaml);
    let out = s.run(&["p.yaml", "--progress", "0s"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let summary = finished_once(&err);
    (err, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_progress_lines_are_read_from_the_log() {
        let log = "2025-01-01T00:00:00Z  INFO run{pipeline=p}: orbit_host: progress: 700 in, 600 written, 350 records/s\n\
                   2025-01-01T00:00:01Z  INFO orbit_host: finished: 25000 records in, 20000 written, 5000 dropped by transforms, 3 dead-lettered in 12.34s (2026 records/s) pipeline=p\n";
        assert_eq!(progress(log), vec![(700, 600)]);
        assert_eq!(
            finished_once(log),
            Finished {
                records_in: 25000,
                written: 20000,
                dropped: 5000,
                dead_lettered: 3,
                secs: 12.34,
            }
        );
        assert!(finished("no summary here\n").is_empty());
    }

    #[test]
    fn a_run_past_its_deadline_is_killed_and_fails_with_the_log_tail() {
        let s = Scratch::new();
        s.write(
            "p.yaml",
            "name: endless\nsource: { plugin: generate, config: { template: x, rate: 100 } }\nsink: { plugin: blackhole }\n",
        );
        host_binary(); // built before the clock starts
        let started = Instant::now();
        let failed = std::panic::catch_unwind(|| {
            s.run_within(&["p.yaml", "--progress", "1s"], Duration::from_secs(3))
        })
        .expect_err("an endless pipeline outlives its deadline");
        let message = failed
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(message.contains("did not exit within 3s"), "{message}");
        assert!(
            message.contains("pipeline=endless}: progress:"),
            "the log's tail is shown: {message}"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
