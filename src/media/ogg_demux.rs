//! An I/O-free Ogg Opus demuxer: bytes in, events out, every size bounded.
//!
//! Ogg page parsing and CRC checking is the `ogg` crate's; what is ours is the bounding
//! (one logical stream, packets no larger than a limit) and the Opus rules.

use bytes::{Buf, Bytes, BytesMut};
use ogg::reading::{BasePacketReader, PageParser};

use super::opus::{opus_packet_samples, OpusHead};
use crate::error::{Error, Result};
use crate::proto::{MAX_CODEC_HEADER, MAX_FRAME_PAYLOAD};

/// The second header packet (comments) may carry cover art; bound it anyway.
const MAX_TAGS: usize = 256 * 1024;

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
                return Err(Error::unsupported(
                    "input is not an Ogg stream (no OggS capture pattern at its start)",
                ));
            }
            return Err(Error::media(
                "lost Ogg page sync (no OggS capture pattern where a page should start)",
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
                return Err(Error::media(
                    "Ogg stream does not start with a beginning-of-stream page",
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
                return Err(Error::media(format!(
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
            PageParser::new(header).map_err(|e| Error::media(format!("bad Ogg page: {e}")))?;
        parser.parse_segments(lacing);
        let page = parser
            .parse_packet_data(data)
            .map_err(|e| Error::media(format!("bad Ogg page: {e}")))?;
        self.reader
            .push_page(page)
            .map_err(|e| Error::media(format!("bad Ogg page: {e}")))?;
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
                        return Err(Error::media("second Ogg Opus packet is not OpusTags"));
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
