//! The engine: many QUIC connections driven from one thread's loop, straight on quinn's
//! protocol core (`quinn-proto`, free of I/O: datagrams and the time in, datagrams and
//! deadlines out). No task, waker or lock per connection: one socket read by the batch, one
//! timer heap, and every connection's packets sent together (`sendmmsg`).
//!
//! What a connection means is the application's (`App`): it sees each connection's events
//! and acts on the connection directly. The load generator is its first user (thousands of
//! listeners from one core); the node's server side is meant to follow.

mod queue;
mod udp;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionHandle, ConnectionIdGenerator, DatagramEvent,
    Endpoint, EndpointConfig, Event, Incoming, ServerConfig, VarInt,
};

use queue::JoinQueue;
pub use queue::Offered;
pub use udp::Outbox;
use udp::Socket;

/// What becomes of a client's first packet (a server engine's application decides, before
/// any cryptography is spent on it).
pub enum Admit<C> {
    /// Take the handshake on, with this state for the connection.
    Accept(C),
    /// Tell the client no (CONNECTION_REFUSED, with this reason phrase): one small packet.
    Refuse(String),
    /// Make the client prove its address first (a QUIC Retry; its next try comes validated).
    Retry,
}

/// What the engine's connections mean: told of each connection's events, acting on the
/// connection as it likes (open streams, read, write, close). Called from the engine's
/// thread only.
pub trait App {
    /// Each connection's own state.
    type Conn;
    /// A client's first packet (server engines): take it on, refuse it, or ask for a Retry.
    /// A client engine refuses everything.
    fn incoming(&mut self, _incoming: &Incoming) -> Admit<Self::Conn> {
        Admit::Refuse(String::new())
    }
    /// An event of connection `handle` (`Connected`, a stream's, `ConnectionLost`).
    fn event(
        &mut self,
        handle: usize,
        conn: &mut Connection,
        state: &mut Self::Conn,
        ev: Event,
        now: Instant,
    );
    /// A connection is over (drained, or never made: its handshake could not start): its
    /// state is handed back, with the connection as it ended (its statistics).
    fn gone(&mut self, conn: &Connection, state: Self::Conn);
    /// A client admitted whose handshake could not start (its first packet was bad): its
    /// state is handed back.
    fn refused(&mut self, _state: Self::Conn) {}
    /// A client's first packet came: queued (or first in line), or deferred (the queue
    /// holds what the engine takes up within its wait; this one's client sends again).
    fn newcomer(&mut self, _what: Offered) {}
}

/// What reading a stream came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// All that has arrived was taken; more may come (`Readable` says when).
    More,
    /// The peer finished the stream, and all of it was taken.
    Finished,
    /// The peer reset the stream (its code), or the stream is gone.
    Reset(u64),
}

/// Appends everything stream `id` has received so far to `buf` (the stream's receive
/// window bounds how much that is): quinn-proto says `Readable` again only when more
/// arrives, so whatever is left unread now might never be read.
pub fn read_stream(
    conn: &mut Connection,
    id: quinn_proto::StreamId,
    buf: &mut bytes::BytesMut,
) -> Read {
    let mut rs = conn.recv_stream(id);
    let Ok(mut chunks) = rs.read(true) else {
        return Read::Reset(0);
    };
    let end = loop {
        match chunks.next(usize::MAX) {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => break Read::Finished,
            Err(quinn_proto::ReadError::Blocked) => break Read::More,
            Err(quinn_proto::ReadError::Reset(code)) => break Read::Reset(code.into_inner()),
        }
    };
    let _ = chunks.finalize();
    end
}

/// Like `read_stream`, taking at most `limit` bytes: `More` if more may be waiting (the
/// caller reads again once it has room; quinn-proto holds the rest, within the stream's
/// flow-control window).
pub fn read_stream_at_most(
    conn: &mut Connection,
    id: quinn_proto::StreamId,
    buf: &mut bytes::BytesMut,
    limit: usize,
) -> Read {
    let mut rs = conn.recv_stream(id);
    let Ok(mut chunks) = rs.read(true) else {
        return Read::Reset(0);
    };
    let mut left = limit;
    let end = loop {
        if left == 0 {
            break Read::More;
        }
        match chunks.next(left) {
            Ok(Some(c)) => {
                left -= c.bytes.len();
                buf.extend_from_slice(&c.bytes);
            }
            Ok(None) => break Read::Finished,
            Err(quinn_proto::ReadError::Blocked) => break Read::More,
            Err(quinn_proto::ReadError::Reset(code)) => break Read::Reset(code.into_inner()),
        }
    };
    let _ = chunks.finalize();
    end
}

