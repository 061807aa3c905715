//! Opus in Ogg: the OpusHead header, packet durations from the TOC byte, an I/O-free
//! demuxer (bytes in, packets out, every size bounded) and a page writer.
//!
//! Ogg page parsing and CRC checking is the `ogg` crate's; what is ours is the bounding
//! (one logical stream, packets no larger than a limit) and the Opus rules (RFC 6716, RFC 7845).

use bytes::{Buf, Bytes, BytesMut};
use ogg::reading::{BasePacketReader, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::error::{Error, Result};
use crate::proto::{Codec, Frame, CODEC_OPUS, MAX_CODEC_HEADER, MAX_FRAME_PAYLOAD};

/// Opus always runs its timestamps at 48 kHz.
pub const OPUS_RATE: u32 = 48_000;
/// The second header packet (comments) may carry cover art; bound it anyway.
const MAX_TAGS: usize = 256 * 1024;

/// The fields of an OpusHead packet that quicast uses (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub raw: Bytes,
}

impl OpusHead {
    pub fn parse(raw: &[u8]) -> Result<OpusHead> {
        if !raw.starts_with(b"OpusHead") {
            return Err(Error::Unsupported(describe_non_opus(raw)));
        }
        if raw.len() < 19 {
            return Err(Error::Media(format!(
                "OpusHead is {} bytes, at least 19 expected",
                raw.len()
            )));
        }
        if raw.len() > MAX_CODEC_HEADER {
            return Err(Error::Media(format!(
                "OpusHead is {} bytes, limit {MAX_CODEC_HEADER}",
                raw.len()
            )));
        }
        let version = raw[8];
        if version & 0xf0 != 0 {
            return Err(Error::Media(format!(
                "unsupported OpusHead version {version}"
            )));
        }
        let channels = raw[9];
        if channels == 0 {
            return Err(Error::Media("OpusHead declares 0 channels".into()));
        }
        let family = raw[18];
        if family == 0 && channels > 2 {
            return Err(Error::Media(format!(
                "mapping family 0 with {channels} channels"
            )));
        }
        if family != 0 && raw.len() < 21 + channels as usize {
            return Err(Error::Media(
                "OpusHead channel mapping table is truncated".into(),
            ));
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
    let toc = *p
        .first()
        .ok_or_else(|| Error::Media("empty Opus packet".into()))?;
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
                .ok_or_else(|| Error::Media("Opus code-3 packet without frame count".into()))?;
            (c & 0x3f) as u32
        }
    };
    let total = frame * count;
    if count == 0 || total > 5760 {
        return Err(Error::Media(format!(
            "Opus packet of {count} frames lasts over 120 ms"
        )));
    }
    Ok(total)
}

/// What the demuxer yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OggEvent {
    Head(OpusHead),
    /// An audio packet, its duration in 48 kHz samples, and the granule position at its end
    /// (from its page's granule; None where the page gives none).
    Packet(Bytes, u32, Option<u64>),
    /// The logical stream ended (EOS page).
    End,
}

/// Push bytes in, take events out. Holds at most one page of input beyond what was pushed.
pub struct OggOpusDemuxer {
    buf: BytesMut,
    reader: BasePacketReader,
    serial: Option<u32>,
    /// Packets seen so far in the chosen logical stream (0 = expecting OpusHead).
    packets: u64,
    /// Length of the packet being continued across pages, for the size bound.
    partial: usize,
    ended: bool,
    pending: std::collections::VecDeque<OggEvent>,
}

impl Default for OggOpusDemuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl OggOpusDemuxer {
    pub fn new() -> Self {
        OggOpusDemuxer {
            buf: BytesMut::new(),
            reader: BasePacketReader::new(),
            serial: None,
            packets: 0,
            partial: 0,
            ended: false,
            pending: Default::default(),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes pushed but not yet parsed (at most one partial page once `next` returns None).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next event, or None when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<OggEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if self.ended {
                // Whatever follows the end of our logical stream is not ours.
                self.buf.clear();
                return Ok(None);
            }
            if !self.parse_page()? {
                return Ok(None);
            }
        }
    }

    /// Size limit of the `n`th packet of the logical stream.
    fn packet_limit(n: u64) -> usize {
        match n {
            0 => MAX_CODEC_HEADER,
            1 => MAX_TAGS,
            _ => MAX_FRAME_PAYLOAD,
        }
    }

