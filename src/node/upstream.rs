//! A relay's source of segments: its parents. One upstream subscription per stream however
//! many subscribe below: the first subscriber starts the stream's fetch (its leader), and
//! every later one waits on the same slot (the followers), like a CDN's cache lock. On a
//! parent's loss the fetch moves to the next parent and resumes from the next frame it needs.
//!
//! The node knows nothing of the transport: a relay's way to its parents is the `Parents`
//! trait, which the QUIC client implements (`client::QuicParents`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use super::{inc, Node};
use crate::error::{Error, Kind, Result};
use crate::model::{Broadcast, Segment, Slot, StoreConfig, WireFrame};
use crate::proto::{Codec, ErrorCode, Start};

/// A relay's way to its parents, in the order they are tried.
pub trait Parents: Send + Sync + 'static {
    /// How many parents there are.
    fn count(&self) -> usize;
    /// How parent `i` is named in logs.
    fn describe(&self, i: usize) -> String;
    /// A new connection to parent `i`.
    fn connect(&self, i: usize) -> BoxFuture<'_, Result<Arc<dyn ParentLink>>>;
}

/// One connection to a parent.
pub trait ParentLink: Send + Sync {
    /// The parent's node name, as its hello says.
    fn name(&self) -> &str;
    fn is_closed(&self) -> bool;
    /// Why the connection ended (waits until it has).
    fn closed(&self) -> BoxFuture<'_, Error>;
    fn subscribe(
        &self,
        path: &str,
        start: Start,
    ) -> BoxFuture<'_, Result<Box<dyn ParentSubscription>>>;
}

/// What a subscription on a parent hears, in the order the parent sent it.
pub enum ParentEvent {
    Subscribed {
        instance: u64,
        codec: Codec,
    },
    /// A segment, read frame by frame as it arrives.
    Segment {
        seq: u64,
        frames: Box<dyn SegmentReader>,
    },
    /// The broadcast ended with segment `last_seq`.
    End {
        last_seq: u64,
    },
    /// The parent refused the subscription, or reported an error.
    Refused(Error),
}

/// One subscription on a parent; dropping it unsubscribes.
pub trait ParentSubscription: Send {
    /// The next event; None once the connection is gone (see `ParentLink::closed`).
    fn next(&mut self) -> BoxFuture<'_, Option<ParentEvent>>;
}

/// How reading a segment went.
pub enum SegmentRead {
    /// Frames were appended.
    Frames,
    /// The segment is complete.
    Finished,
    /// The parent gave the segment up (it moved us forward, `skipped`).
    Reset(ErrorCode),
    /// The connection failed.
    Failed(Error),
}

/// A segment's frames as they arrive.
pub trait SegmentReader: Send {
    /// Appends the frames that have arrived, waiting for at least one.
    fn read<'a>(&'a mut self, out: &'a mut Vec<WireFrame>) -> BoxFuture<'a, SegmentRead>;
    /// Tells the parent we do not want the rest.
    fn stop(&mut self, code: ErrorCode);
}

pub(super) struct Upstream {
    parents: Arc<dyn Parents>,
    link: Mutex<Option<Arc<dyn ParentLink>>>,
    current: AtomicUsize,
}

impl Upstream {
    pub(super) fn new(parents: Arc<dyn Parents>) -> Arc<Upstream> {
        Arc::new(Upstream {
            parents,
            link: Mutex::new(None),
            current: AtomicUsize::new(0),
        })
    }

