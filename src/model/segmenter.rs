//! The segmenter: checks a publisher's frames and cuts them into segments.

use std::sync::Arc;
use std::time::Duration;

use super::{Broadcast, Segment, WireFrame};
use crate::error::{Error, Result};
use crate::media::opus_packet_samples;
use crate::proto::{Frame, MAX_FRAMES_PER_SEGMENT, MAX_SEGMENT_BYTES};

/// Checks a publisher's frames and cuts them into segments of the target duration.
pub struct Segmenter {
    target: u64,
    next_seq: u64,
    seg: Option<(Arc<Segment>, u64)>,
    last_end: Option<u64>,
    /// Added to the publisher's timestamps: a publisher continuing a broadcast (it came
    /// back, or took it over after a restart that began its clock at zero) continues the
    /// broadcast's timeline, never going back on it.
    offset: Option<u64>,
    /// Where the broadcast's timeline was when this publisher joined it.
    resume_at: Option<u64>,
}

impl Segmenter {
    /// A segmenter for `b`, cutting segments of `target`, continuing after what `b` holds.
    pub fn new(target: Duration, b: &Broadcast) -> Segmenter {
        let target = (target.as_micros() as u64 * b.codec.sample_rate as u64 / 1_000_000).max(1);
        Segmenter {
            target,
            next_seq: b.span().latest.map(|l| l + 1).unwrap_or(0),
            seg: None,
            last_end: None,
            offset: None,
            resume_at: b.end_pts(),
        }
    }

    /// Takes frame `f` (its `wall_us` replaced by `wall`, the origin's clock) into `b`.
    pub fn push(&mut self, b: &Broadcast, mut f: Frame, wall: u64) -> Result<()> {
        let offset = *self.offset.get_or_insert(match self.resume_at {
            Some(end) if f.pts < end => end - f.pts,
            _ => 0,
        });
        f.pts = f
            .pts
            .checked_add(offset)
            .ok_or_else(|| Error::protocol("frame pts overflows"))?;
        let samples = opus_packet_samples(&f.payload)?;
        if samples as u64 * b.codec.sample_rate as u64 / 48_000 != f.duration as u64 {
            return Err(Error::media(format!(
                "frame at pts {} says it lasts {} but its Opus packet lasts {samples} samples",
                f.pts, f.duration
            )));
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
        f.wall_us = wall;
        let stored = WireFrame::new(f);
        let cut = match &self.seg {
            None => true,
            Some((s, start_pts)) => {
                stored.frame.pts.saturating_sub(*start_pts) >= self.target
                    || s.len() + 1 >= MAX_FRAMES_PER_SEGMENT
                    || s.bytes() + stored.record.len() > MAX_SEGMENT_BYTES
            }
        };
        if cut {
            self.seg = Some((b.begin(self.next_seq)?, stored.frame.pts));
            self.next_seq += 1;
        }
        if let Some((s, _)) = &self.seg {
            b.append_quiet(s, stored)?;
        }
        Ok(())
    }
}
