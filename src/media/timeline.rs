//! One timestamp rule for every Ogg Opus source (a file or pipe published over QUIC, an
//! Icecast source): timestamps follow the stream's granule positions, continue across loops
//! and restarts, never go back, and pace through a gap of at most `MAX_GAP`.

use super::opus::OPUS_RATE;

/// Turns a file's granule positions into the broadcast's timestamps: continuous across loops,
/// never going back, and pacing through a gap in the file (up to `MAX_GAP`).
#[derive(Debug, Default)]
pub struct Timeline {
    /// End of the last packet, in samples from the broadcast's start.
    pub next: u64,
    /// Granule position (at a packet's start) that maps to timestamp 0 in this pass.
    base: Option<i128>,
}

/// The longest silence in a file that publishing waits through.
pub const MAX_GAP: u64 = 5 * OPUS_RATE as u64;

impl Timeline {
    /// The timestamp of a packet of `dur` samples whose end is at `end_granule` (if known).
    pub fn pts(&mut self, dur: u32, end_granule: Option<u64>) -> u64 {
        let natural = self.next;
        let pts = match end_granule {
            None => natural,
            Some(end) => {
                let start = end as i128 - dur as i128;
                let base = *self.base.get_or_insert(start - natural as i128);
                let p = start - base;
                if p < natural as i128 || p > (natural + MAX_GAP) as i128 {
                    if p > (natural + MAX_GAP) as i128 {
                        tracing::warn!(
                            gap_s = (p - natural as i128) as f64 / OPUS_RATE as f64,
                            "granule position jumps ahead; pacing through at most 5 s"
                        );
                    }
                    let p = if p < natural as i128 {
                        natural
                    } else {
                        natural + MAX_GAP
                    };
                    self.base = Some(start - p as i128);
                    p
                } else {
                    p as u64
                }
            }
        };
        self.next = pts + dur as u64;
        pts
    }

    /// The input starts over (`--loop`): its granules begin again, our timestamps go on.
    pub fn restart(&mut self) {
        self.base = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_granule_positions() {
        let mut t = Timeline::default();
        // A file whose first page's granule includes a pre-skip of 312.
        assert_eq!(t.pts(960, Some(312 + 960)), 0);
        assert_eq!(t.pts(960, Some(312 + 1920)), 960);
        // One second missing from the file: publishing waits through it.
        assert_eq!(t.pts(960, Some(312 + 1920 + 48_000 + 960)), 1920 + 48_000);
        // Unknown granule: straight on.
        assert_eq!(t.pts(960, None), 1920 + 48_000 + 960);
    }

    #[test]
    fn loops_continue_and_broken_granules_are_clamped() {
        let mut t = Timeline::default();
        t.pts(960, Some(960));
        t.pts(960, Some(1920));
        t.restart();
        assert_eq!(
            t.pts(960, Some(960)),
            1920,
            "the second pass continues where the first ended"
        );
        // A granule that goes back is clamped to continuity.
        assert_eq!(t.pts(960, Some(10)), 2880);
        // An hour's jump is paced through for at most MAX_GAP.
        assert_eq!(t.pts(960, Some(10 + 48_000 * 3600)), 3840 + MAX_GAP);
        assert_eq!(
            t.pts(960, Some(10 + 48_000 * 3600 + 960)),
            3840 + MAX_GAP + 960
        );
    }
}
