//! What each codec puts into the one track of quicast's fragmented MP4: its sample entry
//! (ISO/IEC 14496-12 §12.2.3), how one of its frames becomes a sample, and the name players
//! know the pair by (RFC 6381, for HLS's CODECS attribute).
//!
//! - Opus: an `Opus` entry with the OpusHead as `dOps` (Opus-in-ISOBMFF v0.8 §4.3); a
//!   frame is a sample as it is.
//! - AAC: an `mp4a` entry whose `esds` (14496-14 §5.6, descriptors of 14496-1 §7.2.6) says
//!   MPEG-4 audio (objectTypeIndication 0x40) with the AudioSpecificConfig as its
//!   DecoderSpecificInfo; a sample is the raw access unit, the ADTS frame less its header
//!   (the config says once what every ADTS header repeats).
//! - MP3: an `mp4a` entry whose `esds` says MPEG-1 audio (0x6B) or, at the MPEG-2 and 2.5
//!   rates, MPEG-2 backward-compatible audio (0x69), as MP4RA registers them and as
//!   ffmpeg's muxer writes them; no DecoderSpecificInfo (each frame's header says it all);
//!   a sample is the whole frame, header included.

use bytes::{BufMut, Bytes, BytesMut};

use super::aac::audio_object_type;
use super::fmp4::{boxed, full};
use super::framing;
use super::opus::{OpusHead, OPUS_RATE};
use crate::error::{Error, Result};
use crate::proto::{Codec, CODEC_AAC, CODEC_MP3, CODEC_OPUS};

/// A codec's track: its media timescale and sample entry.
pub(super) struct Track {
    /// Ticks per second of the track (and the movie): the codec's sample rate, which the
    /// frames' pts and durations count in.
    pub timescale: u32,
    entry: Entry,
}

enum Entry {
    Opus(OpusHead),
    Aac { config: Bytes, channels: u8 },
    Mp3 { object_type: u8, channels: u8 },
}

/// objectTypeIndication (14496-1 Table 5, kept by MP4RA): MPEG-4 audio, MPEG-2 audio
/// (13818-3, which adds the 16, 22.05 and 24 kHz layer III), MPEG-1 audio (11172-3).
const OTI_MPEG4_AUDIO: u8 = 0x40;
const OTI_MPEG2_AUDIO: u8 = 0x69;
const OTI_MPEG1_AUDIO: u8 = 0x6b;

impl Track {
    /// The track `codec` describes, or why there is none: an unknown codec kind, or a
    /// header that is not what the kind's convention says (an OpusHead, an
    /// AudioSpecificConfig).
    pub(super) fn of(codec: &Codec) -> Result<Track> {
        let entry = match codec.kind {
            CODEC_OPUS => {
                // Opus timestamps run at 48 kHz whatever the input rate (RFC 7845 §4).
                let head = OpusHead::parse(&codec.header)?;
                return Ok(Track {
                    timescale: OPUS_RATE,
                    entry: Entry::Opus(head),
                });
            }
            CODEC_AAC => {
                if codec.header.len() < 2 || audio_object_type(&codec.header).is_none() {
                    return Err(Error::media(format!(
                        "the AAC codec header ({} bytes) is not an AudioSpecificConfig",
                        codec.header.len()
                    )));
                }
                Entry::Aac {
                    config: codec.header.clone(),
                    channels: codec.channels,
                }
            }
            CODEC_MP3 => Entry::Mp3 {
                // MPEG-1 layer III runs at 32, 44.1 and 48 kHz; the lower rates are
                // MPEG-2's (and 2.5's, which decoders take with them).
                object_type: if codec.sample_rate >= 32_000 {
                    OTI_MPEG1_AUDIO
                } else {
                    OTI_MPEG2_AUDIO
                },
                channels: codec.channels,
            },
            kind => return Err(unknown(kind)),
        };
        if codec.sample_rate == 0 {
            return Err(Error::media("codec sample rate 0"));
        }
        Ok(Track {
            timescale: codec.sample_rate,
            entry,
        })
    }

