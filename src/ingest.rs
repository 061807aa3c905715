//! The origin's ingest, shared by every kind of publisher (a QUIC publisher, an Icecast
//! source over HTTP): claim the stream, stamp frames, cut segments, and on the way out end
//! the broadcast or keep it for the publisher's return.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;

use crate::error::{Error, ErrorCode, Result};
use crate::media::{opus_packet_samples, OpusHead};
use crate::proto::{self, Codec, Frame, MAX_FRAMES_PER_SEGMENT, MAX_SEGMENT_BYTES};
use crate::server::{now_us, Node};
use crate::store::{Broadcast, PublisherClaim, Segment, Slot, Stored};

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
    pub fn claim(
        node: &Arc<Node>,
        path: &str,
        codec: Codec,
        credential: Option<[u8; 32]>,
    ) -> Result<Publishing> {
        OpusHead::parse(&codec.header)?;
        proto::check_path(path)?;
        let (slot, _) = node.registry.slot(path)?;
        let Some(claim) = slot.claim_publisher(credential) else {
            return Err(Error::refused(
                ErrorCode::Conflict,
                format!("stream {path} already has a publisher"),
            ));
        };
        if claim.took_over {
            info!("a publisher with the same credentials took the stream over");
        }
        node.stats.publishers.fetch_add(1, Ordering::Relaxed);
        let broadcast = match slot.broadcast() {
            Some(b) if !b.is_ended() && b.codec == codec => b,
            old => {
                if let Some(o) = old {
                    o.end();
                }
                let instance = rand::random::<u64>() & proto::varint::MAX;
                let b = Broadcast::new(
                    path,
                    instance,
                    codec,
                    &node.registry.cache,
                    &node.registry.cfg,
                );
                slot.set_broadcast(Some(b.clone()));
                b
            }
        };
        info!(instance = broadcast.instance, "publisher connected");
        let segmenter = Segmenter::new(node, &broadcast);
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
        self.broadcast.end();
        if self
            .slot
            .broadcast()
            .is_some_and(|cur| Arc::ptr_eq(&cur, &self.broadcast))
        {
            self.slot.set_broadcast(None);
        }
    }

    /// The publisher went away without ending: keep the broadcast for the grace period so it
    /// can come back and continue, then end it.
    pub fn lost(self) {
        if !self.slot.is_publisher(self.claim.id) {
            return;
        }
        if let Some(seg) = self.broadcast.open_segment() {
            self.broadcast.seal(&seg);
        }
        let grace = self.node.cfg.publisher_grace;
        let (slot, b) = (self.slot.clone(), self.broadcast.clone());
        drop(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if !slot.has_publisher() && slot.broadcast().is_some_and(|cur| Arc::ptr_eq(&cur, &b)) {
                info!(path = %slot.path, "publisher did not come back: broadcast ended");
                b.end();
                slot.set_broadcast(None);
            }
        });
    }
}

/// Checks a publisher's frames and cuts them into segments of the target duration.
struct Segmenter {
    target: u64,
    next_seq: u64,
    seg: Option<(Arc<Segment>, u64)>,
    last_end: Option<u64>,
    /// Added to the publisher's timestamps: a publisher continuing a broadcast (it came
    /// back, or took it over after a restart that began its clock at zero) continues the
    /// broadcast's timeline, never going back on it.
    offset: Option<u64>,
    /// Where the broadcast's timeline was when this publisher joined it.
    resume_at: Option<u64>,
}

impl Segmenter {
    fn new(node: &Node, b: &Broadcast) -> Segmenter {
        let target = (node.cfg.segment_duration.as_micros() as u64 * b.codec.sample_rate as u64
            / 1_000_000)
            .max(1);
        Segmenter {
            target,
            next_seq: b.edge().latest.map(|l| l + 1).unwrap_or(0),
            seg: None,
            last_end: None,
            offset: None,
            resume_at: b.end_pts(),
        }
    }

    fn push(&mut self, b: &Broadcast, mut f: Frame, wall: u64) -> Result<()> {
        let offset = *self.offset.get_or_insert(match self.resume_at {
            Some(end) if f.pts < end => end - f.pts,
            _ => 0,
        });
        f.pts = f
            .pts
            .checked_add(offset)
            .ok_or_else(|| Error::refused(ErrorCode::ProtocolViolation, "frame pts overflows"))?;
        let samples = opus_packet_samples(&f.payload)?;
        if samples as u64 * b.codec.sample_rate as u64 / 48_000 != f.duration as u64 {
            return Err(Error::Media(format!(
                "frame at pts {} says it lasts {} but its Opus packet lasts {samples} samples",
                f.pts, f.duration
            )));
        }
        if let Some(end) = self.last_end {
            if f.pts < end {
                return Err(Error::refused(
                    ErrorCode::ProtocolViolation,
                    format!("frame pts {} goes back before {end}", f.pts),
                ));
            }
        }
        self.last_end = Some(f.pts + f.duration as u64);
        f.wall_us = wall;
        let stored = Stored::new(f);
        let cut = match &self.seg {
            None => true,
            Some((s, start_pts)) => {
                stored.frame.pts.saturating_sub(*start_pts) >= self.target
                    || s.len() + 1 >= MAX_FRAMES_PER_SEGMENT
                    || s.bytes() + stored.record.len() > MAX_SEGMENT_BYTES
            }
        };
        if cut {
            self.seg = Some((b.begin(self.next_seq)?, stored.frame.pts));
            self.next_seq += 1;
        }
        if let Some((s, _)) = &self.seg {
            b.append_quiet(s, stored)?;
        }
        Ok(())
    }
}
