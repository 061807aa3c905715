//! The queue of new clients: a crowd's first packets wait here until the engine takes them
//! up a slice at a time (each a TLS handshake's cryptography). It is bounded by how long a
//! newcomer would wait in it, not by a count: the engine measures how fast it takes clients
//! up while some wait, and a newcomer who would wait longer than `wait` is deferred (its
//! first packet goes unanswered: its client sends it again after QUIC's retransmission
//! timer, a second and then doubling, and is queued when there is room). Nobody is refused
//! here: a crowd the node works through in seconds waits instead. Free of I/O and clocks
//! (`now` in), so tested on its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The rate assumed before any was measured: about what one core takes up.
const FIRST_RATE: f64 = 2_000.0;
/// The lowest rate believed (a stalled core must not make the queue hold nobody).
const MIN_RATE: f64 = 100.0;
/// How long the rate is measured over, while clients wait the whole window.
const WINDOW: Duration = Duration::from_millis(200);

pub(crate) struct JoinQueue<T> {
    waiting: VecDeque<T>,
    /// Longest a newcomer is expected to wait in the queue.
    wait: Duration,
    /// Most that wait at once, whatever the rate (memory: each holds its first datagram).
    cap: usize,
    /// Clients taken up a second, measured while the queue was never empty.
    rate: f64,
    /// The window being measured: its start, and how many were taken since.
    window: Option<(Instant, u32)>,
}

/// What became of a newcomer offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Nobody waited before it: taken up next.
    First,
    /// Queued behind others.
    Queued,
    /// Deferred: it would have waited too long (its client sends its first packet again).
    Deferred,
}

impl<T> JoinQueue<T> {
    pub(crate) fn new(wait: Duration, cap: usize) -> JoinQueue<T> {
        JoinQueue {
            waiting: VecDeque::new(),
            wait,
            cap,
            rate: FIRST_RATE,
            window: None,
        }
    }

    pub(crate) fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How long the last of those waiting may expect to wait, at the measured rate.
    #[cfg(test)]
    pub(crate) fn expected_wait(&self) -> Duration {
        Duration::from_secs_f64(self.waiting.len() as f64 / self.rate)
    }

    /// A newcomer: queued, unless it would wait longer than the bound (it is handed back).
    pub(crate) fn offer(&mut self, now: Instant, item: T) -> Result<Offered, T> {
        let after = Duration::from_secs_f64((self.waiting.len() + 1) as f64 / self.rate);
        if self.waiting.len() >= self.cap || (after > self.wait && !self.waiting.is_empty()) {
            return Err(item);
        }
        if self.window.is_none() {
            self.window = Some((now, 0));
        }
        self.waiting.push_back(item);
        Ok(if self.waiting.len() == 1 {
            Offered::First
        } else {
            Offered::Queued
        })
    }

    /// The next newcomer to take up.
    pub(crate) fn take(&mut self, now: Instant) -> Option<T> {
        let item = self.waiting.pop_front()?;
        if self.waiting.is_empty() {
            // A window the queue ran dry in says how fast clients came, not how fast the
            // engine takes them: it is not counted.
            self.window = None;
            return Some(item);
        }
        if let Some((start, n)) = self.window.as_mut() {
            *n += 1;
            let spent = now.saturating_duration_since(*start);
            if spent >= WINDOW {
                let sample = f64::from(*n) / spent.as_secs_f64();
                self.rate = (0.7 * self.rate + 0.3 * sample).max(MIN_RATE);
                *start = now;
                *n = 0;
            }
        }
        Some(item)
    }

    /// Everyone waiting, to let go (the engine stops).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.window = None;
        self.waiting.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_waits_up_to_the_bound_and_the_rest_is_deferred_not_refused() {
        let t0 = Instant::now();
        // At the first rate (2,000 a second), a second's wait holds 2,000.
        let mut q = JoinQueue::new(ms(1000), 100_000);
        let offered: Vec<_> = (0..5000).map(|i| q.offer(t0, i)).collect();
        assert_eq!(offered[0], Ok(Offered::First));
        assert_eq!(offered[1], Ok(Offered::Queued));
        assert_eq!(offered.iter().filter(|o| o.is_ok()).count(), 2000);
        assert_eq!(offered[2000], Err(2000));
        assert_eq!(q.expected_wait(), ms(1000));
        // Taken in order.
        assert_eq!(q.take(t0), Some(0));
        assert_eq!(q.take(t0), Some(1));
    }

    #[test]
    fn the_bound_follows_the_rate_measured_while_clients_wait() {
        let t0 = Instant::now();
        let mut q = JoinQueue::new(ms(1000), 100_000);
        for i in 0..1000 {
            assert!(q.offer(t0, i).is_ok());
        }
        // The engine takes 1,000 a second (one a millisecond) for two seconds: the queue
        // is never empty (kept topped up), so the rate moves towards 1,000.
        let mut next = 1000;
        for k in 1..=2000u64 {
            q.take(t0 + ms(k));
            let _ = q.offer(t0 + ms(k), next);
            next += 1;
        }
        assert!((900.0..1100.0).contains(&q.rate), "{}", q.rate);
        // Now a second's wait holds about 1,000: the 1,001st or so is deferred.
        let held = q.len();
        assert!((900..=1100).contains(&held), "{held}");
        let mut more = 0;
        while q.offer(t0 + ms(2000), next).is_ok() {
            more += 1;
            next += 1;
        }
        assert!(q.len() <= 1100, "{} waiting, {more} more", q.len());
    }

    #[test]
    fn a_window_the_queue_ran_dry_in_is_not_a_rate_and_the_cap_holds() {
        let t0 = Instant::now();
        let mut q = JoinQueue::new(ms(1000), 10);
        // One client every 300 ms, taken at once: no measure of the engine's rate.
        for k in 0..10u64 {
            assert_eq!(q.offer(t0 + ms(300 * k), k), Ok(Offered::First));
            assert_eq!(q.take(t0 + ms(300 * k + 250)), Some(k));
        }
        assert_eq!(q.rate, FIRST_RATE);
        // The cap bounds the queue whatever the wait.
        for k in 0..10 {
            assert!(q.offer(t0, k).is_ok());
        }
        assert_eq!(q.offer(t0, 10), Err(10));
        assert_eq!(q.drain().count(), 10);
        assert!(q.is_empty());
    }
}
