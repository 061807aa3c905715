//! One QUIC connection's life on the engine's thread: its control stream (hello, then
//! subscribe, unsubscribe, publish), the checks each message must pass, its subscriptions
//! (handed to the QUIC egress) and its publish (handed to the QUIC ingress), its deadlines,
//! and the line it leaves in the log when it ends. No task per connection: the loop
//! (`server::quic`) calls in with each event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{Connection, Dir, Event, Incoming, StreamEvent, StreamId, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use super::control::{close, control, flush_control, refuse, refuse_quietly};
use super::delivery::{settle, step_each};
use super::quic::{Cmd, HandshakeRate};
use super::webtransport::{chose_h3, Wt};
use crate::egress::quic::Sub;
use crate::engine::{read_stream, Admit, App, Offered, Read};
use crate::error::{Error, Kind, Result};
use crate::ingress::quic::Ingest;
use crate::node::{dec, inc, Node, NotAdmitted, Peer, Presented, Publishing};
use crate::proto::{self, ErrorCode, Message, Role, SUBSCRIBE_LOW_LATENCY};

/// What a connection waits for, by when (checked by the loop when due): its connection
/// and uid, and what is due.
pub(super) type Deadline = Reverse<(Instant, usize, u64, Due)>;

/// What a connection's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// Its hello (the control stream and the hello in `hello-timeout`).
    Hello,
    /// A publisher's silence (`source-timeout`).
    Silence,
    /// A publisher ahead of real time may be read again.
    Pace,
    /// A connection idle for `hello-timeout` (nothing subscribed or published): closed if
    /// its address holds more than `max-idle-per-addr` such.
    Idle,
}

/// Every connection of one engine: the node, and what the loop needs from them.
pub(super) struct Sessions {
    pub(super) node: Arc<Node>,
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    uids: u64,
    rate: HandshakeRate,
    /// New connections a second above which clients must prove their address (Retry).
    retry_above: u64,
    /// Set once the node drains: where peers are told to go.
    pub(super) away: Option<Vec<String>>,
    /// The thread is closing its connections: newcomers are refused.
    pub(super) stopping: bool,
    /// Connections' deadlines (a hello due, a publisher's silence), checked when due.
    pub(super) deadlines: BinaryHeap<Deadline>,
    /// Subscriptions made on this thread as they were asked for, applied by the loop
    /// before it next waits (as the tasks' `Cmd::Subscribed` are).
    pub(super) ready: Vec<Cmd>,
}

impl Sessions {
    /// What a refused newcomer is told (`proto::Refusal`): why, when to come back, and the
    /// node's alternates (those it tells its peers when it drains, else from the config).
    fn refusal(&self, (why, retry_after): (&str, u32)) -> String {
        let alternates = match &self.away {
            Some(a) => a.clone(),
            None => self
                .node
                .cfg
                .alternates
                .iter()
                .map(|u| u.to_string())
                .collect(),
        };
        proto::Refusal {
            why: why.to_string(),
            retry_after: (retry_after > 0).then(|| Duration::from_secs(retry_after.into())),
            alternates,
        }
        .to_phrase()
    }

    pub(super) fn new(node: Arc<Node>, tx: mpsc::UnboundedSender<Cmd>, retry_above: u64) -> Self {
        Sessions {
            node,
            tx,
            uids: 0,
            rate: HandshakeRate::default(),
            retry_above,
            away: None,
            stopping: false,
            deadlines: BinaryHeap::new(),
            ready: Vec::new(),
        }
    }
}

