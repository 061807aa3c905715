//! The frame headers of the radio codecs an Icecast encoder sends raw: AAC in ADTS
//! (ISO/IEC 13818-7 and 14496-3: `audio/aac`, `audio/aacp`) and MPEG-1/2/2.5 audio layer III
//! (`audio/mpeg`). Each frame says its own length, so a stream of them is cut on frame
//! boundaries with no demuxer: the node carries the encoder's frames as they came. I/O-free
//! and bounded: a header is read from a few bytes, or refused.

/// What one frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's length in bytes, header included.
    pub len: usize,
    /// Samples per channel it decodes to, at `rate`.
    pub samples: u32,
    pub rate: u32,
    pub channels: u8,
}

/// The ADTS sampling frequencies by index (15 and above: reserved or explicit, refused).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// An ADTS header at the start of `b` (7 bytes, 9 with a CRC), or `None` if it is not one.
pub fn adts(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 7 || b[0] != 0xff || b[1] & 0xf6 != 0xf0 {
        // Sync word 0xFFF, layer 00.
        return None;
    }
    let protection_absent = b[1] & 1 == 1;
    let rate = *AAC_RATES.get(((b[2] >> 2) & 0x0f) as usize)?;
    let channels = ((b[2] & 1) << 2) | (b[3] >> 6);
    let len = (((b[3] & 0x03) as usize) << 11) | ((b[4] as usize) << 3) | ((b[5] >> 5) as usize);
    let blocks = (b[6] & 0x03) as u32 + 1;
    let header = if protection_absent { 7 } else { 9 };
    // Channel configuration 0 (set by the stream's own config element) is not taken.
    if channels == 0 || len <= header {
        return None;
    }
    Some(FrameHeader {
        len,
        samples: 1024 * blocks,
        rate,
        channels,
    })
}

/// How many bytes of an ADTS frame (one raw data block) are header: 7, or 9 with a CRC
/// (protection_absent 0). What is left is the raw access unit MP4 carries as a sample.
/// `None` if `b` does not start with an ADTS header `adts` takes.
pub fn adts_header_len(b: &[u8]) -> Option<usize> {
    adts(b)?;
    Some(if b[1] & 1 == 1 { 7 } else { 9 })
}

/// An MPEG audio layer III header at the start of `b` (4 bytes), or `None`.
pub fn mp3(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 4 || b[0] != 0xff || b[1] & 0xe0 != 0xe0 {
        return None;
    }
    // Version: 0 MPEG-2.5, 2 MPEG-2, 3 MPEG-1 (1 reserved). Layer: 1 is layer III.
    let version = (b[1] >> 3) & 0x03;
    if version == 1 || (b[1] >> 1) & 0x03 != 1 {
        return None;
    }
    let bitrate_index = (b[2] >> 4) as usize;
    let rate_index = ((b[2] >> 2) & 0x03) as usize;
    if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        // Free format and reserved values are not taken.
        return None;
    }
    const V1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (kbps, base, samples) = match version {
        3 => (V1[bitrate_index], [44100, 48000, 32000][rate_index], 1152),
        2 => (V2[bitrate_index], [22050, 24000, 16000][rate_index], 576),
        _ => (V2[bitrate_index], [11025, 12000, 8000][rate_index], 576),
    };
    let padding = ((b[2] >> 1) & 1) as usize;
    // Bytes: samples / 8 * bitrate / rate, plus the padding byte.
    let len = (samples as usize / 8) * kbps as usize * 1000 / base as usize + padding;
    let channels = if b[3] >> 6 == 3 { 1 } else { 2 };
    Some(FrameHeader {
        len,
        samples,
        rate: base,
        channels,
    })
}

/// Where the next frame starts in `b` for `header` (ADTS or MP3): the first offset whose
/// header reads and whose next frame's header (if `b` holds it) reads too, so a stray sync
/// pattern inside audio data is not taken for a frame. Scans at most `b.len()` bytes.
pub fn resync(b: &[u8], header: fn(&[u8]) -> Option<FrameHeader>) -> Option<(usize, FrameHeader)> {
    (0..b.len()).find_map(|at| {
        let h = header(&b[at..])?;
        let next = at + h.len;
        match b.get(next..) {
            Some(rest) if rest.len() >= 7 => header(rest).map(|_| (at, h)),
            _ => Some((at, h)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn an_adts_header_says_its_frames_length_rate_and_channels() {
        // AAC LC, 44.1 kHz (index 4), stereo, no CRC, a 371-byte frame, one raw block.
        let h = adts(&hex("fff150802e7ffc")).unwrap_or_else(|| panic!("not read"));
        assert_eq!(
            h,
            FrameHeader {
                len: 0x173,
                samples: 1024,
                rate: 44100,
                channels: 2
            }
        );
        // Cut short, no sync, a reserved rate, channel configuration 0: refused.
        assert_eq!(adts(&hex("fff150802e7f")), None);
        assert_eq!(adts(&hex("fef150802e7ffc")), None);
        assert_eq!(adts(&hex("fff17c802e7ffc")), None);
        assert_eq!(adts(&hex("fff150002e7ffc")), None);
    }

    #[test]
    fn an_adts_header_is_7_bytes_or_9_with_a_crc() {
        assert_eq!(adts_header_len(&hex("fff150802e7ffc")), Some(7));
        assert_eq!(adts_header_len(&hex("fff050802e7ffc0000")), Some(9));
        assert_eq!(adts_header_len(&hex("fff150802e7f")), None);
    }

    #[test]
    fn an_mp3_header_says_its_frames_length_rate_and_channels() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding, joint stereo: 417 bytes.
        let h = mp3(&hex("fffb9064")).unwrap();
        assert_eq!(
            h,
            FrameHeader {
                len: 417,
                samples: 1152,
                rate: 44100,
                channels: 2
            }
        );
        // The same, padded: 418. Mono at 48 kHz, 64 kbit/s: 192 bytes.
        assert_eq!(mp3(&hex("fffb9264")).unwrap().len, 418);
        let m = mp3(&hex("fffb54c4")).unwrap();
        assert_eq!((m.len, m.rate, m.channels), (192, 48000, 1));
        // MPEG-2, 64 kbit/s, 24 kHz: 576 samples, 192 bytes.
        let v2 = mp3(&hex("fff38464")).unwrap();
        assert_eq!((v2.len, v2.samples, v2.rate), (192, 576, 24000));
        // Free format, a reserved rate, layer I, cut short: refused.
        assert_eq!(mp3(&hex("fffb0064")), None);
        assert_eq!(mp3(&hex("fffb9c64")), None);
        assert_eq!(mp3(&hex("ffff9064")), None);
        assert_eq!(mp3(&hex("fffb90")), None);
    }

    #[test]
    fn resync_skips_junk_and_a_stray_sync_pattern() {
        let frame = |pad: u8| {
            let mut f = hex("fffb9064");
            f[2] |= pad << 1;
            f.resize(417 + pad as usize, 0x55);
            f
        };
        let mut b = b"ID3 junk".to_vec();
        // A stray header-like pattern whose "next frame" is not one.
        b.extend(hex("fffb9064"));
        b.extend([0u8; 20]);
        let at = b.len();
        b.extend(frame(0));
        b.extend(frame(1));
        let (found, h) = resync(&b, mp3).unwrap();
        assert_eq!((found, h.len), (at, 417));
        assert_eq!(resync(b"no frames at all", mp3), None);
    }
}
