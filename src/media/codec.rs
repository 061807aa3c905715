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
        CODEC_AAC if c.header.len() >= 2 => check_aac_config(c),
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

/// An AAC stream's AudioSpecificConfig must say what its frames do: an object type, and
/// (in its short form, as ADTS makes it) the stream's rate and channels. Frames are checked
/// against the codec's rate and channels, so the config must agree with them too.
fn check_aac_config(c: &Codec) -> Result<()> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let h = &c.header;
    let object = super::audio_object_type(h)
        .ok_or_else(|| Error::media("an AAC config with no object type"))?;
    if object < 31 {
        let index = (((h[0] & 0x07) << 1) | (h[1] >> 7)) as usize;
        let channels = (h[1] >> 3) & 0x0f;
        if RATES.get(index) != Some(&c.sample_rate) || channels != c.channels {
            return Err(Error::media(format!(
                "an AAC config for another rate or channel count than the stream's ({} Hz, {} channels)",
                c.sample_rate, c.channels
            )));
        }
    }
    Ok(())
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
    if c.kind == CODEC_AAC && h.samples != 1024 {
        // More than one raw data block a frame: no MP4 sample holds it (HLS could not).
        return Err(Error::media(
            "an ADTS frame of several raw data blocks (set the encoder to one a frame)",
        ));
    }
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

/// Part target, ms: ten 20 ms Opus frames, two delivery intervals. AAC and MP3 parts are
/// the most whole frames that fit in it (see `part_samples`).
pub const PART_MS: u64 = 200;

/// How long a part is, in the codec's samples: `PART_MS` for Opus (ten 20 ms frames); for
/// AAC (1024 samples a frame) and MP3 (1152, or 576 below 32 kHz) the most whole frames
/// that fit in `PART_MS`, so that no part is longer than the part target the playlist
/// gives (RFC 8216bis 4.4.4.9): 8 AAC frames at 44.1 kHz (186 ms), 7 MP3 frames (183 ms).
pub fn part_samples(codec: &Codec) -> u64 {
    let target = PART_MS * u64::from(codec.sample_rate.max(1)) / 1000;
    let frame = match codec.kind {
        CODEC_AAC => 1024,
        CODEC_MP3 if codec.sample_rate >= 32_000 => 1152,
        CODEC_MP3 => 576,
        _ => return target.max(1),
    };
    (target / frame).max(1) * frame
}

/// The content type of a stream in this codec as HTTP listeners get it.
pub fn content_type(c: &Codec) -> &'static str {
    match c.kind {
        CODEC_MP3 => "audio/mpeg",
        CODEC_AAC => "audio/aac",
        _ => "audio/ogg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn aac(rate: u32, channels: u8, config: &'static [u8]) -> Codec {
        Codec {
            kind: CODEC_AAC,
            sample_rate: rate,
            channels,
            header: Bytes::from_static(config),
        }
    }

    #[test]
    fn an_aac_config_must_say_the_streams_rate_and_channels() {
        // AAC LC, 44.1 kHz (index 4), stereo.
        assert!(check_codec(&aac(44_100, 2, &[0x12, 0x10])).is_ok());
        assert!(check_codec(&aac(48_000, 2, &[0x12, 0x10])).is_err());
        assert!(check_codec(&aac(44_100, 1, &[0x12, 0x10])).is_err());
        // Object type 0 (null), and too short.
        assert!(check_codec(&aac(44_100, 2, &[0x02, 0x10])).is_err());
        assert!(check_codec(&aac(44_100, 2, &[0x12])).is_err());
        // An MP3 stream has no header; a codec this node does not know is refused.
        let mp3 = Codec {
            kind: CODEC_MP3,
            sample_rate: 44_100,
            channels: 2,
            header: Bytes::new(),
        };
        assert!(check_codec(&mp3).is_ok());
        assert!(check_codec(&Codec { kind: 9, ..mp3 }).is_err());
    }
}
