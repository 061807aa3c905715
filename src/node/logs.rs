//! Bounds on the lines a peer can cause in the log: each kind of per-event line (a refusal,
//! a skip, a source's wrong password) at most a few a second; the rest are counted in the
//! metrics as always, and the next line says how many were held back.

use std::sync::Mutex;
use std::time::Duration;

/// Lines of one kind logged a second, at most.
pub const LINES_PER_SEC: u64 = 10;

/// At most `LINES_PER_SEC` lines a second of one kind; how many were held back since.
#[derive(Default)]
pub struct LogLimit(Mutex<(Option<tokio::time::Instant>, u64, u64)>);

/// Protocol mistakes of peers (a malformed message, an unread control stream), for the
/// whole process: where they are said, no node is at hand.
pub static PEER_MISTAKES: LogLimit = LogLimit::new();

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit(Mutex::new((None, 0, 0)))
    }

    /// `Some(held back since the last line)` if a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(tokio::time::Instant::now())
    }

    fn admit_at(&self, now: tokio::time::Instant) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (second, logged, held) = &mut *g;
        if second.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            *second = Some(now);
            *logged = 0;
        }
        if *logged < LINES_PER_SEC {
            *logged += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

/// A node's bounds, one per kind of line.
#[derive(Default)]
pub struct Logs {
    /// Peers refused for their token (or its absence), and sources for their password.
    pub refusals: LogLimit,
    /// Subscribers moved forward for falling behind.
    pub skips: LogLimit,
    /// Subscriptions and requests that could not be served (a name not live, a bad request).
    pub requests: LogLimit,
}

/// Logs one line of a bounded kind: at `info` (with how many were held back) while the
/// bound allows, at `debug` otherwise.
#[macro_export]
macro_rules! bounded_info {
    ($limit:expr, $($field:tt)+) => {
        match $limit.admit() {
            Some(suppressed) => ::tracing::info!(suppressed, $($field)+),
            None => ::tracing::debug!($($field)+),
        }
    };
}

/// As `bounded_info`, at `warn`.
#[macro_export]
macro_rules! bounded_warn {
    ($limit:expr, $($field:tt)+) => {
        match $limit.admit() {
            Some(suppressed) => ::tracing::warn!(suppressed, $($field)+),
            None => ::tracing::debug!($($field)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_a_second_and_say_how_many_were_held_back() {
        let l = LogLimit::default();
        let t0 = tokio::time::Instant::now();
        for _ in 0..LINES_PER_SEC {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        for k in 1..=5 {
            assert_eq!(l.admit_at(t0 + Duration::from_millis(100 * k)), None);
        }
        assert_eq!(l.admit_at(t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(l.admit_at(t0 + Duration::from_secs(1)), Some(0));
    }
}
