//! Follow mode: at the end of what the file holds, look whether it was truncated, rewritten
//! or replaced, as `tail -F` and log shippers do.
//!
//! * Truncated (shorter than what was read), or its first bytes changed (truncated and written
//!   again before we looked: copytruncate): read it again from the start, with a warning.
//! * Replaced (the path names another device/inode: logrotate's rename and create): read the
//!   old file to its end, then the new one from its start. The records of each carry their
//!   own file's identity, so a stored position of the old file is never taken for one in the
//!   new file.
//! * Gone (moved away, nothing at the path yet): keep reading the open file until a new one
//!   appears.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use orbit_plugin_api::{PluginError, SourceBatch};

use super::identity::{FileId, Head};
use super::{io_error, FileSource, Tracked, READ_BUFFER};

impl FileSource {
    /// Called at the end of the data in follow mode. Returns whether something changed and the
    /// source should read on at once.
    pub(super) fn watch(&mut self, batch: &mut SourceBatch) -> Result<bool, PluginError> {
        if self.read_again_if_rewritten()? {
            return Ok(true);
        }
        let Some(tracked) = &self.tracked else {
            return Ok(false);
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) if FileId::of(&meta) != tracked.id => {
                self.path_gone = false;
                if self.rotating {
                    return self.switch(batch);
                }
                // Read what was appended to the old file before the switch, then switch.
                self.rotating = true;
                tracing::debug!(file = %self.path.display(), "replaced: reading the old file to its end");
                Ok(true)
            }
            Ok(_) => {
                self.path_gone = false;
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !self.path_gone {
                    self.path_gone = true;
                    tracing::info!(
                        file = %self.path.display(),
                        "{} was moved away or removed; reading the open file until a new one \
                         appears at the path",
                        self.path.display()
                    );
                }
                Ok(false)
            }
            Err(e) => Err(io_error(&self.path, "cannot stat", e)),
        }
    }

    /// If the file is shorter than what was read, or its first bytes are not those delivered,
    /// reads it again from its start (with a warning) and returns `true`. Called at the end of
    /// the data, and before the first line read after it: a file truncated and written past
    /// the old length while the source waited would otherwise be read on from the middle.
    pub(super) fn read_again_if_rewritten(&mut self) -> Result<bool, PluginError> {
        let Some(tracked) = &self.tracked else {
            return Ok(false);
        };
        let read = self.position + self.partial.len() as u64;
        let len = tracked
            .file
            .metadata()
            .map_err(|e| io_error(&self.path, "cannot stat", e))?
            .len();
        if len < read {
            self.read_again(&format!(
                "truncated to {len} bytes, below the {read} bytes read"
            ))?;
            return Ok(true);
        }
        let head = self.head.bytes();
        if head.is_empty() {
            return Ok(false);
        }
        let mut now = vec![0; head.len()];
        let changed = match tracked.file.read_exact_at(&mut now, 0) {
            Ok(()) => now != head,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => true,
            Err(e) => return Err(io_error(&self.path, "cannot read", e)),
        };
        if changed {
            let n = head.len();
            self.read_again(&format!(
                "its first {n} bytes changed (truncated and written again, as by copytruncate)"
            ))?;
        }
        Ok(changed)
    }

    /// The same file from its start.
    fn read_again(&mut self, why: &str) -> Result<(), PluginError> {
        let tracked = self.tracked.as_ref().expect("a tracked file");
        tracing::warn!(
            file = %self.path.display(),
            "{}: {why}; reading it again from the start",
            self.path.display()
        );
        let mut file = &tracked.file;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&self.path, "cannot seek in", e))?;
        let input = tracked
            .file
            .try_clone()
            .map_err(|e| io_error(&self.path, "cannot read", e))?;
        self.restart_with(Box::new(input));
        Ok(())
    }

    /// The old file is read to its end: go on with the new one at the path.
    fn switch(&mut self, batch: &mut SourceBatch) -> Result<bool, PluginError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(&self.path, "cannot open", e)),
        };
        let id = FileId::of(
            &file
                .metadata()
                .map_err(|e| io_error(&self.path, "cannot stat", e))?,
        );
        let input = file
            .try_clone()
            .map_err(|e| io_error(&self.path, "cannot open", e))?;
        if !self.partial.is_empty() {
            tracing::warn!(
                file = %self.path.display(),
                "{}: the replaced file ends without a newline; its last {} bytes are taken as a line",
                self.path.display(),
                self.partial.len()
            );
            self.emit(batch)?;
        }
        tracing::info!(
            file = %self.path.display(),
            "{} was replaced (rotated): read the old file to its end ({} bytes); reading the new \
             one from the start",
            self.path.display(),
            self.position
        );
        self.tracked = Some(Tracked { file, id });
        self.rotating = false;
        self.restart_with(Box::new(input));
        Ok(true)
    }

    fn restart_with(&mut self, input: super::Input) {
        self.reader = BufReader::with_capacity(READ_BUFFER, input);
        self.position = 0;
        self.partial.clear();
        self.head = Head::default();
        self.line_number = 1;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    use orbit_plugin_api::{Position, Source, SourceContext};

    use super::super::offset::{self, Offset, Stored};
    use super::super::Config;
    use super::*;

    fn open(path: &Path, stored: Option<Vec<u8>>) -> FileSource {
        let config: Config = serde_json::from_value(serde_json::json!({
            "path": path, "follow": true, "poll_interval": "1ms"
        }))
        .unwrap();
        let stream = path.display().to_string();
        let ctx = SourceContext {
            pipeline: "p".into(),
            stage: "source".into(),
            offsets: stored
                .map(|b| vec![Position::new(stream, 0, b)])
                .unwrap_or_default(),
        };
        FileSource::open(config, ctx).unwrap()
    }

    /// Polls until nothing more comes: the lines and the last record's offset.
    fn drain(source: &mut FileSource) -> (Vec<String>, Option<Offset>) {
        let (mut lines, mut last) = (Vec::new(), None);
        loop {
            let batch = source.poll(1000, Duration::from_millis(20)).unwrap();
            if batch.is_empty() {
                return (lines, last);
            }
            for r in batch.records() {
                lines.push(String::from_utf8(r.value().to_vec()).unwrap());
                match offset::decode(&r.position().offset).unwrap() {
                    Stored::Current(o) => last = Some(o),
                    legacy => panic!("{legacy:?}"),
                }
            }
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        append(&path, "a1\na2\na3\n");
        let mut source = open(&path, None);
        assert_eq!(drain(&mut source).0, ["a1", "a2", "a3"]);
        std::fs::File::create(&path).unwrap(); // `: > f.txt`
        append(&path, "b1\n");
        assert_eq!(drain(&mut source).0, ["b1"]);
        // Truncated and written past the old length before the source looked: the first bytes
        // differ, so it is not taken for an append.
        let rewritten = "c1\nc2-a-line-longer-than-before\n";
        std::fs::write(&path, rewritten).unwrap();
        let (lines, last) = drain(&mut source);
        assert_eq!(lines, ["c1", "c2-a-line-longer-than-before"]);
        assert_eq!(last.unwrap().position, rewritten.len() as u64);
    }

    #[test]
    fn a_replaced_file_is_read_to_its_end_before_the_new_one_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        append(&path, "a1\n");
        let mut source = open(&path, None);
        let (lines, old) = drain(&mut source);
        assert_eq!(lines, ["a1"]);
        // logrotate: rename, a last line still written to the old file, a new file.
        std::fs::rename(&path, dir.path().join("f.txt.1")).unwrap();
        append(&dir.path().join("f.txt.1"), "a2\na3-unterminated");
        append(&path, "b1\n");
        let (lines, new) = drain(&mut source);
        assert_eq!(lines, ["a2", "a3-unterminated", "b1"]);
        let (old, new) = (old.unwrap(), new.unwrap());
        assert_ne!(old.file, new.file, "each position names its own file");
        assert_eq!(new.position, 3);

        // A restart with the old file's position starts the new file from its start.
        let mut restarted = open(&path, Some(old.encode()));
        assert_eq!(drain(&mut restarted).0, ["b1"]);
        // With the new file's, it resumes after it.
        let mut restarted = open(&path, Some(new.encode()));
        append(&path, "b2\n");
        assert_eq!(drain(&mut restarted).0, ["b2"]);
    }
}
