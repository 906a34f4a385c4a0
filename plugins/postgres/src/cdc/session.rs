//! Opening the replication session (with or without the initial snapshot) and the two kinds
//! of poll: snapshot rows, then the stream.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orbit_plugin_api::redact::{redact_url, scrub_password};
use orbit_plugin_api::{ErrorKind, PluginError, SourceBatch};
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig};
use tokio::time::timeout;

use super::config::SnapshotMode;
use super::event::Change;
use super::lsn::{fmt_lsn, parse_lsn, Offset};
use super::setup::{self, slot_in_use};
use super::snapshot::{Row, SnapshotReader};
use super::PgCdcSource;
use crate::client::{check_url, connect, sqlstate_kind, SESSION_OPTIONS};

/// The snapshot being read: the gated replication session that created the slot (it must stay
/// idle for the exported snapshot to stay valid), and the reader.
pub struct SnapshotPhase {
    client: ReplicationClient,
    reader: SnapshotReader,
    consistent: u64,
    started_ms: i64,
    /// The last row read, held back until the next is known: the snapshot's final row is
    /// marked `last`.
    held: Option<Row>,
}

impl PgCdcSource {
    /// Checks, publication, slot; the snapshot or the stream is ready to poll afterwards.
    pub(super) async fn start(
        &mut self,
        snapshot_done: bool,
        resumed: bool,
    ) -> Result<(), PluginError> {
        let url = self.config.url.clone();
        let control = connect(&url, self.config.connect_timeout).await?;
        setup::check_server(&control, &url).await?;
        let tables = setup::describe_tables(&control, &self.config, &url).await?;
        self.filter.tables = tables.into_iter().map(|t| (t.name.clone(), t)).collect();
        setup::ensure_publication(&control, &self.config, &self.publication, &url).await?;
        let slot = self.slot.clone();
        let state = setup::slot_state(&control, &slot, &url).await?;
        if let Some(s) = &state {
            if s.lost {
                return Err(PluginError::fatal(format!(
                    "replication slot {slot} was invalidated by the server (max_slot_wal_keep_size): the changes it \
                     held are gone; drop the slot and reset this pipeline's offsets to start over with a new snapshot"
                )));
            }
            if let Some(pid) = s.active_pid {
                return Err(slot_in_use(&slot, Some(pid)));
            }
        }
        if self.config.snapshot == SnapshotMode::Initial && !snapshot_done {
            if state.is_some() {
                tracing::info!(slot, "no finished snapshot on record: dropping the slot and starting the snapshot over");
                setup::drop_slot(&control, &slot, &url).await?;
            }
            return self.begin_snapshot().await;
        }
        match state {
            None if resumed => Err(PluginError::fatal(format!(
                "replication slot {slot} does not exist, so the changes since this pipeline last ran cannot be read: \
                 reset the pipeline's stored offsets to start over (with a new snapshot unless snapshot: never)"
            ))),
            None => setup::create_slot(&control, &slot, &url).await,
            Some(s) => {
                let delivered = self.filter.delivered.values().map(|d| d.0).max().unwrap_or(0);
                if let Some(c) = s.confirmed_flush.filter(|c| *c > delivered && delivered > 0) {
                    tracing::warn!(
                        slot,
                        confirmed = %fmt_lsn(c),
                        stored = %fmt_lsn(delivered),
                        "the slot was confirmed past this pipeline's stored offsets (moved by someone else?): \
                         streaming resumes from the slot; changes in between cannot be replayed"
                    );
                }
                Ok(())
            }
        }
    }

