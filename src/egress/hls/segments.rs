//! A stream's HLS segments and parts: their form by codec (fMP4 or packed audio), a
//! segment's frames and the parts they fall into, and the bodies served for each.

use bytes::Bytes;

use crate::error::Result;
use crate::media::{fragment, packed_audio, part_samples, timestamp_90k};
use crate::model::{Batch, Broadcast, Segment, WireFrame};
use crate::proto::{Codec, CODEC_MP3};

/// How a stream's segments and parts are made, by its codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// fMP4 (CMAF) fragments after an init segment: Opus and AAC. `.m4s`
    Fmp4,
    /// Packed audio, the frames after an ID3 timestamp: MP3. `.mp3`
    Packed,
}

impl Form {
    pub fn of(codec: &Codec) -> Form {
        if codec.kind == CODEC_MP3 {
            Form::Packed
        } else {
            Form::Fmp4
        }
    }

    pub(super) fn ext(self) -> &'static str {
        match self {
            Form::Fmp4 => "m4s",
            Form::Packed => "mp3",
        }
    }

    /// Whether the playlist lists parts (LL-HLS) or whole segments only. Packed MP3 is
    /// listed whole: hls.js (1.7.4) appends only the first part of each segment of it to
    /// MSE where it belongs (its buffer-controller re-bases `timestampOffset` of an
    /// `audio/mpeg` SourceBuffer at a segment's first chunk only, and puts later chunks
    /// at the fMP4 offset, `-initPTS`: minutes away), so a player taking parts hears a
    /// fifth of the audio with holes between. Blocking reloads (`_HLS_msn`) still hold the
    /// playlist until the next segment is whole; the parts are served all the same.
    pub fn has_parts(self) -> bool {
        self == Form::Fmp4
    }

    pub(super) fn content_type(self) -> &'static str {
        match self {
            Form::Fmp4 => "audio/mp4",
            Form::Packed => "audio/mpeg",
        }
    }
}

pub(super) fn frames_of(seg: &Segment) -> Vec<WireFrame> {
    let mut batch = Batch::Frames(Vec::new());
    seg.read_from(0, &mut batch);
    match batch {
        Batch::Frames(f) => f,
        Batch::Wire(_) | Batch::Http(..) => Vec::new(),
    }
}

/// Part `k` of a segment: the frames that start in [k, k+1) parts of `part` samples after
/// its first.
pub(super) fn part_range(frames: &[WireFrame], part: u64, k: u64) -> (usize, usize) {
    let Some(first) = frames.first().map(|f| f.frame.pts) else {
        return (0, 0);
    };
    let at = |f: &WireFrame| (f.frame.pts.saturating_sub(first)) / part;
    let from = frames.partition_point(|f| at(f) < k);
    let to = frames.partition_point(|f| at(f) <= k);
    (from, to)
}

/// Parts of a segment that are complete: every one before the part of its last frame, and
/// that one too once the segment is sealed.
pub(super) fn complete_parts(seg: &Segment, frames: &[WireFrame], part: u64) -> u64 {
    match (frames.first(), frames.last()) {
        (Some(a), Some(z)) => {
            let last = (z.frame.pts - a.frame.pts) / part;
            if seg.is_sealed() {
                last + 1
            } else {
                last
            }
        }
        _ => 0,
    }
}

pub(super) fn part_complete(b: &Broadcast, seq: u64, k: u64) -> bool {
    b.segment(seq).is_some_and(|s| {
        let frames = frames_of(&s);
        complete_parts(&s, &frames, part_samples(&b.codec)) > k
            || (b.span().ended && !frames.is_empty())
    })
}

/// A part that will never be: its segment sealed with fewer parts.
pub(super) fn part_missing(b: &Broadcast, seq: u64, k: u64) -> bool {
    b.segment(seq).is_some_and(|s| {
        s.is_sealed() && {
            let frames = frames_of(&s);
            complete_parts(&s, &frames, part_samples(&b.codec)) <= k
        }
    })
}

/// Segment `seg` (`part` None) or its part `part` of `frames`, in the stream's form: an
/// fMP4 fragment, or packed audio (the segment's title in the ID3 tag of the segment and
/// of its first part).
pub(super) fn media_of(
    codec: &Codec,
    seg: &Segment,
    part: Option<u64>,
    frames: &[WireFrame],
) -> Result<Bytes> {
    let base = frames.first().map_or(0, |f| f.frame.pts);
    match Form::of(codec) {
        Form::Fmp4 => {
            // Fragment numbers only need to grow within what a player fetches.
            let number = (seg.seq as u32)
                .wrapping_mul(1024)
                .wrapping_add(part.map_or(0, |k| k as u32 + 1));
            fragment(
                codec,
                number,
                base,
                frames
                    .iter()
                    .map(|f| (f.frame.duration, &f.frame.payload[..])),
            )
        }
        Form::Packed => {
            let title = seg.title.as_deref().filter(|_| part.unwrap_or(0) == 0);
            Ok(packed_audio(
                timestamp_90k(base, codec.sample_rate),
                title,
                frames.iter().map(|f| &f.frame.payload[..]),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::hls::tests::codec;
    use crate::proto::CODEC_AAC;

    #[test]
    fn parts_are_whole_frames_no_longer_than_the_target() {
        let opus = crate::media::OpusHead::synthetic(2).codec();
        assert_eq!(part_samples(&opus), 9600);
        assert_eq!(part_samples(&codec(CODEC_AAC, 44100)), 8 * 1024);
        assert_eq!(part_samples(&codec(CODEC_AAC, 48000)), 9 * 1024);
        assert_eq!(part_samples(&codec(CODEC_MP3, 44100)), 7 * 1152);
        assert_eq!(part_samples(&codec(CODEC_MP3, 22050)), 7 * 576);
        // A frame longer than the target: one a part.
        assert_eq!(part_samples(&codec(CODEC_AAC, 8000)), 1024);
    }
}
