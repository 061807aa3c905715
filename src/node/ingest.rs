//! The origin's ingest, shared by every kind of publisher (a QUIC publisher, an Icecast
//! source over HTTP): claim the stream, stamp frames, cut segments, and on the way out end
//! the broadcast or keep it for the publisher's return.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::{now_us, Node};
use crate::error::{Error, Kind, Result};
use crate::media::OPUS_RATE;
use crate::model::{Broadcast, Join, Provenance, PublisherClaim, Segmenter, Slot};
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
        crate::media::check_codec(&codec)?;
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
                    Provenance::here(),
                    &node.registry.cache,
                    &node.registry.cfg,
                );
                slot.set_broadcast(Some(b.clone()));
                (b, Join::Resume)
            }
        };
        // A title its source gave before its first frame.
        if let Some(t) = slot.take_pending_title() {
            broadcast.set_title(t);
        }
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

    /// The source's now-playing title changed (None: it has none now): segments begun from
    /// now on carry it down the tree, in order with the audio. Control characters are
    /// dropped and it is cut to `MAX_TITLE` bytes (on a character boundary).
    pub fn set_title(&self, title: Option<&str>) {
        let t = title.and_then(crate::media::metadata::clean_title);
        let shown = t.clone().unwrap_or_default();
        if self.broadcast.set_title(t.map(bytes::Bytes::from)) {
            info!(title = shown, "now playing");
        }
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

/// Holds a publisher to real time: the media taken from it may run ahead of the wall clock
/// since it began by at most a burst (`source-burst-ms`), so one that pushes a file as fast
/// as it can costs what a live one does. It is paced by not being read (its transport's
/// flow control holds it back), never by dropping what it sent.
#[derive(Debug)]
pub struct Pace {
    start: Instant,
    burst: Duration,
    /// Media taken so far, in 48 kHz samples.
    taken: u64,
}

impl Pace {
    pub fn new(burst: Duration, start: Instant) -> Pace {
        Pace {
            start,
            burst,
            taken: 0,
        }
    }

    /// Counts `samples` (at 48 kHz) more as taken.
    pub fn took(&mut self, samples: u64) {
        self.taken = self.taken.saturating_add(samples);
    }

    /// Media taken so far.
    pub fn taken(&self) -> Duration {
        let us = self.taken as u128 * 1_000_000 / OPUS_RATE as u128;
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// When more may be taken: None if now (the media taken is at most a burst ahead).
    pub fn due(&self, now: Instant) -> Option<Instant> {
        let ahead = self.taken().checked_sub(self.burst)?;
        // Past any instant a clock can hold, it is never due: far off, then.
        let at = self
            .start
            .checked_add(ahead)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_is_taken_at_most_a_burst_ahead_of_the_clock() {
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::from_secs(5), t0);
        // Five seconds at once: the burst.
        p.took(5 * OPUS_RATE as u64);
        assert_eq!(p.due(t0), None);
        // 20 ms more is due 20 ms after the start.
        p.took(960);
        assert_eq!(p.due(t0), Some(t0 + Duration::from_millis(20)));
        assert_eq!(p.due(t0 + Duration::from_millis(20)), None);
        // A minute later, a minute and the burst may have been taken, no more.
        let later = t0 + Duration::from_secs(60);
        p.took(60 * OPUS_RATE as u64 - 960);
        assert_eq!(p.due(later), None);
        assert_eq!(p.taken(), Duration::from_secs(65));
        p.took(960);
        assert_eq!(p.due(later), Some(later + Duration::from_millis(20)));
    }

    #[test]
    fn no_burst_means_real_time_and_huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::ZERO, t0);
        assert_eq!(p.due(t0), None);
        p.took(480);
        assert_eq!(p.due(t0), Some(t0 + Duration::from_millis(10)));
        p.took(u64::MAX);
        assert!(p.due(t0).is_some_and(|at| at > t0));
    }
}