    async fn begin_snapshot(&mut self) -> Result<(), PluginError> {
        let url = self.config.url.clone();
        let mut client = ReplicationClient::connect_gated(self.replication_config()?)
            .await
            .map_err(|e| self.replication_error(&e))?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            self.slot
        );
        let rows = client
            .simple_query(&sql)
            .await
            .map_err(|e| self.replication_error(&e))?;
        let row = rows
            .first()
            .ok_or_else(|| PluginError::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
        let text = |i: usize| {
            row.get(i)
                .and_then(|b| b.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let consistent = text(1).as_deref().and_then(parse_lsn).unwrap_or(0);
        let name = text(2)
            .ok_or_else(|| PluginError::fatal("CREATE_REPLICATION_SLOT exported no snapshot"))?;
        tracing::info!(slot = %self.slot, consistent = %fmt_lsn(consistent), snapshot = %name, "created the replication slot; reading the snapshot");
        let reader =
            SnapshotReader::begin(&url, self.config.connect_timeout, &name, &self.names).await?;
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.snapshot = Some(SnapshotPhase {
            client,
            reader,
            consistent,
            started_ms,
            held: None,
        });
        Ok(())
    }

    pub(super) async fn poll_snapshot(&mut self, max: usize) -> Result<SourceBatch, PluginError> {
        let url = self.config.url.clone();
        let phase = self.snapshot.as_mut().expect("in the snapshot phase");
        let rows = phase.reader.next(max, &url).await?;
        let mut out = SourceBatch::with_capacity(rows.len() + 1);
        let done = rows.is_empty();
        let mut emit = |row: Row, last: bool, phase: &SnapshotPhase, out: &mut SourceBatch| {
            let name = &self.names[row.table as usize];
            let key = self
                .filter
                .tables
                .get(name)
                .map(|t| t.key.as_slice())
                .unwrap_or(&[]);
            let offset = Offset::Snapshot {
                consistent: phase.consistent,
                table: row.table,
                row: row.row,
                last,
            };
            let change = Change {
                table: name,
                key,
                operation: "read",
                new: Some(row.values),
                old: None,
                xid: None,
                lsn: phase.consistent,
                event_id: format!("snapshot:{name}:{}", row.row),
                timestamp_ms: phase.started_ms,
            };
            self.progress.emitted(name, offset);
            out.push(change.into_record(offset));
        };
        for row in rows {
            if let Some(prev) = phase.held.replace(row) {
                emit(prev, false, phase, &mut out);
            }
        }
        if !done {
            return Ok(out);
        }
        let mut phase = self.snapshot.take().expect("in the snapshot phase");
        if let Some(last) = phase.held.take() {
            emit(last, true, &phase, &mut out);
        }
        // The rows are out: nothing may fail this poll now. The slot keeps every change from
        // its consistent point, so if the gated session cannot start, a fresh one streams
        // from the same place.
        if let Err(e) = phase.reader.finish(&url).await {
            tracing::debug!(error = %e.message(), "ending the snapshot transaction");
        }
        match phase.client.start().await {
            Ok(()) => self.stream.client = Some(phase.client),
            Err(e) => tracing::warn!(
                error = %self.replication_error(&e).message(),
                "starting the stream after the snapshot failed: reconnecting"
            ),
        }
        tracing::info!(slot = %self.slot, "snapshot read: streaming changes");
        Ok(out)
    }

    pub(super) async fn poll_stream(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, PluginError> {
        if self.stream.client.is_none() {
            let mut cfg = self.replication_config()?;
            if self.progress.confirmed() > 0 {
                cfg = cfg.with_ack_lsn(Lsn::from_u64(self.progress.confirmed()));
            }
            let client = ReplicationClient::connect(cfg)
                .await
                .map_err(|e| self.replication_error(&e))?;
            self.stream.client = Some(client);
        }
        let deadline = Instant::now() + max_wait;
        loop {
            while self.stream.ready.len() < max {
                let client = self.stream.client.as_mut().expect("connected above");
                let Ok(event) = timeout(Duration::ZERO, client.recv()).await else {
                    break;
                };
                self.on_event(event)?;
            }
            if !self.stream.ready.is_empty() || Instant::now() >= deadline {
                break;
            }
            let client = self.stream.client.as_mut().expect("connected above");
            match tokio::time::timeout_at(deadline.into(), client.recv()).await {
                Ok(event) => self.on_event(event)?,
                Err(_) => break,
            }
        }
        let n = self.stream.ready.len().min(max);
        let mut out = SourceBatch::with_capacity(n);
        for record in self.stream.ready.drain(..n) {
            if let Some(o) = Offset::decode(&record.offset) {
                self.progress.emitted(record.stream.as_str(), o);
                self.stream.handed = o.stream_key().max(self.stream.handed);
            }
            out.push(record);
        }
        Ok(out)
    }

    fn on_event(
        &mut self,
        event: pgwire_replication::Result<Option<pgwire_replication::ReplicationEvent>>,
    ) -> Result<(), PluginError> {
        let event = match event {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(PluginError::retriable(
                    "the replication stream ended: reconnecting",
                ))
            }
            Err(e) => return Err(self.replication_error(&e)),
        };
        if let Some(wal_end) = self.stream.handle(event, &self.filter)? {
            if self.stream.is_quiet() {
                if let Some(lsn) = self.progress.confirm_idle(wal_end) {
                    if let Some(c) = &self.stream.client {
                        c.update_applied_lsn(Lsn::from_u64(lsn));
                    }
                }
            }
        }
        Ok(())
    }

    fn replication_config(&self) -> Result<ReplicationConfig, PluginError> {
        let url = &self.config.url;
        let pg = check_url("url", url).map_err(|e| PluginError::config(e.message.to_string()))?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let user = pg.get_user().unwrap_or("postgres").to_string();
        let db = pg.get_dbname().unwrap_or("postgres").to_string();
        let hb = self.config.heartbeat_interval;
        Ok(ReplicationConfig::new(
            host,
            user,
            password,
            db,
            self.slot.clone(),
            self.publication.clone(),
        )
        .with_port(port)
        .with_options(SESSION_OPTIONS)
        .with_status_interval(hb)
        .with_wakeup_interval(hb)
        .with_buffer_size(4096)
        .with_application_name("orbit-cdc"))
    }

    fn replication_error(&self, e: &PgWireError) -> PluginError {
        let url = &self.config.url;
        let text = scrub_password(&e.to_string(), url);
        let err = match e {
            PgWireError::Server(msg) => {
                let code = msg.rsplit_once("(SQLSTATE ").map(|(_, c)| c.trim_end_matches(')')).unwrap_or("");
                match code {
                    "55006" => return slot_in_use(&self.slot, None),
                    "42704" => PluginError::fatal(format!(
                        "replication on slot {} failed: {text}; the slot or publication is gone: reset this \
                         pipeline's offsets to start over with a new slot",
                        self.slot
                    )),
                    "55000" if msg.contains("wal_level") => PluginError::config(format!(
                        "{text}; run `ALTER SYSTEM SET wal_level = logical` as a superuser and restart PostgreSQL"
                    )),
                    _ => PluginError::new(sqlstate_kind(code), format!("replication on slot {}: {text}", self.slot)),
                }
            }
            PgWireError::Auth(_) => PluginError::config(format!(
                "the replication connection to {} was refused: {text}; check the user and password in the URL \
                 (the user needs the REPLICATION attribute)",
                redact_url(url)
            )),
            _ => PluginError::new(
                ErrorKind::Retriable,
                format!("replication connection to {}: {text}; retrying", redact_url(url)),
            ),
        };
        PluginError::new(err.kind(), scrub_password(err.message(), url))
    }
}
