//! What a source sends, whatever its format: Ogg Opus (demuxed), or MP3 / AAC in ADTS (raw
//! frames, each saying its own length). One event stream for both, so the Icecast ingress and
//! `quicast publish` take any radio encoder's output the same way. I/O-free and bounded.

use bytes::{Buf, Bytes, BytesMut};

use super::framing::{self, FrameHeader};
use super::{OggEvent, OggOpusDemuxer};
use crate::error::{Error, Result};
use crate::proto::{Codec, CODEC_AAC, CODEC_MP3};

/// The formats a source may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    OggOpus,
    Mp3,
    /// AAC (LC or HE) in ADTS.
    Aac,
}

impl SourceKind {
    /// The format a `Content-Type` names (parameters ignored); None for one not taken.
    pub fn from_content_type(ct: &str) -> Option<SourceKind> {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "audio/ogg" | "application/ogg" | "audio/opus" | "audio/x-ogg" => {
                Some(SourceKind::OggOpus)
            }
            "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg" => Some(SourceKind::Mp3),
            "audio/aac" | "audio/aacp" | "audio/x-aac" | "audio/x-hx-aac-adts" => {
                Some(SourceKind::Aac)
            }
            _ => None,
        }
    }

    /// The format the first bytes of a stream show (`OggS`, an MP3 frame, an ADTS frame; an
    /// ID3 tag before them is the caller's to skip); None if they show none (or too few
    /// bytes to tell).
    pub fn sniff(b: &[u8]) -> Option<SourceKind> {
        if b.starts_with(b"OggS") {
            return Some(SourceKind::OggOpus);
        }
        if framing::adts(b).is_some() {
            return Some(SourceKind::Aac);
        }
        framing::mp3(b).map(|_| SourceKind::Mp3)
    }
}

/// What a source's bytes say, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The codec of the first stream.
    Head(Codec),
    /// A new stream follows the previous one (an Ogg chain, or raw frames whose rate or
    /// channels changed), with its codec.
    Chain(Codec),
    /// One frame: its payload (as the encoder made it), its duration in the codec's samples,
    /// and the granule position at its end where the format gives one.
    Packet {
        payload: Bytes,
        duration: u32,
        granule: Option<u64>,
    },
    /// The stream ended (an Ogg end-of-stream page); a chained one may follow.
    End,
}

/// Bytes of junk (not frames) a raw source may send between frames before it is refused:
/// a stream that is not the format it said.
const MAX_JUNK: usize = 64 * 1024;
/// Longest ID3v2 tag skipped at the start of an MP3 stream (cover art included).
const MAX_ID3: usize = 4 * 1024 * 1024;

/// Push bytes in, take events out.
pub struct SourceDemuxer {
    inner: Inner,
}

enum Inner {
    /// The format is not known yet: bytes held until they show it (or, if they show none,
    /// the format the source said).
    Sniffing(BytesMut, Option<SourceKind>),
    Ogg(OggOpusDemuxer),
    Raw(RawFramer),
}

impl SourceDemuxer {
    /// A demuxer for whatever the first bytes show, or, where they show none (junk before
    /// the first frame), for `said`: what the source said it sends. The bytes win over the
    /// word: encoders often say `audio/mpeg` whatever they send (it is ffmpeg's default).
    pub fn new(said: Option<SourceKind>) -> SourceDemuxer {
        SourceDemuxer {
            inner: Inner::Sniffing(BytesMut::new(), said),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Sniffing(b, _) => b.extend_from_slice(data),
            Inner::Ogg(d) => d.push(data),
            Inner::Raw(r) => r.buf.extend_from_slice(data),
        }
    }

    /// Bytes held that are not yet events and would be lost if the input ended here: an
    /// Ogg page begun. (What a raw stream leaves at its end is a tag, ID3v1 or APE, or a
    /// frame cut short: dropped, as players do.)
    pub fn buffered(&self) -> usize {
        match &self.inner {
            Inner::Sniffing(b, _) => b.len(),
            Inner::Ogg(d) => d.buffered(),
            Inner::Raw(_) => 0,
        }
    }

