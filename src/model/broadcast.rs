//! A broadcast: one run of a stream from one publisher, its segments, and the wake-ups of
//! the subscribers walking it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use super::{Cursor, Pacing, Segment, SegmentCache, StoreConfig, WireFrame};
use crate::error::{Error, Result};
use crate::proto::ErrorCode;
use crate::proto::{Codec, Start, StreamAccess, StreamInfo};

/// µs from the process's first use of this clock to `t` (Tokio's clock: paused in tests).
pub fn since_epoch(t: tokio::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    t.saturating_duration_since(epoch).as_micros() as u64
}

#[derive(Default)]
struct BState {
    open: Option<Arc<Segment>>,
    /// The segments held here, oldest first (at most `window` sealed ones and the open one).
    held: std::collections::VecDeque<u64>,
    /// The broadcast's first segment here (for subscribers who waited for it to start).
    first: Option<u64>,
    latest: Option<u64>,
    ended: bool,
}

/// One run of a stream from one publisher: its codec, and its segments by sequence number.
/// A relay holds a `Broadcast` with the same `instance` as its parent's.
pub struct Broadcast {
    pub path: String,
    /// The broadcast's name on the wire: the same on every node (and on every origin that
    /// takes it from one publisher).
    pub instance: u64,
    /// This node's own number for it, unique here (a broadcast that comes back under the
    /// same instance is another one here): the key of its segments in the cache.
    local: u64,
    pub codec: Codec,
    /// When it began at its origin (a relay has it from its parent).
    pub started: SystemTime,
    /// Who may listen, as the broadcast came (an origin's: public; its own policy is
    /// applied on top, see `node::Access::rule_for`). Only ever made stricter (a second
    /// parent, a parent's later word).
    access: Mutex<StreamAccess>,
    /// The now-playing title (UTF-8, bounded) as of the live edge: the next segment begun
    /// carries it from its start.
    title: Mutex<Option<Bytes>>,
    state: Mutex<BState>,
    /// Bumped whenever subscribers have something new to take.
    changed: watch::Sender<u64>,
    /// Bumped at every frame while the node has headroom (and with `changed`): what
    /// low-latency subscribers wait on.
    eager: watch::Sender<u64>,
    cache: SegmentCache,
    pub(super) window: u64,
    pub(super) max_lag: u64,
    me: std::sync::Weak<Broadcast>,
    /// How often subscribers are woken (see `pacing`), and this stream's own interval before
    /// the node's floor, in µs (recomputed at each segment from the stream's rate).
    pacing: Pacing,
    base_us: AtomicU64,
    /// How long the stream takes to fill a packet, in µs (0: not known yet).
    fill_us: AtomicU64,
    /// When subscribers were last woken (µs of `since_epoch`).
    woke_at_us: AtomicU64,
    last_wake: Mutex<Option<tokio::time::Instant>>,
    wake_pending: AtomicBool,
    /// On a relay (batches passed on as they come): the spacing of the parent's batches,
    /// which is the delivery interval that applies here.
    arrivals: Mutex<Arrivals>,
    /// Payload bytes, wire bytes (frames as sent), frames and samples appended, for the
    /// rates.
    payload_bytes: AtomicU64,
    wire_bytes: AtomicU64,
    frames: AtomicU64,
    samples: AtomicU64,
    /// End (pts + duration) of the last frame appended, plus one; 0 before any.
    end_pts: AtomicU64,
    /// Its Ogg stream for HTTP listeners (an Opus broadcast: see `segment::OggNumbering`).
    pub ogg: Option<Arc<super::segment::OggNumbering>>,
}

/// When a relay's batches came, for the interval they are paced at upstream: the median of
/// the last gaps between them (a batch split over two reads, a gap under 2 ms, is one).
#[derive(Default)]
struct Arrivals {
    last: Option<tokio::time::Instant>,
    gaps_us: [u32; 15],
    n: usize,
}