    /// The `stsd`'s one sample entry.
    pub(super) fn sample_entry(&self, o: &mut BytesMut) {
        match &self.entry {
            Entry::Opus(head) => boxed(o, b"Opus", |o| {
                audio_sample_entry(o, head.channels, OPUS_RATE);
                dops(o, head);
            }),
            Entry::Aac { config, channels } => boxed(o, b"mp4a", |o| {
                audio_sample_entry(o, *channels, self.timescale);
                esds(o, OTI_MPEG4_AUDIO, Some(config));
            }),
            Entry::Mp3 {
                object_type,
                channels,
            } => boxed(o, b"mp4a", |o| {
                audio_sample_entry(o, *channels, self.timescale);
                esds(o, *object_type, None);
            }),
        }
    }
}

fn unknown(kind: u64) -> Error {
    Error::unsupported(format!(
        "codec {kind} has no MP4 form here (only Opus, AAC and MP3)"
    ))
}

/// How a codec's frame becomes an MP4 sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Payload {
    /// The frame as it is (Opus, MP3).
    Whole,
    /// An ADTS frame: the raw access unit after its header.
    Adts,
}

impl Payload {
    pub(super) fn of(codec: &Codec) -> Result<Payload> {
        match codec.kind {
            CODEC_OPUS | CODEC_MP3 => Ok(Payload::Whole),
            CODEC_AAC => Ok(Payload::Adts),
            kind => Err(unknown(kind)),
        }
    }

    /// The sample's bytes within `frame` (a slice of it: nothing is copied). An AAC frame
    /// must be one whole ADTS frame of one raw data block: anything else could not be cut
    /// into access units here, and is refused rather than sent to a decoder as one.
    pub(super) fn sample(self, frame: &[u8]) -> Result<&[u8]> {
        match self {
            Payload::Whole => Ok(frame),
            Payload::Adts => {
                let (Some(h), Some(header)) =
                    (framing::adts(frame), framing::adts_header_len(frame))
                else {
                    return Err(Error::media(format!(
                        "an AAC frame of {} bytes does not start with an ADTS header",
                        frame.len()
                    )));
                };
                if h.samples != 1024 {
                    return Err(Error::media(format!(
                        "an ADTS frame of {} raw data blocks (one per frame is carried)",
                        h.samples / 1024
                    )));
                }
                if h.len != frame.len() {
                    return Err(Error::media(format!(
                        "an ADTS header says {} bytes, its frame is {}",
                        h.len,
                        frame.len()
                    )));
                }
                // `adts` took it only if the frame is longer than its header.
                frame
                    .get(header..)
                    .ok_or_else(|| Error::media("an ADTS frame shorter than its header"))
            }
        }
    }
}

