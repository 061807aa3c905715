//! Stream I/O: the thin async shell around `proto`. Reads messages from a control stream and
//! frames from a segment or publish stream, never buffering more than one message or frame
//! record; writes whole control messages.

use std::sync::Arc;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream};

use super::errors::varint;
use crate::error::{Error, Result};
use crate::model::SegmentRead;
use crate::model::WireFrame;
use crate::proto::{
    DecodeError, ErrorCode, Frame, Message, SegmentHeader, UniHeader, MAX_FRAME_RECORD, MAX_MESSAGE,
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
}

pub async fn write_message(send: &mut SendStream, m: &Message) -> Result<()> {
    send.write_all(&m.to_bytes()).await?;
    Ok(())
}

/// The sending side of a control stream, shared by every task of a connection (server and
/// client alike): whole messages, one at a time, under a lock. (A lock rather than a writer
/// task and channel: a connection writes a handful of messages in its life, and a task plus
/// channel cost every connection ~3 KB.)
#[derive(Clone)]
pub struct ControlWriter(Arc<tokio::sync::Mutex<SendStream>>);

impl ControlWriter {
    pub fn new(send: SendStream) -> ControlWriter {
        ControlWriter(Arc::new(tokio::sync::Mutex::new(send)))
    }

    /// Writes `m`; when this returns it is written, so that what the caller sends next on
    /// other streams cannot overtake it at our end. The write runs in its own task, so a
    /// caller that is cancelled (an aborted subscription) never leaves half a message.
    pub async fn send(&self, m: Message) -> Result<()> {
        let stream = self.0.clone();
        let write = tokio::spawn(async move { write_message(&mut *stream.lock().await, &m).await });
        write
            .await
            .map_err(|_| Error::closed("control stream writer stopped"))?
    }

    /// Writes `m` without waiting for it (from a `Drop`: an unsubscribe).
    pub fn send_later(&self, m: Message) {
        let stream = self.0.clone();
        tokio::spawn(async move {
            let _ = write_message(&mut *stream.lock().await, &m).await;
        });
    }

    /// Half-closes the stream, after everything sent before: the peer sees we are done.
    pub async fn finish(&self) {
        let _ = self.0.lock().await.finish();
    }
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
            // A header is at most four varints and a title: never buffer more than that
            // before it.
            let room = (32 + crate::proto::MAX_TITLE)
                .saturating_sub(self.buf.len())
                .max(1);
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
            other => Err(Error::protocol(format!(
                "{other:?} stream where a segment was expected"
            ))),
        }
    }

    /// Appends the frames decoded from what has arrived so far, waiting for at least one
    /// (each keeps its wire record); or says the stream finished, was reset, or failed.
    pub async fn frames(&mut self, out: &mut Vec<WireFrame>) -> SegmentRead {
        loop {
            loop {
                match Frame::decode(&mut self.buf) {
                    Ok(Some((frame, record))) => out.push(WireFrame { frame, record }),
                    Ok(None) => break,
                    Err(e) => return SegmentRead::Failed(e.into()),
                }
            }
            if !out.is_empty() {
                return SegmentRead::Frames;
            }
            let room = (MAX_FRAME_RECORD + 64)
                .saturating_sub(self.buf.len())
                .max(1);
            match self.recv.read_chunk(room, true).await {
                Ok(Some(c)) => {
                    if self.buf.is_empty() {
                        // Common case: decode straight from the chunk without copying twice.
                        self.buf = BytesMut::from(&c.bytes[..]);
                    } else {
                        self.buf.extend_from_slice(&c.bytes);
                    }
                }
                Ok(None) if self.buf.is_empty() => return SegmentRead::Finished,
                Ok(None) => return SegmentRead::Failed(DecodeError::Truncated.into()),
                Err(quinn::ReadError::Reset(code)) => {
                    return SegmentRead::Reset(ErrorCode::from_wire(code.into_inner()))
                }
                Err(e) => return SegmentRead::Failed(e.into()),
            }
        }
    }

    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(varint(code));
    }
}
