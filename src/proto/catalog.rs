//! The catalog: what streams are live in the tree, as a parent tells a child relay
//! (`CATALOG_REQUEST`, `CATALOG`). Paged by path so that a message stays within its bound
//! whatever the number of streams.

use bytes::{Buf, Bytes, BytesMut};

use super::access::StreamInfo;
use super::DecodeError;

/// Entries one `CATALOG` message may carry.
pub const MAX_CATALOG_ENTRIES: usize = 256;
/// Bytes of entries a node puts in one `CATALOG` (the message bound, less room for the rest).
pub const CATALOG_PAGE_BYTES: usize = 7 * 1024;

/// One live stream of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub path: String,
    pub instance: u64,
    pub info: StreamInfo,
}

impl CatalogEntry {
    pub(super) fn put(&self, buf: &mut BytesMut, put_bytes: impl Fn(&mut BytesMut, &[u8])) {
        put_bytes(buf, self.path.as_bytes());
        super::varint::put_varint(buf, self.instance);
        self.info.put(buf);
    }

    pub(super) fn get(
        buf: &mut Bytes,
        get_path: impl Fn(&mut Bytes) -> Result<String, DecodeError>,
    ) -> Result<CatalogEntry, DecodeError> {
        Ok(CatalogEntry {
            path: get_path(buf)?,
            instance: super::varint::get_varint(buf)?,
            info: StreamInfo::get(buf)?,
        })
    }

    /// Its size on the wire (to fill a page).
    pub fn encoded_len(&self) -> usize {
        let mut b = BytesMut::new();
        self.put(&mut b, |b, s| {
            super::varint::put_varint(b, s.len() as u64);
            bytes::BufMut::put_slice(b, s);
        });
        b.remaining()
    }
}
