//! Wire protocol (version 2): an I/O-free codec. `proto/SPEC.md` is the prose; `proto/vectors.txt`
//! holds the test vectors both directions of this codec are checked against.
//!
//! Nothing here allocates more than the limits below allow, whatever the input says.

mod access;
mod catalog;
mod code;
mod error;
mod frame;
mod message;
mod refusal;
mod stream;
mod url;
pub mod varint;
pub mod webtransport;

pub use access::{StreamAccess, StreamInfo, MAX_KEY_ID, MAX_KEY_IDS};
pub use catalog::{CatalogEntry, CATALOG_PAGE_BYTES, MAX_CATALOG_ENTRIES};
pub use code::ErrorCode;
pub use error::DecodeError;
pub use frame::{Frame, MAX_FRAME_DURATION};
pub use message::{
    check_path, path_covers, Codec, Message, Role, Start, CODEC_AAC, CODEC_MP3, CODEC_OPUS,
    SUBSCRIBE_LOW_LATENCY,
};
pub use refusal::{Refusal, MAX_REFUSAL, MAX_RETRY_AFTER};
pub use stream::{SegmentHeader, UniHeader, UNI_PUBLISH, UNI_SEGMENT};
pub use url::{QuicUrl, UrlError};
pub use varint::{get_varint, put_varint, varint_len};

/// ALPN token: names the protocol and its major version.
pub const ALPN: &[u8] = b"quicast/1";
/// The version this node speaks. Version 2 adds `SUBSCRIBED`'s stream info (its start at
/// the origin, who may listen); a node still takes listeners and publishers that say 1
/// (they are sent no stream info), but a relay must say 2: it enforces the rule it carries.
pub const VERSION: u64 = 2;
/// The oldest version a listener or publisher may say.
pub const MIN_VERSION: u64 = 1;

/// Limits. A peer exceeding one gets `TooLarge` and loses that stream or connection.
pub const MAX_MESSAGE: usize = 8 * 1024;
pub const MAX_PATH: usize = 255;
pub const MAX_TOKEN: usize = 512;
pub const MAX_REASON: usize = 1024;
pub const MAX_NAME: usize = 128;
pub const MAX_CODEC_HEADER: usize = 2048;
/// Alternatives a GOAWAY may name, and the length of each (a `quic://` URL).
pub const MAX_ALTERNATIVES: usize = 8;
pub const MAX_URL: usize = 512;
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024;
/// Frames one segment may hold (at 2.5 ms frames, 10 s of audio is 4,000).
pub const MAX_FRAMES_PER_SEGMENT: usize = 4096;
/// Bytes one segment may hold (a 10 s segment at 510 kbit/s is ~640 KB).
pub const MAX_SEGMENT_BYTES: usize = 1024 * 1024;
/// Largest encoded frame record: header fields plus payload.
pub const MAX_FRAME_RECORD: usize = MAX_FRAME_PAYLOAD + 4 * 8;

#[cfg(test)]
mod tests;
