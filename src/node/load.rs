//! The node's own background work: measuring load (and shedding newcomers past it), and
//! dropping the origin's streams nobody uses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Node;
use crate::model::since_epoch;

/// How often `watch` measures.
const LOAD_PROBE: Duration = Duration::from_millis(100);

/// The next overload state, given how late a task woke: on at `limit`, off only below half
/// of it, so the state does not flap at the edge.
pub fn next_overload(overloaded: bool, lag: Duration, limit: Duration) -> bool {
    if overloaded {
        lag >= limit / 2
    } else {
        lag >= limit
    }
}

/// How much a stretch step adds to the delivery interval.
const STEP: Duration = Duration::from_millis(50);
/// Late samples in a row (of `LOAD_PROBE` each) before the interval grows.
const HOT_SAMPLES: u32 = 3;
/// The least time between two growths (the last one's effect shows first).
const HOLD: Duration = Duration::from_secs(1);
/// How long the node must be calm (lag under half the threshold) before each shrink.
const CALM: Duration = Duration::from_secs(5);

/// The floor under every delivery interval, as load comes and goes: free of I/O (a lag and
/// the time in, the new floor out), so its rules are tested with made-up clocks.
///
/// While tasks run `at` late (sustained), the floor grows a step a second, from just above
/// the longest interval the node's streams have (`hint`) up to `max`: every write then
/// carries more frames and the node sends fewer packets, so every listener keeps its audio
/// with more latency. After `CALM` of calm it shrinks a step, and again, until it is gone.
#[derive(Debug)]
pub struct Stretch {
    max: Duration,
    at: Duration,
    floor: Duration,
    hot: u32,
    changed: Option<tokio::time::Instant>,
    calm_since: Option<tokio::time::Instant>,
}

impl Stretch {
    pub fn new(max: Duration, at: Duration) -> Stretch {
        Stretch {
            max,
            at,
            floor: Duration::ZERO,
            hot: 0,
            changed: None,
            calm_since: None,
        }
    }

    /// Whether the interval can grow no more (then, and only then, newcomers are refused).
    pub fn exhausted(&self) -> bool {
        self.floor >= self.max
    }

    /// One measurement: `lag` at `now`, `hint` the longest interval of the node's streams.
    /// Returns the new floor when it changes.
    pub fn observe(
        &mut self,
        lag: Duration,
        now: tokio::time::Instant,
        hint: Duration,
    ) -> Option<Duration> {
        let held = |since: Option<tokio::time::Instant>, d: Duration| {
            since.is_none_or(|t| now.saturating_duration_since(t) >= d)
        };
        if lag >= self.at {
            self.hot += 1;
            self.calm_since = None;
        } else {
            self.hot = 0;
            if lag < self.at / 2 {
                self.calm_since.get_or_insert(now);
            } else {
                self.calm_since = None;
            }
        }
        let next = if self.hot >= HOT_SAMPLES && self.floor < self.max && held(self.changed, HOLD) {
            let from = if self.floor.is_zero() {
                hint
            } else {
                self.floor
            };
            (from + STEP).min(self.max)
        } else if !self.floor.is_zero()
            && self
                .calm_since
                .is_some_and(|t| now.saturating_duration_since(t) >= CALM)
            && held(self.changed, CALM)
        {
            let lower = self.floor.saturating_sub(STEP);
            if lower <= hint {
                Duration::ZERO
            } else {
                lower
            }
        } else {
            return None;
        };
        if next == self.floor {
            return None;
        }
        self.floor = next;
        self.changed = Some(now);
        Some(next)
    }
}

