//! A session: one connection to a node, its control stream, and the subscriptions (or the
//! publication) on it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::error::{Error, Kind, Result};
use crate::proto::{
    check_path, CatalogEntry, Codec, ErrorCode, Frame, Message, Role, SegmentHeader, Start,
    StreamInfo, UniHeader,
};
use crate::transport::{
    conn_error, varint, write_message, ControlReader, ControlWriter, FrameReader,
};

/// What a subscription hears.
pub enum Event {
    Subscribed {
        instance: u64,
        codec: Codec,
        /// The broadcast's start at its origin and who may listen (a version 2 node).
        info: Option<StreamInfo>,
    },
    /// Refused (or the connection was refused, for a publish).
    Error {
        code: u64,
        reason: String,
    },
    /// A segment stream, positioned after its header.
    Segment {
        seq: u64,
        /// The stream's now-playing title from this segment's start (version 3).
        title: Option<Bytes>,
        frames: FrameReader,
    },
    End {
        last_seq: u64,
    },
    PublishOk {
        instance: u64,
    },
    /// A page of the node's catalog (see `Session::catalog`).
    Catalog {
        after: String,
        entries: Vec<CatalogEntry>,
        more: bool,
    },
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Event>>>>;

/// One connection to a node, its control stream, and the subscriptions on it.
pub struct Session {
    pub conn: Connection,
    pub node: String,
    /// The protocol version both sides speak (the one this side said, which the node took).
    pub version: u64,
    ctl: ControlWriter,
    routes: Routes,
    /// The alternatives the node named when it said it is going away (draining).
    going_away: watch::Receiver<Option<Vec<String>>>,
    next_id: AtomicU64,
    tasks: Vec<tokio::task::AbortHandle>,
    /// One catalog request at a time.
    asking: tokio::sync::Mutex<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close(varint(ErrorCode::NoError), b"bye");
    }
}

/// The publish route uses this id (subscription ids start at 1).
const PUBLISH_ROUTE: u64 = 0;
/// The catalog's answers come on this one (no subscription id is this large: ids are
/// varints, below 2^62).
const CATALOG_ROUTE: u64 = u64::MAX;
/// How long a catalog page may take.
const CATALOG_WAIT: Duration = Duration::from_secs(5);

