//! How often a broadcast wakes its subscribers: the delivery interval.
//!
//! A listener costs packets, not bytes: each wake-up becomes one write, and one packet, to
//! every subscriber. So by default a stream's interval is the longest that keeps one
//! interval's frames within whole packets (`packet_bytes`, from the path MTU), within a
//! latency budget: 64 kbit/s Opus fills a 1452-byte packet in 140 ms; a 24 kbit/s stream
//! would take 340 ms and gets the budget (200 ms by default); a 128 kbit/s one fills two
//! packets in 160 ms. Measured (3,000 listeners, one relay core): a wake-up costs about as
//! much as a packet, so 140 ms took 28 % of the core, 200 ms (one full packet and a part)
//! 25.5 %, 280 ms (two full) 19.9 %, 500 ms 16.8 %. An operator may
//! fix the interval instead (`deliver-ms`), or give some streams the shortest one (low
//! latency: every frame at once).
//!
//! Under load the node raises a floor under every interval (`Pacing::floor`, set by its load
//! watch), so every listener keeps its audio with more latency before anyone is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a packet carries besides frames: the QUIC short header (flags, a connection ID of up
/// to 20 bytes, a packet number of up to 4), the AEAD tag (16), a STREAM frame header (up to
/// 1 + 8 + 8 + 2) and room for an ACK frame riding along.
pub const PACKET_OVERHEAD: u32 = 1 + 20 + 4 + 16 + 19 + 20;

/// How a broadcast's interval is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The longest interval whose frames fit one packet, at most `budget`.
    Auto { budget: Duration },
    /// Always this interval (zero: every frame at once).
    Fixed(Duration),
    /// A relay's: batches from the parent are already paced, and are passed on as they
    /// come (only the floor may hold them together).
    PassThrough,
}

/// A node's pacing settings, shared by its broadcasts.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub mode: Mode,
    /// Bytes of a packet, the QUIC UDP payload (its overhead is taken off).
    pub packet_bytes: u32,
    /// Stream paths (or prefixes ending in `/`) that get every frame at once while the node
    /// has headroom.
    pub low_latency: Arc<Vec<String>>,
    /// The node's floor under every interval, in ms (0: none), raised under load.
    floor_ms: Arc<AtomicU64>,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing::new(
            Mode::Auto {
                budget: Duration::from_millis(200),
            },
            1452,
            Vec::new(),
        )
    }
}

impl Pacing {
    pub fn new(mode: Mode, packet_bytes: u32, low_latency: Vec<String>) -> Pacing {
        Pacing {
            mode,
            packet_bytes,
            low_latency: Arc::new(low_latency),
            floor_ms: Arc::default(),
        }
    }

    /// The same settings with another mode (sharing the floor).
    pub fn with_mode(&self, mode: Mode) -> Pacing {
        Pacing {
            mode,
            ..self.clone()
        }
    }

    /// The node's floor under every interval now.
    pub fn floor(&self) -> Duration {
        Duration::from_millis(self.floor_ms.load(Ordering::Relaxed))
    }