/// Load shedding. A node past its CPU serves every listener late, and each handshake it
/// takes on makes that worse (the 10,000-listener benchmark on one core: 973 hello timeouts
/// and gaps for listeners already in). So a task measures how late it wakes from a short
/// timer, the time every task waits for the CPU, and while that exceeds `overload-lag-ms`,
/// new connections are refused at once (QUIC CONNECTION_REFUSED, HTTP 503), cheaply, so
/// clients can go to another relay, and the listeners already here keep their audio.
pub(crate) async fn watch(node: std::sync::Weak<Node>) {
    let Some((limit, mut stretch)) = node.upgrade().map(|n| {
        (
            n.cfg.overload_lag_ms.get(),
            Stretch::new(n.cfg.max_deliver_ms.get(), n.cfg.stretch_lag_ms.get()),
        )
    }) else {
        return;
    };
    loop {
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(LOAD_PROBE).await;
        let Some(node) = node.upgrade() else { return };
        let now_t = tokio::time::Instant::now();
        // How late a task woke from a timer, or (the later) how late a subscriber took its
        // wake-up: the second sees a backlog of fan-out work even while another worker
        // thread is free to run this one.
        let timer_lag = now_t
            .saturating_duration_since(t0)
            .saturating_sub(LOAD_PROBE);
        let served_late =
            Duration::from_micros(node.stats.fanout_late_us.swap(0, Ordering::Relaxed));
        let thread_late =
            Duration::from_micros(node.stats.thread_late_us.swap(0, Ordering::Relaxed));
        let mut lag = timer_lag.max(served_late).max(thread_late);
        // A saturated thread is at least as late as stretching is for; and once stretching
        // can do no more, as late as refusing newcomers is for.
        let saturated = saturated(&node);
        if saturated {
            lag = lag.max(stretch.at);
            if stretch.exhausted() {
                lag = lag.max(limit);
            }
        }
        node.stats
            .lag_ms
            .store(lag.as_millis() as u64, Ordering::Relaxed);
        let hint = node.longest_interval();
        if let Some(floor) = stretch.observe(lag, now_t, hint) {
            node.registry.cfg.pacing.set_floor(floor);
            if floor.is_zero() {
                info!(
                    lag_ms = lag.as_millis() as u64,
                    "load fell: delivery intervals back to their own"
                );
            } else {
                warn!(
                    lag_ms = lag.as_millis() as u64,
                    floor_ms = floor.as_millis() as u64,
                    max_ms = stretch.max.as_millis() as u64,
                    "CPU load: delivery interval stretched (more latency, same audio)"
                );
            }
        }
        let was = node.overloaded();
        // Newcomers are refused only once the interval can grow no more.
        let now = next_overload(was, lag, limit) && (was || stretch.exhausted());
        if now != was {
            node.set_overloaded(now);
            if now {
                warn!(
                    lag_ms = lag.as_millis() as u64,
                    limit_ms = limit.as_millis() as u64,
                    "overloaded: refusing new connections"
                );
            } else {
                info!(
                    lag_ms = lag.as_millis() as u64,
                    shed_total = node.stats.shed_total.load(Ordering::Relaxed),
                    "load back to normal: taking new connections"
                );
            }
        }
    }
}

/// A thread counts as saturated when it ran or waited to run (never idle) this much of a
/// second: its work arrives faster than it gets through it, whether it lacks CPU because of
/// its own load or because the machine gives it little (another process hogging the core).
/// Its backlog may then sit in its sockets rather than in its task queue, where timers
/// would not see it.
const SATURATED: f64 = 0.95;
/// Seconds in a row a thread must be saturated to count as such.
const SATURATED_SECS: u32 = 3;
/// How long a saturated thread counts as such after it was last seen so.
const SATURATION_HOLD: Duration = Duration::from_millis(1500);

/// How much of the wall time since the last sample this thread ran or waited to run (from
/// the kernel's scheduler statistics, /proc/thread-self/schedstat: CPU time, then time
/// spent runnable on a run queue). Near 1: the thread never ran out of work, whether it
/// had the CPU or waited for it.
struct Demand {
    last: Option<(u64, std::time::Instant)>,
}

impl Demand {
    fn read() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(f.next()?? + f.next()??)
    }

    /// The fraction since the last sample (None on the first, or without the statistics).
    fn sample(&mut self) -> Option<f64> {
        let (now_ns, at) = (Demand::read()?, std::time::Instant::now());
        let prev = self.last.replace((now_ns, at));
        let (ns, then) = prev?;
        let wall = at.saturating_duration_since(then).as_nanos() as f64;
        (wall > 0.0).then(|| now_ns.saturating_sub(ns) as f64 / wall)
    }
}