    /// Whether the stream is raw frames (MP3, AAC), which end with their input: no
    /// end-of-stream mark as Ogg has.
    pub fn is_raw(&self) -> bool {
        matches!(self.inner, Inner::Raw(_))
    }

    /// The title an Ogg Opus stream's OpusTags gave (once per logical stream, before its
    /// first packet; `Some(None)`: it names none). Raw MP3 and AAC carry none.
    pub fn take_title(&mut self) -> Option<Option<String>> {
        match &mut self.inner {
            Inner::Ogg(d) => d.take_title(),
            _ => None,
        }
    }

    /// The next event, or None until more bytes come.
    pub fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        if let Inner::Sniffing(b, said) = &mut self.inner {
            // An ID3 tag leads MP3 and AAC files alike: the first frame after it tells.
            let tag = if b.starts_with(b"ID3") {
                if b.len() < 10 {
                    return Ok(None);
                }
                match id3v2_len(b) {
                    Some(n) if n > MAX_ID3 => {
                        return Err(Error::unsupported(format!(
                            "an ID3 tag of {n} bytes (at most {MAX_ID3} are skipped)"
                        )))
                    }
                    Some(n) => n,
                    None => 0,
                }
            } else {
                0
            };
            let rest = b.get(tag..).unwrap_or(&[]);
            let kind =
                match (SourceKind::sniff(rest), *said) {
                    (Some(k), _) => k,
                    (None, _) if rest.len() < 16 => return Ok(None),
                    (None, Some(k)) => k,
                    (None, None) => return Err(Error::unsupported(
                        "the stream is not Ogg Opus, MP3 or AAC in ADTS (its first bytes say none)",
                    )),
                };
            let held = std::mem::take(b);
            self.inner = Inner::start(kind);
            self.push(&held);
        }
        match &mut self.inner {
            Inner::Sniffing(..) => Ok(None),
            Inner::Ogg(d) => Ok(d.next_event()?.map(|ev| match ev {
                OggEvent::Head(h) => SourceEvent::Head(h.codec()),
                OggEvent::Chain(h) => SourceEvent::Chain(h.codec()),
                OggEvent::Packet(payload, duration, granule) => SourceEvent::Packet {
                    payload,
                    duration,
                    granule,
                },
                OggEvent::End => SourceEvent::End,
            })),
            Inner::Raw(r) => r.next_event(),
        }
    }
}

impl Inner {
    fn start(kind: SourceKind) -> Inner {
        match kind {
            SourceKind::OggOpus => Inner::Ogg(OggOpusDemuxer::new()),
            SourceKind::Mp3 => Inner::Raw(RawFramer::new(CODEC_MP3)),
            SourceKind::Aac => Inner::Raw(RawFramer::new(CODEC_AAC)),
        }
    }
}

/// Cuts a raw MP3 or ADTS stream into its frames, past junk and a leading ID3v2 tag.
struct RawFramer {
    kind: u64,
    buf: BytesMut,
    codec: Option<Codec>,
    /// Bytes of an ID3 tag still to drop.
    skip: usize,
    /// Junk dropped since the last frame.
    junk: usize,
    /// Whether the stream's start was looked at for an ID3 tag.
    began: bool,
}

impl RawFramer {
    fn new(kind: u64) -> RawFramer {
        RawFramer {
            kind,
            buf: BytesMut::new(),
            codec: None,
            skip: 0,
            junk: 0,
            began: false,
        }
    }

    fn header(&self) -> fn(&[u8]) -> Option<FrameHeader> {
        match self.kind {
            CODEC_AAC => framing::adts,
            _ => framing::mp3,
        }
    }

    fn drop_junk(&mut self, n: usize) -> Result<()> {
        self.buf.advance(n);
        self.junk += n;
        if self.junk > MAX_JUNK {
            let what = if self.kind == CODEC_AAC {
                "AAC (ADTS)"
            } else {
                "MP3"
            };
            return Err(Error::unsupported(format!(
                "no {what} frame in {MAX_JUNK} bytes: the stream is not {what}"
            )));
        }
        Ok(())
    }

    fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            if !self.began {
                if self.buf.len() < 10 {
                    return Ok(None);
                }
                self.began = true;
                if let Some(len) = id3v2_len(&self.buf) {
                    if len > MAX_ID3 {
                        return Err(Error::media(format!(
                            "an ID3 tag of {len} bytes (at most {MAX_ID3} are skipped)"
                        )));
                    }
                    self.skip = len;
                    continue;
                }
            }
            let header = self.header();
            let Some(h) = header(&self.buf) else {
                // Not a frame here: drop up to the next place one may begin.
                match framing::resync(&self.buf[1.min(self.buf.len())..], header) {
                    Some((at, _)) => self.drop_junk(1 + at)?,
                    None => {
                        // Keep the last bytes: a header may be cut across pushes.
                        let keep = self.buf.len().min(8);
                        let n = self.buf.len() - keep;
                        self.drop_junk(n)?;
                        return Ok(None);
                    }
                }
                continue;
            };
            // A frame is taken when the next one's header is here to confirm it (a stray
            // sync pattern in junk is not), or once in step with a known codec.
            let confirmed = match self.buf.get(h.len..) {
                Some(rest) if rest.len() >= 7 => header(rest).is_some(),
                _ => {
                    if self.buf.len() < h.len {
                        return Ok(None);
                    }
                    // The frame is whole but its successor is not here yet: wait, unless
                    // the frame matches the stream (then the successor confirms nothing).
                    if !self.matches(&h) {
                        return Ok(None);
                    }
                    true
                }
            };
            if !confirmed && !self.matches(&h) {
                self.drop_junk(1)?;
                continue;
            }
            let codec = self.codec_of(&h)?;
            let payload = self.buf.split_to(h.len).freeze();
            self.junk = 0;
            if self.codec.as_ref() != Some(&codec) {
                let first = self.codec.is_none();
                self.codec = Some(codec.clone());
                // The frame comes again after the codec event: push it back in front.
                let mut rest = BytesMut::with_capacity(payload.len() + self.buf.len());
                rest.extend_from_slice(&payload);
                rest.extend_from_slice(&self.buf);
                self.buf = rest;
                return Ok(Some(match first {
                    true => SourceEvent::Head(codec),
                    false => SourceEvent::Chain(codec),
                }));
            }
            return Ok(Some(SourceEvent::Packet {
                payload,
                duration: h.samples,
                granule: None,
            }));
        }
    }

    /// Whether `h` is a frame of the stream as it is (same rate and channels).
    fn matches(&self, h: &FrameHeader) -> bool {
        self.codec
            .as_ref()
            .is_some_and(|c| c.sample_rate == h.rate && c.channels == h.channels)
    }

    /// The codec a frame with header `h` (at the front of the buffer) belongs to.
    fn codec_of(&self, h: &FrameHeader) -> Result<Codec> {
        let header = match self.kind {
            CODEC_AAC => super::aac_config(&self.buf)
                .ok_or_else(|| Error::media("an ADTS header without a valid profile"))?,
            _ => Bytes::new(),
        };
        Ok(Codec {
            kind: self.kind,
            sample_rate: h.rate,
            channels: h.channels,
            header,
        })
    }
}