impl Arrivals {
    fn batch(&mut self, now: tokio::time::Instant) {
        if let Some(l) = self.last {
            let gap = now.saturating_duration_since(l);
            if gap < Duration::from_millis(2) {
                return;
            }
            let gap = gap.as_micros().min(u32::MAX as u128) as u32;
            self.gaps_us[self.n % self.gaps_us.len()] = gap;
            self.n += 1;
        }
        self.last = Some(now);
    }

    /// The median gap of those seen (zero before any), to the nearest `step` (an origin
    /// paces by whole frames: the stream's frame duration).
    fn typical(&self, step: Duration) -> Duration {
        let k = self.n.min(self.gaps_us.len());
        if k == 0 {
            return Duration::ZERO;
        }
        let mut g = self.gaps_us[..k].to_vec();
        g.sort_unstable();
        let us = g[k / 2] as u64;
        let step = (step.as_micros() as u64).max(1_000);
        Duration::from_micros((us + step / 2) / step * step)
    }
}

/// What the tree says of a broadcast wherever it is carried: when it began at its origin
/// and who may listen.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub started: SystemTime,
    pub access: StreamAccess,
}

impl Provenance {
    /// A broadcast that begins on this node, now.
    pub fn here() -> Provenance {
        Provenance {
            started: SystemTime::now(),
            access: StreamAccess::Public,
        }
    }

    /// As a parent's `SUBSCRIBED` said.
    pub fn from_wire(info: &StreamInfo) -> Provenance {
        Provenance {
            started: std::time::UNIX_EPOCH + Duration::from_millis(info.started_ms),
            access: info.access.clone(),
        }
    }
}

/// Where the broadcast is: its first and latest segments here, and whether it is over.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub first: Option<u64>,
    pub latest: Option<u64>,
    pub ended: bool,
}

