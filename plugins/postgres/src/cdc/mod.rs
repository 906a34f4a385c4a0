//! The `postgres_cdc` source: logical replication with the built-in `pgoutput` plugin over
//! the streaming replication protocol (pgwire-replication), decoded here.
//!
//! * `open`: checks the server and tables, creates the publication, and either creates the
//!   slot with an exported snapshot (initial snapshot) or resumes from the existing slot;
//! * `poll`: snapshot rows first (operation `read`), then changes, whole transactions at a time;
//! * `ack`: the server is told the furthest position all of whose records were delivered
//!   (`progress.rs`), never further; while nothing is in flight, a keepalive's WAL end.

mod config;
pub mod decode;
mod event;
mod lag;
mod lsn;
mod progress;
mod session;
mod setup;
mod snapshot;
mod stream;
pub mod types;

use std::collections::HashMap;
use std::time::Duration;

use orbit_plugin_api::{
    runtime, ConfigError, PluginError, Position, Source, SourceBatch, SourceContext,
};
use tokio::task::JoinHandle;

pub use config::CdcConfig;
use lsn::Offset;
use progress::Progress;
use session::SnapshotPhase;
use stream::{Filter, Stream};

pub struct PgCdcSource {
    config: CdcConfig,
    slot: String,
    publication: String,
    filter: Filter,
    /// Table names in `tables` order: a snapshot row's table index.
    names: Vec<String>,
    snapshot: Option<SnapshotPhase>,
    /// A snapshot was interrupted: the next poll starts it over.
    restart_snapshot: bool,
    stream: Stream,
    progress: Progress,
    lag: Option<JoinHandle<()>>,
}

impl Source for PgCdcSource {
    type Config = CdcConfig;

    fn validate(config: &CdcConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    fn open(config: CdcConfig, ctx: SourceContext) -> Result<Self, PluginError> {
        let slot = config
            .slot
            .clone()
            .unwrap_or_else(|| config::default_slot(&ctx.pipeline, &ctx.stage));
        let publication = config.publication.clone().unwrap_or_else(|| slot.clone());
        let mut source = PgCdcSource {
            filter: Filter {
                tables: HashMap::new(),
                operations: config.operations.clone(),
                delivered: HashMap::new(),
            },
            names: config.qualified_tables(),
            config,
            slot,
            publication,
            snapshot: None,
            restart_snapshot: false,
            stream: Stream::default(),
            progress: Progress::default(),
            lag: None,
        };
        let stored: Vec<(String, Offset)> = ctx
            .offsets
            .iter()
            .filter_map(|p| Offset::decode(&p.offset).map(|o| (p.stream.to_string(), o)))
            .filter(|(s, _)| source.names.contains(s))
            .collect();
        for (stream, o) in &stored {
            if let Some(k) = o.stream_key() {
                source.filter.delivered.insert(stream.clone(), k);
            }
        }
        let snapshot_done = stored.iter().any(|(_, o)| o.snapshot_done());
        let resumed = !stored.is_empty();
        runtime().block_on(source.start(snapshot_done, resumed))?;
        source.lag = Some(
            lag::LagWatch {
                url: source.config.url.clone(),
                slot: source.slot.clone(),
                interval: source.config.heartbeat_interval,
                warn_bytes: source.config.lag_warn_bytes,
                connect_timeout: source.config.connect_timeout,
                metrics: ctx.metrics(),
            }
            .spawn(),
        );
        Ok(source)
    }

    fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<SourceBatch, PluginError> {
        let result = runtime().block_on(async {
            if self.restart_snapshot {
                self.start(false, false).await?;
                self.restart_snapshot = false;
            }
            if self.snapshot.is_some() {
                return self.poll_snapshot(max_records).await;
            }
            self.poll_stream(max_records, max_wait).await
        });
        if let Err(e) = &result {
            tracing::debug!(error = %e.message(), "postgres_cdc poll failed");
            self.stream.reset();
            if self.snapshot.take().is_some() {
                // An interrupted snapshot cannot resume (a new one is another point in time):
                // the next poll starts it over, with a new slot.
                self.restart_snapshot = true;
            }
        }
        result
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let mut flush = None;
        for p in positions {
            if let Some(o) = Offset::decode(&p.offset) {
                if let Some(f) = self.progress.acked(p.stream.as_str(), o) {
                    flush = Some(f);
                }
            }
        }
        if let (Some(f), Some(client)) = (flush, self.stream.client.as_ref()) {
            client.update_applied_lsn(pgwire_replication::Lsn::from_u64(f));
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), PluginError> {
        if let Some(lag) = self.lag.take() {
            lag.abort();
        }
        self.snapshot = None;
        if let Some(mut client) = self.stream.client.take() {
            let _ = runtime().block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await
            });
        }
        Ok(())
    }
}

impl Drop for PgCdcSource {
    fn drop(&mut self) {
        if let Some(lag) = self.lag.take() {
            lag.abort();
        }
    }
}
