//! The data model, free of any transport: streams (slots in a registry), broadcast
//! instances, segments and frames, and the cursor every subscriber walks them with.
//!
//! A node's segments live in one `moka` cache bounded by bytes and age, shared by all
//! streams. Frames are kept as the exact bytes of their wire record, so every subscriber
//! and every child relay is sent the same `Bytes`: one copy per node, whatever the audience.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use moka::sync::Cache;
use tokio::sync::watch;

use crate::error::{Error, ErrorCode, Result};
use crate::proto::{Codec, Frame, Start, MAX_FRAMES_PER_SEGMENT, MAX_SEGMENT_BYTES};

/// A frame as held in the store: its fields, and the wire record it came in (or was encoded to).
#[derive(Debug, Clone)]
pub struct Stored {
    pub frame: Frame,
    pub record: Bytes,
}

impl Stored {
    pub fn new(frame: Frame) -> Stored {
        let record = frame.to_bytes();
        // Keep one allocation: the payload becomes a slice of the record.
        let payload = record.slice(record.len() - frame.payload.len()..);
        Stored {
            frame: Frame { payload, ..frame },
            record,
        }
    }
}

/// A run of frames starting with an independently decodable one. Open while it grows,
/// sealed when the next one begins. Append-only.
pub struct Segment {
    pub seq: u64,
    inner: RwLock<SegInner>,
}

#[derive(Default)]
struct SegInner {
    frames: Vec<Stored>,
    bytes: usize,
    sealed: bool,
    /// Runs of consecutive wire records, each one `Bytes`, partitioning `frames[..covered]`:
    /// (end index, bytes). A QUIC subscriber writes a run as one chunk instead of a chunk
    /// per frame. The records of a run are slices of it, so frames are held once.
    runs: Vec<(usize, Bytes)>,
}

impl SegInner {
    fn covered(&self) -> usize {
        self.runs.last().map_or(0, |r| r.0)
    }

    /// Makes the frames not yet in a run into one: built once, by the first subscriber to
    /// read them, and shared by every other subscriber that reads from the same place (all
    /// of them, at the live edge). One copy of a delivery interval's frames per node.
    fn close_run(&mut self) {
        let (from, to) = (self.covered(), self.frames.len());
        let run = match to - from {
            0 => return,
            1 => self.frames[from].record.clone(),
            _ => {
                let fresh = &mut self.frames[from..];
                let len = fresh.iter().map(|f| f.record.len()).sum();
                let mut buf = bytes::BytesMut::with_capacity(len);
                for f in fresh.iter() {
                    buf.extend_from_slice(&f.record);
                }
                let run = buf.freeze();
                // Point each frame into the run, so its old allocation is freed.
                let mut at = 0;
                for f in fresh.iter_mut() {
                    let (n, p) = (f.record.len(), f.frame.payload.len());
                    f.record = run.slice(at..at + n);
                    f.frame.payload = run.slice(at + n - p..at + n);
                    at += n;
                }
                run
            }
        };
        self.runs.push((to, run));
    }

    /// The wire records of `frames[from..]` as few `Bytes` as the runs allow.
    fn wire_from(&self, from: usize, out: &mut Vec<Bytes>) {
        let mut at = from;
        let mut i = self.runs.partition_point(|r| r.0 <= at);
        while at < self.frames.len() {
            match self.runs.get(i) {
                Some((end, run)) => {
                    let start = if i == 0 { 0 } else { self.runs[i - 1].0 };
                    if start == at {
                        out.push(run.clone());
                    } else {
                        // Joined in the middle of a run (rare): frame by frame to its end.
                        out.extend(self.frames[at..*end].iter().map(|f| f.record.clone()));
                    }
                    at = *end;
                    i += 1;
                }
                None => {
                    out.extend(self.frames[at..].iter().map(|f| f.record.clone()));
                    at = self.frames.len();
                }
            }
        }
    }
}

