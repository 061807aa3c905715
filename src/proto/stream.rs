//! Unidirectional stream headers: what kind of stream it is, and what that kind carries.

use bytes::{Buf, BytesMut};

use super::varint::{self, put_varint};
use super::DecodeError;

/// Unidirectional stream kinds (the first varint on every uni stream).
pub const UNI_SEGMENT: u64 = 0x1;
pub const UNI_PUBLISH: u64 = 0x2;

/// The header of a segment stream: kind `UNI_SEGMENT`, subscription id, segment sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub sub_id: u64,
    pub seq: u64,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        UniHeader::Segment(*self).encode(out)
    }
}

/// What opens every unidirectional stream: its kind, and what that kind carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniHeader {
    /// Server → client: a segment of a subscription.
    Segment(SegmentHeader),
    /// Publisher → origin: the broadcast's frames.
    Publish,
}

impl UniHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            UniHeader::Segment(h) => {
                put_varint(out, UNI_SEGMENT);
                put_varint(out, h.sub_id);
                put_varint(out, h.seq);
            }
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
            UNI_SEGMENT => {
                let Some(sub_id) = varint::try_get(&mut peek) else {
                    return Ok(None);
                };
                let Some(seq) = varint::try_get(&mut peek) else {
                    return Ok(None);
                };
                UniHeader::Segment(SegmentHeader { sub_id, seq })
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
