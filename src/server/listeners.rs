//! QUIC listeners served by the engine (experimental, on a port of their own: the
//! `engine-listen` key): the same protocol and store as the main QUIC port, with no task,
//! waker or lock per connection on the delivery path. One thread runs the engine's loop;
//! each broadcast's wake-up reaches it once, and it steps every one of its subscribers'
//! cursors and writes their frames straight into quinn-proto's streams, then sends every
//! connection's packets together.
//!
//! Listeners only: publishers and child relays are refused here (they use the main port).
//! Subscriptions are made by the node as everywhere (a task waits out the waiting room),
//! then handed to the loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{Connection, Dir, Event, Incoming, ReadError, StreamEvent, StreamId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::egress::engine::{step as deliver, write_all, Sub, Wrote};
use crate::engine::{Admit, App, Engine};
use crate::error::{Error, Result};
use crate::model::Form;
use crate::node::{dec, inc, Node, Peer, Presented, Subscriber};
use crate::proto::{self, ErrorCode, Message, Role, MAX_MESSAGE, SUBSCRIBE_LOW_LATENCY};
use crate::transport::shards::ShardCids;
use crate::transport::{self, varint, Identity};

/// The engine's listener port: its address and its thread.
pub struct ListenerEngine {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ListenerEngine {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl ListenerEngine {
    pub async fn start(node: Arc<Node>, listen: SocketAddr, identity: &Identity) -> Result<Self> {
        let cfg = Arc::new(transport::server_config(
            identity,
            node.cfg.ack_delay_ms.get(),
            node.cfg.max_packet_bytes.value() as u16,
        )?);
        let socket = transport::udp_socket(listen, false)
            .map_err(|e| Error::local(format!("cannot serve QUIC on {listen}: {e}")))?;
        let addr = socket.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let n = node.clone();
        std::thread::Builder::new()
            .name("quic-engine".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return warn!("engine thread: {e}"),
                };
                rt.block_on(run(n, socket, cfg, stopped));
            })
            .map_err(|e| Error::local(format!("cannot start the engine thread: {e}")))?;
        info!(%addr, "listening (QUIC listeners on the engine)");
        Ok(ListenerEngine {
            addr,
            stop: Some(stop),
        })
    }
}

/// What reaches the loop from elsewhere.
enum Cmd {
    /// A subscription the node made (or refused) for connection `conn` (`uid`).
    Subscribed {
        conn: usize,
        uid: u64,
        id: u64,
        low_latency: bool,
        sub: Result<Subscriber>,
    },
    /// Broadcast `local` woke its subscribers.
    Tick { local: u64 },
    /// Broadcast `local` is over: nobody watches its wake-ups any more.
    Unwatched { local: u64 },
}

/// The loop: waits for datagrams, timers or commands, and lets the engine work.
async fn run(
    node: Arc<Node>,
    socket: std::net::UdpSocket,
    cfg: Arc<quinn_proto::ServerConfig>,
    mut stopped: oneshot::Receiver<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Listeners {
        node: node.clone(),
        tx,
        uids: 0,
        by_broadcast: HashMap::new(),
        due: Default::default(),
        watched: Default::default(),
        new_ticks: Vec::new(),
    };
    let cids = ShardCids {
        shard: 0,
        shards: 1,
    };
    let mut engine = match Engine::server(socket, cfg, cids, app) {
        Ok(e) => e,
        Err(e) => return warn!("engine: {e}"),
    };
    // SAFETY: the descriptor is the engine's socket, open for as long as `engine` lives,
    // which outlives `fd` (both are this function's, `fd` declared after).
    let fd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            Fd(engine.raw_fd()),
            tokio::io::Interest::READABLE,
        )
    } {
        Ok(fd) => fd,
        Err(e) => return warn!("engine: {e}"),
    };
    let mut more = true;
    loop {
        // Commands first: subscriptions made, broadcasts woken.
        while let Ok(cmd) = rx.try_recv() {
            apply(&mut engine, cmd);
        }
        let serving = serve_slice(&mut engine);
        match engine.work() {
            Ok(m) => more = m || serving,
            Err(e) => warn!("engine socket: {e}"),
        }
        // Broadcasts whose first subscriber here just came: watch their wake-ups.
        for (local, b) in std::mem::take(&mut engine.app().new_ticks) {
            let tx = engine.app().tx.clone();
            tokio::spawn(async move {
                let mut w = b.watch();
                while w.changed().await.is_ok() {
                    if tx.send(Cmd::Tick { local }).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Cmd::Tick { local });
                let _ = tx.send(Cmd::Unwatched { local });
            });
        }
        if more || engine.sending() {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = engine
            .next_timer()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = fd.readable() => {
                if let Ok(mut g) = r {
                    g.clear_ready();
                }
            }
            _ = tokio::time::sleep_until(sleep) => {}
            Some(cmd) = rx.recv() => apply(&mut engine, cmd),
            _ = &mut stopped => break,
        }
    }
    engine.close_all(
        Instant::now(),
        ErrorCode::GoingAway.as_u64() as u32,
        b"node shutting down",
    );
    let until = Instant::now() + Duration::from_secs(1);
    while engine.connections() > 0 && Instant::now() < until {
        let _ = engine.turn(Duration::from_millis(10));
    }
    engine.abandon();
}

