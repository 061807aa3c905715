//! QUIC publishers: one ordered stream of frame records into the node's ingest, read on the
//! engine's thread as it arrives (see `server::quic`).

use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{Connection, StreamId};

use crate::engine::{read_stream, Read};
use crate::error::{Error, Result};
use crate::node::{Node, Publishing};
use crate::proto::{DecodeError, ErrorCode, Frame, UniHeader};

/// A publish in progress: the stream it holds, and its frame stream once opened.
pub(crate) struct Ingest {
    pub(crate) publishing: Publishing,
    /// The frame stream (the publisher opens one, after PUBLISH_OK).
    pub(crate) stream: Option<StreamId>,
    buf: BytesMut,
    headed: bool,
    /// When the publisher was last heard (its silence is timed from here).
    pub(crate) heard: Instant,
    frames: Vec<Frame>,
    _takeover: Takeover,
}

/// The task waiting for a newer publisher to take the stream over: it ends with the publish.
struct Takeover(tokio::task::AbortHandle);

impl Drop for Takeover {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Ingest {
    /// A publish; `takeover` is the task watching for a newer publisher (ended with it).
    pub(crate) fn new(
        publishing: Publishing,
        now: Instant,
        takeover: tokio::task::AbortHandle,
    ) -> Ingest {
        Ingest {
            _takeover: Takeover(takeover),
            publishing,
            stream: None,
            buf: BytesMut::new(),
            headed: false,
            heard: now,
            frames: Vec::new(),
        }
    }

    /// Takes what the frame stream has received: its header first, then every whole frame
    /// record, into the ingest. Returns whether the publisher finished the stream (the
    /// broadcast ends); an error if it reset it, or sent what is not frames.
    pub(crate) fn feed(
        &mut self,
        node: &Node,
        conn: &mut Connection,
        now: Instant,
    ) -> Result<bool> {
        let Some(id) = self.stream else {
            return Ok(false);
        };
        let end = read_stream(conn, id, &mut self.buf);
        if !self.publishing.holds() {
            // A newer publisher took the stream over: it is told so (`Displaced`); nothing
            // more of this one's goes in.
            self.buf.clear();
            return Ok(false);
        }
        if !self.headed {
            match UniHeader::decode(&mut self.buf)? {
                Some(UniHeader::Publish) => self.headed = true,
                Some(other) => {
                    return Err(Error::protocol(format!(
                        "{other:?} stream where frames were expected"
                    )))
                }
                None if end == Read::More => return Ok(false),
                None => return Err(DecodeError::Truncated.into()),
            }
        }
        self.frames.clear();
        while let Some((frame, _)) = Frame::decode(&mut self.buf)? {
            self.frames.push(frame);
        }
        if !self.frames.is_empty() {
            self.heard = now;
            let bytes = self.frames.iter().map(|f| f.payload.len() as u64).sum();
            node.stats.received(self.frames.len() as u64, bytes);
            self.publishing.push(self.frames.drain(..))?;
        }
        match end {
            Read::More => Ok(false),
            Read::Finished if self.buf.is_empty() => Ok(true),
            Read::Finished => Err(DecodeError::Truncated.into()),
            Read::Reset(code) => Err(Error::remote(
                ErrorCode::from_wire(code),
                "the publisher reset its frame stream",
            )),
        }
    }
}
