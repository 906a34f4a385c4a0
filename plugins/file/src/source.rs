//! `file` source: one record per line.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orbit_plugin_api::{ConfigError, PluginError, Record, Source, SourceBatch, SourceContext};
use serde::Deserialize;

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

pub struct FileSource {
    path: PathBuf,
    stream: String,
    reader: BufReader<File>,
    /// Byte position of the start of `partial` (or of the next line).
    position: u64,
    /// Bytes of a line whose newline has not been written yet (follow mode).
    partial: Vec<u8>,
    follow: bool,
    poll_interval: Duration,
    format: Format,
    /// Line number of the next line, for errors.
    line_number: u64,
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
        let file =
            File::open(&config.path).map_err(|e| io_error(&config.path, "cannot open", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(&config.path, "cannot stat", e))?
            .len();
        let mut position = match ctx.offset(&stream, 0) {
            Some(b) => u64::from_be_bytes(
                b.try_into()
                    .map_err(|_| PluginError::fatal("stored offset is not a file position"))?,
            ),
            None => 0,
        };
        if position > len {
            tracing::warn!(
                file = %config.path.display(),
                stored = position,
                length = len,
                "the file is shorter than the stored position (truncated or replaced); reading it from the start"
            );
            position = 0;
        }
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        reader
            .seek(SeekFrom::Start(position))
            .map_err(|e| io_error(&config.path, "cannot seek in", e))?;
        if position > 0 {
            tracing::info!(file = %config.path.display(), position, "resuming");
        }
        Ok(FileSource {
            path: config.path,
            stream,
            reader,
            position,
            partial: Vec::new(),
            follow: config.follow,
            poll_interval: config.poll_interval,
            format: config.format,
            line_number: if position == 0 { 1 } else { 0 },
        })
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let deadline = Instant::now() + max_wait;
        let mut batch = SourceBatch::with_capacity(max_records.min(4096));
        while batch.len() < max_records {
            let n = self
                .reader
                .read_until(b'\n', &mut self.partial)
                .map_err(|e| io_error(&self.path, "cannot read", e))?;
            let complete = self.partial.last() == Some(&b'\n');
            if n == 0 || !complete {
                // End of what is there now.
                if !self.follow {
                    if !self.partial.is_empty() {
                        // A last line without a newline.
                        self.emit(&mut batch)?;
                    }
                    batch.end_of_stream();
                    break;
                }
                if !batch.is_empty() || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(self.poll_interval.min(deadline - Instant::now()));
                continue;
            }
            self.emit(&mut batch)?;
        }
        Ok(batch)
    }
}

impl FileSource {
    fn emit(&mut self, batch: &mut SourceBatch) -> Result<(), PluginError> {
        let start = self.position;
        self.position += self.partial.len() as u64;
        let mut line = std::mem::take(&mut self.partial);
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
        batch.push(record.with_position(self.stream.as_str(), 0, self.position.to_be_bytes()));
        Ok(())
    }
}