/// The whole length of an ID3v2 tag at the start of `b` (header, body, footer), if one is.
fn id3v2_len(b: &[u8]) -> Option<usize> {
    if b.len() < 10 || &b[..3] != b"ID3" || b[3] == 0xff || b[4] == 0xff {
        return None;
    }
    // The size: four 7-bit bytes (syncsafe).
    if b[6..10].iter().any(|x| x & 0x80 != 0) {
        return None;
    }
    let size = b[6..10]
        .iter()
        .fold(0usize, |n, x| (n << 7) | (*x as usize));
    let footer = if b[5] & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ADTS frame: AAC LC, 44.1 kHz, stereo, no CRC, `len` bytes in all.
    fn adts_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0xff, 0xf1, 0x50, 0x80, 0, 0, 0xfc];
        f[3] |= ((len >> 11) & 0x03) as u8;
        f[4] = ((len >> 3) & 0xff) as u8;
        f[5] = (((len & 0x07) << 5) as u8) | 0x1f;
        f.resize(len, 0x21);
        f
    }

    fn events(kind: Option<SourceKind>, input: &[u8], step: usize) -> Vec<SourceEvent> {
        let mut d = SourceDemuxer::new(kind);
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            d.push(chunk);
            while let Some(ev) = d.next_event().unwrap_or_else(|e| panic!("{e}")) {
                out.push(ev);
            }
        }
        out
    }

    #[test]
    fn adts_frames_are_cut_whole_after_junk_and_announce_their_codec() {
        let mut input = b"junk before the first frame".to_vec();
        for len in [100, 120, 90, 110] {
            input.extend(adts_frame(len));
        }
        for step in [1, 7, 1000] {
            // Untold, the first bytes must show the format; told, junk before is skipped.
            let ev = events(None, &input[27..], step);
            assert!(matches!(ev[0], SourceEvent::Head(_)), "{ev:?}");
            assert_eq!(ev.len(), 5);
            let ev = events(Some(SourceKind::Aac), &input, step);
            let SourceEvent::Head(c) = &ev[0] else {
                panic!("no head: {ev:?}")
            };
            assert_eq!((c.kind, c.sample_rate, c.channels), (CODEC_AAC, 44100, 2));
            // AAC LC (2), 44.1 kHz (index 4), stereo: 00010 0100 0010 000.
            assert_eq!(&c.header[..], &[0x12, 0x10]);
            let lens: Vec<usize> = ev[1..]
                .iter()
                .map(|e| match e {
                    SourceEvent::Packet {
                        payload, duration, ..
                    } => {
                        assert_eq!(*duration, 1024);
                        payload.len()
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            // The last frame waits for its successor only if it does not match: it does.
            assert_eq!(lens, vec![100, 120, 90, 110], "step {step}");
        }
    }

    #[test]
    fn an_id3_tag_is_skipped_and_a_stream_of_junk_is_refused() {
        let mut input = b"ID3\x04\x00\x00\x00\x00\x01\x00".to_vec(); // a 128-byte tag body
        input.extend([0xffu8; 128]);
        input.extend(adts_frame(64));
        input.extend(adts_frame(64));
        let ev = events(Some(SourceKind::Aac), &input, 5);
        assert_eq!(ev.len(), 3, "{ev:?}");
        let mut d = SourceDemuxer::new(Some(SourceKind::Mp3));
        d.push(&vec![0x55u8; MAX_JUNK + 100]);
        let mut failed = false;
        for _ in 0..4 {
            if d.next_event().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "64 KiB of junk is not an MP3 stream");
    }

    #[test]
    fn content_types_and_first_bytes_name_the_format() {
        assert_eq!(
            SourceKind::from_content_type("audio/mpeg"),
            Some(SourceKind::Mp3)
        );
        assert_eq!(
            SourceKind::from_content_type("audio/aacp; charset=x"),
            Some(SourceKind::Aac)
        );
        assert_eq!(
            SourceKind::from_content_type("application/ogg"),
            Some(SourceKind::OggOpus)
        );
        assert_eq!(SourceKind::from_content_type("video/mp4"), None);
        assert_eq!(SourceKind::sniff(b"OggS\0"), Some(SourceKind::OggOpus));
        assert_eq!(SourceKind::sniff(&adts_frame(64)), Some(SourceKind::Aac));
        assert_eq!(SourceKind::sniff(b"ID3\x04"), None);
        // Untold, an ID3 tag is looked past: the frame after it says AAC.
        let mut input = b"ID3\x04\x00\x00\x00\x00\x00\x20".to_vec(); // a 32-byte tag body
        input.extend([0u8; 32]);
        input.extend(adts_frame(64));
        input.extend(adts_frame(64));
        let ev = events(None, &input, 3);
        assert!(
            matches!(&ev[0], SourceEvent::Head(c) if c.kind == CODEC_AAC),
            "{ev:?}"
        );
    }
}
