//! Opus (RFC 6716, RFC 7845): the OpusHead header, and a packet's duration from its TOC byte.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::proto::{Codec, CODEC_OPUS, MAX_CODEC_HEADER};

/// Opus always runs its timestamps at 48 kHz.
pub const OPUS_RATE: u32 = 48_000;

/// The fields of an OpusHead packet that quicast uses (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub raw: Bytes,
}

impl OpusHead {
    /// Takes only what every player downstream decodes: mapping family 0 (mono or stereo)
    /// and family 1 (up to 8 channels, a consistent mapping table). Family 255 and the
    /// others have no defined layout (RFC 7845 §5.1.1.3), so nothing here could play them.
    pub fn parse(raw: &[u8]) -> Result<OpusHead> {
        if !raw.starts_with(b"OpusHead") {
            return Err(Error::unsupported(describe_non_opus(raw)));
        }
        if raw.len() < 19 {
            return Err(Error::media(format!(
                "OpusHead is {} bytes, at least 19 expected",
                raw.len()
            )));
        }
        if raw.len() > MAX_CODEC_HEADER {
            return Err(Error::media(format!(
                "OpusHead is {} bytes, limit {MAX_CODEC_HEADER}",
                raw.len()
            )));
        }
        let version = raw[8];
        if version & 0xf0 != 0 {
            return Err(Error::media(format!(
                "unsupported OpusHead version {version}"
            )));
        }
        let channels = raw[9];
        if channels == 0 {
            return Err(Error::media("OpusHead declares 0 channels"));
        }
        match raw[18] {
            0 if channels > 2 => {
                return Err(Error::media(format!(
                    "OpusHead declares {channels} channels in mapping family 0 (mono or stereo only)"
                )))
            }
            0 => {}
            1 if channels > MAX_FAMILY1_CHANNELS => {
                return Err(Error::media(format!(
                    "OpusHead declares {channels} channels in mapping family 1 (at most {MAX_FAMILY1_CHANNELS})"
                )))
            }
            1 => check_mapping_table(raw, channels)?,
            family => {
                return Err(Error::unsupported(format!(
                    "OpusHead channel mapping family {family} is not played here (only 0: mono or stereo, and 1: up to 8 channels in Vorbis order)"
                )))
            }
        }
        Ok(OpusHead {
            channels,
            pre_skip: u16::from_le_bytes([raw[10], raw[11]]),
            input_rate: u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]),
            raw: Bytes::copy_from_slice(raw),
        })
    }

    pub fn codec(&self) -> Codec {
        Codec {
            kind: CODEC_OPUS,
            sample_rate: OPUS_RATE,
            channels: self.channels,
            header: self.raw.clone(),
        }
    }

    /// A valid stereo OpusHead (no pre-skip), for tests and synthetic streams.
    pub fn synthetic(channels: u8) -> OpusHead {
        let mut raw = b"OpusHead".to_vec();
        raw.push(1);
        raw.push(channels);
        raw.extend_from_slice(&0u16.to_le_bytes());
        raw.extend_from_slice(&48_000u32.to_le_bytes());
        raw.extend_from_slice(&0i16.to_le_bytes());
        raw.push(0);
        OpusHead::parse(&raw).expect("synthetic head is valid")
    }
}

/// Mapping family 1 is defined for 1 to 8 channels, in Vorbis order (RFC 7845 §5.1.1.2).
const MAX_FAMILY1_CHANNELS: u8 = 8;

/// The channel mapping table of a family 1 OpusHead (RFC 7845 §5.1.1): a decoder sets up
/// `streams` Opus streams from it, `coupled` of them stereo, and takes each output channel
/// from the decoded channel its entry names (255: silence). A table that names channels
/// the streams do not have would leave a decoder reading past what it decoded.
fn check_mapping_table(raw: &[u8], channels: u8) -> Result<()> {
    let Some(table) = raw.get(19..21 + channels as usize) else {
        return Err(Error::media(format!(
            "OpusHead channel mapping table is truncated ({} bytes, {} expected for {channels} channels)",
            raw.len(),
            21 + channels as usize
        )));
    };
    let (streams, coupled) = (table[0] as u16, table[1] as u16);
    if streams == 0 {
        return Err(Error::media("OpusHead channel mapping declares 0 streams"));
    }
    if coupled > streams {
        return Err(Error::media(format!(
            "OpusHead channel mapping declares {coupled} coupled streams of {streams} streams"
        )));
    }
    let decoded = streams + coupled;
    if decoded > 255 {
        return Err(Error::media(format!(
            "OpusHead channel mapping's {streams} streams and {coupled} coupled streams make {decoded} channels (at most 255)"
        )));
    }
    for (i, &c) in table[2..].iter().enumerate() {
        if c != 255 && c as u16 >= decoded {
            return Err(Error::media(format!(
                "OpusHead maps channel {i} to decoded channel {c}, but its streams decode {decoded} channels"
            )));
        }
    }
    Ok(())
}

fn describe_non_opus(first: &[u8]) -> String {
    let what = if first.starts_with(b"\x01vorbis") {
        "Vorbis"
    } else if first.starts_with(b"\x7fFLAC") {
        "FLAC"
    } else if first.starts_with(b"Speex") {
        "Speex"
    } else if first.starts_with(b"\x80theora") {
        "Theora video"
    } else {
        "not an OpusHead packet"
    };
    format!("the Ogg stream is not Opus: its first packet is {what}")
}

/// Duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 §3.1).
pub fn opus_packet_samples(p: &[u8]) -> Result<u32> {
    let toc = *p.first().ok_or_else(|| Error::media("empty Opus packet"))?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        12..=15 => [480, 960][(config % 2) as usize],
        _ => [120, 240, 480, 960][(config % 4) as usize],
    };
    let count = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let c = *p
                .get(1)
                .ok_or_else(|| Error::media("Opus code-3 packet without frame count"))?;
            (c & 0x3f) as u32
        }
    };
    let total = frame * count;
    if count == 0 || total > 5760 {
        return Err(Error::media(format!(
            "Opus packet of {count} frames lasts over 120 ms"
        )));
    }
    Ok(total)
}