/// The RFC 6381 name of `codec`'s track, for HLS's CODECS attribute (RFC 8216 §4.3.4.2),
/// or an empty string for a codec with no MP4 form (for which `init_segment` fails too).
///
/// - Opus: "opus". Chromium's MSE takes "opus" and "Opus" (MP4RA's fourcc), Firefox both,
///   and hls.js rewrites either to the one the browser takes.
/// - AAC: "mp4a.40.<audioObjectType>" from the config: "mp4a.40.2" for LC (HE-AAC sent in
///   ADTS is LC with implicit SBR, and says 2), 5 and 29 when a config signals HE-AAC and
///   HE-AACv2 explicitly.
/// - MP3: "mp4a.40.34" (MPEG-4 audio object type 34, layer III), the name HLS playlists
///   give MP3 (Wowza's, in shaka-player#1210; hls.js#44) and the only MP3 name
///   hls.js looks for (src/utils/codecs.ts, `getCodecCompatibleName`): no MSE takes it as
///   it is (Chromium bug 489520, hls.js#6125 for Safari), so hls.js asks MSE for
///   `audio/mp4;codecs="mp3"` instead, which Firefox takes (its MP4Decoder knows "mp3"),
///   and otherwise drops the name to fall back on `audio/mpeg` (hls.js#6130). The strict
///   name of esds 0x6B, "mp4a.6B", would be handed to MSE as it is and refused everywhere
///   (Firefox knows only "mp3" for MP3 in MP4), so hls.js would drop the stream. Chromium's
///   MSE takes no MP3 in MP4 under any name: media/filters/stream_parser_factory.cc lists
///   only AAC, FLAC, Opus and the Dolby/DTS/MPEG-H/IAMF codecs for audio/mp4, and
///   media/formats/mp4/mp4_stream_parser.cc refuses esds 0x69 and 0x6B ("Unsupported audio
///   object type"); its "mp3", "mp4a.69", "mp4a.6B" (media/base/mime_util_internal.cc) are
///   canPlayType names for whole files. So MP3 in fMP4 is for Safari's own HLS player (not
///   tried here) and, through hls.js, Firefox; Chromium (and hls.js on it) needs MP3
///   another way (audio/mpeg segments, or the stream itself).
pub fn hls_codecs(codec: &Codec) -> String {
    match codec.kind {
        CODEC_OPUS => "opus".into(),
        CODEC_AAC => match audio_object_type(&codec.header) {
            Some(aot) => format!("mp4a.40.{aot}"),
            None => String::new(),
        },
        CODEC_MP3 => "mp4a.40.34".into(),
        _ => String::new(),
    }
}

/// The AudioSampleEntry fields (14496-12 §12.2.3.2, version 0) every audio entry starts
/// with. The 16.16 rate field cannot hold 88.2 and 96 kHz: 0 then (decoders take the rate
/// from the codec's own configuration, as the AAC config here says it).
fn audio_sample_entry(o: &mut BytesMut, channels: u8, rate: u32) {
    o.put_bytes(0, 6);
    o.put_u16(1); // data reference index
    o.put_bytes(0, 8);
    o.put_u16(channels as u16);
    o.put_u16(16); // sample size
    o.put_u32(0); // pre_defined, reserved
    o.put_u32(if rate <= 0xffff { rate << 16 } else { 0 });
}

/// `dOps` (Opus-in-ISOBMFF §4.3.2): the OpusHead's fields, big-endian, without its magic.
fn dops(o: &mut BytesMut, head: &OpusHead) {
    let raw = &head.raw;
    boxed(o, b"dOps", |o| {
        o.put_u8(0); // Version
        o.put_u8(head.channels);
        o.put_u16(head.pre_skip);
        o.put_u32(head.input_rate);
        // OutputGain and ChannelMappingFamily: bytes 16..19 of an OpusHead `parse` checked.
        o.put_i16(i16::from_le_bytes([raw[16], raw[17]]));
        let family = raw[18];
        o.put_u8(family);
        if family != 0 {
            // StreamCount, CoupledCount, ChannelMapping: as they are (parse checked length).
            o.put_slice(&raw[19..21 + head.channels as usize]);
        }
    });
}

/// Descriptor tags (14496-1 §7.2.2.1, Table 1).
const ES_DESCR: u8 = 0x03;
const DECODER_CONFIG_DESCR: u8 = 0x04;
const DEC_SPECIFIC_INFO: u8 = 0x05;
const SL_CONFIG_DESCR: u8 = 0x06;

