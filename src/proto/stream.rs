//! Unidirectional stream headers: what kind of stream it is, and what that kind carries.

use bytes::{Buf, Bytes, BytesMut};

use super::varint::{self, put_varint};
use super::{DecodeError, MAX_TITLE};

/// Unidirectional stream kinds (the first varint on every uni stream).
pub const UNI_SEGMENT: u64 = 0x1;
pub const UNI_PUBLISH: u64 = 0x2;
/// Version 3: a segment stream whose header carries the stream's now-playing title.
pub const UNI_SEGMENT_TITLED: u64 = 0x3;

/// The header of a segment stream: kind `UNI_SEGMENT`, subscription id, segment sequence
/// number; or kind `UNI_SEGMENT_TITLED` (version 3), the same and the title (UTF-8, ≤
/// `MAX_TITLE` bytes; empty: the stream has none now) that holds from the segment's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub sub_id: u64,
    pub seq: u64,
    pub title: Option<Bytes>,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        match &self.title {
            None => put_varint(out, UNI_SEGMENT),
            Some(_) => put_varint(out, UNI_SEGMENT_TITLED),
        }
        put_varint(out, self.sub_id);
        put_varint(out, self.seq);
        if let Some(t) = &self.title {
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t);
        }
    }
}

/// What opens every unidirectional stream: its kind, and what that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UniHeader {
    /// Server → client: a segment of a subscription.
    Segment(SegmentHeader),
    /// Publisher → origin: the broadcast's frames.
    Publish,
}

impl UniHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            UniHeader::Segment(h) => h.encode(out),
            UniHeader::Publish => put_varint(out, UNI_PUBLISH),
        }
    }

    /// Decodes a header from the front of `buf`; `Ok(None)`: more bytes are needed (`buf`
    /// is then left untouched). An unknown kind is an error at once.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<UniHeader>, DecodeError> {
        let mut peek = &buf[..];
        let Some(kind) = varint::try_get(&mut peek) else {
            return Ok(None);
        };
        let h = match kind {
            UNI_SEGMENT | UNI_SEGMENT_TITLED => {
                let Some(sub_id) = varint::try_get(&mut peek) else {
                    return Ok(None);
                };
                let Some(seq) = varint::try_get(&mut peek) else {
                    return Ok(None);
                };
                let mut title = None;
                if kind == UNI_SEGMENT_TITLED {
                    let Some(len) = varint::try_get(&mut peek) else {
                        return Ok(None);
                    };
                    if len > MAX_TITLE as u64 {
                        return Err(DecodeError::TooLarge {
                            what: "title",
                            len,
                            max: MAX_TITLE,
                        });
                    }
                    let Some(t) = peek.get(..len as usize) else {
                        return Ok(None);
                    };
                    if std::str::from_utf8(t).is_err() {
                        return Err(DecodeError::BadUtf8("title"));
                    }
                    title = Some(Bytes::copy_from_slice(t));
                    peek = &peek[len as usize..];
                }
                UniHeader::Segment(SegmentHeader { sub_id, seq, title })
            }
            UNI_PUBLISH => UniHeader::Publish,
            other => {
                return Err(DecodeError::BadValue {
                    what: "stream kind",
                    value: other,
                })
            }
        };
        let used = buf.len() - peek.len();
        buf.advance(used);
        Ok(Some(h))
    }
}
