//! The one owner of a running pipeline's acknowledged positions.
//!
//! The source loop records positions as batches are acknowledged; a recreated source reads them
//! to resume from, and the persister writes them to the offset file. Positions are kept once,
//! under a mutex held only to insert or copy; an acknowledgement bumps a version number instead
//! of copying the map, and the map is copied only when a reader needs it (a save, at most once
//! per `offsets.flush_interval`, or a source being opened).

use std::sync::{Arc, Mutex};

use orbit_plugin_api::Position;
use tokio::sync::watch;

use super::{to_positions, Offsets};

/// The writing side, owned by the source loop. Dropping it tells subscribers that no more
/// positions will come.
pub struct Ledger {
    positions: Arc<Mutex<Offsets>>,
    version: watch::Sender<u64>,
}

/// A reading side: the source factory and the persister.
#[derive(Clone)]
pub struct LedgerReader {
    positions: Arc<Mutex<Offsets>>,
}

impl Ledger {
    /// A ledger starting from `offsets` (those loaded from the store), at version 0.
    pub fn new(offsets: Offsets) -> Self {
        Ledger {
            positions: Arc::new(Mutex::new(offsets)),
            version: watch::channel(0).0,
        }
    }

    /// Records acknowledged positions, each the latest of its (stream, partition).
    pub fn record<'a>(&self, acknowledged: impl IntoIterator<Item = &'a Position>) {
        let mut any = false;
        {
            let mut positions = self.positions.lock().expect("ledger lock");
            for p in acknowledged {
                positions.insert((p.stream.to_string(), p.partition), p.offset.to_vec());
                any = true;
            }
        }
        if any {
            self.version.send_modify(|v| *v += 1);
        }
    }

    pub fn reader(&self) -> LedgerReader {
        LedgerReader {
            positions: self.positions.clone(),
        }
    }

    /// Changes as version numbers; closed when the ledger is dropped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

impl LedgerReader {
    /// A copy of the acknowledged positions.
    pub fn snapshot(&self) -> Offsets {
        self.positions.lock().expect("ledger lock").clone()
    }

    /// The acknowledged positions as a source's context gets them.
    pub fn positions(&self) -> Vec<Position> {
        to_positions(&self.positions.lock().expect("ledger lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_latest_per_partition_and_counts_changes() {
        let ledger = Ledger::new(Offsets::from([(("s".to_string(), 0), vec![1])]));
        let reader = ledger.reader();
        let mut changes = ledger.subscribe();
        ledger.record(&[
            Position::new("s", 0, vec![2]),
            Position::new("s", 1, vec![7]),
            Position::new("s", 0, vec![3]),
        ]);
        ledger.record(&[]);
        assert_eq!(
            *changes.borrow_and_update(),
            1,
            "one change, none for nothing"
        );
        let got = reader.snapshot();
        assert_eq!(got[&("s".to_string(), 0)], vec![3]);
        assert_eq!(got[&("s".to_string(), 1)], vec![7]);
        assert_eq!(reader.positions().len(), 2);
        drop(ledger);
        assert!(changes.has_changed().is_err(), "closed with the ledger");
    }
}
