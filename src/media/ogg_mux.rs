//! Writes Ogg Opus pages: what an HTTP listener and `quicast listen` get.

use bytes::Bytes;
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::proto::Frame;

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