/// One connection.
pub(super) struct Session {
    pub(super) uid: u64,
    pub(super) handle: usize,
    pub(super) remote: SocketAddr,
    pub(super) ctl: Option<StreamId>,
    pub(super) ctl_in: BytesMut,
    /// Control messages not yet taken by the stream (flow control).
    pub(super) ctl_out: Vec<Bytes>,
    /// Who the peer said it is, and the token it showed (after its hello).
    pub(super) hello: Option<(Role, Presented)>,
    pub(super) peer: Option<Peer>,
    /// The protocol version the peer said (what it is sent is in that version).
    pub(super) version: u64,
    /// Catalog pages asked for since when (bounded per `catalog::REFRESH`).
    pub(super) catalog_window: (Instant, usize),
    /// The credential a publisher proved (see `PublisherClaim`).
    pub(super) credential: Option<[u8; 32]>,
    pub(super) subs: HashMap<u64, Sub>,
    /// Subscriptions being made (the node may be waiting for the stream to start): an
    /// unsubscribe, or the connection's end, calls them off.
    pub(super) pending: HashMap<u64, Option<tokio::task::AbortHandle>>,
    pub(super) ingest: Option<Ingest>,
    /// A `Due::Pace` deadline is pending for its ingest.
    pub(super) paced: bool,
    pub(super) published: bool,
    /// The peer finished its control stream while publishing: closed once its frames are in.
    pub(super) closing: bool,
    pub(super) told: bool,
    pub(super) started: Instant,
    pub(super) subscribed: u64,
    /// Why it ended, when it did not end well.
    pub(super) why: Option<String>,
    /// Counted among its address's idle connections (no subscription, no publish).
    pub(super) idle: bool,
    /// Since when it has been idle.
    pub(super) idle_since: Instant,
    /// A browser's connection (ALPN `h3`): its HTTP/3 and WebTransport state.
    pub(super) wt: Option<Box<Wt>>,
}

impl App for Sessions {
    type Conn = Session;

