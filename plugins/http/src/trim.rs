//! Giving memory back to the system after large bodies. glibc keeps memory freed by the
//! threads that received and parsed big bodies in its arenas (its trim threshold grows with
//! the largest allocations seen), so the host's RSS stayed ~100 MB above idle after a burst of
//! 9 MB bodies even though every body was freed. The source asks glibc to return free pages
//! once it has been idle for a moment after receiving a lot (`malloc_trim` only releases
//! memory nobody holds).

use std::time::{Duration, Instant};

/// Bytes received since the last trim before one is worth it.
pub const TRIM_AFTER_BYTES: usize = 32 * 1024 * 1024;

/// How long the source must have been idle (no body in flight, nothing queued): the records
/// handed to the host have been written and freed by then.
pub const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(1);

/// Whether to trim now: enough received since the last trim, idle since `idle_since` for
/// [`IDLE_BEFORE_TRIM`].
pub fn due(received: usize, idle_since: Option<Instant>, now: Instant) -> bool {
    received >= TRIM_AFTER_BYTES
        && idle_since.is_some_and(|t| now.saturating_duration_since(t) >= IDLE_BEFORE_TRIM)
}

/// Returns free heap memory to the system (glibc only; elsewhere a no-op).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_enough_bytes_and_a_moment_of_idleness() {
        let t0 = Instant::now();
        let later = t0 + IDLE_BEFORE_TRIM;
        assert!(due(TRIM_AFTER_BYTES, Some(t0), later));
        assert!(!due(TRIM_AFTER_BYTES - 1, Some(t0), later));
        assert!(!due(TRIM_AFTER_BYTES, None, later));
        assert!(!due(TRIM_AFTER_BYTES, Some(t0), t0 + IDLE_BEFORE_TRIM / 2));
    }
}