impl Broadcast {
    pub fn new(
        path: &str,
        instance: u64,
        codec: Codec,
        from: Provenance,
        cache: &SegmentCache,
        cfg: &StoreConfig,
    ) -> Arc<Broadcast> {
        static LOCAL: AtomicU64 = AtomicU64::new(1);
        let ogg = ogg_numbering(instance, &codec);
        Arc::new_cyclic(|me| Broadcast {
            me: me.clone(),
            base_us: AtomicU64::new(cfg.pacing.base(path, 0, Duration::ZERO).as_micros() as u64),
            pacing: cfg.pacing.clone(),
            fill_us: AtomicU64::new(0),
            woke_at_us: AtomicU64::new(0),
            last_wake: Mutex::new(None),
            wake_pending: AtomicBool::new(false),
            arrivals: Mutex::default(),
            path: path.to_string(),
            instance,
            local: LOCAL.fetch_add(1, Ordering::Relaxed),
            codec,
            started: from.started,
            access: Mutex::new(from.access),
            title: Mutex::new(None),
            state: Mutex::new(BState::default()),
            changed: watch::Sender::new(0),
            eager: watch::Sender::new(0),
            cache: cache.clone(),
            window: cfg.window.max(1),
            max_lag: cfg.max_lag.max(1),
            payload_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            end_pts: AtomicU64::new(0),
            ogg,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.woke_at_us
            .store(since_epoch(tokio::time::Instant::now()), Ordering::Relaxed);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        self.eager.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// What a low-latency subscriber waits on (see `Cursor::eager`): every frame while the
    /// node has headroom, and every wake-up.
    pub fn eager_watch(&self) -> watch::Receiver<u64> {
        self.eager.subscribe()
    }

    /// The last wake-up: its number (each one's is one more) and when it was, in µs of
    /// `since_epoch`. A subscriber that took exactly the next one learns how late the node
    /// serves it (see `node::fan_out`).
    pub fn last_wake(&self) -> (u64, u64) {
        (
            *self.changed.borrow(),
            self.woke_at_us.load(Ordering::Relaxed),
        )
    }

    /// This node's own number for the broadcast (unique here, never reused).
    pub fn local_id(&self) -> u64 {
        self.local
    }

    /// Changes as the broadcast does (a frame, a segment, its end): for those who poll the
    /// store rather than walk it with a cursor (HLS requests).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn span(&self) -> Span {
        let s = self.state();
        Span {
            first: s.first,
            latest: s.latest,
            ended: s.ended,
        }
    }

    /// The now-playing title as of the live edge (the source's last word).
    pub fn title(&self) -> Option<Bytes> {
        self.title.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new now-playing title (None or empty: none): segments begun from now on carry it.
    /// Whether it changed.
    pub fn set_title(&self, title: Option<Bytes>) -> bool {
        let title = title.filter(|t| !t.is_empty());
        let mut cur = self.title.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *cur != title;
        *cur = title;
        changed
    }

    /// Starts segment `seq`, sealing the open one, with the title now current. Sequence
    /// numbers only grow.
    pub fn begin(&self, seq: u64) -> Result<Arc<Segment>> {
        self.start(seq, self.title())
    }

    /// Starts segment `seq` with the title its source gave it (a relay's parent), which
    /// becomes the current one.
    pub fn begin_titled(&self, seq: u64, title: Option<Bytes>) -> Result<Arc<Segment>> {
        let seg = self.start(seq, title.clone())?;
        self.set_title(title);
        Ok(seg)
    }

    /// Starts segment `seq`, titled `title`.
    fn start(&self, seq: u64, title: Option<Bytes>) -> Result<Arc<Segment>> {
        let title = title.filter(|t| !t.is_empty());
        let http = match &self.ogg {
            Some(ogg) => super::segment::HttpForm::Ogg(ogg.clone()),
            None => super::segment::HttpForm::Raw,
        };
        let seg = Arc::new(Segment::new(seq, http, title.clone()));
        {
            let mut s = self.state();
            if s.ended {
                return Err(Error::refused(
                    ErrorCode::ProtocolViolation,
                    "broadcast has ended",
                ));
            }
            if let Some(l) = s.latest {
                if seq <= l {
                    return Err(Error::refused(
                        ErrorCode::ProtocolViolation,
                        format!("segment {seq} does not follow {l}"),
                    ));
                }
            }
            if let Some(old) = s.open.take() {
                self.seal_locked(&old);
            }
            s.open = Some(seg.clone());
            s.first.get_or_insert(seq);
            s.latest = Some(seq);
            s.held.push_back(seq);
            while s.held.len() as u64 > self.window + 1 {
                if let Some(old) = s.held.pop_front() {
                    self.cache.cache.invalidate(&(self.local, old));
                }
            }
        }
        self.cache.cache.insert((self.local, seq), seg.clone());
        self.repace();
        // Coalesced like frames: a segment boundary is no reason for an extra wake-up (and
        // an extra packet to every subscriber).
        self.flush();
        Ok(seg)
    }

    /// Appends a frame to `seg` (the open segment) and wakes subscribers (see `flush`).
    pub fn append(&self, seg: &Segment, f: WireFrame) -> Result<()> {
        self.append_quiet(seg, f)?;
        self.flush();
        Ok(())
    }

    /// Wakes subscribers for frames appended quietly: at once, or, with a coalescing interval,
    /// at most once per interval (a wake-up due later is scheduled, never lost).
    pub fn flush(&self) {
        let interval = self.interval();
        if interval.is_zero() {
            return self.notify();
        }
        // Low-latency subscribers get every frame while the node has headroom (no floor);
        // under load they wait for the paced wake-ups like everyone.
        if self.pacing.floor().is_zero() && self.eager.receiver_count() > 0 {
            self.eager.send_modify(|v| *v = v.wrapping_add(1));
        }
        let now = tokio::time::Instant::now();
        let mut last = self.last_wake.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(l) if now < l + interval => {
                if !self.wake_pending.swap(true, Ordering::AcqRel) {
                    let (due, me) = (l + interval, self.me.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        if let Some(b) = me.upgrade() {
                            b.wake_pending.store(false, Ordering::Release);
                            *b.last_wake.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(tokio::time::Instant::now());
                            b.notify();
                        }
                    });
                }
            }
            // A wake-up already due (its timer has not run yet) carries these frames too:
            // two at once would cost every subscriber a wake-up for nothing.
            _ if self.wake_pending.load(Ordering::Acquire) => {}
            _ => {
                *last = Some(now);
                drop(last);
                self.notify();
            }
        }
    }

    /// Appends a frame without waking anyone: call `flush` after a batch.
    pub fn append_quiet(&self, seg: &Segment, f: WireFrame) -> Result<()> {
        let (payload, duration, pts) = (f.frame.payload.len(), f.frame.duration, f.frame.pts);
        let wire = f.record.len();
        seg.append(f)?;
        self.payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        self.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(duration as u64, Ordering::Relaxed);
        let end = pts.saturating_add(duration as u64);
        self.end_pts
            .fetch_max(end.saturating_add(1), Ordering::Relaxed);
        Ok(())
    }

    fn seal_locked(&self, seg: &Arc<Segment>) {
        seg.seal();
        // Re-insert so the cache weighs the segment at its final size.
        self.cache.cache.insert((self.local, seg.seq), seg.clone());
    }

    /// Seals `seg` (a segment that is complete).
    pub fn seal(&self, seg: &Arc<Segment>) {
        {
            let mut s = self.state();
            if s.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, seg)) {
                s.open = None;
            }
            self.seal_locked(seg);
        }
        self.flush();
    }

    /// The broadcast is over (no more segments): seals the open one and wakes every subscriber.
    pub fn finish(&self) {
        {
            let mut s = self.state();
            if let Some(old) = s.open.take() {
                self.seal_locked(&old);
            }
            s.ended = true;
        }
        self.notify();
    }

    /// Who may listen, as the broadcast came.
    pub fn access(&self) -> StreamAccess {
        self.access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the rule the stricter of what it is and `other` (never looser).
    pub fn tighten(&self, other: &StreamAccess) {
        let mut a = self.access.lock().unwrap_or_else(|e| e.into_inner());
        let s = a.stricter(other);
        if s != *a {
            tracing::info!(path = %self.path, was = %*a, now = %s, "who may listen is now stricter");
            *a = s;
        }
    }

    /// A batch of frames came from the parent (a relay's; for `delivery_interval`).
    pub fn arrived(&self, now: tokio::time::Instant) {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .batch(now);
    }

    /// When it began at its origin, in milliseconds since the Unix epoch.
    pub fn started_ms(&self) -> u64 {
        self.started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Average bits per second of the audio so far.
    pub fn bitrate(&self) -> u64 {
        let samples = self.samples.load(Ordering::Relaxed);
        if samples == 0 {
            return 0;
        }
        self.payload_bytes.load(Ordering::Relaxed) * 8 * self.codec.sample_rate as u64 / samples
    }

    /// The delivery interval now: the stream's own, with the node's floor under it.
    pub fn interval(&self) -> Duration {
        self.pacing
            .interval(Duration::from_micros(self.base_us.load(Ordering::Relaxed)))
    }

    /// How often this stream's subscribers are sent new frames, as reported: the interval
    /// it is paced at, or on a relay (which passes its parent's batches on as they come) the
    /// spacing of those batches, under the node's floor. The same on every node of a tree.
    pub fn delivery_interval(&self) -> Duration {
        if self.pacing.mode != super::PaceMode::PassThrough {
            return self.interval();
        }
        let (samples, frames) = (
            self.samples.load(Ordering::Relaxed),
            self.frames.load(Ordering::Relaxed),
        );
        let rate = self.codec.sample_rate.max(1) as u64;
        let frame = match frames {
            0 => Duration::from_millis(10),
            f => Duration::from_micros(samples * 1_000_000 / rate / f),
        };
        let seen = self
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .typical(frame);
        self.pacing.interval(seen)
    }

    /// The pacing settings (their floor is the node's).
    #[cfg(test)]
    pub(crate) fn pacing_for_tests(&self) -> &Pacing {
        &self.pacing
    }

    /// How long the stream takes to fill a packet (zero until its rate is known): where a
    /// stretched interval starts, on an origin and on a relay alike.
    pub fn fill_interval(&self) -> Duration {
        Duration::from_micros(self.fill_us.load(Ordering::Relaxed))
    }

    /// The stream's own interval, before the node's floor.
    pub fn base_interval(&self) -> Duration {
        Duration::from_micros(self.base_us.load(Ordering::Relaxed))
    }

    /// Chooses the stream's own interval again from its rates so far (at each segment).
    fn repace(&self) {
        let (samples, frames) = (
            self.samples.load(Ordering::Relaxed),
            self.frames.load(Ordering::Relaxed),
        );
        let rate = self.codec.sample_rate.max(1) as u64;
        let (wire_rate, frame) = match (samples, frames) {
            (0, _) | (_, 0) => (0, Duration::ZERO),
            _ => (
                self.wire_bytes.load(Ordering::Relaxed) * rate / samples,
                Duration::from_micros(samples * 1_000_000 / rate / frames),
            ),
        };
        let base = self.pacing.base(&self.path, wire_rate, frame);
        if wire_rate > 0 {
            self.fill_us.store(
                self.pacing.fill(wire_rate, frame).as_micros() as u64,
                Ordering::Relaxed,
            );
        }
        let old = self
            .base_us
            .swap(base.as_micros() as u64, Ordering::Relaxed);
        if old != base.as_micros() as u64 && frames > 0 {
            tracing::debug!(path = %self.path, interval_ms = base.as_millis() as u64, "delivery interval");
        }
    }

    /// Where the last frame appended ends (pts + duration), if any was.
    pub fn end_pts(&self) -> Option<u64> {
        self.end_pts.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn is_finished(&self) -> bool {
        self.state().ended
    }

    pub fn segment(&self, seq: u64) -> Option<Arc<Segment>> {
        {
            let s = self.state();
            if let Some(o) = &s.open {
                if o.seq == seq {
                    return Some(o.clone());
                }
            }
        }
        self.cache.cache.get(&(self.local, seq))
    }

    /// The open segment, if any.
    pub fn open_segment(&self) -> Option<Arc<Segment>> {
        self.state().open.clone()
    }

    /// A cursor starting at `start` (`Live`: the segment being produced).
    pub fn cursor(self: &Arc<Self>, start: Start) -> Cursor {
        Cursor::new(self.clone(), self.changed.subscribe(), start, false)
    }

    /// A cursor for a subscriber that waited for the broadcast to start: it begins at the
    /// broadcast's first segment, however many were cut before it first runs.
    pub fn cursor_from_first(self: &Arc<Self>) -> Cursor {
        Cursor::new(self.clone(), self.changed.subscribe(), Start::Live, true)
    }
}

/// An Opus broadcast's Ogg numbering: its serial from the instance (the same on every node),
/// its pre-skip from the OpusHead.
fn ogg_numbering(instance: u64, codec: &Codec) -> Option<Arc<super::segment::OggNumbering>> {
    let h = &codec.header;
    if codec.kind != crate::proto::CODEC_OPUS || h.len() < 12 || &h[..8] != b"OpusHead" {
        return None;
    }
    let pre_skip = u64::from(u16::from_le_bytes([h[10], h[11]]));
    let serial = (instance ^ (instance >> 32)) as u32;
    Some(Arc::new(super::segment::OggNumbering::new(
        serial, pre_skip,
    )))
}