struct Fd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

fn apply(engine: &mut Engine<Listeners>, cmd: Cmd) {
    match cmd {
        Cmd::Subscribed {
            conn,
            uid,
            id,
            low_latency,
            sub,
        } => {
            let node = engine.app().node.clone();
            let mut joined = None;
            engine.with(conn, |c, l| {
                if l.uid != uid {
                    return;
                }
                l.pending = l.pending.saturating_sub(1);
                match sub {
                    Ok(mut s) => {
                        if low_latency {
                            s.cursor.eager();
                        }
                        s.cursor.set_form(Form::Wire);
                        let b = s.cursor.broadcast().clone();
                        let msg = Message::Subscribed {
                            id,
                            instance: b.instance,
                            codec: b.codec.clone(),
                        };
                        control(c, l, &msg);
                        joined = Some((b.local_id(), b.clone()));
                        l.subs.insert(id, Sub::new(s));
                        step(&node, c, l, id);
                    }
                    Err(e) => {
                        let msg = Message::SubscribeError {
                            id,
                            code: e.code().as_u64(),
                            reason: e.reason().to_string(),
                        };
                        control(c, l, &msg);
                    }
                }
            });
            if let Some((local, b)) = joined {
                let app = engine.app();
                app.by_broadcast
                    .entry(local)
                    .or_default()
                    .push((conn, uid, id));
                // One watcher per broadcast for as long as it lasts.
                if app.watched.insert(local) {
                    app.new_ticks.push((local, b));
                }
            }
        }
        Cmd::Unwatched { local } => {
            engine.app().watched.remove(&local);
        }
        Cmd::Tick { local } => {
            // Queued, not served at once: the loop serves them a slice at a time between
            // rounds of I/O. Subscriptions that ended leave the broadcast's list here.
            let Some(mut list) = engine.app().by_broadcast.remove(&local) else {
                return;
            };
            list.retain(|&(conn, uid, id)| {
                engine
                    .get(conn)
                    .is_some_and(|l| l.uid == uid && l.subs.contains_key(&id))
            });
            engine.app().due.extend(list.iter().copied());
            if !list.is_empty() {
                engine.app().by_broadcast.insert(local, list);
            }
        }
    }
}

/// Subscribers served per slice of a wake-up, between rounds of I/O.
const SLICE: usize = 256;

/// Serves up to `SLICE` due subscribers. Returns whether more are due.
fn serve_slice(engine: &mut Engine<Listeners>) -> bool {
    let node = engine.app().node.clone();
    for _ in 0..SLICE {
        let Some((conn, uid, id)) = engine.app().due.pop_front() else {
            return false;
        };
        engine.with(conn, |c, l| {
            if l.uid == uid {
                step(&node, c, l, id);
            }
        });
    }
    !engine.app().due.is_empty()
}

struct Listeners {
    node: Arc<Node>,
    tx: mpsc::UnboundedSender<Cmd>,
    uids: u64,
    /// Each broadcast's subscribers here: (connection, its uid, subscription id).
    by_broadcast: HashMap<u64, Vec<(usize, u64, u64)>>,
    /// Subscribers woken and not served yet (a wake-up is served a slice at a time, so
    /// handshakes and ACKs never wait behind all of it).
    due: std::collections::VecDeque<(usize, u64, u64)>,
    /// Broadcasts whose wake-ups a task watches.
    watched: std::collections::HashSet<u64>,
    /// Broadcasts that got their first subscriber here (their wake-ups to be watched).
    new_ticks: Vec<(u64, Arc<crate::model::Broadcast>)>,
}

