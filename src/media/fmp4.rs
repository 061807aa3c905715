//! Fragmented MP4 (CMAF) as ISO/IEC 14496-12 lays it out, for HLS segments and parts: an
//! init segment (`ftyp` + `moov`) describing one audio track, and a fragment (`moof` +
//! `mdat`) per run of frames. The track's codec (Opus, AAC or MP3) gives its timescale,
//! its sample entry and how a frame becomes a sample (`fmp4_track`); the boxes around them
//! are the same for all three.
//!
//! The boxes are a dozen fixed layouts; they are written here by hand rather than through an
//! MP4 crate, because three sample entries are all that is needed and the crates that write
//! fragments either lack some of them or bring a whole object model for these few hundred
//! bytes. Every field is checked against ffmpeg's and Chromium's demuxers by the tests
//! (`tests/hls.rs`, and `fmp4_check` against ffmpeg for AAC and MP3).

use bytes::{BufMut, Bytes, BytesMut};

use super::fmp4_track::{Payload, Track};
use crate::error::Result;
use crate::proto::Codec;

/// The only track.
const TRACK: u32 = 1;

/// Writes a box of `kind` whose body `body` writes.
pub(super) fn boxed(out: &mut BytesMut, kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: version and 24-bit flags first.
pub(super) fn full(
    out: &mut BytesMut,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut BytesMut),
) {
    boxed(out, kind, |o| {
        o.put_u32((version as u32) << 24 | (flags & 0x00ff_ffff));
        body(o)
    })
}

/// The identity matrix of `mvhd` and `tkhd`.
fn matrix(o: &mut BytesMut) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        o.put_u32(v);
    }
}

/// The init segment: `ftyp` and `moov` for one track of `codec`, its movie and media
/// timescale the codec's sample rate (48 kHz for Opus). An error for a codec kind with no
/// MP4 form here, or a codec header that is not what its kind's convention says.
pub fn init_segment(codec: &Codec) -> Result<Bytes> {
    let track = Track::of(codec)?;
    let mut o = BytesMut::with_capacity(700);
    boxed(&mut o, b"ftyp", |o| {
        o.put_slice(b"iso6");
        o.put_u32(0);
        for brand in [b"iso6", b"cmfc", b"mp41"] {
            o.put_slice(brand);
        }
    });
    boxed(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            o.put_u32(0); // creation time
            o.put_u32(0); // modification time
            o.put_u32(track.timescale);
            o.put_u32(0); // duration: unknown (fragments)
            o.put_u32(0x0001_0000); // rate 1.0
            o.put_u16(0x0100); // volume 1.0
            o.put_bytes(0, 10);
            matrix(o);
            o.put_bytes(0, 24); // pre_defined
            o.put_u32(TRACK + 1); // next track id
        });
        boxed(o, b"trak", |o| {
            // Enabled, in movie.
            full(o, b"tkhd", 0, 3, |o| {
                o.put_u32(0);
                o.put_u32(0);
                o.put_u32(TRACK);
                o.put_u32(0);
                o.put_u32(0); // duration
                o.put_bytes(0, 8);
                o.put_u16(0); // layer
                o.put_u16(0); // alternate group
                o.put_u16(0x0100); // volume: audio
                o.put_u16(0);
                matrix(o);
                o.put_u32(0); // width
                o.put_u32(0); // height
            });
            boxed(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    o.put_u32(0);
                    o.put_u32(0);
                    o.put_u32(track.timescale);
                    o.put_u32(0);
                    o.put_u16(0x55c4); // language "und"
                    o.put_u16(0);
                });
                full(o, b"hdlr", 0, 0, |o| {
                    o.put_u32(0);
                    o.put_slice(b"soun");
                    o.put_bytes(0, 12);
                    o.put_slice(b"quicast audio\0");
                });
                boxed(o, b"minf", |o| {
                    full(o, b"smhd", 0, 0, |o| o.put_u32(0));
                    boxed(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            o.put_u32(1);
                            // Self-contained.
                            full(o, b"url ", 0, 1, |_| {});
                        });
                    });
                    boxed(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            o.put_u32(1);
                            track.sample_entry(o);
                        });
                        for kind in [b"stts", b"stsc", b"stco"] {
                            full(o, kind, 0, 0, |o| o.put_u32(0));
                        }
                        full(o, b"stsz", 0, 0, |o| {
                            o.put_u32(0);
                            o.put_u32(0);
                        });
                    });
                });
            });
        });
        boxed(o, b"mvex", |o| {
            full(o, b"trex", 0, 0, |o| {
                o.put_u32(TRACK);
                o.put_u32(1); // sample description index
                o.put_u32(0);
                o.put_u32(0);
                o.put_u32(0);
            });
        });
    });
    Ok(o.freeze())
}