fn lock(r: &Routes) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Event>>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    pub(super) async fn start(
        conn: Connection,
        role: Role,
        token: &str,
        version: u64,
    ) -> Result<Arc<Session>> {
        let (mut send, recv) = conn.open_bi().await.map_err(conn_error)?;
        let mut reader = ControlReader::new(recv);
        write_message(
            &mut send,
            &Message::Hello {
                version,
                role,
                token: Bytes::copy_from_slice(token.as_bytes()),
            },
        )
        .await?;
        let first = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
        let node = match first {
            Err(_) => return Err(Error::timeout("waiting for the server's hello")),
            Ok(Ok(Some(Message::HelloOk { node, .. }))) => node,
            Ok(Ok(Some(Message::Error { code, reason }))) => {
                return Err(Error::remote(ErrorCode::from_wire(code), reason))
            }
            Ok(Ok(Some(other))) => {
                return Err(Error::protocol(format!("expected hello, got {other:?}")))
            }
            Ok(Ok(None)) => return Err(conn_error(conn.closed().await)),
            Ok(Err(e)) => {
                if let Some(reason) = conn.close_reason() {
                    return Err(conn_error(reason));
                }
                return Err(e);
            }
        };
        let routes: Routes = Arc::default();
        let ctl = ControlWriter::new(send);
        let (away, going_away) = watch::channel(None);
        let span = tracing::info_span!("session", node = %node, remote = %conn.remote_address());
        let r = routes.clone();
        let reader_task = tokio::spawn(
            async move {
                loop {
                    let m = match reader.next().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            debug!("control stream ended: {e}");
                            break;
                        }
                    };
                    let (id, ev) = match m {
                        Message::Subscribed {
                            id,
                            instance,
                            codec,
                            info,
                        } => (
                            id,
                            Event::Subscribed {
                                instance,
                                codec,
                                info,
                            },
                        ),
                        Message::SubscribeError { id, code, reason } => {
                            (id, Event::Error { code, reason })
                        }
                        Message::StreamEnd { id, last_seq } => (id, Event::End { last_seq }),
                        Message::PublishOk { instance } => {
                            (PUBLISH_ROUTE, Event::PublishOk { instance })
                        }
                        Message::Catalog {
                            after,
                            entries,
                            more,
                        } => (
                            CATALOG_ROUTE,
                            Event::Catalog {
                                after,
                                entries,
                                more,
                            },
                        ),
                        Message::GoAway { alternatives } => {
                            info!(?alternatives, "node is going away");
                            let _ = away.send(Some(alternatives));
                            continue;
                        }
                        Message::Error { code, reason } => {
                            warn!(code, %reason, "node reported an error");
                            let routes: Vec<_> = lock(&r).values().cloned().collect();
                            for tx in routes {
                                let _ = tx
                                    .send(Event::Error {
                                        code,
                                        reason: reason.clone(),
                                    })
                                    .await;
                            }
                            continue;
                        }
                        other => {
                            warn!("unexpected message from node: {other:?}");
                            break;
                        }
                    };
                    let tx = lock(&r).get(&id).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(ev).await;
                    }
                }
                // Dropping the routes ends every subscription's event stream.
                lock(&r).clear();
            }
            .instrument(span.clone()),
        );
        let r = routes.clone();
        let c = conn.clone();
        let uni_task = tokio::spawn(
            async move {
                // Each segment stream's header is read on its own, and streams are handed on
                // in the order the node opened them (see `StreamOrder`): a stream whose header
                // is slow to come holds the others up for a moment at most.
                let mut reading = futures_util::stream::FuturesUnordered::new();
                let mut order = StreamOrder::default();
                loop {
                    let wake = order.deadline();
                    tokio::select! {
                        recv = c.accept_uni() => match recv {
                            Ok(recv) => {
                                let i = order.opened();
                                reading.push(read_segment_header(i, FrameReader::new(recv)));
                            }
                            Err(_) => break,
                        },
                        Some((i, frames, header)) = futures_util::StreamExt::next(&mut reading) => {
                            order.read(i, (frames, header), Instant::now());
                        }
                        _ = sleep_until_some(wake) => {}
                    }
                    for (mut frames, header) in order.ready(Instant::now()) {
                        match header {
                            Ok(SegmentHeader { sub_id, seq, title }) => {
                                let tx = lock(&r).get(&sub_id).cloned();
                                match tx {
                                    Some(tx) => {
                                        let _ =
                                            tx.send(Event::Segment { seq, title, frames }).await;
                                    }
                                    None => frames.stop(ErrorCode::Cancelled),
                                }
                            }
                            Err(e) => {
                                debug!("bad segment stream: {e}");
                                frames.stop(e.code());
                            }
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Arc::new(Session {
            conn,
            node,
            version,
            ctl,
            routes,
            going_away,
            next_id: AtomicU64::new(1),
            tasks: vec![reader_task.abort_handle(), uni_task.abort_handle()],
            asking: tokio::sync::Mutex::new(()),
        }))
    }

    /// Says we are done (finishes the control stream) and waits, up to `timeout`, for the
    /// node to close the connection after taking everything we sent.
    pub async fn close_gracefully(&self, timeout: Duration) {
        self.ctl.finish().await;
        let _ = tokio::time::timeout(timeout, self.conn.closed()).await;
    }

    /// Resolves when the node says it is going away, with the alternatives it names.
    pub async fn going_away(&self) -> Vec<String> {
        let mut rx = self.going_away.clone();
        loop {
            if let Some(a) = rx.borrow_and_update().clone() {
                return a;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Why the connection closed (waits until it has).
    pub async fn closed(&self) -> Error {
        conn_error(self.conn.closed().await)
    }

    pub async fn subscribe(self: &Arc<Self>, path: &str, start: Start) -> Result<Subscription> {
        self.subscribe_with(path, start, 0).await
    }

    /// Subscribes with `flags` (`proto::SUBSCRIBE_LOW_LATENCY`).
    pub async fn subscribe_with(
        self: &Arc<Self>,
        path: &str,
        start: Start,
        flags: u64,
    ) -> Result<Subscription> {
        check_path(path)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        lock(&self.routes).insert(id, tx);
        // Made before the message goes: a failed send unsubscribes (its route) on drop.
        let sub = Subscription::new(id, rx, self.clone());
        self.ctl
            .send(Message::Subscribe {
                id,
                path: path.to_string(),
                start,
                flags,
            })
            .await?;
        Ok(sub)
    }

    /// A page of the node's catalog: the live streams after `after` (empty: from the
    /// first), in path order, and whether more follow. A relay asks its parents.
    pub async fn catalog(&self, after: &str) -> Result<(Vec<CatalogEntry>, bool)> {
        let _one = self.asking.lock().await;
        let (tx, mut rx) = mpsc::channel(1);
        lock(&self.routes).insert(CATALOG_ROUTE, tx);
        let asked = async {
            self.ctl
                .send(Message::CatalogRequest {
                    after: after.to_string(),
                })
                .await?;
            let deadline = tokio::time::Instant::now() + CATALOG_WAIT;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Err(Error::timeout("waiting for the node's catalog")),
                    Ok(None) => return Err(Error::new(Kind::Closed, "the connection ended")),
                    Ok(Some(Event::Catalog {
                        after: a,
                        entries,
                        more,
                    })) if a == after => return Ok((entries, more)),
                    // A late answer to an earlier request (it timed out): not this one's.
                    Ok(Some(Event::Catalog { .. })) => continue,
                    Ok(Some(Event::Error { code, reason })) => {
                        return Err(Error::remote(ErrorCode::from_wire(code), reason))
                    }
                    Ok(Some(_)) => {
                        return Err(Error::protocol("unexpected answer to a catalog request"))
                    }
                }
            }
        };
        let r = asked.await;
        lock(&self.routes).remove(&CATALOG_ROUTE);
        r
    }

    /// Announces a broadcast on `path`; `broadcast` names it (the same for every origin a
    /// publisher sends it to, and when it comes back after losing one).
    pub async fn publish(
        self: &Arc<Self>,
        path: &str,
        codec: Codec,
        broadcast: Option<u64>,
    ) -> Result<Publication> {
        check_path(path)?;
        let (tx, mut rx) = mpsc::channel(4);
        lock(&self.routes).insert(PUBLISH_ROUTE, tx);
        self.ctl
            .send(Message::Publish {
                path: path.to_string(),
                codec,
                broadcast,
            })
            .await?;
        let instance = match rx.recv().await {
            Some(Event::PublishOk { instance }) => instance,
            Some(Event::Error { code, reason }) => {
                return Err(Error::remote(ErrorCode::from_wire(code), reason))
            }
            _ => return Err(self.closed().await),
        };
        let mut send = self.conn.open_uni().await.map_err(conn_error)?;
        let mut hdr = BytesMut::new();
        UniHeader::Publish.encode(&mut hdr);
        send.write_all(&hdr).await?;
        Ok(Publication {
            instance,
            send,
            session: self.clone(),
            errors: rx,
        })
    }
}

/// Reads a segment stream's header (at most 10 s); `i` is the stream's place in the order
/// the node opened them.
async fn read_segment_header(
    i: u64,
    mut frames: FrameReader,
) -> (u64, FrameReader, Result<SegmentHeader>) {
    let header = tokio::time::timeout(Duration::from_secs(10), frames.segment_header()).await;
    let header = match header {
        Ok(h) => h,
        Err(_) => Err(Error::timeout(
            "segment stream header did not arrive in 10 s",
        )),
    };
    (i, frames, header)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long a stream whose header was read waits for the streams opened before it.
const HOL_LIMIT: Duration = Duration::from_millis(200);

/// Puts streams read side by side back in the order they were opened (a node opens a
/// subscription's segment streams in sequence order, and QUIC numbers streams in the order
/// they are opened): an item is ready once every earlier one is, or once it has waited
/// `HOL_LIMIT` for them. Time is passed in.
struct StreamOrder<T> {
    opened: u64,
    /// The first stream not yet handed on in order.
    next: u64,
    /// Read and waiting for an earlier stream, with when they were read.
    done: BTreeMap<u64, (T, Instant)>,
    /// Handed on ahead of an earlier stream.
    early: std::collections::BTreeSet<u64>,
}

impl<T> Default for StreamOrder<T> {
    fn default() -> Self {
        StreamOrder {
            opened: 0,
            next: 0,
            done: BTreeMap::new(),
            early: Default::default(),
        }
    }
}

impl<T> StreamOrder<T> {
    /// A stream was opened: its place.
    fn opened(&mut self) -> u64 {
        self.opened += 1;
        self.opened - 1
    }

    /// Stream `i` has been read.
    fn read(&mut self, i: u64, item: T, now: Instant) {
        self.done.insert(i, (item, now));
    }

    /// What may be handed on now, in order.
    fn ready(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        loop {
            while self.early.remove(&self.next) {
                self.next += 1;
            }
            match self.done.remove(&self.next) {
                Some((item, _)) => {
                    out.push(item);
                    self.next += 1;
                }
                None => break,
            }
        }
        let late: Vec<u64> = self
            .done
            .iter()
            .filter(|(_, (_, at))| now >= *at + HOL_LIMIT)
            .map(|(i, _)| *i)
            .collect();
        for i in late {
            if let Some((item, _)) = self.done.remove(&i) {
                out.push(item);
                self.early.insert(i);
            }
        }
        out
    }

    /// When the next item waiting for an earlier one goes anyway.
    fn deadline(&self) -> Option<Instant> {
        self.done.values().map(|(_, at)| *at + HOL_LIMIT).min()
    }
}

/// A subscription's events; dropping it unsubscribes.
///
/// QUIC delivers the control stream and each segment stream independently, and the session
/// reads them apart; this puts the events back in the order the node sent them: `Subscribed`
/// before any audio, and `End` after the last segment it names. Segments come in the order
/// the node opened their streams (see `SegmentOrder`); one that comes after a later one was
/// handed out is dropped.
pub struct Subscription {
    pub id: u64,
    rx: mpsc::Receiver<Event>,
    session: Arc<Session>,
    subscribed: bool,
    /// Audio that overtook `Subscribed`.
    early: VecDeque<Event>,
    /// Highest segment handed out so far.
    max_seq: Option<u64>,
    /// An `End` that overtook its last segment, and how long we wait for that segment.
    pending_end: Option<(u64, Instant)>,
}

/// Segments a subscription holds while it waits for its `Subscribed`.
const MAX_EARLY: usize = 32;
/// How long an `End` waits for a segment it names that has not arrived.
const END_GRACE: Duration = Duration::from_secs(2);

impl Subscription {
    fn new(id: u64, rx: mpsc::Receiver<Event>, session: Arc<Session>) -> Subscription {
        Subscription {
            id,
            rx,
            session,
            subscribed: false,
            early: Default::default(),
            max_seq: None,
            pending_end: None,
        }
    }

    fn end_ready(&self, last: u64) -> bool {
        self.max_seq.is_some_and(|m| m >= last)
    }

    /// The next event, in the order described above; None once the connection is gone
    /// (see `Session::closed`).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if self.subscribed {
                if let Some(ev) = self.early.pop_front() {
                    if let Some(ev) = self.hand_out(ev) {
                        return Some(ev);
                    }
                    continue;
                }
            }
            if let Some((last, deadline)) = self.pending_end {
                if self.end_ready(last) {
                    self.pending_end = None;
                    return Some(Event::End { last_seq: last });
                }
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(ev)) => {
                        if let Some(ev) = self.order(ev).and_then(|ev| self.hand_out(ev)) {
                            return Some(ev);
                        }
                    }
                    Ok(None) => return None,
                    Err(_) => {
                        // The segment never came (the node skipped us past it): end anyway.
                        self.pending_end = None;
                        return Some(Event::End { last_seq: last });
                    }
                }
                continue;
            }
            let ev = self.rx.recv().await?;
            if let Some(ev) = self.order(ev).and_then(|ev| self.hand_out(ev)) {
                return Some(ev);
            }
        }
    }

    /// A segment in sequence, or None (dropped: it came after a later one).
    fn hand_out(&mut self, ev: Event) -> Option<Event> {
        if let Event::Segment { seq, title, frames } = ev {
            if self.max_seq.is_some_and(|m| seq <= m) {
                debug!(seq, "segment came after a later one: dropped");
                let mut frames = frames;
                frames.stop(ErrorCode::Cancelled);
                return None;
            }
            self.max_seq = Some(seq);
            return Some(Event::Segment { seq, title, frames });
        }
        Some(ev)
    }

    /// Returns the event if it may be handed out now, or holds it back.
    fn order(&mut self, ev: Event) -> Option<Event> {
        match ev {
            Event::Segment { .. } if !self.subscribed => {
                if self.early.len() >= MAX_EARLY {
                    return Some(Event::Error {
                        code: ErrorCode::ProtocolViolation.as_u64(),
                        reason: format!("node sent {MAX_EARLY} segments before subscribed"),
                    });
                }
                self.early.push_back(ev);
                None
            }
            Event::Subscribed { .. } => {
                self.subscribed = true;
                Some(ev)
            }
            Event::End { last_seq } if !self.end_ready(last_seq) => {
                self.pending_end = Some((last_seq, Instant::now() + END_GRACE));
                None
            }
            other => Some(other),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.session.routes).remove(&self.id);
        self.session
            .ctl
            .send_later(Message::Unsubscribe { id: self.id });
    }
}