    /// Sets the floor (the node's load watch).
    pub fn set_floor(&self, floor: Duration) {
        self.floor_ms
            .store(floor.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether `path` asked for the shortest interval.
    pub fn is_low_latency(&self, path: &str) -> bool {
        self.low_latency
            .iter()
            .any(|p| crate::proto::path_covers(p, path))
    }

    /// The interval of a stream whose frames take `wire_rate` bytes a second on the wire and
    /// last `frame` each (unknown: zero), before the floor.
    pub fn base(&self, path: &str, wire_rate: u64, frame: Duration) -> Duration {
        if self.is_low_latency(path) {
            return Duration::ZERO;
        }
        match self.mode {
            Mode::Fixed(d) => d,
            Mode::PassThrough => Duration::ZERO,
            Mode::Auto { budget } => {
                if wire_rate == 0 {
                    return fill_interval(0, 0, frame).min(budget);
                }
                // Whole packets: as many full ones as the budget allows (a wake-up costs
                // about as much as a packet, so two full packets per wake-up are cheaper
                // than one per half the interval), or the budget's worth if one is more.
                let one = self.fill(wire_rate, frame);
                if one >= budget {
                    budget
                } else {
                    one * (budget.as_micros() / one.as_micros().max(1)) as u32
                }
            }
        }
    }

    /// How long such a stream takes to fill a packet: what its batches are worth holding
    /// for (a relay's come paced by its parent, about this often), however it is paced here.
    pub fn fill(&self, wire_rate: u64, frame: Duration) -> Duration {
        fill_interval(
            self.packet_bytes.saturating_sub(PACKET_OVERHEAD),
            wire_rate,
            frame,
        )
    }

    /// The interval with the floor under it.
    pub fn interval(&self, base: Duration) -> Duration {
        base.max(self.floor())
    }
}

/// The longest whole number of frames (at least one) whose `wire_rate` bytes a second fit in
/// `room` bytes. Before the rate is known (the stream's first segment), 100 ms.
pub fn fill_interval(room: u32, wire_rate: u64, frame: Duration) -> Duration {
    if wire_rate == 0 || frame.is_zero() {
        return Duration::from_millis(100);
    }
    let per_frame = (wire_rate as f64 * frame.as_secs_f64()).max(1.0);
    let frames = (room as f64 / per_frame).floor().max(1.0);
    frame.mul_f64(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Wire bytes a second of Opus at `kbps`, 20 ms frames: payload plus each frame's header
    /// (length 2, pts 8, duration 2, wall clock 8 bytes).
    fn wire(kbps: u64) -> u64 {
        kbps * 1000 / 8 + 50 * 20
    }

    #[test]
    fn each_bitrate_gets_the_interval_that_fills_whole_packets_within_the_budget() {
        let p = Pacing::new(Mode::Auto { budget: ms(200) }, 1452, vec![]);
        let f = ms(20);
        // 64 kbit/s: 180 bytes a frame, 7 fit in 1452 - 80: one packet a wake-up.
        assert_eq!(p.fill(wire(64), f), ms(140));
        assert_eq!(p.base("a", wire(64), f), ms(140));
        // 128 kbit/s: 340 bytes a frame, 4 fit: two full packets within 200 ms.
        assert_eq!(p.base("a", wire(128), f), ms(160));
        // 24 kbit/s: 80 bytes a frame, 17 would fit: the budget.
        assert_eq!(p.base("a", wire(24), f), ms(200));
        // A budget of 300 ms: two packets of 64 kbit/s a wake-up.
        let p300 = Pacing::new(Mode::Auto { budget: ms(300) }, 1452, vec![]);
        assert_eq!(p300.base("a", wire(64), f), ms(280));
        // 1200-byte packets: 6 frames of 64 kbit/s.
        let small = Pacing::new(Mode::Auto { budget: ms(200) }, 1200, vec![]);
        assert_eq!(small.base("a", wire(64), f), ms(120));
        // A huge frame still goes, at least one per wake-up.
        assert_eq!(p.fill(1_000_000, f), ms(20));
        // Unknown rate: 100 ms until the first segment says.
        assert_eq!(p.base("a", 0, f), ms(100));
    }

    #[test]
    fn fixed_low_latency_and_the_floor() {
        let p = Pacing::new(Mode::Fixed(ms(100)), 1452, vec!["live/fast/".into()]);
        assert_eq!(p.base("a", wire(64), ms(20)), ms(100));
        assert_eq!(p.base("live/fast/x", wire(64), ms(20)), ms(0));
        assert_eq!(p.interval(ms(100)), ms(100));
        let q = p.with_mode(Mode::PassThrough);
        assert_eq!(q.base("a", wire(64), ms(20)), ms(0));
        // The floor is shared by every copy.
        q.set_floor(ms(250));
        assert_eq!(p.interval(ms(100)), ms(250));
        assert_eq!(p.interval(ms(0)), ms(250));
        assert_eq!(q.interval(ms(400)), ms(400));
    }
}
