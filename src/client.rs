//! The client side of the protocol, one code for everything that connects to a node:
//! `quicast listen`, `quicast publish`, and a relay fetching from its parent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, SendStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::{self, Codec, Frame, Message, Role, SegmentHeader, Start, UniHeader, VERSION};
use crate::wire::{write_message, ControlReader, FrameReader};

/// `quic://HOST:PORT[/STREAM]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl QuicUrl {
    pub fn parse(s: &str) -> Result<QuicUrl> {
        let rest = s
            .strip_prefix("quic://")
            .ok_or_else(|| Error::Url(s.into(), "must start with quic://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once("]:")
                .ok_or_else(|| Error::Url(s.into(), "IPv6 host needs [ADDR]:PORT"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| Error::Url(s.into(), "missing :PORT"))?
        };
        if host.is_empty() {
            return Err(Error::Url(s.into(), "missing host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| Error::Url(s.into(), "bad port"))?;
        if !path.is_empty() {
            proto::check_path(path).map_err(|_| Error::Url(s.into(), "bad stream path"))?;
        }
        Ok(QuicUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub async fn resolve(&self) -> Result<SocketAddr> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await?;
        addrs
            .next()
            .ok_or(Error::Url(self.host.clone(), "host did not resolve"))
    }

    pub fn stream(&self) -> Result<&str> {
        if self.path.is_empty() {
            return Err(Error::Url(
                format!("quic://{}", self.authority()),
                "no stream path in URL",
            ));
        }
        Ok(&self.path)
    }
}

impl std::fmt::Display for QuicUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quic://{}/{}", self.authority(), self.path)
    }
}

/// Maps a QUIC connection error to the peer's code and reason when the peer closed it.
pub fn conn_error(e: ConnectionError) -> Error {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let code =
                ErrorCode::from_u64(c.error_code.into_inner()).unwrap_or(ErrorCode::Internal);
            Error::Remote {
                code,
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            }
        }
        other => Error::Connection(other),
    }
}

/// A client endpoint: one UDP socket, many connections.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Client {
    pub fn new(bind: SocketAddr, trust: &crate::tls::Trust) -> Result<Client> {
        let endpoint = crate::tls::client_endpoint(bind)?;
        Ok(Client {
            endpoint,
            config: crate::tls::client_config(trust)?,
        })
    }

    /// This client makes a full TLS handshake on every connection: no session resumption.
    pub fn without_resumption(mut self, trust: &crate::tls::Trust) -> Result<Client> {
        self.config =
            crate::tls::client_config_with(trust, false, crate::tls::listener_transport())?;
        Ok(self)
    }

    /// A client whose connections use `config` (a relay's, for its parents).
    pub fn with_config(bind: SocketAddr, config: quinn::ClientConfig) -> Result<Client> {
        Ok(Client {
            endpoint: crate::tls::client_endpoint(bind)?,
            config,
        })
    }

    /// A client bound to an ephemeral port of the same address family as `target`.
    pub fn for_target(target: &SocketAddr, trust: &crate::tls::Trust) -> Result<Client> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|_| Error::Url(String::new(), "bind address"))?;
        Client::new(bind, trust)
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    pub async fn connect(&self, url: &QuicUrl, role: Role, token: &str) -> Result<Arc<Session>> {
        Session::start(self.connect_raw(url).await?, role, token).await
    }

    /// A bare QUIC connection (TLS done, nothing said yet): for tools and tests that speak
    /// the protocol themselves.
    pub async fn connect_raw(&self, url: &QuicUrl) -> Result<Connection> {
        let addr = url.resolve().await?;
        self.endpoint
            .connect_with(self.config.clone(), addr, &url.host)?
            .await
            .map_err(conn_error)
    }
}

/// What a subscription hears.
pub enum Event {
    Subscribed {
        instance: u64,
        codec: Codec,
    },
    /// Refused (or the connection was refused, for a publish).
    Error {
        code: u64,
        reason: String,
    },
    /// A segment stream, positioned after its header.
    Segment {
        seq: u64,
        frames: FrameReader,
    },
    End {
        last_seq: u64,
    },
    PublishOk {
        instance: u64,
    },
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Event>>>>;

/// One connection to a node, its control stream, and the subscriptions on it.
pub struct Session {
    pub conn: Connection,
    pub node: String,
    /// Unbounded: only our own calls (subscribe, publish, unsubscribe) put messages here, and
    /// an unsubscribe from `Drop` must never be lost to a full channel.
    ctl: mpsc::UnboundedSender<Message>,
    finish: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    routes: Routes,
    next_id: AtomicU64,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close(ErrorCode::NoError.varint(), b"bye");
    }
}

/// The publish route uses this id (subscription ids start at 1).
const PUBLISH_ROUTE: u64 = 0;

