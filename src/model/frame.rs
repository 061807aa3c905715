//! A frame as held: its fields and its wire record, one allocation.

use bytes::Bytes;

use crate::proto::Frame;

/// A frame as a node holds it: its fields, and the bytes of the wire record it came in (or
/// was encoded to), which every subscriber and child relay is sent as they are.
#[derive(Debug, Clone)]
pub struct WireFrame {
    pub frame: Frame,
    pub record: Bytes,
}

impl WireFrame {
    pub fn new(frame: Frame) -> WireFrame {
        let record = frame.to_bytes();
        // Keep one allocation: the payload becomes a slice of the record.
        let payload = record.slice(record.len() - frame.payload.len()..);
        WireFrame {
            frame: Frame { payload, ..frame },
            record,
        }
    }
}
