//! The origin's ingest, shared by every kind of publisher (a QUIC publisher, an Icecast
//! source over HTTP): claim the stream, stamp frames, cut segments, and on the way out end
//! the broadcast or keep it for the publisher's return.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;

use super::{now_us, Node};
use crate::error::{Error, Kind, Result};
use crate::media::OpusHead;
use crate::model::{Broadcast, Join, PublisherClaim, Segmenter, Slot};
use crate::proto::{self, Codec, Frame};

/// A stream this publisher holds. Dropping it releases the stream without ending it; call
/// `finish` (the publisher ended the broadcast) or `lost` (it went away).
pub struct Publishing {
    pub slot: Arc<Slot>,
    pub broadcast: Arc<Broadcast>,
    node: Arc<Node>,
    segmenter: Segmenter,
    claim: PublisherClaim,
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.slot.release_publisher(self.claim.id);
        self.node.stats.publishers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Publishing {
    /// Takes the publisher role for `path`: `bad_media` for a header that is not OpusHead,
    /// `conflict` if the stream has a publisher, unless that publisher proved the same
    /// `credential` (then this one takes over: a restarted encoder gets its stream back at
    /// once). A publisher coming back with the same header continues its broadcast;
    /// otherwise a new one starts.
    ///
    /// `broadcast` names the run of the publisher (it picks it; every origin it publishes to
    /// uses it as the broadcast's instance, so redundant origins agree on it). A publisher
    /// that comes back with the broadcast it left resumes it where it was; another joining a
    /// live broadcast continues its timeline (see `Join`).
    pub fn claim(
        node: &Arc<Node>,
        path: &str,
        codec: Codec,
        credential: Option<[u8; 32]>,
        broadcast: Option<u64>,
    ) -> Result<Publishing> {
        OpusHead::parse(&codec.header)?;
        proto::check_path(path)?;
        let (slot, _) = node.registry.slot(path)?;
        let Some(claim) = slot.claim_publisher(credential) else {
            return Err(Error::new(
                Kind::Conflict,
                format!("stream {path} already has a publisher"),
            ));
        };
        if claim.took_over {
            info!("a publisher with the same credentials took the stream over");
        }
        node.stats.publishers.fetch_add(1, Ordering::Relaxed);
        let instance = broadcast.map(|b| b & proto::varint::MAX);
        let (broadcast, join) = match slot.broadcast() {
            Some(b) if !b.is_finished() && b.codec == codec => {
                let join = if instance == Some(b.instance) {
                    Join::Resume
                } else {
                    Join::Rebase
                };
                (b, join)
            }
            old => {
                if let Some(o) = old {
                    o.finish();
                }
                let instance =
                    instance.unwrap_or_else(|| rand::random::<u64>() & proto::varint::MAX);
                let b = Broadcast::new(
                    path,
                    instance,
                    codec,
                    &node.registry.cache,
                    &node.registry.cfg,
                );
                slot.set_broadcast(Some(b.clone()));
                (b, Join::Resume)
            }
        };
        info!(instance = broadcast.instance, "publisher connected");
        let segmenter = Segmenter::new(node.cfg.segment_ms.get(), &broadcast, join);
        Ok(Publishing {
            slot,
            broadcast,
            node: node.clone(),
            segmenter,
            claim,
        })
    }

    /// Resolves when a newer publisher with the same credentials took the stream over.
    pub fn displaced(&self) -> Arc<tokio::sync::Notify> {
        self.claim.displaced.clone()
    }

    /// Whether this publisher still holds the stream (a newer one with the same
    /// credentials may have taken it over).
    pub fn holds(&self) -> bool {
        self.slot.is_publisher(self.claim.id)
    }

    /// Adds frames the publisher sent (their `wall_us` is replaced by our clock).
    pub fn push(&mut self, frames: impl IntoIterator<Item = Frame>) -> Result<()> {
        let wall = now_us();
        let r = frames
            .into_iter()
            .try_for_each(|f| self.segmenter.push(&self.broadcast, f, wall));
        self.broadcast.flush();
        r
    }

    /// The publisher ended the broadcast.
    pub fn finish(self) {
        if !self.slot.is_publisher(self.claim.id) {
            return;
        }
        info!("publisher finished: broadcast ended");
        self.slot.end_broadcast(&self.broadcast);
    }

    /// The publisher went away without ending: keep the broadcast for the grace period so it
    /// can come back and continue, then end it.
    pub fn lost(self) {
        if !self.slot.is_publisher(self.claim.id) {
            return;
        }
        let grace = self.node.cfg.publisher_grace_secs.get();
        let (slot, b, node) = (self.slot.clone(), self.broadcast.clone(), self.node.clone());
        drop(self);
        node.spawn(async move {
            tokio::time::sleep(grace).await;
            if !slot.has_publisher() && slot.broadcast().is_some_and(|cur| Arc::ptr_eq(&cur, &b)) {
                info!(path = %slot.path, "publisher did not come back: broadcast ended");
                slot.end_broadcast(&b);
            }
        });
    }
}