    /// Parses one whole page if buffered; returns false if more bytes are needed.
    fn parse_page(&mut self) -> Result<bool> {
        if self.buf.len() < 27 {
            return Ok(false);
        }
        if &self.buf[..4] != b"OggS" {
            if self.serial.is_none() {
                return Err(Error::Unsupported(
                    "input is not an Ogg stream (no OggS capture pattern at its start)".into(),
                ));
            }
            return Err(Error::Media(
                "lost Ogg page sync (no OggS capture pattern where a page should start)".into(),
            ));
        }
        let nseg = self.buf[26] as usize;
        if self.buf.len() < 27 + nseg {
            return Ok(false);
        }
        let lacing = &self.buf[27..27 + nseg];
        let body: usize = lacing.iter().map(|&v| v as usize).sum();
        if self.buf.len() < 27 + nseg + body {
            return Ok(false);
        }
        let mut header = [0u8; 27];
        header.copy_from_slice(&self.buf[..27]);
        let flags = header[5];
        let serial = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let lacing = lacing.to_vec();
        self.buf.advance(27 + nseg);
        let data = self.buf.split_to(body).to_vec();

        match self.serial {
            None if flags & 0x02 == 0 => {
                return Err(Error::Media(
                    "Ogg stream does not start with a beginning-of-stream page".into(),
                ))
            }
            None => self.serial = Some(serial),
            // Pages of other logical streams (a video track, say) are skipped, never buffered.
            Some(s) if s != serial => return Ok(true),
            Some(_) => {}
        }
        // Bound every packet before the ogg reader assembles it.
        let mut count = self.packets;
        for v in &lacing {
            self.partial += *v as usize;
            let limit = Self::packet_limit(count);
            if self.partial > limit {
                return Err(Error::Media(format!(
                    "Ogg packet {count} is over {limit} bytes ({} so far)",
                    self.partial
                )));
            }
            if *v < 255 {
                self.partial = 0;
                count += 1;
            }
        }

        let (mut parser, _) =
            PageParser::new(header).map_err(|e| Error::Media(format!("bad Ogg page: {e}")))?;
        parser.parse_segments(lacing);
        let page = parser
            .parse_packet_data(data)
            .map_err(|e| Error::Media(format!("bad Ogg page: {e}")))?;
        self.reader
            .push_page(page)
            .map_err(|e| Error::Media(format!("bad Ogg page: {e}")))?;
        // Audio packets completed on this page; the page's granule is the end of its last one.
        let first_audio = self.pending.len();
        let mut page_granule = None;
        while let Some(pkt) = self.reader.read_packet() {
            let last = pkt.last_in_stream();
            page_granule = Some(pkt.absgp_page()).filter(|g| *g != u64::MAX);
            let ev = match self.packets {
                0 => OggEvent::Head(OpusHead::parse(&pkt.data)?),
                1 => {
                    if !pkt.data.starts_with(b"OpusTags") {
                        return Err(Error::Media(
                            "second Ogg Opus packet is not OpusTags".into(),
                        ));
                    }
                    self.packets += 1;
                    if last {
                        self.ended = true;
                        self.pending.push_back(OggEvent::End);
                    }
                    continue;
                }
                _ => {
                    let dur = opus_packet_samples(&pkt.data)?;
                    OggEvent::Packet(Bytes::from(pkt.data), dur, None)
                }
            };
            self.packets += 1;
            self.pending.push_back(ev);
            if last {
                self.ended = true;
                self.pending.push_back(OggEvent::End);
                break;
            }
        }
        // Count back from the page's granule to give each packet its end.
        let mut end = page_granule;
        for ev in self.pending.iter_mut().skip(first_audio).rev() {
            if let OggEvent::Packet(_, dur, g) = ev {
                *g = end;
                end = end.and_then(|e| e.checked_sub(*dur as u64));
            }
        }
        Ok(true)
    }
}

/// Writes an Ogg Opus stream: its own serial, headers, and granule positions counted from
/// the first packet written. It holds back the latest packet so that the last page of the
/// stream can carry the end-of-stream flag.
pub struct OggOpusWriter {
    pw: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    granule: u64,
    held: Option<(Bytes, u64)>,
}