/// Whether a thread that serves connections was saturated lately (see `SATURATED`).
fn saturated(node: &Node) -> bool {
    let at = node.stats.saturated_at_us.load(Ordering::Relaxed);
    at != 0
        && since_epoch(tokio::time::Instant::now()).saturating_sub(at)
            < SATURATION_HOLD.as_micros() as u64
}

/// Measures, on a current-thread runtime (each QUIC thread's), how late its timers fire and
/// whether its thread is saturated: the node's own tasks (and `watch`, which times their
/// runtime) run elsewhere, and a thread swamped by connections would otherwise go unseen.
pub(crate) async fn probe(node: std::sync::Weak<Node>) {
    let mut demand = Demand { last: None };
    let mut n = 0u32;
    let mut hot = 0u32;
    loop {
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(LOAD_PROBE).await;
        let late = t0.elapsed().saturating_sub(LOAD_PROBE);
        let Some(node) = node.upgrade() else { return };
        node.stats
            .thread_late_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        n += 1;
        if n.is_multiple_of(10) {
            // Saturated for a few seconds running: a join storm's burst is not overload.
            hot = match demand.sample() {
                Some(d) if d >= SATURATED => hot + 1,
                _ => 0,
            };
        }
        if hot >= SATURATED_SECS {
            node.stats.saturated_at_us.store(
                since_epoch(tokio::time::Instant::now()).max(1),
                Ordering::Relaxed,
            );
        }
    }
}

/// Drops origin streams nobody publishes or listens to.
pub(crate) async fn sweep(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        for slot in node.registry.list() {
            let live = slot.broadcast().is_some_and(|b| !b.is_finished());
            if !live && node.registry.remove_if_idle(&slot) {
                debug!(path = %slot.path, "idle stream removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{next_overload, Stretch, CALM};
    use std::time::Duration;

    #[test]
    fn the_interval_grows_under_sustained_lag_up_to_its_max_and_shrinks_when_calm() {
        let ms = Duration::from_millis;
        let t0 = tokio::time::Instant::now();
        let at = |k: u64| t0 + ms(100 * k);
        let mut s = Stretch::new(ms(500), ms(50));
        let hint = ms(140);
        // A lone late sample is no load.
        assert_eq!(s.observe(ms(80), at(1), hint), None);
        assert_eq!(s.observe(ms(0), at(2), hint), None);
        // Sustained: from just above the streams' own interval, a step a second.
        let mut k = 3;
        let mut floors = Vec::new();
        while k < 200 {
            if let Some(f) = s.observe(ms(120), at(k), hint) {
                floors.push(f.as_millis() as u64);
            }
            k += 1;
        }
        assert_eq!(floors, [190, 240, 290, 340, 390, 440, 490, 500]);
        assert!(s.exhausted());
        // Calm: nothing for CALM, then a step down each CALM, until it is gone.
        let mut down = Vec::new();
        let calm_from = k;
        while k < calm_from + 10 * (CALM.as_millis() as u64 / 100) {
            if let Some(f) = s.observe(ms(5), at(k), hint) {
                down.push(((k - calm_from) / 10, f.as_millis() as u64));
            }
            k += 1;
        }
        assert_eq!(down.first(), Some(&(5, 450)));
        assert_eq!(down.last().map(|d| d.1), Some(0));
        assert!(!s.exhausted());
        // Half-way lag neither grows nor shrinks it.
        let mut s = Stretch::new(ms(500), ms(50));
        for k in 0..100 {
            assert_eq!(s.observe(ms(30), at(k), hint), None);
        }
    }

    #[test]
    fn overload_turns_on_at_the_limit_and_off_below_half_of_it() {
        let ms = Duration::from_millis;
        let limit = ms(1000);
        assert!(!next_overload(false, ms(999), limit));
        assert!(next_overload(false, ms(1000), limit));
        // Once on, it stays on until the lag is below half the limit.
        assert!(next_overload(true, ms(600), limit));
        assert!(next_overload(true, ms(500), limit));
        assert!(!next_overload(true, ms(499), limit));
        assert!(!next_overload(false, ms(700), limit));
    }
}