/// `esds` (14496-14 §5.6.1): an ES_Descriptor (14496-1 §7.2.6.5) holding a
/// DecoderConfigDescriptor (§7.2.6.6) for an audio stream of `object_type`, with
/// `specific` as its DecoderSpecificInfo, and the SLConfigDescriptor MP4 files use
/// (predefined 2, 14496-14 §3.1.2).
fn esds(o: &mut BytesMut, object_type: u8, specific: Option<&[u8]>) {
    let mut config = BytesMut::with_capacity(32);
    config.put_u8(object_type);
    // streamType 0x05 (audio), upStream 0, reserved 1.
    config.put_u8(0x05 << 2 | 1);
    config.put_uint(0, 3); // bufferSizeDB: not said
    config.put_u32(0); // maxBitrate: not said
    config.put_u32(0); // avgBitrate: 0, variable
    if let Some(info) = specific {
        descriptor(&mut config, DEC_SPECIFIC_INFO, info);
    }
    let mut es = BytesMut::with_capacity(48);
    // ES_ID 0 (an MP4 file names the stream by its track), no dependency, URL or OCR
    // stream, priority 0.
    es.put_u16(0);
    es.put_u8(0);
    descriptor(&mut es, DECODER_CONFIG_DESCR, &config);
    descriptor(&mut es, SL_CONFIG_DESCR, &[2]);
    full(o, b"esds", 0, 0, |o| descriptor(o, ES_DESCR, &es));
}

