//! `file` source: one record per line.
//!
//! A record's offset names the file it was read from (device, inode, fingerprint of the first
//! bytes: [`offset`]) and the position after its line. On open the stored offset is checked
//! against the file now at the path ([`identity::resume`]); in follow mode the file is watched
//! for truncation and replacement ([`follow`]).

mod follow;
mod identity;
mod offset;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orbit_plugin_api::{ConfigError, PluginError, Record, Source, SourceBatch, SourceContext};
use serde::Deserialize;

use self::identity::{FileId, Head, HEAD_LEN};
use self::offset::Offset;
use crate::envelope::{self, Format};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file to read.
    path: PathBuf,
    /// Keep reading lines appended after the end (like `tail -f`) instead of ending there.
    #[serde(default)]
    follow: bool,
    /// In follow mode, how often to look for new lines.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    poll_interval: Duration,
    /// `value`: each line is a record's value. `envelope`: each line is a JSON object as the
    /// file sink writes it (`key`, `value`, `headers`, `timestamp_ms`), so keys and headers
    /// survive a round trip through a file.
    #[serde(default)]
    format: Format,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}

/// What the source reads: the file (a trait object, so tests can inject read errors).
type Input = Box<dyn Read + Send>;

const READ_BUFFER: usize = 256 * 1024;

/// The file being read, kept to check in follow mode whether the path still names it.
struct Tracked {
    /// A handle on the same open file as the reader's (same file position).
    file: File,
    id: FileId,
}

pub struct FileSource {
    path: PathBuf,
    stream: String,
    reader: BufReader<Input>,
    /// The file behind `reader`; `None` for an input injected by a test.
    tracked: Option<Tracked>,
    /// The file's first bytes as far as they were delivered: its fingerprint in the offsets.
    head: Head,
    /// Byte position of the start of `partial` (or of the next line).
    position: u64,
    /// Bytes of a line whose newline has not been written yet (follow mode).
    partial: Vec<u8>,
    follow: bool,
    poll_interval: Duration,
    format: Format,
    /// Line number of the next line, for errors.
    line_number: u64,
    /// An error met after a poll had already taken lines: those lines are returned first, and
    /// the next poll reports the error (the reader has moved past them; dropping the batch
    /// would lose them behind a position that then skips them).
    held_error: Option<PluginError>,
    /// Follow mode: the path names another file now; this one is read to its end first.
    rotating: bool,
    /// Follow mode: the path was found missing (logged once until it is back).
    path_gone: bool,
    /// Follow mode: the source reached the end and waited; the file is checked again before
    /// the next line is taken.
    waited: bool,
}

fn io_error(path: &std::path::Path, what: &str, e: std::io::Error) -> PluginError {
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            PluginError::fatal(msg)
        }
        _ => PluginError::retriable(msg),
    }
}

impl Source for FileSource {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if config.path.as_os_str().is_empty() {
            return Err(ConfigError::new("path", "must not be empty"));
        }
        Ok(())
    }

    fn open(config: Config, ctx: SourceContext) -> Result<Self, PluginError> {
        let stream = config.path.display().to_string();
        let path = config.path.clone();
        let mut file = File::open(&path).map_err(|e| io_error(&path, "cannot open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_error(&path, "cannot stat", e))?;
        let id = FileId::of(&meta);
        let stored = ctx
            .offset(&stream, 0)
            .map(offset::decode)
            .transpose()
            .map_err(|e| {
                PluginError::fatal(format!(
                    "{}: {e}; move the pipeline's offset file away to read the file from its \
                     start",
                    path.display()
                ))
            })?;
        let resume = identity::resume(stored, &file, id, meta.len(), config.follow)
            .map_err(|e| io_error(&path, "cannot read", e))?;
        if let Some(why) = &resume.restart_reason {
            tracing::warn!(
                file = %path.display(),
                "{}: {why}; reading it from the start",
                path.display()
            );
        } else if resume.position > 0 {
            tracing::info!(file = %path.display(), position = resume.position, "resuming");
        }
        file.seek(SeekFrom::Start(resume.position))
            .map_err(|e| io_error(&path, "cannot seek in", e))?;
        let input = file
            .try_clone()
            .map_err(|e| io_error(&path, "cannot open", e))?;
        let mut source = FileSource::reading(config, stream, Box::new(input), resume.position);
        source.tracked = Some(Tracked { file, id });
        source.head = Head::new(resume.head);
        Ok(source)
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        if let Some(e) = self.held_error.take() {
            return Err(e);
        }
        let deadline = Instant::now() + max_wait;
        let mut batch = SourceBatch::with_capacity(max_records.min(4096));
        while batch.len() < max_records {
            // On an error, `partial` keeps what was read of the line, and `position` still
            // points at its start: a retried poll continues exactly there.
            let n = match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(n) => n,
                Err(e) => return self.held(batch, io_error(&self.path, "cannot read", e)),
            };
            let complete = self.partial.last() == Some(&b'\n');
            if n == 0 || !complete {
                // End of what is there now.
                if !self.follow {
                    if !self.partial.is_empty() {
                        // A last line without a newline.
                        if let Err(e) = self.emit(&mut batch) {
                            return self.held(batch, e);
                        }
                    }
                    batch.end_of_stream();
                    break;
                }
                // Truncated, rewritten or replaced? Then read on at once.
                match self.watch(&mut batch) {
                    Ok(true) => continue,
                    Ok(false) => self.waited = true,
                    Err(e) => return self.held(batch, e),
                }
                if !batch.is_empty() || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(self.poll_interval.min(deadline - Instant::now()));
                continue;
            }
            if self.waited {
                // The first line after waiting at the end: was the file rewritten meanwhile?
                self.waited = false;
                match self.read_again_if_rewritten() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return self.held(batch, e),
                }
            }
            if let Err(e) = self.emit(&mut batch) {
                return self.held(batch, e);
            }
        }
        Ok(batch)
    }
}

