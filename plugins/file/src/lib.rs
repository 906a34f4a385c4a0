//! The `file` plugin library: a `file` source (lines of a file), a `file` sink (appends lines,
//! fsyncs before acknowledging) and a `stdout` sink.
//!
//! Delivery:
//! * `file` source: the offset is the file's identity (device, inode, fingerprint of its first
//!   bytes) and the byte position after each line, stored by the host. After a crash the lines
//!   after the last stored position are read again (duplicates up to the pipeline's in-flight
//!   window). A file that is not the stored one, or truncated or rewritten, is read again from
//!   its start, with a warning; in follow mode, so is a file truncated while followed, and a
//!   replaced (rotated) file is read to its end before the new one. No line is emitted in part.
//! * `file` sink: a batch is acknowledged only after `write` + `fsync`. A failed write is
//!   truncated back to the length before the batch, so a retried batch leaves no torn line.
//!   After a crash, lines written but not yet acknowledged are written again: dedup on the
//!   record's content or on a key your records carry.
//! * `stdout` sink: flushes every batch; for demos and debugging.

mod envelope;
mod sink;
mod source;

use orbit_plugin_api::{export_plugin, PluginBuilder};

export_plugin!(PluginBuilder::new("file", env!("CARGO_PKG_VERSION"))
    .source::<source::FileSource>("file", "reads lines from a file; optional follow mode")
    .sink::<sink::FileSink>("file", "appends records as lines; fsync before ack")
    .sink::<sink::StdoutSink>("stdout", "prints records as lines"));
