//! QUIC publishers: one ordered stream of frame records into the node's ingest, read on the
//! engine's thread as it arrives (see `server::quic`).

use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{Connection, StreamId};

use crate::engine::{read_stream_at_most, Read};
use crate::error::{Error, Result};
use crate::media::at_48k;
use crate::node::{Node, Pace, Publishing};
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
    /// Media taken no faster than real time plus `source-burst-ms`: ahead of it, the frame
    /// stream is not read (QUIC's flow control holds the publisher back).
    pace: Pace,
    /// How the frame stream ended, once it did (frames may still wait their turn).
    end: Option<Read>,
    _takeover: Takeover,
}

/// Frame stream bytes held at once: reading stops here until frames are taken (paced), so
/// a publisher ahead of real time waits in its flow-control window, not in our memory.
const HELD: usize = 64 * 1024;

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
        publishing_burst: std::time::Duration,
    ) -> Ingest {
        Ingest {
            _takeover: Takeover(takeover),
            publishing,
            stream: None,
            buf: BytesMut::new(),
            headed: false,
            heard: now,
            frames: Vec::new(),
            pace: Pace::new(publishing_burst, now),
            end: None,
        }
    }

    /// When the publisher, ahead of real time, may be read again (None: now, or never
    /// paced).
    pub(crate) fn paced_until(&self, now: Instant) -> Option<Instant> {
        self.pace.due(now)
    }

    /// Takes what the frame stream has received: its header first, then every whole frame
    /// record the pace allows, into the ingest. Returns whether the publisher finished the
    /// stream (the broadcast ends); an error if it reset it, or sent what is not frames.
    pub(crate) fn feed(
        &mut self,
        node: &Node,
        conn: &mut Connection,
        now: Instant,
    ) -> Result<bool> {
        let Some(id) = self.stream else {
            return Ok(false);
        };
        if !self.publishing.holds() {
            // A newer publisher took the stream over: it is told so (`Displaced`); nothing
            // more of this one's goes in.
            let _ = read_stream_at_most(conn, id, &mut self.buf, HELD);
            self.buf.clear();
            return Ok(false);
        }
        loop {
            if self.pace.due(now).is_some() {
                // Ahead of real time: the rest waits, unread, until due. It is not silent.
                self.heard = now;
                return Ok(false);
            }
            self.take(node, now)?;
            if self.pace.due(now).is_some() {
                continue;
            }
            // Every whole record held went in: what is left is part of one.
            match self.end {
                Some(Read::Reset(code)) => {
                    return Err(Error::remote(
                        ErrorCode::from_wire(code),
                        "the publisher reset its frame stream",
                    ))
                }
                Some(Read::Finished) if self.buf.is_empty() => return Ok(true),
                Some(Read::Finished) => return Err(DecodeError::Truncated.into()),
                Some(Read::More) | None => {}
            }
            if self.buf.len() >= HELD {
                return Err(Error::protocol(format!("a frame record over {HELD} bytes")));
            }
            let before = self.buf.len();
            let end = read_stream_at_most(conn, id, &mut self.buf, HELD - before);
            if end != Read::More {
                self.end = Some(end);
            } else if self.buf.len() == before {
                // All that arrived was taken.
                return Ok(false);
            }
        }
    }

    /// Takes the whole frame records held, as far as the pace allows. Returns whether any
    /// went in.
    fn take(&mut self, node: &Node, now: Instant) -> Result<bool> {
        if !self.headed {
            match UniHeader::decode(&mut self.buf)? {
                Some(UniHeader::Publish) => self.headed = true,
                Some(other) => {
                    return Err(Error::protocol(format!(
                        "{other:?} stream where frames were expected"
                    )))
                }
                None if self.end.is_none() => return Ok(false),
                None => return Err(DecodeError::Truncated.into()),
            }
        }
        self.frames.clear();
        let codec = self.publishing.broadcast.codec.clone();
        let mut took = false;
        while self.pace.due(now).is_none() {
            let Some((frame, _)) = Frame::decode(&mut self.buf)? else {
                break;
            };
            if frame.duration == 0 {
                // A title record (version 3): it holds from the audio after it.
                let title = title_record(&frame.payload)?;
                took |= self.push(node, now)?;
                self.publishing.set_title(title);
                continue;
            }
            self.pace.took(at_48k(&codec, u64::from(frame.duration)));
            self.frames.push(frame);
        }
        Ok(self.push(node, now)? | took)
    }

    /// Pushes the frames taken into the ingest; whether there were any.
    fn push(&mut self, node: &Node, now: Instant) -> Result<bool> {
        if self.frames.is_empty() {
            return Ok(false);
        }
        self.heard = now;
        let bytes = self.frames.iter().map(|f| f.payload.len() as u64).sum();
        node.stats.received(self.frames.len() as u64, bytes);
        self.publishing.push(self.frames.drain(..))?;
        Ok(true)
    }
}

/// What a title record says: kind 1 (the now-playing title) and its UTF-8 (empty: none).
fn title_record(p: &[u8]) -> Result<Option<&str>> {
    match p.split_first() {
        Some((1, t)) if t.len() <= crate::proto::MAX_TITLE => match std::str::from_utf8(t) {
            Ok("") => Ok(None),
            Ok(t) => Ok(Some(t)),
            Err(_) => Err(Error::protocol("a title record that is not UTF-8")),
        },
        Some((1, t)) => Err(Error::protocol(format!(
            "a title record of {} bytes (at most {})",
            t.len(),
            crate::proto::MAX_TITLE
        ))),
        _ => Err(Error::protocol(
            "a record of duration 0 that is not a title record",
        )),
    }
}