fn lock(r: &Routes) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Event>>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    async fn start(conn: Connection, role: Role, token: &str) -> Result<Arc<Session>> {
        let (mut send, recv) = conn.open_bi().await.map_err(conn_error)?;
        let mut reader = ControlReader::new(recv);
        write_message(
            &mut send,
            &Message::Hello {
                version: VERSION,
                role,
                token: Bytes::copy_from_slice(token.as_bytes()),
            },
        )
        .await?;
        let first = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
        let node = match first {
            Err(_) => return Err(Error::Timeout("waiting for the server's hello")),
            Ok(Ok(Some(Message::HelloOk { node, .. }))) => node,
            Ok(Ok(Some(Message::Error { code, reason }))) => {
                return Err(Error::Remote {
                    code: ErrorCode::from_u64(code).unwrap_or(ErrorCode::Internal),
                    reason,
                })
            }
            Ok(Ok(Some(other))) => {
                return Err(Error::refused(
                    ErrorCode::ProtocolViolation,
                    format!("expected hello, got {other:?}"),
                ))
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
        let (ctl, mut ctl_rx) = mpsc::unbounded_channel::<Message>();
        let (finish_tx, mut finish_rx) = tokio::sync::oneshot::channel::<()>();
        let span =
            tracing::info_span!("upstream_conn", node = %node, remote = %conn.remote_address());
        let writer = tokio::spawn(
            async move {
                loop {
                    let m = tokio::select! {
                        m = ctl_rx.recv() => m,
                        _ = &mut finish_rx => None,
                    };
                    let Some(m) = m else { break };
                    if write_message(&mut send, &m).await.is_err() {
                        break;
                    }
                }
                // Half-close: the node sees we are done and closes once it has taken everything.
                let _ = send.finish();
            }
            .instrument(span.clone()),
        );
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
                        } => (id, Event::Subscribed { instance, codec }),
                        Message::SubscribeError { id, code, reason } => {
                            (id, Event::Error { code, reason })
                        }
                        Message::StreamEnd { id, last_seq } => (id, Event::End { last_seq }),
                        Message::PublishOk { instance } => {
                            (PUBLISH_ROUTE, Event::PublishOk { instance })
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
                            Ok(SegmentHeader { sub_id, seq }) => {
                                let tx = lock(&r).get(&sub_id).cloned();
                                match tx {
                                    Some(tx) => {
                                        let _ = tx.send(Event::Segment { seq, frames }).await;
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
            ctl,
            finish: Mutex::new(Some(finish_tx)),
            routes,
            next_id: AtomicU64::new(1),
            tasks: vec![
                writer.abort_handle(),
                reader_task.abort_handle(),
                uni_task.abort_handle(),
            ],
        }))
    }

    /// Says we are done (finishes the control stream) and waits, up to `timeout`, for the
    /// node to close the connection after taking everything we sent.
    pub async fn close_gracefully(&self, timeout: Duration) {
        if let Some(f) = self.finish.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = f.send(());
        }
        let _ = tokio::time::timeout(timeout, self.conn.closed()).await;
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Why the connection closed (waits until it has).
    pub async fn closed(&self) -> Error {
        conn_error(self.conn.closed().await)
    }

    pub async fn subscribe(self: &Arc<Self>, path: &str, start: Start) -> Result<Subscription> {
        proto::check_path(path)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        lock(&self.routes).insert(id, tx);
        self.ctl
            .send(Message::Subscribe {
                id,
                path: path.to_string(),
                start,
            })
            .map_err(|_| Error::Closed)?;
        Ok(Subscription::new(id, rx, self.clone()))
    }

    pub async fn publish(self: &Arc<Self>, path: &str, codec: Codec) -> Result<Publication> {
        proto::check_path(path)?;
        let (tx, mut rx) = mpsc::channel(4);
        lock(&self.routes).insert(PUBLISH_ROUTE, tx);
        self.ctl
            .send(Message::Publish {
                path: path.to_string(),
                codec,
            })
            .map_err(|_| Error::Closed)?;
        let instance = match rx.recv().await {
            Some(Event::PublishOk { instance }) => instance,
            Some(Event::Error { code, reason }) => {
                return Err(Error::Remote {
                    code: ErrorCode::from_u64(code).unwrap_or(ErrorCode::Internal),
                    reason,
                })
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
        Err(_) => Err(Error::Timeout(
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
        if let Event::Segment { seq, frames } = ev {
            if self.max_seq.is_some_and(|m| seq <= m) {
                debug!(seq, "segment came after a later one: dropped");
                let mut frames = frames;
                frames.stop(ErrorCode::Cancelled);
                return None;
            }
            self.max_seq = Some(seq);
            return Some(Event::Segment { seq, frames });
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
        let _ = self.session.ctl.send(Message::Unsubscribe { id: self.id });
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
            Some(Event::Error { code, reason }) = self.errors.recv() => Err(Error::Remote {
                code: ErrorCode::from_u64(code).unwrap_or(ErrorCode::Internal), reason
            }),
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
        self.send.finish().map_err(|_| Error::Closed)?;
        self.session.close_gracefully(Duration::from_secs(10)).await;
        match self.session.conn.close_reason() {
            Some(ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == 0 => Ok(()),
            Some(e) => Err(conn_error(e)),
            None => Err(Error::Timeout(
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

    #[test]
    fn urls() {
        let u = QuicUrl::parse("quic://127.0.0.1:4433/spaces/town-hall").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 4433, "spaces/town-hall")
        );
        let u = QuicUrl::parse("quic://[::1]:9/x").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority(), "[::1]:9");
        assert_eq!(QuicUrl::parse("quic://h:1").unwrap().path, "");
        assert!(QuicUrl::parse("http://h:1/x").is_err());
        assert!(QuicUrl::parse("quic://h/x").is_err());
        assert!(QuicUrl::parse("quic://h:99999/x").is_err());
        assert!(QuicUrl::parse("quic://h:1/../etc").is_err());
    }
}
