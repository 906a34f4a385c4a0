//! In-order acknowledgement of source positions.
//!
//! Batches are numbered as the source produces them and may finish in any order (a batch
//! emptied by a transform finishes before an earlier one reaches the sink). A position is
//! released to the source only when its batch and every earlier batch are finished: a
//! contiguous watermark, so a crash never skips an undelivered record.

use std::collections::VecDeque;

use orbit_plugin_api::Position;

#[derive(Default)]
pub struct AckTracker {
    /// The id of the batch at the front of `pending`.
    front_id: u64,
    pending: VecDeque<(Vec<Position>, bool)>,
}

impl AckTracker {
    /// Registers the next batch; ids must be consecutive from 0.
    pub fn register(&mut self, id: u64, positions: Vec<Position>) {
        debug_assert_eq!(id, self.front_id + self.pending.len() as u64);
        self.pending.push_back((positions, false));
    }

    /// Marks a batch finished (delivered, dead-lettered or dropped on purpose).
    pub fn complete(&mut self, id: u64) {
        let index = id
            .checked_sub(self.front_id)
            .expect("a batch completes once") as usize;
        self.pending[index].1 = true;
    }

    /// The positions now safe to acknowledge: the latest per partition over the finished
    /// prefix of batches. Empty when the oldest batch is still in flight.
    pub fn take_ready(&mut self) -> Vec<Position> {
        let mut ready: Vec<Position> = Vec::new();
        while let Some((_, true)) = self.pending.front() {
            let (positions, _) = self.pending.pop_front().expect("front exists");
            self.front_id += 1;
            for p in positions {
                match ready
                    .iter_mut()
                    .find(|r| r.partition == p.partition && r.stream == p.stream)
                {
                    Some(r) => *r = p,
                    None => ready.push(p),
                }
            }
        }
        ready
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: i32, o: u8) -> Position {
        Position::new("s", p, vec![o])
    }

    #[test]
    fn releases_only_the_contiguous_prefix() {
        let mut t = AckTracker::default();
        t.register(0, vec![pos(0, 1)]);
        t.register(1, vec![pos(0, 2), pos(1, 9)]);
        t.register(2, vec![pos(0, 3)]);
        t.complete(2);
        assert!(t.take_ready().is_empty(), "batch 0 is still in flight");
        t.complete(0);
        assert_eq!(t.take_ready(), vec![pos(0, 1)]);
        t.complete(1);
        assert_eq!(t.take_ready(), vec![pos(0, 3), pos(1, 9)]);
        assert_eq!(t.in_flight(), 0);
    }
}