    /// Admission before any cryptography: refusing costs one small packet. A flood of
    /// handshakes: each client proves its address first (a spoofed source never sees the
    /// Retry), costing a real one a round trip.
    fn incoming(&mut self, incoming: &Incoming) -> Admit<Session> {
        // Out of the queue of newcomers (see `newcomer`).
        let _ = self.node.stats.join_queue.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        let admitted = if self.stopping {
            Err(NotAdmitted::Draining)
        } else {
            self.node.admission()
        };
        if let Err(no) = admitted {
            return Admit::Refuse(self.refusal(no.reason()));
        }
        if self.rate.tick(Instant::now()) > self.retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            inc(&self.node.stats.retries_total);
            return Admit::Retry;
        }
        self.uids += 1;
        inc(&self.node.stats.connections);
        inc(&self.node.stats.connections_total);
        self.node.set_idle(incoming.remote_address().ip(), true);
        Admit::Accept(Session {
            uid: self.uids,
            handle: usize::MAX,
            remote: incoming.remote_address(),
            ctl: None,
            ctl_in: BytesMut::new(),
            ctl_out: Vec::new(),
            hello: None,
            peer: None,
            version: proto::VERSION,
            catalog_window: (Instant::now(), 0),
            credential: None,
            subs: HashMap::new(),
            pending: HashMap::new(),
            ingest: None,
            paced: false,
            published: false,
            closing: false,
            told: false,
            started: Instant::now(),
            subscribed: 0,
            why: None,
            idle: true,
            idle_since: Instant::now(),
            wt: None,
        })
    }

    fn newcomer(&mut self, what: Offered) {
        let st = &self.node.stats;
        match what {
            Offered::First => inc(&st.joins_first_total),
            Offered::Queued => inc(&st.joins_queued_total),
            Offered::Deferred => return inc(&st.joins_deferred_total),
        }
        inc(&st.join_queue);
    }

    fn event(
        &mut self,
        handle: usize,
        conn: &mut Connection,
        s: &mut Session,
        ev: Event,
        now: Instant,
    ) {
        s.handle = handle;
        match ev {
            Event::Connected => {
                // The hello is due within `hello-timeout`.
                let at = now + self.node.cfg.hello_timeout_ms.get();
                self.deadlines
                    .push(Reverse((at, handle, s.uid, Due::Hello)));
                self.deadlines.push(Reverse((at, handle, s.uid, Due::Idle)));
                if chose_h3(conn) {
                    s.wt = Wt::start(conn).map(Box::new);
                    if s.wt.is_none() {
                        close(conn, ErrorCode::Internal, "cannot begin HTTP/3");
                    }
                } else {
                    // A quicast client: no stream of its own beyond the three granted before
                    // its ALPN was known (a publisher gets its one at its hello).
                    conn.set_max_concurrent_streams(Dir::Uni, VarInt::from_u32(0));
                }
            }
            Event::Stream(StreamEvent::Opened { dir }) if s.wt.is_some() => {
                let new =
                    s.wt.as_mut()
                        .map(|w| w.opened(conn, dir))
                        .unwrap_or_default();
                for id in new {
                    self.browser_stream(conn, s, id, now);
                }
            }
            Event::Stream(StreamEvent::Readable { id })
                if s.wt.as_ref().is_some_and(|w| w.reads(id)) =>
            {
                self.browser_stream(conn, s, id, now);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) if s.ctl.is_none() => {
                if let Some(id) = conn.streams().accept(Dir::Bi) {
                    s.ctl = Some(id);
                    self.read_control(conn, s, now);
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => self.open_frames(conn, s, now),
            Event::Stream(StreamEvent::Readable { id }) => {
                if Some(id) == s.ctl {
                    self.read_control(conn, s, now);
                } else if s.ingest.as_ref().is_some_and(|i| i.stream == Some(id)) {
                    self.feed(conn, s, now);
                }
            }
            Event::Stream(StreamEvent::Writable { id }) => {
                if Some(id) == s.ctl {
                    flush_control(conn, s);
                }
                step_each(&self.node, conn, s, |sub| sub.out == Some(id));
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                step_each(&self.node, conn, s, |sub| sub.waiting.is_some());
            }
            Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                // The peer gave the stream up: reset it, as quinn-proto leaves to us. Until
                // then it stays open on both sides (the peer learns no final size) and holds
                // one of the peer's stream credits: a listener whose subscriptions churn
                // would run out of them and hear nothing more.
                let _ = conn.send_stream(id).reset(error_code);
                // The subscriber gave a segment up: the next one starts afresh.
                for sub in s.subs.values_mut() {
                    sub.stopped(id);
                }
            }
            Event::ConnectionLost { reason } => {
                s.why.get_or_insert_with(|| reason.to_string());
            }
            _ => {}
        }
        settle(&self.node, conn, s);
    }

    fn refused(&mut self, s: Session) {
        dec(&self.node.stats.connections);
        if s.idle {
            self.node.set_idle(s.remote.ip(), false);
        }
    }

    fn gone(&mut self, conn: &Connection, mut s: Session) {
        for sub in s.subs.values_mut() {
            sub.flush(&self.node);
        }
        for task in s.pending.drain().filter_map(|(_, t)| t) {
            task.abort();
        }
        if let Some(i) = s.ingest.take() {
            warn!(side = "downstream", remote = %s.remote, "publisher lost: {}", s.why.as_deref().unwrap_or("connection closed"));
            i.publishing.lost();
        }
        dec(&self.node.stats.connections);
        if s.idle {
            s.idle = false;
            self.node.set_idle(s.remote.ip(), false);
        }
        let Some((role, _)) = s.hello else {
            return debug!(remote = %s.remote, why = s.why.as_deref().unwrap_or("closed"), "connection ended before its hello");
        };
        // One line per connection when it ends, with its totals (for operators and log
        // collectors: --log-format json).
        let stats = conn.stats();
        info!(
            node = %self.node.name(),
            remote = %s.remote,
            ?role,
            duration_ms = s.started.elapsed().as_millis() as u64,
            bytes_sent = stats.udp_tx.bytes,
            bytes_received = stats.udp_rx.bytes,
            packets_sent = stats.udp_tx.datagrams,
            mtu = stats.path.current_mtu,
            mtu_probes = stats.path.sent_plpmtud_probes,
            black_holes = stats.path.black_holes_detected,
            subscriptions = s.subscribed,
            why = s.why.as_deref().unwrap_or("bye"),
            "connection ended"
        );
    }
}

