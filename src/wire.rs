//! The thin async shell around `proto`: reads messages from a control stream and frames
//! from a segment or publish stream, never buffering more than one message or frame record.

use bytes::BytesMut;
use quinn::{RecvStream, SendStream};

use crate::error::{Error, Result};
use crate::proto::{
    DecodeError, Frame, Message, SegmentHeader, UniHeader, MAX_FRAME_RECORD, MAX_MESSAGE,
};

/// Reads `Message`s from a control stream.
pub struct ControlReader {
    recv: RecvStream,
    buf: BytesMut,
}

impl ControlReader {
    pub fn new(recv: RecvStream) -> Self {
        ControlReader {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(m) = Message::decode(&mut self.buf)? {
                return Ok(Some(m));
            }
            // Only an incomplete message is buffered, and `decode` refuses a declared length
            // over MAX_MESSAGE, so asking for at most what is missing keeps this bounded.
            let room = (MAX_MESSAGE + 16).saturating_sub(self.buf.len()).max(1);
            match self.recv.read_chunk(room, true).await? {
                Some(c) => self.buf.extend_from_slice(&c.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(DecodeError::Truncated.into()),
            }
        }
    }

    pub fn stop(&mut self, code: crate::error::ErrorCode) {
        let _ = self.recv.stop(code.varint());
    }
}

pub async fn write_message(send: &mut SendStream, m: &Message) -> Result<()> {
    send.write_all(&m.to_bytes()).await?;
    Ok(())
}

/// Reads the frames of a segment or publish stream, after its header.
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// Reads the stream's header.
    pub async fn header(&mut self) -> Result<UniHeader> {
        loop {
            if let Some(h) = UniHeader::decode(&mut self.buf)? {
                return Ok(h);
            }
            // A header is at most three varints: never buffer more than that before it.
            let room = 24usize.saturating_sub(self.buf.len()).max(1);
            match self.recv.read_chunk(room, true).await? {
                Some(c) => self.buf.extend_from_slice(&c.bytes),
                None => return Err(DecodeError::Truncated.into()),
            }
        }
    }

    /// Reads the header of what must be a segment stream.
    pub async fn segment_header(&mut self) -> Result<SegmentHeader> {
        match self.header().await? {
            UniHeader::Segment(h) => Ok(h),
            other => Err(Error::refused(
                crate::error::ErrorCode::ProtocolViolation,
                format!("{other:?} stream where a segment was expected"),
            )),
        }
    }

    /// Frames decoded from what has arrived so far, waiting for at least one;
    /// an empty vec means the stream finished cleanly.
    pub async fn frames(&mut self, out: &mut Vec<(Frame, bytes::Bytes)>) -> Result<()> {
        loop {
            while let Some(f) = Frame::decode(&mut self.buf)? {
                out.push(f);
            }
            if !out.is_empty() {
                return Ok(());
            }
            let room = (MAX_FRAME_RECORD + 64)
                .saturating_sub(self.buf.len())
                .max(1);
            match self.recv.read_chunk(room, true).await? {
                Some(c) => {
                    if self.buf.is_empty() {
                        // Common case: decode straight from the chunk without copying twice.
                        self.buf = BytesMut::from(&c.bytes[..]);
                    } else {
                        self.buf.extend_from_slice(&c.bytes);
                    }
                }
                None if self.buf.is_empty() => return Ok(()),
                None => return Err(Error::Protocol(DecodeError::Truncated)),
            }
        }
    }

    pub fn stop(&mut self, code: crate::error::ErrorCode) {
        let _ = self.recv.stop(code.varint());
    }
}
