//! In-order acknowledgement of source positions.
//!
//! Batches are numbered as the source produces them and may finish in any order (a batch
//! emptied by a transform finishes before an earlier one reaches the sink). A position is
//! released only when its batch and every earlier batch are finished: a contiguous watermark,
//! so a crash never skips an undelivered record.
//!
//! Each batch remembers the source instance that polled it. Released positions always advance
//! the stored offsets, but are acknowledged only to the instance that polled them: positions
//! such as AMQP delivery tags or HTTP request sequences mean something only to the session that
//! handed them out, and a later instance given an earlier one's tag would acknowledge its own,
//! undelivered, messages.

use std::collections::VecDeque;

use orbit_plugin_api::Position;

/// A completion the tracker cannot apply: a bug in the host, never a plugin's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("batch {id} completed twice")]
    Duplicate { id: u64 },
    #[error("batch {id} completed but never registered (the next batch id is {next})")]
    Unknown { id: u64, next: u64 },
}

struct Pending {
    positions: Vec<Position>,
    /// The generation of the source instance that polled the batch.
    instance: u64,
    done: bool,
}

/// What finished batches released.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// The latest position per partition over every released batch: what the offset store keeps.
    pub store: Vec<Position>,
    /// The latest position per partition over the released batches that the current instance
    /// polled: what may be acknowledged to it.
    pub ack: Vec<Position>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

#[derive(Default)]
pub struct AckTracker {
    /// The id of the batch at the front of `pending`.
    front_id: u64,
    pending: VecDeque<Pending>,
}

/// Keeps `p` as the latest position of its partition in `latest`.
fn keep_latest(latest: &mut Vec<Position>, p: &Position) {
    match latest
        .iter_mut()
        .find(|r| r.partition == p.partition && r.stream == p.stream)
    {
        Some(r) => *r = p.clone(),
        None => latest.push(p.clone()),
    }
}

impl AckTracker {
    /// Registers the next batch (ids are consecutive from 0), polled by source instance
    /// `instance`; returns its id.
    pub fn register(&mut self, instance: u64, positions: Vec<Position>) -> u64 {
        let id = self.next_id();
        self.pending.push_back(Pending {
            positions,
            instance,
            done: false,
        });
        id
    }

    fn next_id(&self) -> u64 {
        self.front_id + self.pending.len() as u64
    }

    /// Marks a batch finished (delivered, dead-lettered or dropped on purpose).
    pub fn complete(&mut self, id: u64) -> Result<(), AckError> {
        if id >= self.next_id() {
            return Err(AckError::Unknown {
                id,
                next: self.next_id(),
            });
        }
        let Some(index) = id.checked_sub(self.front_id) else {
            return Err(AckError::Duplicate { id }); // released already
        };
        let batch = &mut self.pending[index as usize];
        if batch.done {
            return Err(AckError::Duplicate { id });
        }
        batch.done = true;
        Ok(())
    }