    /// The connection to the current parent, made (trying each parent in turn) if there is none.
    async fn link(&self) -> Result<Arc<dyn ParentLink>> {
        let mut g = self.link.lock().await;
        let n = self.parents.count();
        if let Some(s) = g.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
            // That parent is gone: start with the next one.
            *g = None;
            let _ = self
                .current
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some((c + 1) % n));
        }
        let first = self.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let idx = (first + i) % n;
            match self.parents.connect(idx).await {
                Ok(s) => {
                    info!(parent = %self.parents.describe(idx), node = %s.name(), "connected to parent");
                    self.current.store(idx, Ordering::Relaxed);
                    *g = Some(s.clone());
                    return Ok(s);
                }
                Err(e) => {
                    warn!(side = "upstream", parent = %self.parents.describe(idx), "cannot connect: {e}");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err
            .unwrap_or_else(|| Error::new(Kind::Upstream, "no parent"))
            .upstream())
    }

    /// Starts the stream's one fetch from the parents (its leader; later subscribers follow
    /// it through the slot).
    pub(super) fn lead(self: &Arc<Self>, node: Arc<Node>, slot: Arc<Slot>, start: Start) {
        // Its own root span: the fetch outlives the subscriber that happened to start it.
        let span = info_span!(parent: None, "fetch", node = %node.name(), path = %slot.path);
        tokio::spawn(self.clone().fetch(node, slot, start).instrument(span));
    }

    async fn fetch(self: Arc<Self>, node: Arc<Node>, slot: Arc<Slot>, start: Start) {
        let mut st = FetchState {
            b: None,
            open: None,
            sealed_through: None,
            next: start,
            healthy: false,
        };
        let mut subs = slot.watch_subscribers();
        let mut backoff = Duration::from_millis(100);
        let linger = node.cfg.linger_secs.get();
        // The parent has this long to say the name is live before it counts as a waiting
        // room here (bounded apart from live streams; see `Registry`).
        let probe = tokio::time::sleep(node.cfg.probe_ms.get());
        tokio::pin!(probe);
        let mut probing = true;
        loop {
            let outcome = {
                let once = self.fetch_once(&node, &slot, &mut st);
                tokio::pin!(once);
                loop {
                    tokio::select! {
                        r = &mut once => break Some(r),
                        _ = idle(&mut subs, linger) => break None,
                        _ = &mut probe, if probing => {
                            probing = false;
                            if let Err(e) = node.registry.count_waiting(&slot) {
                                info!("{e}");
                                slot.fail(e.code(), e.reason());
                                node.registry.remove(&slot);
                                return;
                            }
                        }
                    }
                }
            };
            match outcome {
                None => {
                    if node.registry.remove_if_idle(&slot) {
                        if let Some(b) = st.b.take() {
                            slot.end_broadcast(&b);
                        }
                        info!("no subscribers left: upstream subscription closed");
                        return;
                    }
                }
                Some(Ok(())) => {
                    // The broadcast ended upstream: wait (in the parent's waiting room) for the next.
                    st.next = Start::Live;
                    backoff = Duration::from_millis(100);
                }
                Some(Err(e))
                    if st.b.is_none()
                        && e.remote_code().is_some()
                        && refusal_is_final(e.kind()) =>
                {
                    // The parent says no to the name itself: everyone waiting here hears it,
                    // the name is remembered for a while, and nothing is held for it.
                    info!(code = %e.code(), "parent refused the stream: {}", e.reason());
                    if matches!(e.kind(), Kind::NotFound | Kind::Overloaded) {
                        node.remember_refusal(&slot.path, e.code(), e.reason());
                    }
                    slot.fail(e.code(), e.reason().to_string());
                    node.registry.remove(&slot);
                    return;
                }
                Some(Err(e)) => {
                    if st.healthy {
                        backoff = Duration::from_millis(100);
                    }
                    st.healthy = false;
                    warn!(side = "upstream", code = %e.code(), next = ?st.next, "upstream subscription lost: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = idle(&mut subs, linger) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn fetch_once(&self, node: &Node, slot: &Arc<Slot>, st: &mut FetchState) -> Result<()> {
        let link = self.link().await?;
        let mut sub = link.subscribe(&slot.path, st.next).await?;
        inc(&node.stats.upstream_subscriptions_total);
        debug!(start = ?st.next, "subscribed upstream");
        let mut pending_end: Option<u64> = None;
        loop {
            let ev = match sub.next().await {
                Some(ev) => ev,
                None => return Err(link.closed().await.upstream()),
            };
            match ev {
                ParentEvent::Subscribed { instance, codec } => {
                    let same =
                        st.b.as_ref()
                            .is_some_and(|b| b.instance == instance && !b.is_finished());
                    if !same {
                        if let Some(old) = st.b.take() {
                            info!(
                                old = old.instance,
                                new = instance,
                                "parent has a new broadcast"
                            );
                            old.finish();
                        }
                        let b = Broadcast::new(
                            &slot.path,
                            instance,
                            codec,
                            &node.registry.cache,
                            // Batches from the parent are already coalesced: pass them on as they come.
                            &StoreConfig {
                                coalesce: Duration::ZERO,
                                ..node.registry.cfg.clone()
                            },
                        );
                        st.open = None;
                        st.sealed_through = None;
                        slot.set_broadcast(Some(b.clone()));
                        st.b = Some(b);
                    }
                    st.healthy = true;
                }
                // The subscription hands us audio only after Subscribed.
                ParentEvent::Segment { seq, frames } => st.read_segment(seq, frames).await?,
                ParentEvent::End { last_seq } => pending_end = Some(last_seq),
                ParentEvent::Refused(e) => return Err(e.upstream()),
            }
            if let Some(last) = pending_end {
                let past = matches!(st.next, Start::Seq(n) if n > last);
                if past
                    || st.sealed_through.is_some_and(|s| s >= last)
                    || st.b.as_ref().is_some_and(|b| b.span().latest.is_none())
                {
                    if let Some(b) = st.b.take() {
                        slot.end_broadcast(&b);
                    }
                    info!("broadcast ended upstream");
                    return Ok(());
                }
            }
        }
    }
}

struct FetchState {
    b: Option<Arc<Broadcast>>,
    /// The segment being received (possibly partly, if the parent was lost mid-way).
    open: Option<Arc<Segment>>,
    sealed_through: Option<u64>,
    /// Where to (re)subscribe from.
    next: Start,
    healthy: bool,
}

impl FetchState {
    /// Receives one segment stream into the store. A segment we hold part of (the parent
    /// was lost mid-way) is resumed: the frames we have are skipped, the rest appended.
    async fn read_segment(&mut self, seq: u64, mut frames: Box<dyn SegmentReader>) -> Result<()> {
        let Some(b) = self.b.clone() else {
            return Ok(());
        };
        if self.sealed_through.is_some_and(|s| seq <= s) {
            frames.stop(ErrorCode::Cancelled);
            return Ok(());
        }
        let (seg, have) = match &self.open {
            Some(o) if o.seq == seq => (o.clone(), o.len()),
            Some(o) if seq < o.seq => {
                frames.stop(ErrorCode::Cancelled);
                return Ok(());
            }
            _ => (b.begin(seq)?, 0),
        };
        self.open = Some(seg.clone());
        self.next = Start::Seq(seq);
        let mut i = 0usize;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            match frames.read(&mut batch).await {
                SegmentRead::Finished => break,
                SegmentRead::Frames => {
                    for f in batch.drain(..) {
                        if i >= have {
                            b.append_quiet(&seg, f)?;
                        }
                        i += 1;
                    }
                    // One wake-up per batch: what the parent sent together goes on together.
                    b.flush();
                }
                SegmentRead::Reset(code) => {
                    // The parent moved us forward (we were too slow): this segment stays short.
                    warn!(side = "upstream", seq, %code, "parent skipped us past a segment");
                    break;
                }
                SegmentRead::Failed(e) => {
                    if !e.is_gone() {
                        frames.stop(e.code());
                    }
                    return Err(e.upstream());
                }
            }
        }
        b.seal(&seg);
        self.open = None;
        self.sealed_through = Some(seq);
        self.next = Start::Seq(seq + 1);
        Ok(())
    }
}

/// Whether a parent's refusal of a stream it is asked for stands (not worth asking another).
fn refusal_is_final(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::NotFound | Kind::Overloaded | Kind::NotAllowed | Kind::Unauthorized
    )
}

/// Resolves once the slot has had no subscriber for `linger`.
async fn idle(rx: &mut watch::Receiver<usize>, linger: Duration) {
    loop {
        while *rx.borrow_and_update() > 0 {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        let came_back = tokio::time::timeout(linger, async {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending::<()>().await;
                }
                if *rx.borrow_and_update() > 0 {
                    return;
                }
            }
        })
        .await;
        if came_back.is_err() {
            return;
        }
    }
}
