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
}
