//! What has been delivered, and so how far the slot may be confirmed. Records are tracked in
//! the order they were emitted; the host acknowledges positions per stream (table). The front
//! of the queue is released while the latest acknowledged position of its stream covers it, so
//! the confirmed position never passes a record that is still in flight, in whatever order the
//! streams' acknowledgements arrive.

use std::collections::{HashMap, VecDeque};

use super::lsn::Offset;

#[derive(Default)]
pub struct Progress {
    inflight: VecDeque<(String, Offset)>,
    acked: HashMap<String, Offset>,
    /// The furthest position every record up to which is delivered.
    flush: u64,
}

/// Order of positions within one stream: snapshot rows, then changes in commit order.
fn order(o: &Offset) -> (u8, u64, u64) {
    match *o {
        Offset::Snapshot { table, row, .. } => (0, table as u64, row),
        Offset::Stream { commit, index, .. } => (1, commit, index as u64),
    }
}

impl Progress {
    /// A record handed to the host.
    pub fn emitted(&mut self, stream: &str, offset: Offset) {
        self.inflight.push_back((stream.to_string(), offset));
    }

    /// The host delivered everything up to `offset` in `stream`. Returns the new confirmed
    /// position when it moved.
    pub fn acked(&mut self, stream: &str, offset: Offset) -> Option<u64> {
        let newer = self
            .acked
            .get(stream)
            .is_none_or(|prev| order(prev) < order(&offset));
        if newer {
            self.acked.insert(stream.to_string(), offset);
        }
        let before = self.flush;
        while let Some((s, o)) = self.inflight.front() {
            let covered = self.acked.get(s).is_some_and(|a| order(o) <= order(a));
            if !covered {
                break;
            }
            if let Some(f) = o.flush() {
                self.flush = self.flush.max(f);
            }
            self.inflight.pop_front();
        }
        (self.flush > before).then_some(self.flush)
    }

    /// Nothing handed out is waiting for delivery.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// The furthest position confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.flush
    }

    /// A position confirmed on the host's behalf (a keepalive while idle).
    pub fn confirm_idle(&mut self, lsn: u64) -> Option<u64> {
        (self.inflight.is_empty() && lsn > self.flush).then(|| {
            self.flush = lsn;
            lsn
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(commit: u64, index: u32, end: u64) -> Offset {
        Offset::Stream { commit, index, end }
    }

    #[test]
    fn the_confirmed_position_waits_for_the_oldest_record_in_flight() {
        let mut p = Progress::default();
        p.emitted("a", s(100, 0, 0));
        p.emitted("b", s(100, 1, 150));
        p.emitted("a", s(200, 0, 250));
        // b's record is acknowledged first: a's earlier record is still in flight.
        assert_eq!(p.acked("b", s(100, 1, 150)), None);
        // a up to its first record: both records of transaction 100 are delivered.
        assert_eq!(p.acked("a", s(100, 0, 0)), Some(150));
        assert!(!p.is_idle());
        assert_eq!(p.acked("a", s(200, 0, 250)), Some(250));
        assert!(p.is_idle());
        // An older acknowledgement never moves anything back.
        assert_eq!(p.acked("a", s(100, 0, 0)), None);
        assert_eq!(p.confirmed(), 250);
    }

    #[test]
    fn a_transaction_split_across_batches_confirms_its_commit_lsn_until_its_last_record() {
        let mut p = Progress::default();
        p.emitted("a", s(100, 0, 0));
        p.emitted("a", s(100, 1, 0));
        p.emitted("a", s(100, 2, 180));
        assert_eq!(p.acked("a", s(100, 1, 0)), Some(100));
        assert_eq!(p.acked("a", s(100, 2, 180)), Some(180));
    }

    #[test]
    fn snapshot_rows_confirm_nothing_and_keepalives_confirm_only_when_idle() {
        let mut p = Progress::default();
        p.emitted(
            "a",
            Offset::Snapshot {
                consistent: 50,
                table: 0,
                row: 0,
                last: true,
            },
        );
        assert_eq!(p.confirm_idle(60), None);
        assert_eq!(
            p.acked(
                "a",
                Offset::Snapshot {
                    consistent: 50,
                    table: 0,
                    row: 0,
                    last: true
                }
            ),
            None
        );
        assert_eq!(p.confirm_idle(60), Some(60));
        assert_eq!(p.confirm_idle(55), None);
    }
}