    /// Releases the finished prefix of batches; `current` is the generation of the source
    /// instance that acknowledgements would go to. Empty when the oldest batch is in flight.
    pub fn take_ready(&mut self, current: u64) -> Released {
        let mut released = Released::default();
        while self.pending.front().is_some_and(|b| b.done) {
            let batch = self.pending.pop_front().expect("front exists");
            self.front_id += 1;
            for p in &batch.positions {
                keep_latest(&mut released.store, p);
                if batch.instance == current {
                    keep_latest(&mut released.ack, p);
                }
            }
        }
        released
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn pos(p: i32, o: u8) -> Position {
        Position::new("s", p, vec![o])
    }

    #[test]
    fn releases_only_the_contiguous_prefix() {
        let mut t = AckTracker::default();
        assert_eq!(t.register(1, vec![pos(0, 1)]), 0);
        assert_eq!(t.register(1, vec![pos(0, 2), pos(1, 9)]), 1);
        assert_eq!(t.register(1, vec![pos(0, 3)]), 2);
        t.complete(2).unwrap();
        assert!(t.take_ready(1).is_empty(), "batch 0 is still in flight");
        t.complete(0).unwrap();
        assert_eq!(t.take_ready(1).store, vec![pos(0, 1)]);
        t.complete(1).unwrap();
        let r = t.take_ready(1);
        assert_eq!(r.store, vec![pos(0, 3), pos(1, 9)]);
        assert_eq!(r.ack, r.store);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn batches_of_an_earlier_instance_are_stored_but_not_acknowledged() {
        let mut t = AckTracker::default();
        let a = t.register(1, vec![pos(0, 1), pos(1, 5)]);
        let b = t.register(2, vec![pos(0, 2)]);
        t.complete(b).unwrap();
        t.complete(a).unwrap();
        let r = t.take_ready(2);
        assert_eq!(r.store, vec![pos(0, 2), pos(1, 5)]);
        assert_eq!(
            r.ack,
            vec![pos(0, 2)],
            "partition 1 came only from instance 1"
        );
        let c = t.register(2, vec![pos(1, 6)]);
        t.complete(c).unwrap();
        assert_eq!(t.take_ready(3).ack, vec![], "instance 3 polled none of it");
    }

    #[test]
    fn a_duplicate_or_unknown_completion_is_an_error() {
        let mut t = AckTracker::default();
        let a = t.register(1, vec![pos(0, 1)]);
        let b = t.register(1, vec![pos(0, 2)]);
        t.complete(b).unwrap();
        assert_eq!(t.complete(b), Err(AckError::Duplicate { id: b }));
        t.complete(a).unwrap();
        t.take_ready(1);
        assert_eq!(
            t.complete(a),
            Err(AckError::Duplicate { id: a }),
            "released"
        );
        assert_eq!(t.complete(7), Err(AckError::Unknown { id: 7, next: 2 }));
    }

    /// A generated run: batches (the instance that polled each and its (stream, partition)
    /// positions, whose offsets grow with the batch id as a source produces them), the order
    /// they complete in, after which completions `take_ready` is called, and the current
    /// instance.
    #[allow(clippy::type_complexity)]
    fn runs() -> impl Strategy<Value = (Vec<(u64, Vec<(u8, i32)>)>, Vec<usize>, Vec<bool>, u64)> {
        prop::collection::vec(
            (1u64..4, prop::collection::vec((0u8..2, 0i32..3), 0..4)),
            1..40,
        )
        .prop_flat_map(|spec| {
            let n = spec.len();
            (
                Just(spec),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec(any::<bool>(), n),
                1u64..4,
            )
        })
    }

    proptest! {
        /// Whatever order batches complete in, and with take_ready called at any point, the
        /// stored position of a partition never reaches an unfinished batch's position in it,
        /// only the polling instance is acknowledged, and everything is released at the end.
        #[test]
        fn the_stored_position_never_passes_an_unfinished_batch(
            (spec, perm, takes, current) in runs()
        ) {
            let mut t = AckTracker::default();
            let mut offset = 0u32;
            let mut all = Vec::new();
            for (instance, parts) in &spec {
                let positions: Vec<Position> = parts
                    .iter()
                    .map(|(stream, partition)| {
                        offset += 1;
                        Position::new(format!("s{stream}"), *partition, offset.to_be_bytes().to_vec())
                    })
                    .collect();
                all.push((*instance, positions.clone()));
                t.register(*instance, positions);
            }
            let n = all.len();
            let mut done = vec![false; n];
            let mut stored: BTreeMap<(String, i32), Vec<u8>> = BTreeMap::new();
            for (step, id) in perm.iter().enumerate() {
                t.complete(*id as u64).unwrap();
                done[*id] = true;
                if takes[step] || step == n - 1 {
                    let r = t.take_ready(current);
                    for p in &r.ack {
                        let from = all.iter().find(|(_, ps)| ps.contains(p)).expect("a known position");
                        prop_assert_eq!(from.0, current, "acknowledged to an instance that did not poll it");
                    }
                    for p in r.store {
                        stored.insert((p.stream.to_string(), p.partition), p.offset.to_vec());
                    }
                }
                for (i, (_, positions)) in all.iter().enumerate() {
                    if done[i] { continue; }
                    for p in positions {
                        if let Some(s) = stored.get(&(p.stream.to_string(), p.partition)) {
                            prop_assert!(s.as_slice() < p.offset.as_slice(),
                                "stored {:?} passed unfinished batch {} at {:?}", s, i, p.offset);
                        }
                    }
                }
            }
            prop_assert_eq!(t.in_flight(), 0);
            // At the end the store holds the last position of every partition.
            let mut last: BTreeMap<(String, i32), Vec<u8>> = BTreeMap::new();
            for (_, positions) in &all {
                for p in positions {
                    last.insert((p.stream.to_string(), p.partition), p.offset.to_vec());
                }
            }
            prop_assert_eq!(stored, last);
        }
    }
}
