//! The replication stream: pgoutput messages → change records, a whole transaction at a time.
//! A transaction's records get their offsets at its commit (the last one carries the
//! transaction's end LSN); records at or before the resume point are skipped, but still counted,
//! so a change has the same offset in every session.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use orbit_plugin_api::abi_stable::std_types::RVec;
use orbit_plugin_api::{PluginError, Record};
use pgwire_replication::{ReplicationClient, ReplicationEvent};

use super::config::Operation;
use super::decode::{decode, Decoded, Relation};
use super::event::{old_values, pg_time_to_ms, values, Change, Fields};
use super::lsn::{fmt_lsn, Offset};
use super::setup::TableInfo;

/// A transaction bigger than this is handed out before its commit arrives (its records then
/// confirm its commit LSN, which replays it whole after a crash).
const MAX_HELD: usize = 8192;

/// What the stream needs to know about the configuration.
pub struct Filter {
    pub tables: HashMap<String, TableInfo>,
    pub operations: Vec<Operation>,
    /// Per table, the last delivered change `(commit, index)`: anything at or before it is
    /// skipped.
    pub delivered: HashMap<String, (u64, u32)>,
}

struct Tx {
    commit: u64,
    xid: u32,
    timestamp_ms: i64,
    /// Records emitted so far in this transaction (skipped ones included).
    index: u32,
    held: Vec<(u32, Record)>,
}

#[derive(Default)]
pub struct Stream {
    pub client: Option<ReplicationClient>,
    /// Relations by OID, with their `schema.table` name.
    relations: HashMap<u32, (Relation, String)>,
    tx: Option<Tx>,
    pub ready: VecDeque<Record>,
    /// The last change handed to the host in this instance: after a reconnect, the server
    /// sends again from the confirmed position, and these were already handed out.
    pub handed: Option<(u64, u32)>,
}

impl Stream {
    /// Forgets the session: what was not handed out will be sent again.
    pub fn reset(&mut self) {
        self.client = None;
        self.relations.clear();
        self.tx = None;
        self.ready.clear();
    }

    /// No transaction open and nothing waiting to be handed out.
    pub fn is_quiet(&self) -> bool {
        self.tx.is_none() && self.ready.is_empty()
    }

    /// Handles one event; returns the WAL end of a keepalive.
    pub fn handle(
        &mut self,
        event: ReplicationEvent,
        filter: &Filter,
    ) -> Result<Option<u64>, PluginError> {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => return Ok(Some(wal_end.as_u64())),
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.tx = Some(Tx {
                    commit: final_lsn.as_u64(),
                    xid,
                    timestamp_ms: pg_time_to_ms(commit_time_micros),
                    index: 0,
                    held: Vec::new(),
                });
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let decoded = decode(&data).map_err(|e| {
                    PluginError::fatal(format!(
                        "the server sent a change this source cannot read: {e}"
                    ))
                })?;
                self.change(decoded, wal_start.as_u64(), filter)?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(tx) = self.tx.take() {
                    self.release(tx, end_lsn.as_u64());
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn change(&mut self, decoded: Decoded, lsn: u64, filter: &Filter) -> Result<(), PluginError> {
        if let Decoded::Relation(r) = decoded {
            let name = r.qualified();
            self.relations.insert(r.oid, (r, name));
            return Ok(());
        }
        let (rel_oids, operation) = match &decoded {
            Decoded::Insert { rel, .. } => (std::slice::from_ref(rel), Operation::Insert),
            Decoded::Update { rel, .. } => (std::slice::from_ref(rel), Operation::Update),
            Decoded::Delete { rel, .. } => (std::slice::from_ref(rel), Operation::Delete),
            Decoded::Truncate { rels, .. } => (rels.as_slice(), Operation::Truncate),
            Decoded::Relation(_) | Decoded::Other => return Ok(()),
        };
        if !filter.operations.contains(&operation) {
            return Ok(());
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(PluginError::retriable(
                "a change arrived outside a transaction: reconnecting",
            ));
        };
        for &oid in rel_oids {
            let (rel, name) = self.relations.get(&oid).ok_or_else(|| {
                PluginError::retriable(format!(
                    "a change to relation {oid} arrived before its description: reconnecting"
                ))
            })?;
            let Some(info) = filter.tables.get(name) else {
                continue;
            };
            let index = tx.index;
            tx.index += 1;
            let position = (tx.commit, index);
            let skipped = filter.delivered.get(name).is_some_and(|d| position <= *d)
                || self.handed.is_some_and(|h| position <= h);
            if skipped {
                continue;
            }
            let (new, old) = match &decoded {
                Decoded::Insert { new, .. } => (Some(values(rel, new, false, None)), None),
                Decoded::Update { old, new, .. } => {
                    let old = old.as_ref().map(|o| old_values(rel, o));
                    let new = values(rel, new, false, old.as_ref());
                    // Under the default replica identity an update that keeps the key sends
                    // no old tuple: its old key is the new one.
                    let old = old
                        .or_else(|| Some(key_of(&new, &info.key)))
                        .filter(|o| !o.is_empty());
                    (Some(new), old)
                }
                Decoded::Delete { old, .. } => (None, Some(old_values(rel, old))),
                _ => (None, None),
            };
            let change = Change {
                table: &info.name,
                key: &info.key,
                operation: operation.as_str(),
                new,
                old,
                xid: Some(tx.xid),
                lsn: if lsn == 0 { tx.commit } else { lsn },
                event_id: format!("{}:{index}", fmt_lsn(tx.commit)),
                timestamp_ms: tx.timestamp_ms,
            };
            // The offset is set at commit, when the last record is known.
            tx.held.push((
                index,
                change.into_record(Offset::Stream {
                    commit: tx.commit,
                    index,
                    end: 0,
                }),
            ));
        }
        if tx.held.len() > MAX_HELD {
            let keep = tx.held.pop();
            self.ready.extend(tx.held.drain(..).map(|(_, r)| r));
            tx.held.extend(keep);
        }
        Ok(())
    }

    fn release(&mut self, mut tx: Tx, end: u64) {
        if let Some((index, last)) = tx.held.last_mut() {
            last.offset = RVec::from(
                Offset::Stream {
                    commit: tx.commit,
                    index: *index,
                    end,
                }
                .encode(),
            );
        }
        self.ready.extend(tx.held.drain(..).map(|(_, r)| r));
    }
}

fn key_of<'a>(row: &Fields, key: &'a [String]) -> Fields<'a> {
    Fields(
        key.iter()
            .filter_map(|k| row.get(k).map(|v| (Cow::Borrowed(k.as_str()), v.clone())))
            .collect(),
    )
}
