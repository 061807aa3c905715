//! A relay's source of segments: its parents. One upstream subscription per stream however
//! many subscribe below (the first subscriber starts it, the others wait on it, like a CDN's
//! cache lock), failover to the next parent, and resume from the next segment needed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::client::{Client, Event, QuicUrl, Session};
use crate::error::{Error, ErrorCode, Result};
use crate::proto::{Role, Start};
use crate::server::Node;
use crate::store::{Broadcast, Segment, Slot, StoreConfig, Stored};
use crate::tls::Trust;
use crate::wire::FrameReader;

pub struct Upstream {
    parents: Vec<QuicUrl>,
    client: Client,
    session: Mutex<Option<Arc<Session>>>,
    current: AtomicUsize,
    connect_timeout: Duration,
}

impl Upstream {
    /// `streams`: how many streams the relay may carry at once (its parents may send all
    /// of them over one connection).
    pub fn new(
        parents: Vec<QuicUrl>,
        trust: &Trust,
        connect_timeout: Duration,
        streams: u64,
    ) -> Result<Arc<Upstream>> {
        let v6 = parents.first().is_some_and(|p| p.host.contains(':'));
        let bind = if v6 { "[::]:0" } else { "0.0.0.0:0" };
        let client = Client::with_config(
            bind.parse().map_err(|_| Error::Url(bind.into(), "bind"))?,
            crate::tls::upstream_config(trust, streams)?,
        )?;
        Ok(Arc::new(Upstream {
            parents,
            client,
            session: Mutex::new(None),
            current: AtomicUsize::new(0),
            connect_timeout,
        }))
    }

    /// The connection to the current parent, made (trying each parent in turn) if there is none.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut g = self.session.lock().await;
        if let Some(s) = g.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
            // That parent is gone: start with the next one.
            *g = None;
            let n = self.parents.len();
            let _ = self
                .current
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some((c + 1) % n));
        }
        let n = self.parents.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let url = &self.parents[idx];
            match tokio::time::timeout(
                self.connect_timeout,
                self.client.connect(url, Role::Relay, ""),
            )
            .await
            {
                Ok(Ok(s)) => {
                    info!(parent = %url.authority(), node = %s.node, "connected to parent");
                    self.current.store(idx, Ordering::Relaxed);
                    *g = Some(s.clone());
                    return Ok(s);
                }
                Ok(Err(e)) => {
                    warn!(side = "upstream", parent = %url.authority(), "cannot connect: {e}");
                    last_err = Some(e);
                }
                Err(_) => {
                    warn!(side = "upstream", parent = %url.authority(), "connect timed out");
                    last_err = Some(Error::Timeout("connecting to parent"));
                }
            }
        }
        Err(last_err.unwrap_or(Error::refused(ErrorCode::Upstream, "no parent")))
    }

    pub fn spawn_fetch(self: &Arc<Self>, node: Arc<Node>, slot: Arc<Slot>, start: Start) {
        // Its own root span: the fetch outlives the subscriber that happened to start it.
        let span = info_span!(parent: None, "fetch", node = %node.cfg.name, path = %slot.path);
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
        // The parent has this long to say the name is live before it counts as a waiting
        // room here (bounded apart from live streams; see `Registry`).
        let probe = tokio::time::sleep(node.cfg.probe);
        tokio::pin!(probe);
        let mut probing = true;
        loop {
            let outcome = {
                let once = self.fetch_once(&node, &slot, &mut st);
                tokio::pin!(once);
                loop {
                    tokio::select! {
                        r = &mut once => break Some(r),
                        _ = idle(&mut subs, node.cfg.linger) => break None,
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
                            b.end();
                        }
                        slot.set_broadcast(None);
                        info!("no subscribers left: upstream subscription closed");
                        return;
                    }
                }
                Some(Ok(())) => {
                    // The broadcast ended upstream: wait (in the parent's waiting room) for the next.
                    st.next = Start::Live;
                    backoff = Duration::from_millis(100);
                }
                Some(Err(Error::Remote { code, reason }))
                    if st.b.is_none() && refusal_is_final(code) =>
                {
                    // The parent says no to the name itself: everyone waiting here hears it,
                    // the name is remembered for a while, and nothing is held for it.
                    info!(%code, "parent refused the stream: {reason}");
                    if matches!(code, ErrorCode::NotFound | ErrorCode::Overloaded) {
                        node.remember_refusal(&slot.path, code, &reason);
                    }
                    slot.fail(code, reason);
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
                        _ = idle(&mut subs, node.cfg.linger) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn fetch_once(&self, node: &Node, slot: &Arc<Slot>, st: &mut FetchState) -> Result<()> {
        let session = self.session().await?;
        let mut sub = session.subscribe(&slot.path, st.next).await?;
        node.stats
            .upstream_subscriptions_total
            .fetch_add(1, Ordering::Relaxed);
        debug!(start = ?st.next, "subscribed upstream");
        let mut pending_end: Option<u64> = None;
        loop {
            let ev = match sub.next().await {
                Some(ev) => ev,
                None => return Err(session.closed().await),
            };
            match ev {
                Event::Subscribed { instance, codec } => {
                    let same =
                        st.b.as_ref()
                            .is_some_and(|b| b.instance == instance && !b.is_ended());
                    if !same {
                        if let Some(old) = st.b.take() {
                            info!(
                                old = old.instance,
                                new = instance,
                                "parent has a new broadcast"
                            );
                            old.end();
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
                Event::Segment { seq, frames } => st.read_segment(seq, frames).await?,
                Event::End { last_seq } => pending_end = Some(last_seq),
                Event::Error { code, reason } => {
                    let code = ErrorCode::from_u64(code).unwrap_or(ErrorCode::Internal);
                    return Err(Error::Remote { code, reason });
                }
                Event::PublishOk { .. } => {}
            }
            if let Some(last) = pending_end {
                let past = matches!(st.next, Start::Seq(n) if n > last);
                if past
                    || st.sealed_through.is_some_and(|s| s >= last)
                    || st.b.as_ref().is_some_and(|b| b.edge().latest.is_none())
                {
                    if let Some(b) = st.b.take() {
                        b.end();
                        if slot.broadcast().is_some_and(|cur| Arc::ptr_eq(&cur, &b)) {
                            slot.set_broadcast(None);
                        }
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
    async fn read_segment(&mut self, seq: u64, mut frames: FrameReader) -> Result<()> {
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
            match frames.frames(&mut batch).await {
                Ok(()) if batch.is_empty() => break,
                Ok(()) => {
                    for (frame, record) in batch.drain(..) {
                        if i >= have {
                            b.append_quiet(&seg, Stored { frame, record })?;
                        }
                        i += 1;
                    }
                    // One wake-up per batch: what the parent sent together goes on together.
                    b.flush();
                }
                Err(Error::Read(quinn::ReadError::Reset(code))) => {
                    // The parent moved us forward (we were too slow): this segment stays short.
                    warn!(side = "upstream", seq, code = %code, "parent skipped us past a segment");
                    break;
                }
                Err(Error::Read(quinn::ReadError::ConnectionLost(e))) => {
                    return Err(crate::client::conn_error(e))
                }
                Err(e) => {
                    frames.stop(e.code());
                    return Err(e);
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
fn refusal_is_final(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound
            | ErrorCode::Overloaded
            | ErrorCode::NotAllowed
            | ErrorCode::Unauthorized
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