/// One fragment: `moof` + `mdat` holding `frames` of `codec` (duration in the codec's
/// samples, payload as the wire carries it), the first decoded at `base_pts`. `number` is
/// the fragment's sequence number (`mfhd`). Each sample is a slice of its frame (for AAC,
/// the ADTS frame less its header), copied once, into the `mdat`. An error, naming the
/// frame, if a frame cannot be a sample of `codec` (an AAC frame that is not one whole ADTS
/// frame), or for a codec kind with no MP4 form.
pub fn fragment<'a>(
    codec: &Codec,
    number: u32,
    base_pts: u64,
    frames: impl Iterator<Item = (u32, &'a [u8])> + Clone,
) -> Result<Bytes> {
    let payload = Payload::of(codec)?;
    let mut count = 0usize;
    let mut bytes = 0usize;
    for (i, (_, p)) in frames.clone().enumerate() {
        let sample = payload
            .sample(p)
            .map_err(|e| e.context(format_args!("frame {i} of fragment {number}")))?;
        bytes += sample.len();
        count += 1;
    }
    // Every frame was checked just above: `sample` gives each the same slice again.
    let samples =
        frames.map(move |(duration, p)| (duration, payload.sample(p).unwrap_or_default()));
    let mut o = BytesMut::with_capacity(100 + 8 * count + bytes);
    let mut data_offset_at = 0;
    boxed(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.put_u32(number));
        boxed(o, b"traf", |o| {
            // default-base-is-moof: data offsets count from the start of this moof.
            full(o, b"tfhd", 0, 0x02_0000, |o| o.put_u32(TRACK));
            full(o, b"tfdt", 1, 0, |o| o.put_u64(base_pts));
            // data-offset, sample-duration and sample-size present.
            full(o, b"trun", 0, 0x000_301, |o| {
                o.put_u32(count as u32);
                data_offset_at = o.len();
                o.put_u32(0);
                for (duration, s) in samples.clone() {
                    o.put_u32(duration);
                    o.put_u32(s.len() as u32);
                }
            });
        });
    });
    // The samples start after the moof and the mdat's 8-byte header.
    let data_offset = (o.len() + 8) as u32;
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    boxed(&mut o, b"mdat", |o| {
        for (_, s) in samples {
            o.put_slice(s);
        }
    });
    Ok(o.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::media::OpusHead;
    use crate::proto::{CODEC_AAC, CODEC_MP3};

    /// The boxes of one level: (type, whole box), checking every size adds up.
    fn boxes(mut b: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            assert!(
                size >= 8 && size <= b.len(),
                "box size {size} of {}",
                b.len()
            );
            out.push(([b[4], b[5], b[6], b[7]], &b[..size]));
            b = &b[size..];
        }
        out
    }

    /// The body of the box at `path` (container boxes' bodies are boxes).
    fn find<'a>(b: &'a [u8], path: &[&[u8; 4]]) -> &'a [u8] {
        let (first, rest) = path.split_first().unwrap_or_else(|| panic!("empty path"));
        let (_, whole) = boxes(b)
            .into_iter()
            .find(|(kind, _)| kind == *first)
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(*first)));
        let body = &whole[8..];
        if rest.is_empty() {
            body
        } else {
            find(body, rest)
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn aac() -> Codec {
        Codec {
            kind: CODEC_AAC,
            sample_rate: 44100,
            channels: 2,
            header: Bytes::from_static(&[0x12, 0x10]),
        }
    }

    /// An ADTS frame (LC, 44.1 kHz, stereo) around `payload`, with a CRC or not.
    fn adts(payload: &[u8], crc: bool) -> Vec<u8> {
        let len = payload.len() + if crc { 9 } else { 7 };
        let mut f = vec![
            0xff,
            if crc { 0xf0 } else { 0xf1 },
            0x50,
            0x80 | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1f,
            0xfc,
        ];
        if crc {
            f.extend([0xab, 0xcd]);
        }
        f.extend_from_slice(payload);
        f
    }

    const MOOV_STBL: [&[u8; 4]; 6] = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"];

    #[test]
    fn an_aac_init_segment_has_the_rate_as_timescale_and_the_config_in_esds() {
        let init = init_segment(&aac()).unwrap_or_else(|e| panic!("{e}"));
        let tops: Vec<_> = boxes(&init).into_iter().map(|(k, _)| k).collect();
        assert_eq!(tops, [*b"ftyp", *b"moov"]);
        // mvhd and mdhd: version/flags, two times, then the timescale.
        assert_eq!(u32_at(find(&init, &[b"moov", b"mvhd"]), 12), 44100);
        let mdhd = find(&init, &[b"moov", b"trak", b"mdia", b"mdhd"]);
        assert_eq!(u32_at(mdhd, 12), 44100);
        let stsd = find(&init, &MOOV_STBL);
        assert_eq!(u32_at(stsd, 4), 1);
        let entries = boxes(&stsd[8..]);
        assert_eq!(entries.len(), 1);
        let (kind, mp4a) = entries[0];
        assert_eq!(&kind, b"mp4a");
        // AudioSampleEntry: channels at 8+16, sample size, then the 16.16 rate.
        assert_eq!(u16::from_be_bytes([mp4a[24], mp4a[25]]), 2);
        assert_eq!(u32_at(mp4a, 32), 44100 << 16);
        let esds = find(&mp4a[36..], &[b"esds"]);
        assert!(esds.ends_with(&[0x05, 2, 0x12, 0x10, 0x06, 1, 2]));
        assert_eq!(esds[4 + 5 + 2], 0x40);
    }

    #[test]
    fn opus_and_mp3_init_segments_keep_their_entries() {
        let opus = init_segment(&OpusHead::synthetic(2).codec()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u32_at(find(&opus, &[b"moov", b"mvhd"]), 12), 48000);
        let stsd = find(&opus, &MOOV_STBL);
        let (kind, entry) = boxes(&stsd[8..])[0];
        assert_eq!(&kind, b"Opus");
        assert_eq!(find(&entry[36..], &[b"dOps"])[..2], [0, 2]);

        let mp3 = Codec {
            kind: CODEC_MP3,
            sample_rate: 22050,
            channels: 1,
            header: Bytes::new(),
        };
        let init = init_segment(&mp3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u32_at(find(&init, &[b"moov", b"mvhd"]), 12), 22050);
        let stsd = find(&init, &MOOV_STBL);
        let (kind, entry) = boxes(&stsd[8..])[0];
        assert_eq!(&kind, b"mp4a");
        let esds = find(&entry[36..], &[b"esds"]);
        // MPEG-2 audio at 22.05 kHz; a 13-byte DecoderConfigDescriptor (no
        // DecoderSpecificInfo), the SLConfigDescriptor right after it.
        assert_eq!((esds[10], esds[11], esds[24]), (13, 0x69, 0x06));
    }

    #[test]
    fn an_aac_fragment_carries_the_access_units_without_their_headers() {
        let units: [&[u8]; 3] = [&[1, 2, 3, 4], &[5; 300], &[6, 7]];
        let frames = [
            adts(units[0], false),
            adts(units[1], true),
            adts(units[2], false),
        ];
        let frag = fragment(&aac(), 7, 123_456, frames.iter().map(|f| (1024, &f[..])))
            .unwrap_or_else(|e| panic!("{e}"));
        let tops = boxes(&frag);
        assert_eq!(tops.len(), 2);
        let moof_len = tops[0].1.len();
        assert_eq!(u32_at(find(&frag, &[b"moof", b"mfhd"]), 4), 7);
        let tfdt = find(&frag, &[b"moof", b"traf", b"tfdt"]);
        assert_eq!(
            u64::from_be_bytes(tfdt[4..12].try_into().unwrap_or_default()),
            123_456
        );
        let trun = find(&frag, &[b"moof", b"traf", b"trun"]);
        assert_eq!(u32_at(trun, 4), 3);
        let data_offset = u32_at(trun, 8) as usize;
        assert_eq!(data_offset, moof_len + 8);
        let mut at = data_offset;
        for (i, unit) in units.iter().enumerate() {
            assert_eq!(u32_at(trun, 12 + 8 * i), 1024);
            let size = u32_at(trun, 16 + 8 * i) as usize;
            assert_eq!(&frag[at..at + size], *unit);
            at += size;
        }
        assert_eq!(at, frag.len());
        assert_eq!(find(&frag, &[b"mdat"]), units.concat());
    }

    #[test]
    fn mp3_and_opus_fragments_carry_frames_whole() {
        let mp3 = Codec {
            kind: CODEC_MP3,
            sample_rate: 44100,
            channels: 2,
            header: Bytes::new(),
        };
        let frames: [&[u8]; 2] = [&[0xff, 0xfb, 0x90, 0x64, 1], &[0xff, 0xfb, 0x90, 0x64, 2]];
        let frag = fragment(&mp3, 1, 0, frames.iter().map(|f| (1152, *f)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(find(&frag, &[b"mdat"]), frames.concat());
        let opus = OpusHead::synthetic(1).codec();
        let frag = fragment(&opus, 1, 0, [(960u32, &[0xfcu8, 0xff][..])].into_iter())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(find(&frag, &[b"mdat"]), [0xfc, 0xff]);
    }

    #[test]
    fn a_malformed_frame_or_an_unknown_codec_is_an_error_not_a_panic() {
        let good = adts(&[1, 2, 3], false);
        let short = &good[..5];
        let err = fragment(&aac(), 3, 0, [(1024, &good[..]), (1024, short)].into_iter())
            .err()
            .unwrap_or_else(|| panic!("a cut frame was taken"));
        assert_eq!(err.kind(), Kind::BadMedia);
        assert!(err.reason().contains("frame 1 of fragment 3"), "{err}");
        let unknown = Codec { kind: 42, ..aac() };
        assert_eq!(
            init_segment(&unknown).err().map(|e| e.kind()),
            Some(Kind::Unsupported)
        );
        let none = fragment(&unknown, 1, 0, std::iter::empty());
        assert_eq!(none.err().map(|e| e.kind()), Some(Kind::Unsupported));
        // No frames at all: an empty fragment, not an error.
        let empty = fragment(&aac(), 1, 0, std::iter::empty()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(find(&empty, &[b"mdat"]), b"");
    }
}