impl Segment {
    fn new(seq: u64) -> Segment {
        Segment {
            seq,
            inner: RwLock::new(SegInner::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SegInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SegInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends clones of frames `from..` to `out`, and their wire records (as runs, see
    /// `SegInner::runs`) to `wire`; returns whether the segment is sealed.
    pub fn read_from(&self, from: usize, out: &mut Vec<Stored>, wire: &mut Vec<Bytes>) -> bool {
        {
            let g = self.read();
            if from >= g.frames.len() {
                return g.sealed;
            }
            if g.covered() == g.frames.len() {
                out.extend_from_slice(&g.frames[from..]);
                g.wire_from(from, wire);
                return g.sealed;
            }
        }
        let mut g = self.write();
        g.close_run();
        out.extend_from_slice(&g.frames[from..]);
        g.wire_from(from, wire);
        g.sealed
    }

    pub fn len(&self) -> usize {
        self.read().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    pub fn is_sealed(&self) -> bool {
        self.read().sealed
    }
}

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
    /// Subscribers of a broadcast made here (an origin's) are woken at most this often for new
    /// frames, so each wake-up and each write carries several frames. Zero: at every frame.
    /// A relay wakes its subscribers once per batch it receives, which is already coalesced.
    pub coalesce: Duration,
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
            // Measured (benches/fanout.rs, 1,000 listeners on one relay core): 0 ms 85 % of a
            // core, 50 ms 51 %, 100 ms 32 %, with latency p99 39 / 69 / 118 ms.
            coalesce: Duration::from_millis(100),
        }
    }
}

/// The node-wide segment cache, keyed by (broadcast instance, sequence number).
#[derive(Clone)]
pub struct SegmentCache {
    cache: Cache<(u64, u64), Arc<Segment>>,
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
}

#[derive(Default)]
struct BState {
    open: Option<Arc<Segment>>,
    /// The broadcast's first segment here (for subscribers who waited for it to start).
    first: Option<u64>,
    latest: Option<u64>,
    ended: bool,
}

/// One run of a stream from one publisher: its codec, and its segments by sequence number.
/// A relay holds a `Broadcast` with the same `instance` as its parent's.
pub struct Broadcast {
    pub path: String,
    pub instance: u64,
    pub codec: Codec,
    pub started: SystemTime,
    state: Mutex<BState>,
    edge: watch::Sender<u64>,
    cache: SegmentCache,
    window: u64,
    max_lag: u64,
    me: std::sync::Weak<Broadcast>,
    coalesce: Duration,
    last_wake: Mutex<Option<tokio::time::Instant>>,
    wake_pending: AtomicBool,
    /// Payload bytes and samples appended, for the bitrate.
    payload_bytes: AtomicU64,
    samples: AtomicU64,
    /// End (pts + duration) of the last frame appended, plus one; 0 before any.
    end_pts: AtomicU64,
}

/// A view of where the broadcast is.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub first: Option<u64>,
    pub latest: Option<u64>,
    pub ended: bool,
}

impl Broadcast {
    pub fn new(
        path: &str,
        instance: u64,
        codec: Codec,
        cache: &SegmentCache,
        cfg: &StoreConfig,
    ) -> Arc<Broadcast> {
        Arc::new_cyclic(|me| Broadcast {
            me: me.clone(),
            coalesce: cfg.coalesce,
            last_wake: Mutex::new(None),
            wake_pending: AtomicBool::new(false),
            path: path.to_string(),
            instance,
            codec,
            started: SystemTime::now(),
            state: Mutex::new(BState::default()),
            edge: watch::Sender::new(0),
            cache: cache.clone(),
            window: cfg.window.max(1),
            max_lag: cfg.max_lag.max(1),
            payload_bytes: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            end_pts: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.edge.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn edge(&self) -> Edge {
        let s = self.state();
        Edge {
            first: s.first,
            latest: s.latest,
            ended: s.ended,
        }
    }

    /// Starts segment `seq`, sealing the open one. Sequence numbers only grow.
    pub fn begin(&self, seq: u64) -> Result<Arc<Segment>> {
        let seg = Arc::new(Segment::new(seq));
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
            if seq > self.window {
                self.cache
                    .cache
                    .invalidate(&(self.instance, seq - self.window - 1));
            }
        }
        self.cache.cache.insert((self.instance, seq), seg.clone());
        // Coalesced like frames: a segment boundary is no reason for an extra wake-up (and
        // an extra packet to every subscriber).
        self.flush();
        Ok(seg)
    }

    /// Appends a frame to `seg` (the open segment) and wakes subscribers (see `flush`).
    pub fn append(&self, seg: &Segment, f: Stored) -> Result<()> {
        self.append_quiet(seg, f)?;
        self.flush();
        Ok(())
    }

    /// Wakes subscribers for frames appended quietly: at once, or, with a coalescing interval,
    /// at most once per interval (a wake-up due later is scheduled, never lost).
    pub fn flush(&self) {
        if self.coalesce.is_zero() {
            return self.notify();
        }
        let now = tokio::time::Instant::now();
        let mut last = self.last_wake.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(l) if now < l + self.coalesce => {
                if !self.wake_pending.swap(true, Ordering::AcqRel) {
                    let (due, me) = (l + self.coalesce, self.me.clone());
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
            _ => {
                *last = Some(now);
                drop(last);
                self.notify();
            }
        }
    }

    /// Appends a frame without waking anyone: call `flush` after a batch.
    pub fn append_quiet(&self, seg: &Segment, f: Stored) -> Result<()> {
        {
            let mut g = seg.write();
            if g.sealed {
                return Err(Error::refused(
                    ErrorCode::ProtocolViolation,
                    "segment is sealed",
                ));
            }
            if g.frames.len() >= MAX_FRAMES_PER_SEGMENT
                || g.bytes + f.record.len() > MAX_SEGMENT_BYTES
            {
                return Err(Error::refused(
                    ErrorCode::TooLarge,
                    format!("segment {} is over its limits", seg.seq),
                ));
            }
            g.bytes += f.record.len();
            self.payload_bytes
                .fetch_add(f.frame.payload.len() as u64, Ordering::Relaxed);
            self.samples
                .fetch_add(f.frame.duration as u64, Ordering::Relaxed);
            let end = f.frame.pts.saturating_add(f.frame.duration as u64);
            self.end_pts
                .fetch_max(end.saturating_add(1), Ordering::Relaxed);
            g.frames.push(f);
        }
        Ok(())
    }

    fn seal_locked(&self, seg: &Arc<Segment>) {
        seg.write().sealed = true;
        // Re-insert so the cache weighs the segment at its final size.
        self.cache
            .cache
            .insert((self.instance, seg.seq), seg.clone());
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

    /// No more segments: seals the open one and wakes every subscriber.
    pub fn end(&self) {
        {
            let mut s = self.state();
            if let Some(old) = s.open.take() {
                self.seal_locked(&old);
            }
            s.ended = true;
        }
        self.notify();
    }

    /// Average bits per second of the audio so far.
    pub fn bitrate(&self) -> u64 {
        let samples = self.samples.load(Ordering::Relaxed);
        if samples == 0 {
            return 0;
        }
        self.payload_bytes.load(Ordering::Relaxed) * 8 * self.codec.sample_rate as u64 / samples
    }

    /// Where the last frame appended ends (pts + duration), if any was.
    pub fn end_pts(&self) -> Option<u64> {
        self.end_pts.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn is_ended(&self) -> bool {
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
        self.cache.cache.get(&(self.instance, seq))
    }

    /// The open segment, if any.
    pub fn open_segment(&self) -> Option<Arc<Segment>> {
        self.state().open.clone()
    }

    pub fn cursor(self: &Arc<Self>, start: Start) -> Cursor {
        Cursor {
            b: self.clone(),
            rx: self.edge.subscribe(),
            next: match start {
                Start::Live => None,
                Start::Seq(s) => Some(s),
            },
            from_first: false,
            seg: None,
            idx: 0,
            scratch: Vec::new(),
            wire: Vec::new(),
            skipped: 0,
        }
    }

    /// A cursor for a subscriber that waited for the broadcast to start: it begins at the
    /// broadcast's first segment, however many were cut before it first runs.
    pub fn cursor_from_first(self: &Arc<Self>) -> Cursor {
        Cursor {
            from_first: true,
            ..self.cursor(Start::Live)
        }
    }
}

/// What a subscriber is to do next.
#[derive(Debug)]
pub enum Step {
    /// Start sending segment `seq` (from its first frame).
    Begin(u64),
    /// Frames of the current segment, in order.
    Frames(Vec<Stored>),
    /// The current segment is complete.
    End(u64),
    /// The subscriber was moved forward: the segment it was on (if any) is abandoned.
    Skip { from: u64, to: u64 },
    /// The broadcast ended and everything was delivered.
    Finished,
}

/// A subscriber's position in a broadcast. Every kind of subscriber (QUIC listener, child
/// relay, HTTP listener) walks the store with one of these, so they all behave alike.
pub struct Cursor {
    b: Arc<Broadcast>,
    rx: watch::Receiver<u64>,
    /// Next segment to begin; None = the live edge (or the first segment, if `from_first`).
    next: Option<u64>,
    from_first: bool,
    seg: Option<Arc<Segment>>,
    idx: usize,
    scratch: Vec<Stored>,
    /// The wire records of the last `Step::Frames`, as few `Bytes` as possible.
    wire: Vec<Bytes>,
    pub skipped: u64,
}

impl Cursor {
    pub fn broadcast(&self) -> &Arc<Broadcast> {
        &self.b
    }

    /// Sequence number of the segment being sent, if any.
    pub fn current(&self) -> Option<u64> {
        self.seg.as_ref().map(|s| s.seq)
    }

    /// How many segments the subscriber is behind the newest.
    pub fn lag(&self) -> u64 {
        match (self.current(), self.b.edge().latest) {
            (Some(c), Some(l)) => l.saturating_sub(c),
            _ => 0,
        }
    }

    /// Resolves once this subscriber is more than `max_lag` segments behind. Used while a
    /// write to the subscriber is blocked, so a stuck peer is noticed without its help.
    pub async fn lagging(&self) {
        let mut rx = self.rx.clone();
        loop {
            rx.borrow_and_update();
            if self.lag() > self.b.max_lag {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// For a cursor at the live edge that has not started: begin `n` segments further back
    /// (a bigger burst on connect, for players that buffer before they start).
    pub fn back(&mut self, n: u64) {
        if self.seg.is_none() && self.next.is_none() && !self.from_first {
            let e = self.b.edge();
            if let (Some(first), Some(latest)) = (e.first, e.latest) {
                self.next = Some(latest.saturating_sub(n).max(first));
            }
        }
    }

    /// The wire records of the frames of the last `Step::Frames`, in as few `Bytes` as the
    /// store has them: what a QUIC subscriber writes.
    pub fn wire(&self) -> &[Bytes] {
        &self.wire
    }

    /// Hands back the vector a `Step::Frames` came in, so the next one reuses it rather
    /// than allocating: a step per delivery interval per subscriber adds up.
    pub fn recycle(&mut self, mut frames: Vec<Stored>) {
        if self.scratch.capacity() < frames.capacity() {
            frames.clear();
            self.scratch = frames;
        }
    }

    /// Abandons the current segment for the newest one.
    pub fn skip_to_live(&mut self) -> Step {
        let from = self.current().unwrap_or(0);
        let to = self.b.edge().latest.unwrap_or(from);
        self.seg = None;
        self.next = Some(to);
        self.skipped += 1;
        Step::Skip { from, to }
    }

    /// Gives up the rest of the current segment (its subscriber stopped it) for the next one.
    pub fn abandon_segment(&mut self) {
        if let Some(s) = self.seg.take() {
            self.next = Some(s.seq + 1);
        }
    }

    /// The first sealed-or-open segment at or after `s` that the store still holds.
    fn first_held(&self, s: u64, latest: u64) -> Option<(u64, Arc<Segment>)> {
        let lo = s.max(latest.saturating_sub(self.b.window));
        (lo..=latest).find_map(|q| self.b.segment(q).map(|seg| (q, seg)))
    }

    pub async fn next(&mut self) -> Step {
        loop {
            self.rx.borrow_and_update();
            let edge = self.b.edge();
            match &self.seg {
                None => {
                    let target = self.next.or(if self.from_first {
                        edge.first
                    } else {
                        edge.latest
                    });
                    match (target, edge.latest) {
                        (Some(s), Some(latest)) if s <= latest => {
                            if let Some(seg) = self.b.segment(s) {
                                self.seg = Some(seg);
                                self.next = Some(s);
                                self.idx = 0;
                                return Step::Begin(s);
                            }
                            // Gone from the store: move to the oldest segment still held.
                            match self.first_held(s + 1, latest) {
                                Some((q, _)) => {
                                    self.next = Some(q);
                                    self.skipped += 1;
                                    return Step::Skip { from: s, to: q };
                                }
                                None if edge.ended => return Step::Finished,
                                None => {}
                            }
                        }
                        _ if edge.ended => return Step::Finished,
                        _ => {}
                    }
                }
                Some(seg) => {
                    // No lag check here: a subscriber that keeps taking steps is keeping up,
                    // even if the edge ran ahead (a relay catching up after failover). Lag
                    // only counts while a write to the subscriber is blocked: see `lagging`.
                    let seq = seg.seq;
                    self.wire.clear();
                    let sealed = seg.read_from(self.idx, &mut self.scratch, &mut self.wire);
                    if !self.scratch.is_empty() {
                        self.idx += self.scratch.len();
                        let out = std::mem::take(&mut self.scratch);
                        return Step::Frames(out);
                    }
                    if sealed {
                        self.seg = None;
                        self.next = Some(seq + 1);
                        return Step::End(seq);
                    }
                }
            }
            if self.rx.changed().await.is_err() {
                return Step::Finished;
            }
        }
    }
}

/// What a stream name on a node is now.
#[derive(Clone)]
pub enum SlotState {
    /// Nothing is published under it yet: subscribers wait (the waiting room).
    Waiting,
    Live(Arc<Broadcast>),
    /// Refused for good (its parent says it does not exist, or a bound was reached): every
    /// subscriber waiting on it gets this, and the name leaves the registry.
    Failed {
        code: ErrorCode,
        reason: String,
    },
}

/// Who publishes to a stream, and how a newer publisher with the same credentials tells it
/// to go.
struct PublisherHold {
    id: u64,
    credential: Option<[u8; 32]>,
    displaced: Arc<tokio::sync::Notify>,
}

/// Proof of a publisher's right to a stream: what it took over with. Given when the node
/// checked a credential (a publish token, a source password); two publishers holding the
/// same one are the same publisher, so the newer takes the stream over (a restarted encoder
/// gets its broadcast back at once). Publishers of an open node (no credential) cannot.
#[derive(Debug, Clone)]
pub struct PublisherClaim {
    pub id: u64,
    pub displaced: Arc<tokio::sync::Notify>,
    /// A publisher with the same credential held the stream and was told to go.
    pub took_over: bool,
}

/// A stream name on a node: what is behind it (nothing yet, for a waiting room), and who is
/// using it.
pub struct Slot {
    pub path: String,
    state: watch::Sender<SlotState>,
    subscribers: watch::Sender<usize>,
    publisher: Mutex<Option<PublisherHold>>,
    /// Subscriptions this node has served for this stream, ever (child relays included).
    pub subscriptions_total: AtomicU64,
    pub created: Instant,
    /// Announced ahead by the operator: its waiting room is always kept.
    pub announced: bool,
    /// Counted among the node's unannounced waiting rooms (see `Registry::count_waiting`).
    counted: AtomicBool,
    waiting: Arc<AtomicU64>,
}

impl Slot {
    /// The broadcast behind the name, if it is live.
    pub fn broadcast(&self) -> Option<Arc<Broadcast>> {
        match &*self.state.borrow() {
            SlotState::Live(b) => Some(b.clone()),
            _ => None,
        }
    }

    pub fn state(&self) -> SlotState {
        self.state.borrow().clone()
    }

    /// Puts a broadcast behind the name (a live stream is never a waiting room again), or
    /// takes it away (the broadcast ended: the name waits for the next one).
    pub fn set_broadcast(&self, b: Option<Arc<Broadcast>>) {
        if b.is_some() {
            self.uncount();
        }
        self.state.send_replace(match b {
            Some(b) => SlotState::Live(b),
            None => SlotState::Waiting,
        });
    }

    /// Refuses everyone waiting on this name with `code` (see `SlotState::Failed`).
    pub fn fail(&self, code: ErrorCode, reason: impl Into<String>) {
        self.uncount();
        self.state.send_replace(SlotState::Failed {
            code,
            reason: reason.into(),
        });
    }

    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until the stream is live (the waiting room), or refused.
    pub async fn wait_broadcast(&self) -> Result<Arc<Broadcast>> {
        let mut rx = self.state.subscribe();
        loop {
            match rx.borrow_and_update().clone() {
                SlotState::Live(b) => return Ok(b),
                SlotState::Failed { code, reason } => return Err(Error::refused(code, reason)),
                SlotState::Waiting => {}
            }
            // The slot owns the sender, and we hold the slot: this cannot fail.
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    pub fn subscribers(&self) -> usize {
        *self.subscribers.borrow()
    }

    /// A receiver that sees the subscriber count change.
    pub fn watch_subscribers(&self) -> watch::Receiver<usize> {
        self.subscribers.subscribe()
    }

    fn holder(&self) -> std::sync::MutexGuard<'_, Option<PublisherHold>> {
        self.publisher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the publisher role: free, or held by a publisher with the same `credential`
    /// (which is told to go). None if another publisher holds it.
    pub fn claim_publisher(&self, credential: Option<[u8; 32]>) -> Option<PublisherClaim> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let mut h = self.holder();
        let took_over = match h.as_ref() {
            None => false,
            Some(old) if credential.is_some() && old.credential == credential => {
                old.displaced.notify_one();
                true
            }
            Some(_) => return None,
        };
        let claim = PublisherClaim {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            displaced: Arc::new(tokio::sync::Notify::new()),
            took_over,
        };
        *h = Some(PublisherHold {
            id: claim.id,
            credential,
            displaced: claim.displaced.clone(),
        });
        Some(claim)
    }

    /// Gives the publisher role up, if `id` still holds it (a publisher that was taken over
    /// from has nothing to give up).
    pub fn release_publisher(&self, id: u64) {
        let mut h = self.holder();
        if h.as_ref().is_some_and(|p| p.id == id) {
            *h = None;
        }
    }

    pub fn has_publisher(&self) -> bool {
        self.holder().is_some()
    }

    /// Whether a publisher with `credential` may claim the stream now (see `claim_publisher`).
    pub fn may_claim(&self, credential: Option<[u8; 32]>) -> bool {
        match self.holder().as_ref() {
            None => true,
            Some(old) => credential.is_some() && old.credential == credential,
        }
    }

    /// Whether publisher `id` holds the stream now.
    pub fn is_publisher(&self, id: u64) -> bool {
        self.holder().as_ref().is_some_and(|p| p.id == id)
    }
}

/// Held by each subscription; the count drops when it does.
pub struct SubscriberGuard {
    pub slot: Arc<Slot>,
    changes: watch::Sender<u64>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.slot
            .subscribers
            .send_modify(|n| *n = n.saturating_sub(1));
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Names an operator announced ahead (scheduled streams): a name, or a prefix ending in `/`.
#[derive(Debug, Clone, Default)]
pub struct Announced(Vec<String>);

impl Announced {
    pub fn new(names: Vec<String>) -> Announced {
        Announced(names)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|a| match a.strip_suffix('/') {
            Some(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('/')),
            None => a == path,
        })
    }
}

/// How a slot is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// By a publisher: a live stream, bounded by `max_streams`.
    Live,
    /// By a subscriber on a node that knows what it publishes (an origin): a waiting room,
    /// counted among the unannounced ones at once.
    Waiting,
    /// By a subscriber on a relay: not counted until the parent had its chance to say the
    /// stream is live (`count_waiting`).
    Asking,
}

/// Every stream on a node, by path.
///
/// Live streams (and announced names) are bounded by `max_streams`; waiting rooms for names
/// nobody announced are bounded apart, by `max_waiting`, so that strangers asking for
/// made-up names never keep a publisher from starting.
pub struct Registry {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Unannounced waiting rooms now.
    waiting: Arc<AtomicU64>,
    /// Bumped whenever a slot or a subscriber comes or goes (for whoever waits on that).
    changes: watch::Sender<u64>,
    pub cache: SegmentCache,
    pub cfg: StoreConfig,
    announced: Announced,
}

impl Registry {
    pub fn new(cfg: StoreConfig) -> Arc<Registry> {
        Registry::with_announced(cfg, Announced::default())
    }

    pub fn with_announced(cfg: StoreConfig, announced: Announced) -> Arc<Registry> {
        Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            waiting: Arc::new(AtomicU64::new(0)),
            changes: watch::Sender::new(0),
            cache: SegmentCache::new(&cfg),
            cfg,
            announced,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unannounced waiting rooms now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn is_announced(&self, path: &str) -> bool {
        self.announced.contains(path)
    }

    fn slot_locked(
        &self,
        map: &mut HashMap<String, Arc<Slot>>,
        path: &str,
        how: Create,
    ) -> Result<(Arc<Slot>, bool)> {
        if let Some(s) = map.get(path) {
            return Ok((s.clone(), false));
        }
        let announced = self.announced.contains(path);
        let waiting = self.waiting();
        let counted = how == Create::Waiting && !announced;
        if counted {
            // Every name costs a slot (and on a relay an upstream subscription): names asked
            // for and not live are bounded apart from live streams.
            if waiting >= self.cfg.max_waiting as u64 {
                return Err(self.waiting_full());
            }
        } else if how == Create::Asking && !announced {
            // A relay cannot tell a live name from a made-up one before its parent answers:
            // it asks (bounded per connection and address by the node), and counts the name
            // as a waiting room only if the parent has not said it is live (`count_waiting`).
        } else if map.len() as u64 - waiting >= self.cfg.max_streams as u64 {
            return Err(Error::refused(
                ErrorCode::Overloaded,
                format!(
                    "this node holds its maximum of {} streams",
                    self.cfg.max_streams
                ),
            ));
        }
        let s = Arc::new(Slot {
            path: path.to_string(),
            state: watch::Sender::new(SlotState::Waiting),
            subscribers: watch::Sender::new(0),
            publisher: Mutex::new(None),
            subscriptions_total: AtomicU64::new(0),
            created: Instant::now(),
            announced,
            counted: AtomicBool::new(counted),
            waiting: self.waiting.clone(),
        });
        if counted {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        map.insert(path.to_string(), s.clone());
        Ok((s, true))
    }

    fn waiting_full(&self) -> Error {
        Error::refused(
            ErrorCode::Overloaded,
            format!(
                "this node holds its maximum of {} waiting rooms for streams not announced",
                self.cfg.max_waiting
            ),
        )
    }

    /// Counts an asking slot (see `Create::Asking`) among the waiting rooms, now that its
    /// parent has not said it is live; refused if the node holds its maximum of them.
    pub fn count_waiting(&self, slot: &Slot) -> Result<()> {
        if slot.announced || slot.broadcast().is_some() || slot.counted.load(Ordering::Acquire) {
            return Ok(());
        }
        let _map = self.slots();
        if self.waiting() >= self.cfg.max_waiting as u64 {
            return Err(self.waiting_full());
        }
        slot.counted.store(true, Ordering::Release);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        drop(_map);
        self.bump();
        Ok(())
    }

    /// The slot for `path`, created as a live stream if new (the bool says so).
    pub fn slot(&self, path: &str) -> Result<(Arc<Slot>, bool)> {
        let r = self.slot_locked(&mut self.slots(), path, Create::Live)?;
        if r.1 {
            self.bump();
        }
        Ok(r)
    }

    /// Registers a subscriber on `path` (creating the slot `how`, if new). The count is
    /// raised under the registry lock, so `remove_if_idle` never removes a slot in use.
    pub fn subscribe(&self, path: &str, how: Create) -> Result<(SubscriberGuard, bool)> {
        let mut map = self.slots();
        let (slot, created) = self.slot_locked(&mut map, path, how)?;
        slot.subscribers.send_modify(|n| *n += 1);
        slot.subscriptions_total.fetch_add(1, Ordering::Relaxed);
        drop(map);
        self.bump();
        Ok((
            SubscriberGuard {
                slot,
                changes: self.changes.clone(),
            },
            created,
        ))
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits until `pred` holds of the registry, re-checking whenever a slot or subscriber changes.
    pub async fn wait_until(&self, mut pred: impl FnMut(&Registry) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Subscribers now on `path` (0 if it has no slot).
    pub fn subscribers(&self, path: &str) -> usize {
        self.get(path).map(|s| s.subscribers()).unwrap_or(0)
    }

    pub fn get(&self, path: &str) -> Option<Arc<Slot>> {
        self.slots().get(path).cloned()
    }

    /// Removes `slot` if nobody subscribes or publishes to it; true if removed.
    pub fn remove_if_idle(&self, slot: &Arc<Slot>) -> bool {
        let mut map = self.slots();
        let same = map.get(&slot.path).is_some_and(|s| Arc::ptr_eq(s, slot));
        if same && slot.subscribers() == 0 && !slot.has_publisher() {
            map.remove(&slot.path);
            slot.uncount();
            drop(map);
            self.bump();
            return true;
        }
        false
    }

    /// Removes `slot` whoever uses it (it failed: see `Slot::fail`).
    pub fn remove(&self, slot: &Arc<Slot>) {
        let mut map = self.slots();
        if map.get(&slot.path).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(&slot.path);
        }
        slot.uncount();
        drop(map);
        self.bump();
    }

    pub fn list(&self) -> Vec<Arc<Slot>> {
        let mut v: Vec<_> = self.slots().values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

#[cfg(test)]
mod tests;
