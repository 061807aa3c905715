//! The segmenter: checks a publisher's frames and cuts them into segments.
//!
//! Segments are cut by a rule that depends on the media alone: segment `seq` holds the
//! frames whose timestamps fall in `[seq * target, (seq + 1) * target)`. Two origins fed the
//! same frames (by one publisher sending to both) therefore hold the same segments, with the
//! same numbers and the same frames in them, and a relay may fail over from one to the other
//! by position. A node that joins a timeline mid-segment (an origin that restarted, given a
//! publisher's replay) waits for the next segment's first frame, so that every segment it
//! holds is whole.

use std::sync::Arc;
use std::time::Duration;

use super::{Broadcast, Segment, WireFrame};
use crate::error::{Error, Result};
use crate::media::frame_samples;
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
    /// A segmenter for `b`, cutting segments of `target`, continuing what `b` holds (its
    /// open segment, if a publisher left one open) as `join` says.
    pub fn new(target: Duration, b: &Broadcast, join: Join) -> Segmenter {
        let target = (target.as_micros() as u64 * b.codec.sample_rate as u64 / 1_000_000).max(1);
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