/// A listener's connection.
struct Listener {
    uid: u64,
    handle: usize,
    ctl: Option<StreamId>,
    ctl_in: BytesMut,
    /// Control messages not yet taken by the stream (flow control).
    ctl_out: Vec<Bytes>,
    hello: Option<Presented>,
    peer: Peer,
    subs: HashMap<u64, Sub>,
    /// Subscriptions being made (the node may be waiting for the stream to start).
    pending: usize,
    started: Instant,
    counted: bool,
}

impl App for Listeners {
    type Conn = Listener;

    fn incoming(&mut self, incoming: &Incoming) -> Admit<Listener> {
        if !self.node.admit() {
            return Admit::Refuse;
        }
        self.uids += 1;
        inc(&self.node.stats.connections);
        inc(&self.node.stats.connections_total);
        Admit::Accept(Listener {
            uid: self.uids,
            handle: usize::MAX,
            ctl: None,
            ctl_in: BytesMut::new(),
            ctl_out: Vec::new(),
            hello: None,
            peer: Peer::new(Role::Listener, incoming.remote_address().ip()),
            subs: HashMap::new(),
            pending: 0,
            started: Instant::now(),
            counted: true,
        })
    }

    fn event(
        &mut self,
        handle: usize,
        conn: &mut Connection,
        l: &mut Listener,
        ev: Event,
        _now: Instant,
    ) {
        l.handle = handle;
        match ev {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                if let Some(id) = conn.streams().accept(Dir::Bi) {
                    if l.ctl.is_none() {
                        l.ctl = Some(id);
                        self.read_control(conn, l);
                    }
                }
            }
            Event::Stream(StreamEvent::Readable { id }) if Some(id) == l.ctl => {
                self.read_control(conn, l);
            }
            Event::Stream(StreamEvent::Writable { id }) => {
                if Some(id) == l.ctl {
                    flush_control(conn, l);
                }
                let ids: Vec<u64> = l
                    .subs
                    .iter()
                    .filter(|(_, s)| s.out == Some(id))
                    .map(|(k, _)| *k)
                    .collect();
                for sid in ids {
                    step(&self.node, conn, l, sid);
                }
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                let ids: Vec<u64> = l
                    .subs
                    .iter()
                    .filter(|(_, s)| s.waiting.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                for sid in ids {
                    step(&self.node, conn, l, sid);
                }
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                // The listener gave up a segment: the next one starts afresh.
                for s in l.subs.values_mut() {
                    if s.out == Some(id) {
                        s.out = None;
                        s.backlog.clear();
                        s.header = None;
                        s.s.cursor.abandon_segment();
                    }
                }
            }
            Event::ConnectionLost { reason } => {
                debug!(remote = %conn.remote_address(), "listener connection ended: {reason}");
            }
            _ => {}
        }
    }

    fn gone(&mut self, mut l: Listener) {
        for s in l.subs.values_mut() {
            s.flush(&self.node);
        }
        if l.counted {
            dec(&self.node.stats.connections);
        }
        debug!(
            duration_ms = l.started.elapsed().as_millis() as u64,
            "engine listener gone"
        );
    }
}

