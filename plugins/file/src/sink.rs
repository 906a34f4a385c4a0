//! `file` and `stdout` sinks.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

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

pub struct FileSink {
    path: PathBuf,
    file: File,
    format: Format,
    fsync: bool,
    buffer: Vec<u8>,
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| {
                PluginError::fatal(format!(
                    "cannot open {} for appending: {e}",
                    config.path.display()
                ))
            })?;
        Ok(FileSink {
            path: config.path,
            file,
            format: config.format,
            fsync: config.fsync,
            buffer: Vec::with_capacity(1 << 20),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        self.buffer.clear();
        for r in batch {
            render(self.format, r, &mut self.buffer);
        }
        let before = self
            .file
            .metadata()
            .map_err(|e| self.error("cannot stat", e))?
            .len();
        let written = self.file.write_all(&self.buffer).and_then(|_| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave no torn line behind for the retry.
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