/// A descriptor (14496-1 §8.3.3): its tag, its body's size in 7-bit groups (most
/// significant first, every group but the last with its top bit set), its body.
fn descriptor(o: &mut BytesMut, tag: u8, body: &[u8]) {
    o.put_u8(tag);
    let size = body.len();
    let groups = (1..4).find(|&g| size >> (7 * g) == 0).unwrap_or(4);
    for g in (0..groups).rev() {
        let bits = ((size >> (7 * g)) & 0x7f) as u8;
        o.put_u8(if g > 0 { bits | 0x80 } else { bits });
    }
    o.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(kind: u64, sample_rate: u32, channels: u8, header: &[u8]) -> Codec {
        Codec {
            kind,
            sample_rate,
            channels,
            header: Bytes::copy_from_slice(header),
        }
    }

    #[test]
    fn the_esds_of_aac_lc_says_mpeg4_audio_and_its_config() {
        let mut o = BytesMut::new();
        esds(&mut o, OTI_MPEG4_AUDIO, Some(&[0x12, 0x10]));
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 0, 39, b'e', b's', b'd', b's', 0, 0, 0, 0,
            // ES_Descriptor: 25 bytes; ES_ID 0, flags 0.
            0x03, 25, 0, 0, 0,
            // DecoderConfigDescriptor: 17 bytes; MPEG-4 audio, audio stream, no sizes.
            0x04, 17, 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // DecoderSpecificInfo: the AudioSpecificConfig.
            0x05, 2, 0x12, 0x10,
            // SLConfigDescriptor: predefined 2.
            0x06, 1, 2,
        ];
        assert_eq!(&o[..], want);
    }

    #[test]
    fn the_esds_of_mp3_has_no_specific_info() {
        let mut o = BytesMut::new();
        esds(&mut o, OTI_MPEG1_AUDIO, None);
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 0, 35, b'e', b's', b'd', b's', 0, 0, 0, 0,
            0x03, 21, 0, 0, 0,
            0x04, 13, 0x6b, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0x06, 1, 2,
        ];
        assert_eq!(&o[..], want);
    }

    #[test]
    fn descriptor_sizes_take_as_many_7_bit_groups_as_they_need() {
        let size_bytes = |n: usize| {
            let mut o = BytesMut::new();
            descriptor(&mut o, 5, &vec![0; n]);
            o[1..o.len() - n].to_vec()
        };
        assert_eq!(size_bytes(0), [0]);
        assert_eq!(size_bytes(127), [0x7f]);
        assert_eq!(size_bytes(128), [0x81, 0x00]);
        assert_eq!(size_bytes(300), [0x82, 0x2c]);
        assert_eq!(size_bytes(16384), [0x81, 0x80, 0x00]);
    }

    #[test]
    fn codecs_values_follow_the_config() {
        let opus = OpusHead::synthetic(2).codec();
        assert_eq!(hls_codecs(&opus), "opus");
        assert_eq!(
            hls_codecs(&codec(CODEC_AAC, 44100, 2, &[0x12, 0x10])),
            "mp4a.40.2"
        );
        let he = codec(CODEC_AAC, 24000, 2, &[0x2b, 0x12, 0x08, 0x00]);
        assert_eq!(hls_codecs(&he), "mp4a.40.5");
        let he2 = codec(CODEC_AAC, 24000, 1, &[0xeb, 0x0a, 0x08, 0x00]);
        assert_eq!(hls_codecs(&he2), "mp4a.40.29");
        assert_eq!(hls_codecs(&codec(CODEC_MP3, 44100, 2, &[])), "mp4a.40.34");
        assert_eq!(hls_codecs(&codec(99, 44100, 2, &[])), "");
        assert_eq!(hls_codecs(&codec(CODEC_AAC, 44100, 2, &[])), "");
    }

    #[test]
    fn unknown_kinds_and_bad_headers_are_errors() {
        let err = |c: &Codec| Track::of(c).err().map(|e| e.kind());
        use crate::error::Kind;
        assert_eq!(err(&codec(99, 44100, 2, &[])), Some(Kind::Unsupported));
        assert_eq!(
            Payload::of(&codec(99, 44100, 2, &[]))
                .err()
                .map(|e| e.kind()),
            Some(Kind::Unsupported)
        );
        assert_eq!(
            err(&codec(CODEC_AAC, 44100, 2, &[0x12])),
            Some(Kind::BadMedia)
        );
        assert_eq!(
            err(&codec(CODEC_AAC, 44100, 2, &[0x00, 0x10])),
            Some(Kind::BadMedia)
        );
        assert_eq!(
            err(&codec(CODEC_OPUS, 48000, 2, b"OpusHea")),
            Some(Kind::Unsupported)
        );
        assert_eq!(err(&codec(CODEC_MP3, 0, 2, &[])), Some(Kind::BadMedia));
        // MPEG-1 rates say 0x6B, MPEG-2 and 2.5 rates 0x69.
        let oti = |rate| match Track::of(&codec(CODEC_MP3, rate, 2, &[])).map(|t| t.entry) {
            Ok(Entry::Mp3 { object_type, .. }) => object_type,
            _ => 0,
        };
        assert_eq!(
            (oti(44100), oti(32000), oti(24000), oti(8000)),
            (0x6b, 0x6b, 0x69, 0x69)
        );
    }

    #[test]
    fn an_adts_sample_is_its_frame_less_the_header() {
        // 7-byte header for a 10-byte frame, then the same with a CRC (9 + 3).
        let mut frame = vec![0xff, 0xf1, 0x50, 0x80, 0x01, 0x5f, 0xfc];
        frame.extend([1, 2, 3]);
        assert_eq!(Payload::Adts.sample(&frame).ok(), Some(&[1u8, 2, 3][..]));
        let mut crc = vec![0xff, 0xf0, 0x50, 0x80, 0x01, 0x9f, 0xfc, 0xaa, 0xbb];
        crc.extend([4, 5, 6]);
        assert_eq!(Payload::Adts.sample(&crc).ok(), Some(&[4u8, 5, 6][..]));
        // Shorter or longer than its header says, cut before its end, two raw data
        // blocks, no header at all: refused, never a panic.
        assert!(Payload::Adts.sample(&frame[..9]).is_err());
        let mut long = frame.clone();
        long.push(7);
        assert!(Payload::Adts.sample(&long).is_err());
        assert!(Payload::Adts.sample(&frame[..5]).is_err());
        let mut two = frame.clone();
        two[6] |= 1;
        assert!(Payload::Adts.sample(&two).is_err());
        assert!(Payload::Adts.sample(&[]).is_err());
        assert_eq!(Payload::Whole.sample(&frame).ok(), Some(&frame[..]));
    }
}
