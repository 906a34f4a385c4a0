//! What a sink's window resends after a failure, so that at-least-once holds and the **last
//! copy** of every record lands in source order per partition.
//!
//! The window's entries have all finished (confirmed, or failed) when this runs. Records are
//! walked in window order, keeping the source partitions (stream, partition) that are
//! *tainted*: a record that failed retriably is resent and taints its partition; a record that
//! was delivered but follows a failed one of its partition is resent too ("order only"), so its
//! last copy lands after the failed one's; a rejected record is dead-lettered at its batch's
//! turn; anything else was delivered. The cost is at most a window of duplicates per failure.

use std::collections::HashSet;

use abi_stable::std_types::RVec;
use orbit_plugin_api::ffi::WriteOutcomeFfi;
use orbit_plugin_api::{ErrorKind, PluginError, Record};

/// How one begun batch ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Confirmed, with the records the sink failed one by one.
    Done(WriteOutcomeFfi),
    /// Failed as a whole (a `begin_write` or `finish_write` error, a timeout, a lost instance).
    Failed(PluginError),
}

impl Ended {
    /// Whether any record needs another write.
    pub(super) fn needs_resend(&self) -> bool {
        match self {
            Ended::Done(out) => out
                .failures
                .iter()
                .any(|f| f.error.kind() == ErrorKind::Retriable),
            Ended::Failed(e) => resendable(e),
        }
    }

    /// The first error that stops the pipeline (configuration or fatal), if any.
    pub(super) fn fatal(&self) -> Option<&PluginError> {
        let stops = |e: &PluginError| matches!(e.kind(), ErrorKind::Config | ErrorKind::Fatal);
        match self {
            Ended::Done(out) => out.failures.iter().map(|f| &f.error).find(|e| stops(e)),
            Ended::Failed(e) => Some(e).filter(|e| stops(e)),
        }
    }

    /// The longest retry-after among the errors that ask for a resend.
    pub(super) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Ended::Done(out) => out
                .failures
                .iter()
                .filter(|f| f.error.kind() == ErrorKind::Retriable)
                .filter_map(|f| f.error.retry_after())
                .max(),
            Ended::Failed(e) => e.retry_after().filter(|_| resendable(e)),
        }
    }

    /// The first error that asks for a resend, for the retry policy.
    pub(super) fn resend_error(&self) -> Option<&PluginError> {
        match self {
            Ended::Done(out) => out
                .failures
                .iter()
                .map(|f| &f.error)
                .find(|e| e.kind() == ErrorKind::Retriable),
            Ended::Failed(e) => Some(e).filter(|e| resendable(e)),
        }
    }
}

fn resendable(e: &PluginError) -> bool {
    matches!(e.kind(), ErrorKind::Retriable | ErrorKind::Panicked)
}

/// What to do with one finished batch, in window order.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Piece {
    /// Indices to write again, in batch order.
    pub resend: Vec<usize>,
    /// Per entry of `resend`: delivered already, resent only to keep its partition's order.
    pub order_only: Vec<bool>,
    /// Indices the sink rejected, to dead-letter, with why.
    pub rejects: Vec<(usize, PluginError)>,
    /// Records delivered and not resent.
    pub delivered: usize,
}

