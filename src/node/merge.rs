//! Merging a stream's legs: every subscription a relay holds for a stream (its parent's,
//! and with hedging a standby's) delivers into one position here, by segment number and
//! frame index; what one leg delivers first, the others skip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::warn;

use super::parents::SegmentReader;
use super::Node;
use crate::error::Error;
use crate::model::SegmentRead;
use crate::model::{Broadcast, PaceMode, Provenance, Segment, Slot, StoreConfig};
use crate::proto::{Codec, ErrorCode, Start, StreamInfo};

/// A leg's failure to merge a segment.
pub(super) struct MergeError {
    pub(super) error: Error,
    pub(super) mismatch: Option<String>,
}

impl From<Error> for MergeError {
    fn from(error: Error) -> Self {
        MergeError {
            error,
            mismatch: None,
        }
    }
}

/// The stream's position here, which every leg merges into.
pub(super) struct Merge {
    pub(super) node: Arc<Node>,
    pub(super) slot: Arc<Slot>,
    /// Where the first subscription starts (the first subscriber's start).
    pub(super) start: Start,
    pub(super) state: Mutex<MergeState>,
}

#[derive(Default)]
pub(super) struct MergeState {
    b: Option<Arc<Broadcast>>,
    /// The segment being received (possibly partly: a leg was lost mid-way).
    open: Option<Arc<Segment>>,
    sealed_through: Option<u64>,
    /// Whether a broadcast was ever had (a leg that comes back then resumes, never "live").
    had: bool,
    /// Where an earlier fetch of the stream left off (see `Rests`), until a parent says
    /// whether it still has that broadcast.
    resumed: Option<Rest>,
}

/// A stream's position kept after its fetch closed for want of subscribers: its broadcast
/// (not ended: its segments stay in the store while it rests) and how far it was received.
pub(crate) struct Rest {
    b: Arc<Broadcast>,
    open: Option<Arc<Segment>>,
    sealed_through: Option<u64>,
    at: Instant,
}

/// Resting streams, by name. A fetch that starts again within the rest resumes the same
/// broadcast from the segment it was receiving, so a client that polls (an HLS reader, a
/// cache) and comes back after the relay let the stream go finds no hole in the store and the
/// same segment numbers. A rest lasts as long as a parent holds segments (the store's window):
/// later, what followed is gone upstream too, and the stream starts afresh. At most
/// `MAX_RESTING`, the oldest ended first.
#[derive(Default)]
pub(crate) struct Rests(Mutex<HashMap<String, Rest>>);

const MAX_RESTING: usize = 1024;

impl Rests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, path: &str, rest: Rest, keep: Duration) {
        let mut m = self.lock();
        m.retain(|_, r| {
            let young = r.at.elapsed() <= keep;
            if !young {
                r.b.finish();
            }
            young
        });
        if m.len() >= MAX_RESTING {
            if let Some(oldest) = m.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) {
                if let Some(r) = m.remove(&oldest) {
                    r.b.finish();
                }
            }
        }
        if let Some(old) = m.insert(path.to_string(), rest) {
            old.b.finish();
        }
    }

    fn take(&self, path: &str, keep: Duration) -> Option<Rest> {
        let r = self.lock().remove(path)?;
        if r.at.elapsed() > keep {
            r.b.finish();
            return None;
        }
        Some(r)
    }
}

