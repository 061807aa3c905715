//! The segmenter: checks a publisher's frames and cuts them into segments.
//!
//! Segments are cut by a rule that depends on the media alone: segment `seq` holds the
//! frames whose timestamps fall in `[seq * target, (seq + 1) * target)`, the target being
//! the configured length rounded to a whole number of LL-HLS parts (`media::part_samples`;
//! a length under one part is kept, each segment then one part). So every part of a
//! segment is a whole one, none a runt of a frame or three at its end: 1 s of 44.1 kHz AAC
//! is 43 frames, five 8-frame parts and a 3-frame runt; rounded, 40 frames, five parts. A
//! runt came out just after its neighbour, with the segment's close, and hls.js 1.7.4,
//! given the playlist that closes a segment while it still loads the part before, never
//! loads the runt: a hole in every such player.
//!
//! Two origins fed the same frames (by one publisher sending to both) therefore hold the
//! same segments, with the same numbers and the same frames in them, and a relay may fail
//! over from one to the other by position. A node that joins a timeline mid-segment (an origin that restarted, given a
//! publisher's replay) waits for the next segment's first frame, so that every segment it
//! holds is whole.

use std::sync::Arc;
use std::time::Duration;

use super::{Broadcast, Segment, WireFrame};
use crate::error::{Error, Result};
use crate::media::{frame_samples, part_samples};
use crate::proto::Frame;

/// How a publisher's timestamps join a broadcast that already has frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// The same run of the publisher, come back (its broadcast id says so): its timestamps
    /// are the broadcast's; frames the broadcast already has are skipped.
    Resume,
    /// Another run (a restarted publisher, whose clock may begin at zero again): its
    /// timestamps are moved to continue the broadcast's timeline, never going back on it.
    Rebase,
}

/// Checks a publisher's frames and cuts them into segments of the target duration.
pub struct Segmenter {
    /// Segment length, in the codec's samples.
    target: u64,
    seg: Option<Arc<Segment>>,
    last_end: Option<u64>,
    join: Join,
    /// Added to the publisher's timestamps (`Join::Rebase`), decided at its first frame.
    offset: Option<u64>,
    /// Where the broadcast's timeline was when this publisher joined it.
    resume_at: Option<u64>,
}

impl Segmenter {
    /// A segmenter for `b`, cutting segments of about `target` (a whole number of parts),
    /// continuing what `b` holds (its open segment, if a publisher left one open) as `join`
    /// says.
    pub fn new(target: Duration, b: &Broadcast, join: Join) -> Segmenter {
        let target = whole_parts(
            target.as_micros() as u64 * u64::from(b.codec.sample_rate) / 1_000_000,
            part_samples(&b.codec),
        );
        Segmenter {
            target,
            seg: b.open_segment(),
            last_end: None,
            join,
            offset: None,
            resume_at: b.end_pts(),
        }
    }

    /// The segment a frame at `pts` belongs in.
    pub fn seq_of(&self, pts: u64) -> u64 {
        pts / self.target
    }

    /// Takes frame `f` (its `wall_us` replaced by `wall`, the origin's clock) into `b`.
    pub fn push(&mut self, b: &Broadcast, mut f: Frame, wall: u64) -> Result<()> {
        let offset = match self.join {
            Join::Resume => 0,
            Join::Rebase => *self.offset.get_or_insert(match self.resume_at {
                Some(end) if f.pts < end => end - f.pts,
                _ => 0,
            }),
        };
        f.pts = f
            .pts
            .checked_add(offset)
            .ok_or_else(|| Error::protocol("frame pts overflows"))?;
        let samples = frame_samples(&b.codec, &f.payload)?;
        if samples != f.duration {
            return Err(Error::media(format!(
                "frame at pts {} says it lasts {} but its {} frame lasts {samples} samples",
                f.pts,
                f.duration,
                b.codec.name()
            )));
        }
        if self.join == Join::Resume && self.resume_at.is_some_and(|end| f.pts < end) {
            // Sent again by a publisher that came back: the broadcast has it.
            return Ok(());
        }
        if let Some(end) = self.last_end {
            if f.pts < end {
                return Err(Error::protocol(format!(
                    "frame pts {} goes back before {end}",
                    f.pts
                )));
            }
        }
        self.last_end = Some(f.pts + f.duration as u64);
        let seq = self.seq_of(f.pts);
        let open = self.seg.as_ref().filter(|s| s.seq == seq).cloned();
        let seg = match open {
            Some(s) => s,
            None => {
                let first_here = b.span().latest.is_none();
                if first_here && f.pts % self.target >= f.duration as u64 {
                    // Mid-segment on a timeline this node has nothing of: wait for the next
                    // segment's first frame (a segment here is whole, or absent).
                    return Ok(());
                }
                if b.span().latest.is_some_and(|l| seq <= l) {
                    // The segment was closed when its publisher went: what comes after it in
                    // the same window is not taken (it would not match other origins').
                    return Ok(());
                }
                let s = b.begin(seq)?;
                self.seg = Some(s.clone());
                s
            }
        };
        f.wall_us = wall;
        b.append_quiet(&seg, WireFrame::new(f))
    }
}

/// `samples` rounded to the nearest whole number of `part`s; a length shorter than a part
/// as it is (each such segment is one part), at least one sample.
fn whole_parts(samples: u64, part: u64) -> u64 {
    let part = part.max(1);
    if samples < part {
        return samples.max(1);
    }
    (samples + part / 2) / part * part
}

#[cfg(test)]
mod tests {
    use super::whole_parts;

    #[test]
    fn segments_are_whole_parts() {
        // Opus at 48 kHz, 200 ms parts: a second is five, as it was.
        assert_eq!(whole_parts(48_000, 9_600), 48_000);
        // AAC at 44.1 kHz, 8-frame parts: 40 frames, not 43 or 44.
        assert_eq!(whole_parts(44_100, 8 * 1024), 40 * 1024);
        // AAC at 48 kHz, 9-frame parts: 45 frames, not 46 or 47.
        assert_eq!(whole_parts(48_000, 9 * 1024), 45 * 1024);
        // MP3 at 44.1 kHz, 7-frame parts: 35 frames, not 38 or 39.
        assert_eq!(whole_parts(44_100, 7 * 1152), 35 * 1152);
        // Half a part or more rounds up.
        assert_eq!(whole_parts(24_000, 9_600), 3 * 9_600);
        assert_eq!(whole_parts(14_000, 9_600), 9_600);
        // Shorter than a part: as it is (one part a segment).
        assert_eq!(whole_parts(4_800, 9_600), 4_800);
        assert_eq!(whole_parts(0, 0), 1);
    }
}
