//! The cursor: a subscriber's position in a broadcast, and what it is to do next.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Broadcast, Segment, WireFrame};
use crate::proto::Start;

/// What a subscriber is to do next.
#[derive(Debug)]
pub enum Step {
    /// Start sending segment `seq` (from its first frame).
    Begin(u64),
    /// Frames of the current segment, in order, in the subscriber's form.
    Frames(Batch),
    /// The current segment is complete (sealed).
    Sealed(u64),
    /// The subscriber was moved forward: the segment it was on (if any) is abandoned.
    Skip { from: u64, to: u64 },
    /// The broadcast ended and everything was delivered.
    Finished,
}

/// The form a subscriber takes frames in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Each frame, its fields and record: for subscribers that re-package audio (Ogg, fMP4).
    Frames,
    /// Only the wire records, in as few `Bytes` as the store holds them (a delivery
    /// interval's frames are one shared run): for subscribers that forward records as they
    /// are (QUIC listeners, child relays).
    Wire,
    /// The stream's HTTP form (Ogg pages for Opus, see `segment::OggNumbering`; the frames
    /// as they came for MP3 and AAC), made once per run and shared: for HTTP listeners.
    Http,
}

/// A step's frames, in the form the cursor was made for.
#[derive(Debug)]
pub enum Batch {
    Frames(Vec<WireFrame>),
    Wire(Vec<Bytes>),
    /// The HTTP form's bytes, and how many frames they hold.
    Http(Vec<Bytes>, usize),
}

impl Batch {
    fn empty(form: Form) -> Batch {
        match form {
            Form::Frames => Batch::Frames(Vec::new()),
            Form::Wire => Batch::Wire(Vec::new()),
            Form::Http => Batch::Http(Vec::new(), 0),
        }
    }

    fn clear(&mut self) {
        match self {
            Batch::Frames(f) => f.clear(),
            Batch::Wire(w) => w.clear(),
            Batch::Http(p, n) => {
                p.clear();
                *n = 0;
            }
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Batch::Frames(f) => f.capacity(),
            Batch::Wire(w) | Batch::Http(w, _) => w.capacity(),
        }
    }
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
    form: Form,
    /// The next `Step::Frames`'s container, reused (see `recycle`).
    scratch: Batch,
    pub skipped: u64,
}

impl Cursor {
    pub(super) fn new(
        b: Arc<Broadcast>,
        rx: watch::Receiver<u64>,
        start: Start,
        from_first: bool,
    ) -> Cursor {
        Cursor {
            b,
            rx,
            next: match start {
                Start::Live => None,
                Start::Seq(s) => Some(s),
            },
            from_first,
            seg: None,
            idx: 0,
            form: Form::Frames,
            scratch: Batch::Frames(Vec::new()),
            skipped: 0,
        }
    }

    pub fn broadcast(&self) -> &Arc<Broadcast> {
        &self.b
    }

    /// Sequence number of the segment being sent, if any.
    /// The now-playing title of the segment being read (from its start).
    pub fn title(&self) -> Option<bytes::Bytes> {
        self.seg.as_ref().and_then(|s| s.title.clone())
    }

    pub fn current(&self) -> Option<u64> {
        self.seg.as_ref().map(|s| s.seq)
    }

    /// How many segments the subscriber is behind the newest: from the segment it is on, or
    /// (between two) the one it is to begin next.
    pub fn lag(&self) -> u64 {
        match (self.current().or(self.next), self.b.span().latest) {
            (Some(c), Some(l)) => l.saturating_sub(c),
            _ => 0,
        }
    }

    /// Makes this a low-latency subscriber: woken at every frame while the node has
    /// headroom, instead of once per delivery interval (more packets: its own choice).
    pub fn eager(&mut self) {
        let mut rx = self.b.eager_watch();
        rx.mark_changed();
        self.rx = rx;
    }

    /// Whether this subscriber is more than `max_lag` segments behind (see `lagging`).
    pub fn is_lagging(&self) -> bool {
        self.lag() > self.b.max_lag
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
            let e = self.b.span();
            if let (Some(first), Some(latest)) = (e.first, e.latest) {
                self.next = Some(latest.saturating_sub(n).max(first));
            }
        }
    }

    /// The form this cursor hands frames out in (`Form::Frames` unless set).
    pub fn form(&self) -> Form {
        self.form
    }

    /// Hands frames out in `form` from now on.
    pub fn set_form(&mut self, form: Form) {
        if self.form != form {
            self.form = form;
            self.scratch = Batch::empty(form);
        }
    }

    /// Hands back the container a `Step::Frames` came in, so the next one reuses it rather
    /// than allocating: a step per delivery interval per subscriber adds up.
    pub fn recycle(&mut self, mut batch: Batch) {
        if self.scratch.capacity() < batch.capacity() {
            batch.clear();
            self.scratch = batch;
        }
    }

    /// Abandons the current segment for the newest one.
    pub fn skip_to_live(&mut self) -> Step {
        let from = self.current().unwrap_or(0);
        let to = self.b.span().latest.unwrap_or(from);
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

    /// The next step, waiting for the broadcast to change when there is none.
    pub async fn next(&mut self) -> Step {
        loop {
            self.rx.borrow_and_update();
            if let Some(step) = self.step() {
                return step;
            }
            if self.rx.changed().await.is_err() {
                return Step::Finished;
            }
        }
    }

    /// The next step if there is one now, without waiting (for callers that are told of
    /// the broadcast's wake-ups another way, such as the engine).
    pub fn try_next(&mut self) -> Option<Step> {
        loop {
            self.rx.borrow_and_update();
            if let Some(step) = self.step() {
                return Some(step);
            }
            match self.rx.has_changed() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(_) => return Some(Step::Finished),
            }
        }
    }

    /// One step from where the cursor is, if the store has one for it.
    fn step(&mut self) -> Option<Step> {
        let edge = self.b.span();
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
                            return Some(Step::Begin(s));
                        }
                        // Gone from the store: move to the oldest segment still held.
                        match self.first_held(s + 1, latest) {
                            Some((q, _)) => {
                                self.next = Some(q);
                                self.skipped += 1;
                                return Some(Step::Skip { from: s, to: q });
                            }
                            None if edge.ended => return Some(Step::Finished),
                            None => {}
                        }
                    }
                    _ if edge.ended => return Some(Step::Finished),
                    _ => {}
                }
            }
            Some(seg) => {
                // No lag check here: a subscriber that keeps taking steps is keeping up,
                // even if the edge ran ahead (a relay catching up after failover). Lag
                // only counts while a write to the subscriber is blocked: see `lagging`.
                let seq = seg.seq;
                self.scratch.clear();
                let (n, sealed) = seg.read_from(self.idx, &mut self.scratch);
                if n > 0 {
                    self.idx += n;
                    let out = std::mem::replace(&mut self.scratch, Batch::empty(self.form));
                    return Some(Step::Frames(out));
                }
                if sealed {
                    self.seg = None;
                    self.next = Some(seq + 1);
                    return Some(Step::Sealed(seq));
                }
            }
        }
        None
    }
}
