//! Log throttling for events a hostile client can repeat at will (refused logins, refused
//! connections): the first is logged at once, then at most one line per window, counting the
//! ones not logged in between.

use std::time::{Duration, Instant};

/// The window: at most one line per kind of event this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Throttle {
    last: Option<Instant>,
    unreported: u64,
}

impl Throttle {
    /// Counts one event at `now`; `Some(n)` when it is to be logged, `n` being the events not
    /// logged before it.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < REPORT_EVERY)
        {
            self.unreported += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// The events counted and not logged yet (to log them at close); resets the count.
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_reported_once_per_window_with_a_count() {
        let mut r = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.note(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(r.note(t0 + REPORT_EVERY), Some(5));
        assert_eq!(r.note(t0 + REPORT_EVERY + Duration::from_secs(1)), None);
        assert_eq!(r.take_unreported(), 1);
        assert_eq!(r.take_unreported(), 0);
    }
}
