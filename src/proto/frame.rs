//! Frame records: one codec packet as it travels on segment and publish streams.

use bytes::{Bytes, BytesMut};

use super::varint::{self, put_varint, varint_len};
use super::{DecodeError, MAX_FRAME_PAYLOAD};

/// One codec packet as it travels: `payload length, pts, duration, origin wall clock, payload`.
/// `pts` and `duration` are in units of the codec's sample rate (48 kHz for Opus);
/// `wall_us` is the origin's receive time in microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub pts: u64,
    pub duration: u32,
    pub wall_us: u64,
    pub payload: Bytes,
}

/// Longest a frame may last: 120 ms at 48 kHz (the longest Opus packet), with room for other rates.
pub const MAX_FRAME_DURATION: u64 = 384_000 / 8;

impl Frame {
    pub fn encoded_len(&self) -> usize {
        varint_len(self.payload.len() as u64)
            + varint_len(self.pts)
            + varint_len(self.duration as u64)
            + varint_len(self.wall_us)
            + self.payload.len()
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.payload.len() as u64);
        put_varint(out, self.pts);
        put_varint(out, self.duration as u64);
        put_varint(out, self.wall_us);
        out.extend_from_slice(&self.payload);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame record from the front of `buf` (`Ok(None)`: need more bytes).
    /// On success returns the frame (its payload a zero-copy slice) and the whole record's bytes.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<(Frame, Bytes)>, DecodeError> {
        let mut peek = &buf[..];
        let mut fields = [0u64; 4];
        for f in fields.iter_mut() {
            match varint::try_get(&mut peek) {
                Some(v) => *f = v,
                None => {
                    // An over-long length is refused as soon as it is readable.
                    if fields[0] > MAX_FRAME_PAYLOAD as u64 {
                        break;
                    }
                    return Ok(None);
                }
            }
        }
        let [len, pts, duration, wall_us] = fields;
        if len > MAX_FRAME_PAYLOAD as u64 {
            return Err(DecodeError::TooLarge {
                what: "frame payload",
                len,
                max: MAX_FRAME_PAYLOAD,
            });
        }
        if duration > MAX_FRAME_DURATION {
            return Err(DecodeError::BadValue {
                what: "frame duration",
                value: duration,
            });
        }
        let head = buf.len() - peek.len();
        if peek.len() < len as usize {
            return Ok(None);
        }
        let record = buf.split_to(head + len as usize).freeze();
        let payload = record.slice(head..);
        Ok(Some((
            Frame {
                pts,
                duration: duration as u32,
                wall_us,
                payload,
            },
            record,
        )))
    }
}