impl OggOpusWriter {
    pub fn new(serial: u32) -> Self {
        OggOpusWriter {
            pw: PacketWriter::new(Vec::new()),
            serial,
            granule: 0,
            held: None,
        }
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.pw.inner_mut()))
    }

    fn write(&mut self, data: Bytes, end: PacketWriteEndInfo, granule: u64) {
        // Writing into a Vec cannot fail.
        let _ = self
            .pw
            .write_packet(data.to_vec(), self.serial, end, granule);
    }

    /// The two header pages: the codec's OpusHead, then OpusTags naming quicast.
    pub fn headers(&mut self, opus_head: &[u8]) -> Bytes {
        self.write(
            Bytes::copy_from_slice(opus_head),
            PacketWriteEndInfo::EndPage,
            0,
        );
        let vendor = b"quicast";
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        self.write(Bytes::from(tags), PacketWriteEndInfo::EndPage, 0);
        self.take()
    }

    /// Adds packets; returns the page bytes now complete: every packet but the newest, which
    /// is held so that `finish` can flag the stream's last page. The page is closed after the
    /// last packet written, so a player gets it at once.
    pub fn packets<'a>(&mut self, frames: impl IntoIterator<Item = (&'a Bytes, u32)>) -> Bytes {
        let mut ready: Vec<(Bytes, u64)> = Vec::new();
        for (payload, dur) in frames {
            self.granule += dur as u64;
            if let Some(prev) = self.held.replace((payload.clone(), self.granule)) {
                ready.push(prev);
            }
        }
        let n = ready.len();
        for (i, (data, g)) in ready.into_iter().enumerate() {
            let end = if i + 1 == n {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.write(data, end, g);
        }
        self.take()
    }

    /// Flushes the held packet as the stream's last page (end-of-stream flag set).
    pub fn finish(&mut self) -> Bytes {
        if let Some((data, g)) = self.held.take() {
            self.write(data, PacketWriteEndInfo::EndStream, g);
        }
        self.take()
    }

    /// Frames to the writer's input form.
    pub fn frames(&mut self, frames: &[Frame]) -> Bytes {
        self.packets(frames.iter().map(|f| (&f.payload, f.duration)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        // config 31 (CELT 20 ms), code 0
        assert_eq!(opus_packet_samples(&[0xf8]).unwrap(), 960);
        // config 16 (CELT 2.5 ms), code 1: two frames
        assert_eq!(opus_packet_samples(&[0x81]).unwrap(), 240);
        // config 3 (SILK 60 ms), code 3 with 2 frames
        assert_eq!(opus_packet_samples(&[0x1b, 0x02]).unwrap(), 5760);
        // 3 x 60 ms is over 120 ms
        assert!(opus_packet_samples(&[0x1b, 0x03]).is_err());
        assert!(opus_packet_samples(&[0x1b, 0x00]).is_err());
        assert!(opus_packet_samples(&[]).is_err());
        assert!(opus_packet_samples(&[0x1b]).is_err());
    }

    fn sample_stream(packets: &[&[u8]]) -> Vec<u8> {
        let mut w = OggOpusWriter::new(7);
        let mut out = w.headers(&OpusHead::synthetic(2).raw).to_vec();
        for p in packets {
            let b = Bytes::copy_from_slice(p);
            out.extend_from_slice(&w.packets([(&b, 960)]));
        }
        out.extend_from_slice(&w.finish());
        out
    }

    #[test]
    fn writer_output_demuxes_back_byte_for_byte_in_any_chunking() {
        let pkts: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![0xf8, i, i.wrapping_mul(3)])
            .collect();
        let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
        let stream = sample_stream(&refs);
        for chunk in [1usize, 7, 4096] {
            let mut d = OggOpusDemuxer::new();
            let mut got = Vec::new();
            let mut head = None;
            let mut ended = false;
            for c in stream.chunks(chunk) {
                d.push(c);
                while let Some(ev) = d.next_event().unwrap() {
                    match ev {
                        OggEvent::Head(h) => head = Some(h),
                        OggEvent::Packet(p, dur, granule) => {
                            assert_eq!(dur, 960);
                            // The writer counts granules from its first packet.
                            assert_eq!(granule, Some(960 * (got.len() as u64 + 1)));
                            got.push(p.to_vec())
                        }
                        OggEvent::End => ended = true,
                    }
                }
            }
            assert_eq!(head.unwrap().channels, 2);
            assert_eq!(got, pkts);
            assert!(ended);
        }
    }

    #[test]
    fn non_ogg_and_non_opus_are_named() {
        let mut d = OggOpusDemuxer::new();
        d.push(b"ID3\x04\x00 this is an mp3 file, long enough to hold a page header");
        let e = d.next_event().unwrap_err().to_string();
        assert!(e.contains("not an Ogg stream"), "{e}");

        let mut w = OggOpusWriter::new(1);
        let vorbis = w.headers(b"\x01vorbis\x00\x00\x00\x00\x02\x44\xac\x00\x00");
        let mut d = OggOpusDemuxer::new();
        d.push(&vorbis);
        let e = d.next_event().unwrap_err().to_string();
        assert!(e.contains("Vorbis"), "{e}");
    }

    #[test]
    fn oversized_packet_is_refused_before_it_is_assembled() {
        let mut w = OggOpusWriter::new(1);
        let mut s = w.headers(&OpusHead::synthetic(1).raw).to_vec();
        let big = Bytes::from(vec![0xf8u8; MAX_FRAME_PAYLOAD + 10]);
        let small = Bytes::from_static(&[0xf8]);
        s.extend_from_slice(&w.packets([(&big, 960), (&small, 960)]));
        let mut d = OggOpusDemuxer::new();
        d.push(&s);
        let mut err = None;
        loop {
            match d.next_event() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.unwrap().to_string().contains("over"));
    }
}