impl Sessions {
    pub(super) fn read_control(&mut self, conn: &mut Connection, s: &mut Session, now: Instant) {
        let Some(id) = s.ctl else { return };
        let end = read_stream(conn, id, &mut s.ctl_in);
        loop {
            let msg = match Message::decode(&mut s.ctl_in) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return refuse(conn, s, Error::from(e)),
            };
            if let Err(e) = self.message(conn, s, msg, now) {
                return refuse(conn, s, e);
            }
            if conn.is_closed() {
                return;
            }
        }
        match end {
            Read::More => {}
            _ if !s.ctl_in.is_empty() => refuse(conn, s, proto::DecodeError::Truncated.into()),
            // The peer is done. A publisher's last frames land first.
            _ if s.ingest.is_some() => s.closing = true,
            _ => close(conn, ErrorCode::NoError, "bye"),
        }
    }

    fn message(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        msg: Message,
        now: Instant,
    ) -> Result<()> {
        let Some((role, presented)) = s.hello.take() else {
            return match msg {
                Message::Hello {
                    version,
                    role,
                    token,
                } => self.hello(conn, s, version, role, &token),
                other => Err(Error::protocol(format!(
                    "first message must be hello, got {other:?}"
                ))),
            };
        };
        let r = self.said(conn, s, role, &presented, msg, now);
        s.hello = Some((role, presented));
        r
    }

    /// A message after the hello, from a peer that said it is `role` and showed `presented`.
    fn said(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        role: Role,
        presented: &Presented,
        msg: Message,
        now: Instant,
    ) -> Result<()> {
        match msg {
            Message::Subscribe {
                id,
                path,
                start,
                flags,
            } => {
                s.subscribed += 1;
                if s.subs.contains_key(&id) || s.pending.contains_key(&id) {
                    return Err(Error::protocol(format!("subscription id {id} reused")));
                }
                let max = self.node.max_subscriptions(role);
                if s.subs.len() + s.pending.len() >= max {
                    let reason = format!("at most {max} subscriptions per connection");
                    let code = ErrorCode::Overloaded.as_u64();
                    control(conn, s, &Message::SubscribeError { id, code, reason });
                    return Ok(());
                }
                let known = self.node.known_rule(&path);
                if let Err(why) =
                    self.node
                        .access()
                        .may_listen_to(presented, &path, role == Role::Relay, &known)
                {
                    self.node
                        .refused_auth(&format!("a subscription to {path}"), &why);
                    let e = why.into_error();
                    let (code, reason) = (e.code().as_u64(), e.reason().to_string());
                    control(conn, s, &Message::SubscribeError { id, code, reason });
                    return Ok(());
                }
                let (node, tx) = (self.node.clone(), self.tx.clone());
                let peer = s
                    .peer
                    .clone()
                    .unwrap_or_else(|| Peer::new(role, s.remote.ip()));
                let (conn_h, uid) = (s.handle, s.uid);
                let low_latency = flags & SUBSCRIBE_LOW_LATENCY != 0;
                // The node's log lines about this subscription say whose it is.
                let span = info_span!(parent: None, "sub", remote = %s.remote, id, %path, ?role);
                let mut making = Box::pin(async move {
                    let wait = node.cfg.waiting_room_secs.get();
                    let sub = node.subscribe(&path, start, wait, &peer).await;
                    if let Err(e) = &sub {
                        crate::bounded_info!(node.logs.requests, "{e}");
                    }
                    sub
                });
                // A stream live here is subscribed to at once, on this thread: no task, no
                // wake-up (most of a crowd's joins). One that is not (a relay asking its
                // parent, a waiting room) goes on in a task of its own.
                let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
                let subscribed = move |sub| Cmd::Subscribed {
                    conn: conn_h,
                    uid,
                    id,
                    low_latency,
                    sub,
                };
                let first = span.in_scope(|| std::future::Future::poll(making.as_mut(), &mut cx));
                if let std::task::Poll::Ready(sub) = first {
                    self.ready.push(subscribed(sub));
                    s.pending.insert(id, None);
                    return Ok(());
                }
                let task = tokio::spawn(
                    async move {
                        let sub = making.await;
                        let _ = tx.send(subscribed(sub));
                    }
                    .instrument(span),
                );
                s.pending.insert(id, Some(task.abort_handle()));
                Ok(())
            }
            Message::CatalogRequest { after } => {
                // Child relays ask (every few seconds, a page at a time); a listener has the
                // HTTP page and /streams.
                if role != Role::Relay {
                    return Err(Error::new(
                        Kind::NotAllowed,
                        "only a relay may ask for the catalog",
                    ));
                }
                // Paged from a snapshot made at most once a second; a relay asks a page at
                // a time, a few times a minute: one asking far more often is cut off.
                let now_s = Instant::now();
                if now_s.duration_since(s.catalog_window.0) > crate::node::catalog::REFRESH {
                    s.catalog_window = (now_s, 0);
                }
                s.catalog_window.1 += 1;
                if s.catalog_window.1 > crate::node::catalog::MAX_PAGES_PER_REFRESH {
                    return Err(Error::new(
                        Kind::Overloaded,
                        "the catalog asked for too often",
                    ));
                }
                let (entries, more) = self.node.catalog_page(&after);
                control(
                    conn,
                    s,
                    &Message::Catalog {
                        after,
                        entries,
                        more,
                    },
                );
                Ok(())
            }
            Message::Unsubscribe { id } => {
                if let Some(Some(task)) = s.pending.remove(&id) {
                    task.abort();
                }
                if let Some(mut sub) = s.subs.remove(&id) {
                    sub.close(conn, &self.node);
                }
                Ok(())
            }
            Message::Publish {
                path,
                codec,
                broadcast,
            } => {
                if role != Role::Publisher {
                    return Err(Error::new(
                        Kind::NotAllowed,
                        "publish without the publisher role",
                    ));
                }
                if s.published {
                    return Err(Error::protocol("one publish per connection"));
                }
                s.published = true;
                if let Err(why) = self.node.access().may_publish(presented, &path) {
                    inc(&self.node.stats.auth_refused_total);
                    return Err(why.into_error());
                }
                let publishing =
                    Publishing::claim(&self.node, &path, codec, s.credential, broadcast)?;
                let instance = publishing.broadcast.instance;
                // Told if a newer publisher with the same credentials takes over.
                let displaced = publishing.displaced();
                let (tx, conn_h, uid) = (self.tx.clone(), s.handle, s.uid);
                let takeover = tokio::spawn(async move {
                    displaced.notified().await;
                    let _ = tx.send(Cmd::Displaced { conn: conn_h, uid });
                });
                s.ingest = Some(Ingest::new(
                    publishing,
                    now,
                    takeover.abort_handle(),
                    self.node.cfg.source_burst_ms.get(),
                ));
                control(conn, s, &Message::PublishOk { instance });
                self.watch_silence(s, now);
                // A frame stream opened before the answer is taken now.
                self.open_frames(conn, s, now);
                Ok(())
            }
            Message::Hello { .. } => Err(Error::protocol("a second hello")),
            other => Err(Error::protocol(format!("unexpected message {other:?}"))),
        }
    }

    /// A deadline of `s` came: a hello not said in time, a publisher silent too long, or
    /// one ahead of real time due to be read again. Returns when to look again, if ever.
    pub(super) fn due(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        now: Instant,
        due: Due,
    ) -> Option<Instant> {
        if conn.is_closed() {
            return None;
        }
        if due == Due::Pace {
            s.paced = false;
            self.feed(conn, s, now);
            return None;
        }
        if due == Due::Idle {
            // Looked at every `hello-timeout` while it lives. Idle that long: one of too
            // many from its address is closed (and no longer counted), so a crowd behind
            // one NAT gets in, and a stranger cannot hold the node's slots idle.
            let grace = self.node.cfg.hello_timeout_ms.get();
            if !s.idle {
                return Some(now + grace);
            }
            if s.idle_since + grace > now {
                return Some(s.idle_since + grace);
            }
            if !self.node.idle_over(s.remote.ip()) {
                return Some(now + grace);
            }
            s.idle = false;
            self.node.set_idle(s.remote.ip(), false);
            inc(&self.node.stats.refused_total);
            let e = Error::new(
                Kind::Overloaded,
                format!(
                    "too many idle connections from {} (at most {})",
                    s.remote.ip(),
                    self.node.cfg.max_idle_per_addr
                ),
            );
            refuse_quietly(conn, s, &e);
            return None;
        }
        if due == Due::Hello {
            if s.hello.is_none() {
                let what = if s.ctl.is_none() {
                    "no control stream"
                } else {
                    "no hello"
                };
                s.why = Some(what.into());
                close(conn, ErrorCode::Timeout, what);
            }
            return None;
        }
        let ingest = s.ingest.as_ref()?;
        let silence = self.node.cfg.source_timeout_ms.get();
        let at = ingest.heard + silence;
        if at > now {
            return Some(at);
        }
        // A publisher is never silent for long: one that sends nothing for
        // `source-timeout` is lost (crashed, or cut off), and its grace period starts.
        let what = if ingest.stream.is_none() {
            "publisher opened no frame stream"
        } else {
            "publisher sent no audio"
        };
        self.publisher_failed(conn, s, Error::timeout(what));
        None
    }
}