impl FileSource {
    fn reading(config: Config, stream: String, input: Input, position: u64) -> Self {
        FileSource {
            path: config.path,
            stream,
            reader: BufReader::with_capacity(READ_BUFFER, input),
            tracked: None,
            head: Head::default(),
            position,
            partial: Vec::new(),
            follow: config.follow,
            poll_interval: config.poll_interval,
            format: config.format,
            line_number: if position == 0 { 1 } else { 0 },
            held_error: None,
            rotating: false,
            path_gone: false,
            waited: false,
        }
    }

    /// The lines already taken, with `error` held for the next poll; the error itself when
    /// nothing was taken.
    fn held(&mut self, batch: SourceBatch, error: PluginError) -> Result<SourceBatch, PluginError> {
        if batch.is_empty() {
            return Err(error);
        }
        tracing::debug!(
            "returning {} lines read before an error: {error}",
            batch.len()
        );
        self.held_error = Some(error);
        Ok(batch)
    }

    fn emit(&mut self, batch: &mut SourceBatch) -> Result<(), PluginError> {
        let start = self.position;
        self.position += self.partial.len() as u64;
        let mut line = std::mem::take(&mut self.partial);
        if self.head.bytes().len() < HEAD_LEN {
            self.head.extend(&line);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let record = match self.format {
            Format::Value => Record::new(line),
            Format::Envelope => envelope::parse(&line).map_err(|reason| {
                // Nothing is skipped silently: stop here, naming the line, and resume at it.
                self.position = start;
                self.head.truncate(start);
                let at = if self.line_number > 0 {
                    format!("line {}", self.line_number)
                } else {
                    format!("byte {start}")
                };
                PluginError::fatal(format!(
                    "{}: {at} is not an envelope: {reason}; fix the line or read the file with \
                     `format: value`",
                    self.path.display()
                ))
            })?,
        };
        if self.line_number > 0 {
            self.line_number += 1;
        }
        let offset = Offset {
            file: self.tracked.as_ref().map(|t| t.id).unwrap_or_default(),
            fingerprint: self.head.fingerprint(),
            position: self.position,
        };
        batch.push(record.with_position(self.stream.as_str(), 0, offset.encode()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `first`, then fails once with EIO, then yields `rest`: a disk that hiccups.
    struct Hiccup {
        first: std::io::Cursor<Vec<u8>>,
        failed: bool,
        rest: std::io::Cursor<Vec<u8>>,
    }

    impl Read for Hiccup {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.first.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if !self.failed {
                self.failed = true;
                return Err(std::io::Error::other("input/output error"));
            }
            self.rest.read(buf)
        }
    }

    fn values(batch: &SourceBatch) -> Vec<String> {
        batch
            .records()
            .iter()
            .map(|r| String::from_utf8(r.value().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_read_error_part_way_through_a_poll_loses_no_line() {
        let config: Config = serde_json::from_str(r#"{"path": "in.txt"}"#).unwrap();
        let input = Hiccup {
            first: std::io::Cursor::new(b"a\nb\nc".to_vec()), // the third line is cut by the error
            failed: false,
            rest: std::io::Cursor::new(b"c\nd\n".to_vec()),
        };
        let mut source = FileSource::reading(config, "in.txt".into(), Box::new(input), 0);
        let first = source.poll(100, Duration::from_millis(10)).unwrap();
        assert_eq!(
            values(&first),
            ["a", "b"],
            "the lines before the error come out"
        );
        let e = source.poll(100, Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("cannot read in.txt"), "{e}");
        let rest = source.poll(100, Duration::from_millis(10)).unwrap();
        assert_eq!(
            values(&rest),
            ["cc", "d"],
            "the retry continues where the error struck"
        );
        let end =
            |b: &SourceBatch| match offset::decode(&b.records().last().unwrap().position().offset)
                .unwrap()
            {
                offset::Stored::Current(o) => o.position,
                legacy => panic!("{legacy:?}"),
            };
        assert_eq!(end(&first), 4, "position after `a\\nb\\n`");
        assert_eq!(end(&rest), 9, "every byte accounted for");
    }
}
