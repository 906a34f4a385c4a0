//! `file` and `stdout` sinks.
//!
//! The file sink appends whole lines and fsyncs before a batch counts as written. Two things
//! keep a crash or a replaced instance from merging or cutting records:
//! - on open, a torn last line (a write cut short by a kill or a full disk) is cut off, so the
//!   next record starts on a line of its own; the torn record was never acknowledged and comes
//!   again;
//! - writers of one path in this process take turns ([`writer_lock`]). A write abandoned after
//!   a timeout keeps running in its thread; when it then fails and rolls back its own bytes,
//!   nothing another instance wrote meanwhile is cut off with them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use orbit_plugin_api::{ConfigError, PluginError, Record, Sink, SinkContext, WriteOutcome};
use serde::Deserialize;

use crate::envelope::{render, Format};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to append to; created (with its directory) if missing.
    path: PathBuf,
    #[serde(default)]
    format: Format,
    /// fsync after every batch, before it is acknowledged. Turning it off trades durability
    /// on power loss for speed.
    #[serde(default = "yes")]
    fsync: bool,
}

fn yes() -> bool {
    true
}

/// Makes written data durable (`File::sync_data`; tests put a failing disk here).
type SyncData = Box<dyn Fn(&File) -> std::io::Result<()> + Send>;

pub struct FileSink {
    path: PathBuf,
    file: File,
    format: Format,
    fsync: bool,
    sync: SyncData,
    /// Held for a whole write, rollback included; shared by every sink of this path.
    lock: Arc<Mutex<()>>,
    buffer: Vec<u8>,
}

/// The lock that every file sink of `path` in this process holds while it writes.
fn writer_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Weak<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let locks = locks.get_or_insert_with(HashMap::new);
    locks.retain(|_, l| l.strong_count() > 0);
    if let Some(l) = locks.get(path).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(Mutex::new(()));
    locks.insert(path.to_path_buf(), Arc::downgrade(&l));
    l
}

/// Cuts a last line without its newline off `file`; returns how many bytes were cut.
fn repair_torn_tail(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(len - end)
}

impl FileSink {
    fn error(&self, what: &str, e: std::io::Error) -> PluginError {
        PluginError::retriable(format!("{what} {}: {e}", self.path.display()))
    }
}

impl Sink for FileSink {
    type Config = FileConfig;

    fn validate(config: &FileConfig) -> Result<(), ConfigError> {
        if config.path.as_os_str().is_empty() {
            return Err(ConfigError::new("path", "must not be empty"));
        }
        Ok(())
    }

    fn open(config: FileConfig, _ctx: SinkContext) -> Result<Self, PluginError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                PluginError::fatal(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| {
                PluginError::fatal(format!(
                    "cannot open {} for appending: {e}",
                    config.path.display()
                ))
            })?;
        let canonical = std::fs::canonicalize(&config.path).unwrap_or(config.path.clone());
        let lock = writer_lock(&canonical);
        {
            let _turn = lock.lock().unwrap_or_else(|e| e.into_inner());
            let cut = repair_torn_tail(&mut file).map_err(|e| {
                PluginError::retriable(format!(
                    "cannot check the end of {}: {e}",
                    config.path.display()
                ))
            })?;
            if cut > 0 {
                tracing::warn!(
                    file = %config.path.display(),
                    bytes = cut,
                    "the file ended in a torn line (an earlier write was cut short); cut it off: its records were not acknowledged and are written again"
                );
            }
        }
        Ok(FileSink {
            path: config.path,
            file,
            format: config.format,
            fsync: config.fsync,
            sync: Box::new(File::sync_data),
            lock,
            buffer: Vec::with_capacity(1 << 20),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.buffer.clear();
        for r in batch {
            render(self.format, r, &mut self.buffer);
        }
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let before = self
            .file
            .metadata()
            .map_err(|e| self.error("cannot stat", e))?
            .len();
        let written = self.file.write_all(&self.buffer).and_then(|_| {
            if self.fsync {
                (self.sync)(&self.file)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave no torn line behind for the retry. Only this write's bytes are cut: no
            // other writer of the path in this process ran since `before` (the lock).
            let _ = self.file.set_len(before);
            return Err(self.error("cannot write to", e));
        }
        Ok(WriteOutcome::ok())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        self.file
            .sync_all()
            .map_err(|e| self.error("cannot fsync", e))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    #[serde(default)]
    format: Format,
}

pub struct StdoutSink {
    format: Format,
    buffer: Vec<u8>,
}

impl Sink for StdoutSink {
    type Config = StdoutConfig;

    fn open(config: StdoutConfig, _ctx: SinkContext) -> Result<Self, PluginError> {
        Ok(StdoutSink {
            format: config.format,
            buffer: Vec::new(),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.buffer.clear();
        for r in batch {
            render(self.format, r, &mut self.buffer);
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buffer)
            .and_then(|_| out.flush())
            .map_err(|e| PluginError::retriable(format!("cannot write to stdout: {e}")))?;
        Ok(WriteOutcome::ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn open(path: &Path) -> FileSink {
        let config: FileConfig =
            serde_json::from_value(serde_json::json!({ "path": path })).unwrap();
        let ctx = SinkContext {
            pipeline: "p".into(),
            stage: "sink".into(),
        };
        FileSink::open(config, ctx).unwrap()
    }

    fn records(values: &[&str]) -> Vec<Record> {
        values.iter().map(|v| Record::new(v.as_bytes())).collect()
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, "a\nb\n{\"torn").unwrap();
        let mut sink = open(&path);
        sink.write(&records(&["c"])).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        // A file with no newline at all is all torn line.
        std::fs::write(&path, "xyz").unwrap();
        drop(open(&path));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn a_stalled_then_failing_fsync_does_not_cut_off_what_another_instance_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut abandoned = open(&path);
        let mut replacement = open(&path);
        let (in_fsync_tx, in_fsync) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        abandoned.sync = Box::new(move |_| {
            in_fsync_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            Err(std::io::Error::other("input/output error"))
        });
        // The host gave up on this write (a timeout) and made a replacement instance.
        let stalled = std::thread::spawn(move || abandoned.write(&records(&["old"])).map(|_| ()));
        in_fsync.recv().unwrap();
        let (done_tx, done) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            let r = replacement.write(&records(&["new-1", "new-2"])).map(|_| ());
            done_tx.send(()).unwrap();
            r
        });
        // Give the replacement every chance to finish first (it must not be able to).
        let finished_during_the_stall = done.recv_timeout(Duration::from_millis(300)).is_ok();
        release.send(()).unwrap();
        assert!(stalled.join().unwrap().is_err(), "the stalled write fails");
        writer
            .join()
            .unwrap()
            .expect("the replacement's write succeeds");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "new-1\nnew-2\n",
            "the failed write rolled back only its own line (replacement finished during the stall: {finished_during_the_stall})"
        );
    }
}