/// A stream being published: frames go out on one ordered stream.
pub struct Publication {
    pub instance: u64,
    send: SendStream,
    session: Arc<Session>,
    errors: mpsc::Receiver<Event>,
}

impl Publication {
    pub async fn send(&mut self, frames: &[Frame]) -> Result<()> {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf);
        }
        let res = tokio::select! {
            r = self.send.write_all(&buf) => r.map_err(Error::from),
            Some(Event::Error { code, reason }) = self.errors.recv() => {
                Err(Error::remote(ErrorCode::from_wire(code), reason))
            }
        };
        if res.is_err() {
            if let Some(reason) = self.session.conn.close_reason() {
                return Err(conn_error(reason));
            }
        }
        res
    }

    /// Ends the broadcast: the frame stream is finished, the control stream half-closed, and
    /// we wait until the node has taken it all and closed the connection.
    pub async fn finish(mut self) -> Result<()> {
        self.send.finish()?;
        self.session.close_gracefully(Duration::from_secs(10)).await;
        match self.session.conn.close_reason() {
            Some(ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == 0 => Ok(()),
            Some(e) => Err(conn_error(e)),
            None => Err(Error::timeout(
                "waiting for the node to take the end of the broadcast",
            )),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_handed_on_in_the_order_opened_and_a_slow_one_holds_up_the_rest_briefly() {
        let t0 = Instant::now();
        let mut o = StreamOrder::default();
        let (a, b, c, d) = (o.opened(), o.opened(), o.opened(), o.opened());
        // Read out of order: nothing goes before the first.
        o.read(b, "b", t0);
        assert!(o.ready(t0).is_empty());
        o.read(a, "a", t0);
        assert_eq!(o.ready(t0), ["a", "b"]);
        // `c` is slow: `d` waits for it, but only HOL_LIMIT.
        o.read(d, "d", t0);
        assert!(o.ready(t0 + HOL_LIMIT / 2).is_empty());
        assert_eq!(o.deadline(), Some(t0 + HOL_LIMIT));
        assert_eq!(o.ready(t0 + HOL_LIMIT), ["d"]);
        assert_eq!(o.deadline(), None);
        // `c` comes at last, and the order goes on after `d`.
        o.read(c, "c", t0 + HOL_LIMIT * 2);
        let e = o.opened();
        o.read(e, "e", t0 + HOL_LIMIT * 2);
        assert_eq!(o.ready(t0 + HOL_LIMIT * 2), ["c", "e"]);
    }
}
