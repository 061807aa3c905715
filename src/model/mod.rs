//! The data model, free of any transport: streams (slots in a registry), broadcasts,
//! segments and frames, the cursor every subscriber walks them with, and the segmenter.
//!
//! A node's segments live in one `moka` cache bounded by bytes and age, shared by all
//! streams. Frames are kept as the exact bytes of their wire record, so every subscriber
//! and every child relay is sent the same `Bytes`: one copy per node, whatever the audience.

use std::time::Duration;

mod broadcast;
mod cache;
mod cursor;
mod frame;
mod pacing;
mod registry;
mod segment;
mod segmenter;

pub use broadcast::{since_epoch, Broadcast, Provenance, Span};
pub use cache::SegmentCache;
pub use cursor::{Batch, Cursor, Form, Step};
pub use frame::WireFrame;
pub use pacing::{fill_interval, Mode as PaceMode, Pacing, PACKET_OVERHEAD};
pub use registry::{
    Announced, Create, Egress, PublisherClaim, Registry, Slot, SlotState, SubscriberGuard,
};
pub use segment::{Segment, SegmentRead};
pub use segmenter::{Join, Segmenter};

/// Limits and sizes of a node's store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of segments the node holds, all streams together.
    pub cache_bytes: u64,
    /// How long a segment is kept after it was last written.
    pub cache_ttl: Duration,
    /// Sealed segments kept per stream, besides the open one.
    pub window: u64,
    /// How many segments a subscriber may fall behind the newest before it is moved forward.
    pub max_lag: u64,
    /// Live streams (and announced names) a node holds at once.
    pub max_streams: usize,
    /// Waiting rooms for names nobody announced, held at once (apart from `max_streams`).
    pub max_waiting: usize,
    /// How often subscribers of a broadcast are woken for new frames, so each wake-up and
    /// each write carries several (see `pacing`).
    pub pacing: Pacing,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 256 << 20,
            cache_ttl: Duration::from_secs(60),
            window: 8,
            max_lag: 3,
            max_streams: 10_000,
            max_waiting: 1_000,
            pacing: Pacing::default(),
        }
    }
}

#[cfg(test)]
mod tests;
