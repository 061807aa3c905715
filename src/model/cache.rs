//! The node-wide segment cache: bounded by bytes and age, all streams together.

use std::sync::Arc;

use moka::sync::Cache;

use super::{Segment, StoreConfig};

/// The node-wide segment cache, keyed by (broadcast instance, sequence number).
#[derive(Clone)]
pub struct SegmentCache {
    pub(super) cache: Cache<(u64, u64), Arc<Segment>>,
}

impl SegmentCache {
    pub fn new(cfg: &StoreConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_bytes)
            .weigher(|_k: &(u64, u64), v: &Arc<Segment>| {
                (v.bytes() + 256).min(u32::MAX as usize) as u32
            })
            .time_to_live(cfg.cache_ttl)
            .build();
        SegmentCache { cache }
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Segments held now, and their bytes as the bound counts them (records, plus 256 per
    /// segment).
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
