//! The catalog: what streams are live in the tree, as a parent tells a child relay
//! (`CATALOG_REQUEST`, `CATALOG`). Paged by path so that a message stays within its bound
//! whatever the number of streams.

use bytes::{Bytes, BytesMut};

use super::access::StreamInfo;
use super::message::{get_path, put_bytes};
use super::varint::{get_varint, put_varint};
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
    pub(super) fn put(&self, buf: &mut BytesMut) {
        put_bytes(buf, self.path.as_bytes());
        put_varint(buf, self.instance);
        self.info.put(buf);
    }

    pub(super) fn get(buf: &mut Bytes) -> Result<CatalogEntry, DecodeError> {
        Ok(CatalogEntry {
            path: get_path(buf)?,
            instance: get_varint(buf)?,
            info: StreamInfo::get(buf)?,
        })
    }

    /// Its size on the wire (to fill a page).
    pub fn encoded_len(&self) -> usize {
        let mut b = BytesMut::new();
        self.put(&mut b);
        b.len()
    }
}