/// Plans the resend of a window whose entries have all ended. `Config`/`Fatal` failures are
/// the caller's to check first (they stop the pipeline); here they count as rejects.
pub(super) fn plan(window: &[(&RVec<Record>, &Ended)]) -> Vec<Piece> {
    let mut tainted: HashSet<(&str, i32)> = HashSet::new();
    let mut pieces = Vec::with_capacity(window.len());
    for (records, ended) in window {
        let mut verdict: Vec<Option<&PluginError>> = vec![None; records.len()];
        match ended {
            Ended::Done(out) => {
                for f in out.failures.iter() {
                    if let Some(v) = verdict.get_mut(f.index as usize) {
                        v.get_or_insert(&f.error);
                    }
                }
            }
            Ended::Failed(e) => verdict.iter_mut().for_each(|v| *v = Some(e)),
        }
        let mut piece = Piece::default();
        for (i, (record, verdict)) in records.iter().zip(verdict).enumerate() {
            let partition = (record.stream.as_str(), record.partition);
            match verdict {
                Some(e) if resendable(e) => {
                    tainted.insert(partition);
                    piece.resend.push(i);
                    piece.order_only.push(false);
                }
                Some(e) => piece.rejects.push((i, e.clone())),
                None if tainted.contains(&partition) => {
                    piece.resend.push(i);
                    piece.order_only.push(true);
                }
                None => piece.delivered += 1,
            }
        }
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use orbit_plugin_api::ffi::RecordFailureFfi;

    fn batch(partitions: &[i32]) -> RVec<Record> {
        partitions
            .iter()
            .map(|&p| Record {
                key: None.into(),
                value: RVec::new(),
                headers: RVec::new(),
                timestamp_ms: None.into(),
                stream: "t".into(),
                partition: p,
                offset: RVec::new(),
            })
            .collect()
    }

    fn done(failures: &[(usize, PluginError)]) -> Ended {
        Ended::Done(WriteOutcomeFfi {
            failures: failures
                .iter()
                .map(|(i, e)| RecordFailureFfi {
                    index: *i as u64,
                    error: e.clone(),
                })
                .collect(),
        })
    }

    #[test]
    fn a_failed_record_drags_the_later_records_of_its_partition_along() {
        let b0 = batch(&[0, 1, 0, 1]);
        let b1 = batch(&[0, 1, 2]);
        let e0 = done(&[(2, PluginError::retriable("timed out"))]);
        let e1 = done(&[]);
        let p = plan(&[(&b0, &e0), (&b1, &e1)]);
        assert_eq!(p[0].resend, vec![2]);
        assert_eq!(p[0].order_only, vec![false]);
        assert_eq!(p[0].delivered, 3);
        // Partition 0 is tainted: its record in the next batch goes again, after the failed one.
        assert_eq!(p[1].resend, vec![0]);
        assert_eq!(p[1].order_only, vec![true]);
        assert_eq!(p[1].delivered, 2);
    }

    #[test]
    fn a_batch_failed_whole_is_resent_whole_and_taints_every_partition_it_touched() {
        let b0 = batch(&[0, 0]);
        let b1 = batch(&[1, 0, 1]);
        let e0 = Ended::Failed(PluginError::retriable("boom"));
        let e1 = done(&[(2, PluginError::rejected("bad"))]);
        let p = plan(&[(&b0, &e0), (&b1, &e1)]);
        assert_eq!(p[0].resend, vec![0, 1]);
        assert_eq!(p[1].resend, vec![1]);
        assert_eq!(p[1].order_only, vec![true]);
        assert_eq!(p[1].rejects.len(), 1);
        assert_eq!(p[1].rejects[0].0, 2);
        assert_eq!(p[1].delivered, 1);
    }

    #[test]
    fn a_record_reported_twice_is_planned_once() {
        let b0 = batch(&[0, 0]);
        let e0 = done(&[
            (1, PluginError::retriable("a")),
            (1, PluginError::retriable("b")),
        ]);
        let p = plan(&[(&b0, &e0)]);
        assert_eq!(p[0].resend, vec![1]);
        assert_eq!(p[0].delivered, 1);
    }

    use proptest::prelude::*;
    use std::collections::HashMap;

    /// How one record of the first round went: delivered; failed retriably with its copy
    /// landed or not; rejected.
    #[derive(Debug, Clone, Copy)]
    enum Fate {
        Delivered,
        Failed { landed: bool },
        Rejected,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            6 => Just(Fate::Delivered),
            2 => any::<bool>().prop_map(|landed| Fate::Failed { landed }),
            1 => Just(Fate::Rejected),
        ]
    }

    /// A window: batches of (partition, fate) records, some failed as a whole (their copies
    /// landed or not).
    /// A batch's records as (partition, fate), and `Some(landed)` when it failed whole.
    type ModelBatch = (Vec<(i32, Fate)>, Option<bool>);

    fn window() -> impl Strategy<Value = Vec<ModelBatch>> {
        prop::collection::vec(
            (
                prop::collection::vec((0..3i32, fate()), 1..8),
                prop::option::weighted(0.2, any::<bool>()),
            ),
            1..6,
        )
    }

    proptest! {
        /// Against a model destination (an append-only log per partition): after the first
        /// round and the planned resend (which succeeds), every record not rejected is there,
        /// and the last copies are in source order per partition.
        #[test]
        fn the_last_copies_land_in_source_order(window in window()) {
            let mut log: HashMap<i32, Vec<u64>> = HashMap::new();
            let mut batches = Vec::new();
            let mut ended = Vec::new();
            let mut seq = 0u64;
            let mut rejected = std::collections::HashSet::new();
            for (records, whole) in &window {
                let mut b = batch(&records.iter().map(|(p, _)| *p).collect::<Vec<_>>());
                let mut failures = Vec::new();
                for (i, (p, f)) in records.iter().enumerate() {
                    b[i].offset = seq.to_be_bytes().to_vec().into();
                    let landed = match (whole, f) {
                        (Some(landed), _) => *landed,
                        (None, Fate::Delivered) => true,
                        (None, Fate::Failed { landed }) => {
                            failures.push((i, PluginError::retriable("x")));
                            *landed
                        }
                        (None, Fate::Rejected) => {
                            failures.push((i, PluginError::rejected("bad")));
                            rejected.insert(seq);
                            false
                        }
                    };
                    if landed {
                        log.entry(*p).or_default().push(seq);
                    }
                    seq += 1;
                }
                ended.push(match whole {
                    Some(_) => Ended::Failed(PluginError::retriable("lost")),
                    None => done(&failures),
                });
                batches.push(b);
            }
            // A whole-batch failure fails its rejects too (retriably): they are resent.
            for (b, (records, whole)) in batches.iter().zip(&window) {
                if whole.is_some() {
                    for (r, _) in b.iter().zip(records) {
                        rejected.remove(&u64::from_be_bytes(r.offset.as_slice().try_into().unwrap()));
                    }
                }
            }
            let view: Vec<_> = batches.iter().zip(&ended).collect();
            for (b, piece) in batches.iter().zip(plan(&view)) {
                for i in piece.resend {
                    let r = &b[i];
                    let seq = u64::from_be_bytes(r.offset.as_slice().try_into().unwrap());
                    log.entry(r.partition).or_default().push(seq);
                }
            }
            for (p, entries) in &log {
                let mut last: HashMap<u64, usize> = HashMap::new();
                for (at, s) in entries.iter().enumerate() {
                    last.insert(*s, at);
                }
                let mut order: Vec<(usize, u64)> = last.into_iter().map(|(s, at)| (at, s)).collect();
                order.sort_unstable();
                let seqs: Vec<u64> = order.into_iter().map(|(_, s)| s).collect();
                let mut sorted = seqs.clone();
                sorted.sort_unstable();
                prop_assert_eq!(&seqs, &sorted, "partition {} ends out of order: {:?}", p, entries);
            }
            let present: std::collections::HashSet<u64> = log.values().flatten().copied().collect();
            for s in 0..seq {
                prop_assert!(present.contains(&s) || rejected.contains(&s), "record {} lost", s);
            }
        }
    }
}