struct Slot<C> {
    conn: Connection,
    state: C,
    /// The deadline the timer heap holds for it (entries not matching are stale).
    deadline: Option<Instant>,
    dirty: bool,
}

pub struct Engine<A: App> {
    endpoint: Endpoint,
    socket: Socket,
    slots: Vec<Option<Slot<A::Conn>>>,
    live: usize,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connections to drive, oldest first.
    dirty: std::collections::VecDeque<usize>,
    out: Outbox,
    buf: Vec<u8>,
    /// Clients' first packets not taken up yet.
    pending: JoinQueue<Incoming>,
    app: A,
}

/// New clients taken up per turn (each a TLS handshake's cryptography).
const ACCEPT_SLICE: usize = 32;
/// Most receive batches a turn takes (each up to quinn-udp's batch of datagrams).
const RECV_BATCHES: usize = 64;
/// Longest a turn spends receiving (checked every 8 batches).
const RECV_BUDGET: Duration = Duration::from_millis(5);
/// Longest a turn spends driving connections (checked every 4).
const DRIVE_BUDGET: Duration = Duration::from_millis(5);
/// Longest a turn spends taking new clients up (past the first).
const ACCEPT_BUDGET: Duration = Duration::from_millis(5);
/// New clients waiting at most, whatever the rate: each holds its first datagram (quinn-proto
/// itself ignores Initials past 65,536 incoming).
const MAX_PENDING: usize = 60_000;
/// How long a newcomer may expect to wait in the queue by default (`join-queue-ms`).
pub const JOIN_WAIT: Duration = Duration::from_secs(4);

impl<A: App> Engine<A> {
    /// A client engine on `socket`.
    pub fn client(socket: UdpSocket, app: A) -> io::Result<Engine<A>> {
        Ok(Engine {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            socket: Socket::new(socket)?,
            slots: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
            dirty: Default::default(),
            out: Outbox::default(),
            buf: Vec::with_capacity(2048),
            pending: JoinQueue::new(JOIN_WAIT, MAX_PENDING),
            app,
        })
    }

    /// A server engine on `socket`, its connection IDs from `cids` (see
    /// `transport::shards`: they name the thread whose socket steers them here).
    pub fn server<G>(
        socket: UdpSocket,
        config: Arc<ServerConfig>,
        cids: G,
        app: A,
    ) -> io::Result<Engine<A>>
    where
        G: ConnectionIdGenerator + Clone + 'static,
    {
        let mut ecfg = EndpointConfig::default();
        ecfg.cid_generator(move || Box::new(cids.clone()));
        let mut e = Engine::client(socket, app)?;
        e.endpoint = Endpoint::new(Arc::new(ecfg), Some(config), true, None);
        Ok(e)
    }

    /// New clients are served with `config` (a certificate reloaded); connections already
    /// made keep theirs.
    pub fn set_server_config(&mut self, config: Arc<ServerConfig>) {
        self.endpoint.set_server_config(Some(config));
    }

    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Connections not yet drained.
    pub fn connections(&self) -> usize {
        self.live
    }

    /// How long a new client may expect to wait in the queue of newcomers before it is
    /// deferred (see `queue`).
    pub fn set_join_wait(&mut self, wait: Duration) {
        self.pending.set_wait(wait);
    }

    /// New clients waiting to be taken up.
    pub fn joining(&self) -> usize {
        self.pending.len()
    }

    /// Starts a connection to `remote`, its state `state`.
    pub fn connect(
        &mut self,
        now: Instant,
        cfg: ClientConfig,
        remote: SocketAddr,
        server_name: &str,
        state: A::Conn,
    ) -> Result<(), ConnectError> {
        let (h, conn) = self.endpoint.connect(now, cfg, remote, server_name)?;
        self.insert(h, conn, state);
        Ok(())
    }

    fn insert(&mut self, h: ConnectionHandle, conn: Connection, state: A::Conn) {
        if self.slots.len() <= h.0 {
            self.slots.resize_with(h.0 + 1, || None);
        }
        self.slots[h.0] = Some(Slot {
            conn,
            state,
            deadline: None,
            dirty: false,
        });
        self.live += 1;
        self.mark(h.0);
    }

