//! Fragmented MP4 (CMAF) carrying Opus, as "Encapsulation of Opus in ISO Base Media File
//! Format" (Opus-in-ISOBMFF v0.8) and ISO/IEC 14496-12 lay it out: an init segment whose
//! sample entry carries the OpusHead as `dOps`, and a fragment (`moof` + `mdat`) per run of
//! frames, for HLS segments and parts.
//!
//! The boxes are a dozen fixed layouts; they are written here by hand rather than through an
//! MP4 crate, because the one sample entry (Opus with `dOps`) is all that is needed and the
//! crates that write fragments either lack it or bring a whole object model for these few
//! hundred bytes. Every field is checked against ffmpeg's and Chromium's demuxers by the
//! tests (`tests/hls.rs`).

use bytes::{BufMut, Bytes, BytesMut};

use super::opus::{OpusHead, OPUS_RATE};

/// The only track.
const TRACK: u32 = 1;

/// Writes a box of `kind` whose body `body` writes.
fn boxed(out: &mut BytesMut, kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: version and 24-bit flags first.
fn full(
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

/// The init segment: `ftyp` and `moov` for one Opus track at 48 kHz.
pub fn init_segment(head: &OpusHead) -> Bytes {
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
            o.put_u32(OPUS_RATE);
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
                    o.put_u32(OPUS_RATE);
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
                            boxed(o, b"Opus", |o| {
                                o.put_bytes(0, 6);
                                o.put_u16(1); // data reference index
                                o.put_bytes(0, 8);
                                o.put_u16(head.channels as u16);
                                o.put_u16(16); // sample size
                                o.put_u32(0);
                                o.put_u32(OPUS_RATE << 16);
                                dops(o, head);
                            });
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
    o.freeze()
}

/// One fragment: `moof` + `mdat` holding `frames` (duration in 48 kHz samples, payload),
/// the first decoded at `base_pts`. `number` is the fragment's sequence number (`mfhd`).
pub fn fragment<'a>(
    number: u32,
    base_pts: u64,
    frames: impl Iterator<Item = (u32, &'a [u8])> + Clone,
) -> Bytes {
    let count = frames.clone().count();
    let payload: usize = frames.clone().map(|(_, p)| p.len()).sum();
    let mut o = BytesMut::with_capacity(100 + 8 * count + payload);
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
                for (duration, p) in frames.clone() {
                    o.put_u32(duration);
                    o.put_u32(p.len() as u32);
                }
            });
        });
    });
    // The samples start after the moof and the mdat's 8-byte header.
    let data_offset = (o.len() + 8) as u32;
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    boxed(&mut o, b"mdat", |o| {
        for (_, p) in frames {
            o.put_slice(p);
        }
    });
    o.freeze()
}
