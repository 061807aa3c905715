//! What each codec the tree carries asks of a stream: a valid header, and frames that say
//! how long they last. The origin checks every frame a publisher sends against its codec, so
//! that every node and listener below may trust a frame's `duration`.

use super::framing;
use super::opus::{opus_packet_samples, OpusHead};
use crate::error::{Error, Result};
use crate::proto::{Codec, CODEC_AAC, CODEC_MP3, CODEC_OPUS};

/// Refuses a codec description a publisher may not start a broadcast with.
pub fn check_codec(c: &Codec) -> Result<()> {
    match c.kind {
        CODEC_OPUS => OpusHead::parse(&c.header).map(|_| ()),
        CODEC_MP3 | CODEC_AAC if c.sample_rate == 0 || c.channels == 0 => {
            Err(Error::media("a codec with no sample rate or channels"))
        }
        CODEC_MP3 if c.header.is_empty() => Ok(()),
        CODEC_AAC if c.header.len() >= 2 => Ok(()),
        CODEC_MP3 | CODEC_AAC => Err(Error::media(format!(
            "a {} codec header of {} bytes",
            c.name(),
            c.header.len()
        ))),
        k => Err(Error::media(format!(
            "codec {k} is not one this node knows"
        ))),
    }
}

/// How long frame `payload` of codec `c` lasts, in `c`'s samples: what its own header (or
/// Opus TOC) says. Refused if it is not one whole frame of this stream.
pub fn frame_samples(c: &Codec, payload: &[u8]) -> Result<u32> {
    let raw = match c.kind {
        CODEC_OPUS => {
            let n = opus_packet_samples(payload)?;
            return Ok((n as u64 * c.sample_rate as u64 / 48_000) as u32);
        }
        CODEC_MP3 => framing::mp3(payload),
        CODEC_AAC => framing::adts(payload),
        k => {
            return Err(Error::media(format!(
                "codec {k} is not one this node knows"
            )))
        }
    };
    let h = raw.ok_or_else(|| Error::media(format!("a frame that is not {}", c.name())))?;
    if h.len != payload.len() {
        return Err(Error::media(format!(
            "a {} frame of {} bytes whose header says {}",
            c.name(),
            payload.len(),
            h.len
        )));
    }
    if h.rate != c.sample_rate || h.channels != c.channels {
        return Err(Error::media(format!(
            "a {} frame at {} Hz, {} channels in a {} Hz, {} channel stream",
            c.name(),
            h.rate,
            h.channels,
            c.sample_rate,
            c.channels
        )));
    }
    Ok(h.samples)
}

/// `samples` of codec `c` in 48 kHz samples (the unit a publisher's pace is kept in).
pub fn at_48k(c: &Codec, samples: u64) -> u64 {
    samples.saturating_mul(48_000) / u64::from(c.sample_rate.max(1))
}

/// The content type of a stream in this codec as HTTP listeners get it.
pub fn content_type(c: &Codec) -> &'static str {
    match c.kind {
        CODEC_MP3 => "audio/mpeg",
        CODEC_AAC => "audio/aac",
        _ => "audio/ogg",
    }
}
