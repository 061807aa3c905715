//! HLS packed audio (RFC 8216 §3.4): a segment (or part) of MP3 is its frames as they are,
//! after an ID3v2.4 tag whose `PRIV` frame, owner `com.apple.streaming.transportStreamTimestamp`,
//! holds the 33-bit MPEG-2 (90 kHz) timestamp of the first frame. Players place the audio
//! by it (hls.js' MP3 demuxer, ffmpeg's HLS reader, Safari), and nothing else is needed: no
//! init segment, no container.
//!
//! MP3 goes this way because the other way, MP3 in fMP4, does not play in Chromium's MSE at
//! all (see `fmp4_track::hls_codecs`), while raw MP3 does (`audio/mpeg`).
//!
//! The tag may also hold a `TIT2` frame (the now-playing title, UTF-8): players that read
//! timed ID3 (hls.js' metadata track, Safari's timed metadata) see it at the audio it is
//! sent with.

use bytes::{BufMut, Bytes, BytesMut};

/// The owner of the timestamp `PRIV` frame.
const TIMESTAMP_OWNER: &[u8] = b"com.apple.streaming.transportStreamTimestamp\0";

/// A 90 kHz timestamp wraps at 33 bits.
const WRAP_90K: u128 = 1 << 33;

/// `pts` in `rate` samples as a 33-bit 90 kHz timestamp (rounded down, wrapped).
pub fn timestamp_90k(pts: u64, rate: u32) -> u64 {
    let t = u128::from(pts) * 90_000 / u128::from(rate.max(1));
    (t % WRAP_90K) as u64
}

/// A 28-bit syncsafe integer (ID3v2.4 tag and frame sizes: 7 bits a byte). Sizes here are
/// far below 2^28 (a title is at most `proto::MAX_TITLE` bytes).
fn put_syncsafe(o: &mut BytesMut, n: usize) {
    let n = n as u32;
    o.put_slice(&[
        (n >> 21 & 0x7f) as u8,
        (n >> 14 & 0x7f) as u8,
        (n >> 7 & 0x7f) as u8,
        (n & 0x7f) as u8,
    ]);
}

/// An ID3v2.4 frame: id, syncsafe size, no flags, `body`.
fn frame(o: &mut BytesMut, id: &[u8; 4], body: &[&[u8]]) {
    o.put_slice(id);
    put_syncsafe(o, body.iter().map(|b| b.len()).sum());
    o.put_u16(0);
    for b in body {
        o.put_slice(b);
    }
}

/// The ID3 tag a packed-audio segment or part starts with: the timestamp of its first
/// frame (90 kHz, see `timestamp_90k`), and the title if given (UTF-8).
pub fn id3_tag(ts_90k: u64, title: Option<&[u8]>) -> Bytes {
    let mut frames = BytesMut::with_capacity(64 + title.map_or(0, |t| t.len() + 11));
    let ts = (ts_90k % WRAP_90K as u64).to_be_bytes();
    frame(&mut frames, b"PRIV", &[TIMESTAMP_OWNER, &ts]);
    if let Some(t) = title {
        // Encoding 3: UTF-8.
        frame(&mut frames, b"TIT2", &[&[3], t]);
    }
    let mut o = BytesMut::with_capacity(10 + frames.len());
    o.put_slice(b"ID3");
    o.put_slice(&[4, 0, 0]); // version 2.4.0, no flags
    put_syncsafe(&mut o, frames.len());
    o.put_slice(&frames);
    o.freeze()
}

/// A packed-audio segment or part: the ID3 tag, then `frames` as they are.
pub fn packed_audio<'a>(
    ts_90k: u64,
    title: Option<&[u8]>,
    frames: impl Iterator<Item = &'a [u8]> + Clone,
) -> Bytes {
    let tag = id3_tag(ts_90k, title);
    let len: usize = frames.clone().map(<[u8]>::len).sum();
    let mut o = BytesMut::with_capacity(tag.len() + len);
    o.put_slice(&tag);
    for f in frames {
        o.put_slice(f);
    }
    o.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syncsafe(b: &[u8]) -> usize {
        b.iter().fold(0, |n, &x| {
            assert!(x < 0x80, "syncsafe bytes have no high bit");
            n << 7 | x as usize
        })
    }

    /// The frames of a tag: (id, body), checking every size adds up.
    fn frames(tag: &[u8]) -> Vec<([u8; 4], &[u8])> {
        assert_eq!(&tag[..6], b"ID3\x04\x00\x00");
        let size = syncsafe(&tag[6..10]);
        assert_eq!(size + 10, tag.len());
        let mut at = 10;
        let mut out = Vec::new();
        while at < tag.len() {
            let id = [tag[at], tag[at + 1], tag[at + 2], tag[at + 3]];
            let n = syncsafe(&tag[at + 4..at + 8]);
            assert_eq!(&tag[at + 8..at + 10], [0, 0]);
            out.push((id, &tag[at + 10..at + 10 + n]));
            at += 10 + n;
        }
        assert_eq!(at, tag.len());
        out
    }

    #[test]
    fn the_tag_holds_the_33_bit_timestamp_as_apple_lays_it_out() {
        // The bytes Apple's and ffmpeg's segmenters write for timestamp 0x1_2345_6789.
        let tag = id3_tag(0x1_2345_6789, None);
        assert_eq!(tag.len(), 10 + 10 + 45 + 8);
        let f = frames(&tag);
        assert_eq!(f.len(), 1);
        assert_eq!(&f[0].0, b"PRIV");
        let (owner, ts) = f[0].1.split_at(45);
        assert_eq!(owner, TIMESTAMP_OWNER);
        assert_eq!(ts, [0, 0, 0, 1, 0x23, 0x45, 0x67, 0x89]);
    }

    #[test]
    fn timestamps_are_90_khz_and_wrap_at_33_bits() {
        assert_eq!(timestamp_90k(44_100, 44_100), 90_000);
        assert_eq!(timestamp_90k(1152, 44_100), 2351);
        assert_eq!(timestamp_90k(48_000 * 3, 48_000), 270_000);
        // 2^33 ticks later: the same timestamp; and a rate of 0 is no panic.
        assert_eq!(timestamp_90k((1 << 33) + 5, 90_000), 5);
        assert_eq!(timestamp_90k(u64::MAX, 8000) >> 33, 0);
        assert_eq!(timestamp_90k(5, 0), 450_000);
    }

    #[test]
    fn a_long_title_gets_syncsafe_sizes_and_the_frames_follow_the_tag() {
        let title = "é".repeat(500);
        let frames_in: [&[u8]; 2] = [&[0xff, 0xfb, 1], &[0xff, 0xfb, 2]];
        let seg = packed_audio(7, Some(title.as_bytes()), frames_in.iter().copied());
        let tag_len = 10 + syncsafe(&seg[6..10]);
        let f = frames(&seg[..tag_len]);
        assert_eq!(f.len(), 2);
        assert_eq!(&f[1].0, b"TIT2");
        assert_eq!(f[1].1[0], 3);
        assert_eq!(&f[1].1[1..], title.as_bytes());
        assert_eq!(&seg[tag_len..], [0xff, 0xfb, 1, 0xff, 0xfb, 2]);
    }
}