    fn mark(&mut self, i: usize) {
        if let Some(Some(s)) = self.slots.get_mut(i) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push_back(i);
            }
        }
    }

    /// Closes every connection (`code`, `reason`); they drain over the next turns.
    pub fn close_all(&mut self, now: Instant, code: u32, reason: &'static [u8]) {
        for i in 0..self.slots.len() {
            if let Some(s) = self.slots[i].as_mut() {
                s.conn
                    .close(now, VarInt::from_u32(code), Bytes::from_static(reason));
                self.mark(i);
            }
        }
    }

    /// Drops every connection still here (without a word to its peer), handing the app
    /// their states.
    pub fn abandon(&mut self) {
        for incoming in self.pending.drain() {
            self.endpoint.ignore(incoming);
        }
        for slot in self.slots.iter_mut() {
            if let Some(s) = slot.take() {
                self.live -= 1;
                self.app.gone(&s.conn, s.state);
            }
        }
    }

    /// Lets `f` act on every live connection (then drives them).
    pub fn for_each(&mut self, mut f: impl FnMut(&mut Connection, &mut A::Conn)) {
        for i in 0..self.slots.len() {
            if let Some(s) = self.slots[i].as_mut() {
                f(&mut s.conn, &mut s.state);
                self.mark(i);
            }
        }
    }

    /// Lets `f` act on connection `h` (if it is still there), then drives it on the next
    /// `work`. Returns whether it was there.
    pub fn with(&mut self, h: usize, f: impl FnOnce(&mut Connection, &mut A::Conn)) -> bool {
        self.with_app(h, |_, conn, state| f(conn, state))
    }

    /// As `with`, `f` given the app too.
    pub fn with_app(
        &mut self,
        h: usize,
        f: impl FnOnce(&mut A, &mut Connection, &mut A::Conn),
    ) -> bool {
        let Some(Some(s)) = self.slots.get_mut(h) else {
            return false;
        };
        f(&mut self.app, &mut s.conn, &mut s.state);
        self.mark(h);
        true
    }

    /// Connection `h`'s state, if it is still there.
    pub fn get(&self, h: usize) -> Option<&A::Conn> {
        self.slots.get(h)?.as_ref().map(|s| &s.state)
    }

    /// Connection `h`'s state to change, if it is still there (the connection is not
    /// driven for it: use `with` to act on the connection).
    pub fn get_mut(&mut self, h: usize) -> Option<&mut A::Conn> {
        self.slots.get_mut(h)?.as_mut().map(|s| &mut s.state)
    }

    /// When the next timer is due, if any.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The socket's descriptor (to wait on it from an async loop).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.raw_fd()
    }

    /// Whether datagrams wait to go out (the socket was full).
    pub fn sending(&self) -> bool {
        !self.out.is_empty()
    }

    /// One turn of the loop: waits up to `wait` for datagrams or the next timer, then
    /// `work`.
    pub fn turn(&mut self, wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        let until_timer = self
            .timers
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now));
        let wait = until_timer.map_or(wait, |t| t.min(wait));
        if self.dirty.is_empty() {
            self.wait(wait)?;
        }
        self.work().map(|_| ())
    }

    /// Takes the datagrams that arrived, fires due timers, drives every connection that
    /// has something to do, and sends what they produced. Returns whether datagrams may be
    /// left to read (it takes a bounded number per call, so timers keep time).
    pub fn work(&mut self) -> io::Result<bool> {
        let now = Instant::now();
        let mut more = true;
        // Whatever has arrived, up to `RECV_BATCHES` batches or `RECV_BUDGET`: a crowd's
        // datagrams left in the socket overflow its buffer, and every one lost waits out
        // QUIC's retransmission timer (a second, for a handshake).
        for k in 0..RECV_BATCHES {
            if k > 0 && k % 8 == 0 && now.elapsed() >= RECV_BUDGET {
                break;
            }
            let (endpoint, slots, dirty, out, buf, pending, app) = (
                &mut self.endpoint,
                &mut self.slots,
                &mut self.dirty,
                &mut self.out,
                &mut self.buf,
                &mut self.pending,
                &mut self.app,
            );
            let n = self.socket.recv(|from, local_ip, ecn, data| {
                buf.clear();
                let ecn = ecn.and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                match endpoint.handle(now, from, local_ip, ecn, data, buf) {
                    Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                        if let Some(Some(s)) = slots.get_mut(h.0) {
                            s.conn.handle_event(ev);
                            if !s.dirty {
                                s.dirty = true;
                                dirty.push_back(h.0);
                            }
                        }
                    }
                    Some(DatagramEvent::Response(t)) => out.push(t.destination, &buf[..t.size]),
                    // Taken up a slice at a time below: a crowd's handshakes must not
                    // keep the socket unread (its buffer would overflow, and the lost
                    // packets wait out QUIC's retransmission timer).
                    // Past what the engine takes up within `join-queue-ms`, a newcomer is
                    // deferred, not refused: its Initial goes unanswered, and its client
                    // sends it again after QUIC's retransmission timer (see `queue`).
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        match pending.offer(now, incoming) {
                            Ok(o) => app.newcomer(o),
                            Err(incoming) => {
                                endpoint.ignore(incoming);
                                app.newcomer(Offered::Deferred);
                            }
                        }
                    }
                    None => {}
                }
            })?;
            if n == 0 {
                more = false;
                break;
            }
        }
        // New clients, a slice at a time: at most `ACCEPT_SLICE`, and no longer than
        // `ACCEPT_BUDGET` (a slow build or a starved core must not keep every other
        // connection unanswered while the crowd's cryptography runs).
        let accepting = Instant::now();
        for k in 0..ACCEPT_SLICE {
            if k > 0 && accepting.elapsed() >= ACCEPT_BUDGET {
                break;
            }
            let Some(incoming) = self.pending.take(Instant::now()) else {
                break;
            };
            self.admit(incoming, now);
        }
        more |= !self.pending.is_empty();
        // Timers due.
        while let Some(Reverse((at, i))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(Some(s)) = self.slots.get_mut(i) {
                if s.deadline == Some(at) {
                    s.deadline = None;
                    s.conn.handle_timeout(now);
                    self.mark(i);
                }
            }
        }
        self.drive(now);
        more |= !self.dirty.is_empty();
        self.socket.send(&mut self.out)?;
        Ok(more)
    }

    /// A client's first packet: the app admits it (the handshake starts), refuses or
    /// retries it.
    fn admit(&mut self, incoming: Incoming, now: Instant) {
        self.buf.clear();
        match self.app.incoming(&incoming) {
            Admit::Accept(state) => {
                match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                    Ok((h, conn)) => self.insert(h, conn, state),
                    Err(e) => {
                        if let Some(t) = e.response {
                            self.out.push(t.destination, &self.buf[..t.size]);
                        }
                        self.app.refused(state);
                    }
                }
            }
            Admit::Refuse(why) => {
                let t = self
                    .endpoint
                    .refuse_with_reason(incoming, &why, &mut self.buf);
                self.out.push(t.destination, &self.buf[..t.size]);
            }
            Admit::Retry => match self.endpoint.retry(incoming, &mut self.buf) {
                Ok(t) => self.out.push(t.destination, &self.buf[..t.size]),
                Err(e) => self.endpoint.ignore(e.into_incoming()),
            },
        }
    }

    /// Drives every connection marked: its events to the endpoint and the app, its packets
    /// to the outbox, its next deadline to the heap.
    /// At most `DRIVE_BUDGET` at a time (checked every few connections): a crowd's
    /// handshakes finishing together must not keep every other connection waiting; those
    /// left are driven first next turn.
    fn drive(&mut self, now: Instant) {
        let started = Instant::now();
        let mut driven = 0u32;
        while let Some(i) = self.dirty.pop_front() {
            driven += 1;
            if driven.is_multiple_of(4) && started.elapsed() >= DRIVE_BUDGET {
                self.dirty.push_front(i);
                break;
            }
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            s.dirty = false;
            let h = ConnectionHandle(i);
            loop {
                let mut more = false;
                while let Some(ev) = s.conn.poll_endpoint_events() {
                    if let Some(cev) = self.endpoint.handle_event(h, ev) {
                        s.conn.handle_event(cev);
                    }
                    more = true;
                }
                while let Some(ev) = s.conn.poll() {
                    self.app.event(i, &mut s.conn, &mut s.state, ev, now);
                    more = true;
                }
                while let Some(t) = {
                    self.buf.clear();
                    s.conn.poll_transmit(now, 1, &mut self.buf)
                } {
                    self.out.push(t.destination, &self.buf[..t.size]);
                    more = true;
                }
                if !more {
                    break;
                }
            }
            // Out as they are made, a batch at a time: a wake-up of thousands of
            // connections leaves as a stream of batches, not one burst that overflows the
            // buffers on the way (a host's, a switch's, a receiver's).
            if self.out.unsent() >= udp::SEND_BATCH {
                if let Err(e) = self.socket.send(&mut self.out) {
                    tracing::debug!("engine send: {e}");
                }
            }
            if s.conn.is_drained() {
                if let Some(s) = self.slots[i].take() {
                    self.live -= 1;
                    self.app.gone(&s.conn, s.state);
                }
                continue;
            }
            let next = s.conn.poll_timeout();
            if next != s.deadline {
                s.deadline = next;
                if let Some(at) = next {
                    self.timers.push(Reverse((at, i)));
                }
            }
        }
    }

    /// Waits until the socket is readable (or writable, with datagrams waiting), at most
    /// `wait`.
    fn wait(&self, wait: Duration) -> io::Result<()> {
        let mut events = libc::POLLIN;
        if !self.out.is_empty() {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.socket.raw_fd(),
            events,
            revents: 0,
        };
        // Round up: a timer due in 0.3 ms must not spin on zero-millisecond waits.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use quinn_proto::{Dir, StreamEvent};

    use super::*;
    use crate::transport::shards::ShardCids;
    use crate::transport::{client_config, client_endpoint, server_config, Identity, Trust};

    /// A server app: each connection's one stream is answered with what came, in capitals.
    /// A client is asked to prove its address first (Retry), then taken on.
    struct Upper {
        incomings: Arc<AtomicUsize>,
    }

    #[derive(Default)]
    struct Req {
        got: Vec<u8>,
    }

    impl App for Upper {
        type Conn = Req;

        fn incoming(&mut self, incoming: &Incoming) -> Admit<Req> {
            self.incomings.fetch_add(1, Ordering::Relaxed);
            if incoming.remote_address_validated() {
                Admit::Accept(Req::default())
            } else {
                Admit::Retry
            }
        }

        fn event(&mut self, _: usize, conn: &mut Connection, req: &mut Req, ev: Event, _: Instant) {
            let id = match ev {
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    match conn.streams().accept(Dir::Bi) {
                        Some(id) => id,
                        None => return,
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => id,
                _ => return,
            };
            let mut rs = conn.recv_stream(id);
            let Ok(mut chunks) = rs.read(true) else {
                return;
            };
            let mut fin = false;
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(c)) => req.got.extend_from_slice(&c.bytes),
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
            if fin {
                let answer = req.got.to_ascii_uppercase();
                let mut s = conn.send_stream(id);
                assert_eq!(s.write(&answer).unwrap(), answer.len());
                s.finish().unwrap();
            }
        }

        fn gone(&mut self, _: &Connection, _: Req) {}
    }

    /// quinn's clients against a server engine: every one is made to prove its address, then
    /// gets its answer; the engine's loop carries handshakes, streams and timers for all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_get_through_a_retry_and_their_answers_from_a_server_engine() {
        let id = Identity::self_signed(&[]).unwrap();
        let cfg = Arc::new(server_config(&id, None, Duration::from_millis(1000), 1200).unwrap());
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let incomings = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (i2, s2) = (incomings.clone(), stop.clone());
        let server = std::thread::spawn(move || {
            let cids = ShardCids {
                shard: 0,
                shards: 1,
            };
            let mut e = Engine::server(socket, cfg, cids, Upper { incomings: i2 }).unwrap();
            while !s2.load(Ordering::Relaxed) {
                e.turn(Duration::from_millis(10)).unwrap();
            }
            e.connections()
        });
        let trust = Trust::pinned(&[id.fingerprint.parse().unwrap()]);
        let client = client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let cc = client_config(&trust).unwrap();
        let mut asks = Vec::new();
        for i in 0..20 {
            let (client, cc) = (client.clone(), cc.clone());
            asks.push(tokio::spawn(async move {
                let conn = client
                    .connect_with(cc, addr, "localhost")
                    .unwrap()
                    .await
                    .unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(format!("hello {i}").as_bytes())
                    .await
                    .unwrap();
                send.finish().unwrap();
                let answer = recv.read_to_end(1000).await.unwrap();
                conn.close(0u32.into(), b"");
                (i, answer)
            }));
        }
        for a in asks {
            let (i, answer) = a.await.unwrap();
            assert_eq!(answer, format!("HELLO {i}").into_bytes());
        }
        // Each client came twice: once to be told to retry, once validated.
        assert_eq!(incomings.load(Ordering::Relaxed), 40);
        client.wait_idle().await;
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }
}
