//! The chaos sink: appends values to a file and fails on command. It keeps up to 64 batches in
//! flight (`begin_write` appends, `finish_write` confirms the oldest), so it exercises the
//! host's window.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use orbit_plugin_api::{
    write_by_parts, PipelinedSink, PluginError, Record, Sink, SinkContext, WriteOutcome,
};

use crate::{Faults, Injector};

pub struct ChaosSink {
    injector: Injector,
    file: Option<File>,
    /// Values failed once by `retry_once_every`.
    failed_once: std::collections::HashSet<Vec<u8>>,
    /// Batches begun and not finished: when each may be confirmed, and how it ended.
    pending: VecDeque<(Instant, Result<WriteOutcome, PluginError>)>,
}

impl Sink for ChaosSink {
    type Config = Faults;

    fn open(faults: Faults, ctx: SinkContext) -> Result<Self, PluginError> {
        let file = match &faults.path {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| PluginError::fatal(format!("cannot open {}: {e}", p.display())))?,
            ),
            None => None,
        };
        Ok(ChaosSink {
            injector: Injector::new(
                faults,
                "sink",
                ctx.metrics(),
                format!("{}/{}", ctx.pipeline, ctx.stage),
            ),
            file,
            failed_once: Default::default(),
            pending: VecDeque::new(),
        })
    }

    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }
}

impl PipelinedSink for ChaosSink {
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        let call = self.injector.before_call()?;
        let ready = Instant::now() + self.injector.faults.finish_after.unwrap_or_default();
        let outcome = if self.injector.faults.lose_batch == Some(call) {
            self.injector.injected("lost_batch");
            Err(PluginError::retriable(format!(
                "chaos: batch of call {call} lost"
            )))
        } else {
            Ok(self.append(batch)?)
        };
        self.pending.push_back((ready, outcome));
        Ok(())
    }

    fn finish_write(&mut self, wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        let Some((ready, _)) = self.pending.front() else {
            return Ok(None);
        };
        let now = Instant::now();
        if *ready > now {
            std::thread::sleep(wait.min(*ready - now));
            if *ready > Instant::now() {
                return Ok(None);
            }
        }
        let (_, outcome) = self.pending.pop_front().expect("a front");
        outcome.map(Some)
    }
}

impl ChaosSink {
    /// Appends the batch (fsync) and says which records failed.
    fn append(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        let mut outcome = WriteOutcome::ok();
        let mut buf = Vec::new();
        let mut retry = Vec::new();
        let every = self.injector.faults.retry_once_every.filter(|k| *k > 0);
        for (i, r) in batch.iter().enumerate() {
            if self.injector.rejects(r) {
                outcome.fail(
                    i,
                    PluginError::rejected("chaos: record matches reject_where"),
                );
            } else if every.is_some_and(|k| (i as u64 + 1) % k == 0)
                && self.failed_once.insert(r.value().to_vec())
            {
                retry.push(i);
            } else {
                buf.extend_from_slice(r.value());
                buf.push(b'\n');
            }
        }
        for i in retry.into_iter().rev() {
            outcome.fail(i, PluginError::retriable("chaos: retry_once_every"));
        }
        if let Some(f) = &mut self.file {
            f.write_all(&buf)
                .and_then(|_| f.sync_data())
                .map_err(|e| PluginError::retriable(format!("chaos sink write: {e}")))?;
        }
        Ok(outcome)
    }
}