impl Merge {
    pub(super) fn new(node: Arc<Node>, slot: Arc<Slot>, start: Start) -> Merge {
        let resumed = node.rests.take(&slot.path, rest_for(&node));
        Merge {
            node,
            slot,
            start,
            state: Mutex::new(MergeState {
                resumed,
                ..MergeState::default()
            }),
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, MergeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the stream is waiting for a broadcast (none yet, or the last one ended).
    pub(super) fn is_waiting(&self) -> bool {
        self.state().b.is_none()
    }

    /// Where a leg subscribes from: the segment being received, the one after the last
    /// sealed, or (nothing held yet) the first subscriber's start.
    pub(super) fn resume_point(&self) -> Start {
        let s = self.state();
        match (&s.b, &s.open, s.sealed_through) {
            (Some(_), Some(o), _) => Start::Seq(o.seq),
            (Some(_), None, Some(sealed)) => Start::Seq(sealed + 1),
            (None, _, _) if s.resumed.is_some() => match &s.resumed {
                Some(Rest { open: Some(o), .. }) => Start::Seq(o.seq),
                Some(Rest {
                    sealed_through: Some(t),
                    ..
                }) => Start::Seq(t + 1),
                _ => self.start,
            },
            (None, _, _) if s.had => Start::Live,
            _ => self.start,
        }
    }

    /// A leg's parent has broadcast `instance`: it becomes the stream's if it has none.
    pub(super) fn subscribed(
        &self,
        instance: u64,
        codec: Codec,
        info: &StreamInfo,
    ) -> std::result::Result<(), String> {
        let mut s = self.state();
        if let Some(r) = s.resumed.take() {
            if s.b.is_none() && r.b.instance == instance && !r.b.is_finished() {
                // The broadcast it rested with: on from where it was (its parent's rule now
                // holds too).
                r.b.tighten(&info.access);
                s.b = Some(r.b.clone());
                s.open = r.open;
                s.sealed_through = r.sealed_through;
                s.had = true;
                self.slot.set_broadcast(Some(r.b));
                return Ok(());
            }
            r.b.finish();
        }
        if let Some(b) = &s.b {
            if b.instance == instance && !b.is_finished() {
                // Another leg's parent: its rule holds as well.
                b.tighten(&info.access);
                return Ok(());
            }
            if !b.is_finished() {
                return Err(format!(
                    "broadcast {instance} where this relay has {}",
                    b.instance
                ));
            }
        }
        let b = Broadcast::new(
            &self.slot.path,
            instance,
            codec,
            Provenance::from_wire(info),
            &self.node.registry.cache,
            // Batches from the parent are already paced: pass them on as they come (only
            // the node's floor, under load, holds them together).
            &StoreConfig {
                pacing: self
                    .node
                    .registry
                    .cfg
                    .pacing
                    .with_mode(PaceMode::PassThrough),
                ..self.node.registry.cfg.clone()
            },
        );
        s.open = None;
        s.sealed_through = None;
        s.had = true;
        s.b = Some(b.clone());
        self.slot.set_broadcast(Some(b));
        Ok(())
    }

    /// Receives one segment stream from a leg. Frames the stream holds already (another leg
    /// brought them, or this one before it was lost) are skipped, the rest appended; a frame
    /// that differs from the one held at its place means the parent has another broadcast.
    pub(super) async fn read_segment(
        &self,
        instance: u64,
        seq: u64,
        title: Option<bytes::Bytes>,
        mut frames: Box<dyn SegmentReader>,
        caught: &watch::Sender<bool>,
    ) -> std::result::Result<(), MergeError> {
        let (b, seg) = {
            let mut s = self.state();
            let Some(b) = s.b.clone().filter(|b| b.instance == instance) else {
                // A broadcast that ended here (this leg is behind): nothing to take.
                frames.stop(ErrorCode::Cancelled);
                return Ok(());
            };
            if s.sealed_through.is_some_and(|t| seq <= t) {
                frames.stop(ErrorCode::Cancelled);
                return Ok(());
            }
            let seg = match &s.open {
                Some(o) if o.seq == seq => o.clone(),
                Some(o) if seq < o.seq => {
                    frames.stop(ErrorCode::Cancelled);
                    return Ok(());
                }
                _ => {
                    if b.span().latest.is_some_and(|l| seq <= l) {
                        frames.stop(ErrorCode::Cancelled);
                        return Ok(());
                    }
                    let seg = b.begin_titled(seq, title)?;
                    s.open = Some(seg.clone());
                    seg
                }
            };
            (b, seg)
        };
        let mut i = 0usize;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            match frames.read(&mut batch).await {
                SegmentRead::Finished => break,
                SegmentRead::Frames => {
                    let _s = self.state();
                    if seg.is_sealed() {
                        // Another leg finished it, or a newer one began: the rest is theirs.
                        drop(_s);
                        frames.stop(ErrorCode::Cancelled);
                        return Ok(());
                    }
                    let (mut taken, mut bytes) = (0u64, 0u64);
                    for f in batch.drain(..) {
                        let have = seg.len();
                        if i < have {
                            if let Some(pts) = seg.pts_at(i) {
                                if pts != f.frame.pts {
                                    drop(_s);
                                    frames.stop(ErrorCode::Cancelled);
                                    return Err(MergeError {
                                        error: Error::protocol("frames differ"),
                                        mismatch: Some(format!(
                                            "frame {i} of segment {seq} is at pts {} here, {} there",
                                            pts, f.frame.pts
                                        )),
                                    });
                                }
                            }
                        } else if i == have {
                            if i == 0 {
                                // One sample per segment: its first frame's age.
                                self.node.stats.arrived(f.frame.wall_us);
                            }
                            taken += 1;
                            bytes += f.frame.payload.len() as u64;
                            b.append_quiet(&seg, f)?;
                        }
                        i += 1;
                    }
                    self.node.stats.received(taken, bytes);
                    if taken > 0 {
                        // New audio (not the other leg's copy): its spacing is the interval.
                        b.arrived(tokio::time::Instant::now());
                    }
                    // One wake-up per batch: what the parent sent together goes on together.
                    b.flush();
                    if i >= seg.len() && !*caught.borrow() {
                        let _ = caught.send(true);
                    }
                }
                SegmentRead::Reset(code) => {
                    // The parent moved this leg forward (we were too slow): the segment may
                    // still come whole from another leg, or stays short.
                    warn!(side = "upstream", seq, %code, "parent skipped us past a segment");
                    return Ok(());
                }
                SegmentRead::Failed(e) => {
                    if !e.is_gone() {
                        frames.stop(e.code());
                    }
                    return Err(e.upstream().into());
                }
            }
        }
        let mut s = self.state();
        if s.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &seg)) {
            b.seal(&seg);
            s.open = None;
            s.sealed_through = Some(seq);
        }
        Ok(())
    }

    /// A leg heard that broadcast `instance` ended with segment `last`, after it had read
    /// all it was sent: the broadcast ends here (if it is this one). True if it did.
    pub(super) fn end(&self, instance: u64, last: u64) -> bool {
        let mut s = self.state();
        let Some(b) = s.b.clone().filter(|b| b.instance == instance) else {
            return false;
        };
        if let Some(o) = s.open.take() {
            if o.seq <= last {
                b.seal(&o);
            }
        }
        s.b = None;
        s.sealed_through = None;
        drop(s);
        self.slot.end_broadcast(&b);
        true
    }

    /// The stream's fetch closed for want of subscribers: its broadcast rests (see `Rests`)
    /// rather than ending, so a fetch that starts again soon resumes it.
    pub(super) fn rest(&self) {
        let mut s = self.state();
        if let Some(r) = s.resumed.take() {
            r.b.finish();
        }
        let Some(b) = s.b.take() else {
            return;
        };
        let rest = Rest {
            b,
            open: s.open.take(),
            sealed_through: s.sealed_through.take(),
            at: Instant::now(),
        };
        drop(s);
        self.node
            .rests
            .put(&self.slot.path, rest, rest_for(&self.node));
    }
}

/// How long a stream rests: as long as a parent holds what follows (its window of segments).
fn rest_for(node: &Node) -> Duration {
    node.cfg.segment_ms.get() * node.cfg.window_segments.value() as u32
}