impl Listeners {
    fn read_control(&mut self, conn: &mut Connection, l: &mut Listener) {
        let Some(id) = l.ctl else { return };
        let mut fin = false;
        {
            let mut rs = conn.recv_stream(id);
            let Ok(mut chunks) = rs.read(true) else {
                return;
            };
            // All there is (its window bounds it): `Readable` comes again only with more.
            loop {
                match chunks.next(MAX_MESSAGE + 16) {
                    Ok(Some(c)) => l.ctl_in.extend_from_slice(&c.bytes),
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(_)) => {
                        fin = true;
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        loop {
            let msg = match Message::decode(&mut l.ctl_in) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return refuse(conn, l, Error::from(e)),
            };
            if let Err(e) = self.message(conn, l, msg) {
                return refuse(conn, l, e);
            }
        }
        if fin {
            conn.close(
                Instant::now(),
                varint(ErrorCode::NoError),
                Bytes::from_static(b"bye"),
            );
        }
    }

    fn message(&mut self, conn: &mut Connection, l: &mut Listener, msg: Message) -> Result<()> {
        match (msg, &l.hello) {
            (
                Message::Hello {
                    version,
                    role,
                    token,
                },
                None,
            ) => {
                if version != proto::VERSION {
                    return Err(Error::new(
                        crate::error::Kind::Version,
                        format!("protocol version {version} is not supported"),
                    ));
                }
                if role != Role::Listener {
                    return Err(Error::new(
                        crate::error::Kind::NotAllowed,
                        "this port takes listeners only; publishers and relays use the main port",
                    ));
                }
                l.hello = Some(self.node.access().present(&token));
                let ok = Message::HelloOk {
                    version: proto::VERSION,
                    node: self.node.name().to_string(),
                };
                control(conn, l, &ok);
                Ok(())
            }
            (
                Message::Subscribe {
                    id,
                    path,
                    start,
                    flags,
                },
                Some(presented),
            ) => {
                let max = self.node.max_subscriptions(Role::Listener);
                if l.subs.contains_key(&id) {
                    return Err(Error::protocol(format!("subscription id {id} reused")));
                }
                if l.subs.len() + l.pending >= max {
                    let reason = format!("at most {max} subscriptions per connection");
                    control(
                        conn,
                        l,
                        &Message::SubscribeError {
                            id,
                            code: ErrorCode::Overloaded.as_u64(),
                            reason,
                        },
                    );
                    return Ok(());
                }
                if let Err(why) = self.node.access().may_listen(presented, &path, false) {
                    self.node
                        .refused_auth(&format!("a subscription to {path}"), &why);
                    let e = why.into_error();
                    control(
                        conn,
                        l,
                        &Message::SubscribeError {
                            id,
                            code: e.code().as_u64(),
                            reason: e.reason().to_string(),
                        },
                    );
                    return Ok(());
                }
                l.pending += 1;
                let (node, tx, peer) = (self.node.clone(), self.tx.clone(), l.peer.clone());
                let (conn_h, uid) = (l.handle, l.uid);
                let low_latency = flags & SUBSCRIBE_LOW_LATENCY != 0;
                tokio::spawn(async move {
                    let wait = node.cfg.waiting_room_secs.get();
                    let sub = node.subscribe(&path, start, wait, &peer).await;
                    let _ = tx.send(Cmd::Subscribed {
                        conn: conn_h,
                        uid,
                        id,
                        low_latency,
                        sub,
                    });
                });
                Ok(())
            }
            (Message::Unsubscribe { id }, Some(_)) => {
                if let Some(mut s) = l.subs.remove(&id) {
                    if let Some(out) = s.out.take() {
                        let _ = conn.send_stream(out).reset(varint(ErrorCode::Skipped));
                    }
                    s.flush(&self.node);
                }
                Ok(())
            }
            (Message::Hello { .. }, Some(_)) => Err(Error::protocol("a second hello")),
            (other, None) => Err(Error::protocol(format!(
                "first message must be hello, got {other:?}"
            ))),
            (other, Some(_)) => Err(Error::protocol(format!("unexpected message {other:?}"))),
        }
    }
}

/// Delivers what subscription `id` has due (see `egress::engine`); once its broadcast is
/// over, tells the listener.
fn step(node: &Node, conn: &mut Connection, l: &mut Listener, id: u64) {
    let Some(sub) = l.subs.get_mut(&id) else {
        return;
    };
    if let Some(last) = deliver(node, conn, sub, id) {
        l.subs.remove(&id);
        control(conn, l, &Message::StreamEnd { id, last_seq: last });
    }
}

/// Queues a control message and writes what the stream takes.
fn control(conn: &mut Connection, l: &mut Listener, m: &Message) {
    l.ctl_out.push(m.to_bytes());
    flush_control(conn, l);
}

fn flush_control(conn: &mut Connection, l: &mut Listener) {
    let Some(id) = l.ctl else { return };
    if l.ctl_out.is_empty() {
        return;
    }
    if let Wrote::Stopped | Wrote::Gone = write_all(conn, id, &mut l.ctl_out) {
        l.ctl_out.clear();
    }
    // Bounded: a peer that never reads its control stream is not worth holding.
    if l.ctl_out.len() > 64 {
        refuse(conn, l, Error::protocol("control stream not read"));
    }
}

/// Tells the peer why (on its control stream, if it has one) and closes.
fn refuse(conn: &mut Connection, l: &mut Listener, e: Error) {
    let e = e.downstream();
    warn!(side = %e.side(), code = %e.code(), remote = %conn.remote_address(), "closing engine listener: {e}");
    if let Some(id) = l.ctl {
        let m = Message::Error {
            code: e.code().as_u64(),
            reason: e.reason().to_string(),
        }
        .to_bytes();
        let _ = conn.send_stream(id).write(&m);
    }
    conn.close(
        Instant::now(),
        varint(e.code()),
        Bytes::copy_from_slice(e.reason().as_bytes()),
    );
}
