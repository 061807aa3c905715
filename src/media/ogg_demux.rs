//! An I/O-free Ogg Opus demuxer: bytes in, events out, every size bounded.
//!
//! Ogg page parsing and CRC checking is the `ogg` crate's; what is ours is the bounding
//! (one logical stream at a time, packets no larger than a limit) and the Opus rules.
//!
//! A physical stream may chain logical streams (RFC 3533 §4: an end-of-stream page, then
//! the beginning-of-stream page of the next): encoders and playout systems such as
//! liquidsoap start a new one at each track change. Each chain is followed in turn, its
//! start told as `OggEvent::Chain` with its own OpusHead.
//!
//! Each logical stream's OpusTags may name what is playing (its TITLE and ARTIST): that is
//! kept for the caller to take (`take_title`) rather than told as an event, so the callers
//! that match on every event need not learn a new one until they use titles.

use bytes::{Buf, Bytes, BytesMut};
use ogg::reading::{BasePacketReader, PageParser};

use super::metadata::opus_tags_title;
use super::opus::{opus_packet_samples, OpusHead};
use crate::error::{Error, Result};
use crate::proto::{MAX_CODEC_HEADER, MAX_FRAME_PAYLOAD};

/// The second header packet (comments) may carry cover art; bound it anyway.
const MAX_TAGS: usize = 256 * 1024;

/// What the demuxer yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OggEvent {
    /// The OpusHead of the first logical stream.
    Head(OpusHead),
    /// A new logical stream chained after the end of the previous one, with its OpusHead
    /// (its packets, and granule positions counted afresh, follow).
    Chain(OpusHead),
    /// An audio packet, its duration in 48 kHz samples, and the granule position at its end
    /// (from its page's granule; None where the page gives none).
    Packet(Bytes, u32, Option<u64>),
    /// The logical stream ended (EOS page). A chained one may follow.
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
    /// The current logical stream had its end-of-stream page: only a new chain may follow.
    ended: bool,
    /// A logical stream before the current one ended (its head is a `Chain`'s).
    chained: bool,
    pending: std::collections::VecDeque<OggEvent>,
    /// The title the current logical stream's OpusTags gave, until taken.
    title: Option<Option<String>>,
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
            chained: false,
            pending: Default::default(),
            title: None,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes pushed but not yet parsed (at most one partial page once `next` returns None).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The now-playing title of the current logical stream's OpusTags ("ARTIST - TITLE", or
    /// TITLE: `opus_tags_title`), once per logical stream: `Some` once its OpusTags has been
    /// read (`Some(None)`: it names none), then `None` until the next chain's. The OpusTags
    /// is read before the stream's first `Packet` comes out, so a caller that asks whenever
    /// it takes a packet learns each chain's title before its audio.
    pub fn take_title(&mut self) -> Option<Option<String>> {
        self.title.take()
    }

    /// The next event, or None when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<OggEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if !self.parse_page()? {
                return Ok(None);
            }
        }
    }

    /// A chained logical stream begins with serial `serial`: its packets are counted, bounded
    /// and assembled afresh.
    fn start_chain(&mut self, serial: u32) {
        self.serial = Some(serial);
        self.reader = BasePacketReader::new();
        self.packets = 0;
        self.partial = 0;
        self.ended = false;
        self.chained = true;
        self.title = None;
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

        let bos = flags & 0x02 != 0;
        match self.serial {
            None if !bos => {
                return Err(Error::media(
                    "Ogg stream does not start with a beginning-of-stream page",
                ))
            }
            None => self.serial = Some(serial),
            // The next chain begins. RFC 3533 wants its serial to differ from the last; one
            // that reuses it is taken too: the reader starts afresh, nothing is mixed up.
            Some(_) if self.ended && bos => self.start_chain(serial),
            Some(s) if self.ended && s == serial => {
                return Err(Error::media(format!(
                    "an Ogg page of logical stream {serial:#010x} after its end-of-stream page"
                )))
            }
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
            page_granule = Some(pkt.absgp_page()).filter(|g| *g != u64::MAX);
            let n = self.packets;
            self.packets += 1;
            match n {
                0 => {
                    let head = OpusHead::parse(&pkt.data)?;
                    self.pending.push_back(if self.chained {
                        OggEvent::Chain(head)
                    } else {
                        OggEvent::Head(head)
                    });
                }
                1 if pkt.data.starts_with(b"OpusTags") => {
                    self.title = Some(opus_tags_title(&pkt.data));
                }
                1 => return Err(Error::media("second Ogg Opus packet is not OpusTags")),
                // Headers where audio belongs: said for what they are (as Opus packets they
                // would only read as a nonsense frame count).
                _ if pkt.data.starts_with(b"OpusHead") => {
                    return Err(Error::media(format!(
                        "a second OpusHead in one logical stream (packet {n}; a new stream must begin on a beginning-of-stream page after the end of this one)"
                    )))
                }
                _ if pkt.data.starts_with(b"OpusTags") => {
                    return Err(Error::media(format!(
                        "a second OpusTags in one logical stream (packet {n})"
                    )))
                }
                _ => {
                    let dur = opus_packet_samples(&pkt.data)?;
                    self.pending
                        .push_back(OggEvent::Packet(Bytes::from(pkt.data), dur, None));
                }
            }
        }
        // The end-of-stream flag ends the stream even on a page that completes no packet
        // (an empty last page, as some muxers write).
        if flags & 0x04 != 0 {
            self.ended = true;
            self.pending.push_back(OggEvent::End);
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
