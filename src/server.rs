//! A quicast node. An origin and a relay are this same server; they differ only in where a
//! stream's segments come from: publishers (ingest) or a parent (the upstream fetcher).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quinn::{Connection, SendStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::client::{conn_error, QuicUrl};
use crate::error::{Error, ErrorCode, Result};
use crate::fanout::{fan_out, Delivery, Sink};
use crate::ingest::Publishing;
use crate::proto::{self, Codec, Message, Role, Start, UniHeader};
use crate::store::{Create, Cursor, Registry, StoreConfig, Stored, SubscriberGuard};
use crate::tls::{Identity, Trust};
use crate::upstream::Upstream;
use crate::wire::{write_message, ControlReader, FrameReader};

/// Everything a node needs to run; built from `config::NodeArgs`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub store: StoreConfig,
    /// Target segment duration (origin).
    pub segment_duration: Duration,
    /// Publishers must present this token (origin); None accepts any publisher.
    pub publish_token: Option<String>,
    /// Parents in priority order; empty for an origin.
    pub upstream: Vec<QuicUrl>,
    pub upstream_trust: Option<Trust>,
    /// How long a subscription may wait for a stream that has not started.
    pub waiting_room: Duration,
    /// How long a relay keeps its upstream subscription after the last subscriber leaves.
    pub linger: Duration,
    /// How long an origin keeps a broadcast open for its publisher to come back.
    pub publisher_grace: Duration,
    /// How long an HTTP listener may wait for a stream that has not started.
    pub http_wait: Duration,
    /// Password of Icecast sources (`source:PASSWORD`); None disables HTTP ingest.
    pub source_password: Option<String>,
    /// Subscriptions a listener connection may hold (a child relay's are bounded by the
    /// node's stream bounds instead: it carries every stream its own listeners ask for).
    pub max_subscriptions_per_conn: usize,
    /// Subscriptions to streams that are not live that one listener connection may hold.
    pub max_waiting_per_conn: usize,
    /// ... and that all the listeners of one IP address may hold together.
    pub max_waiting_per_addr: usize,
    /// How long a subscription waits for a name nobody announced (`waiting_room` is for
    /// announced names).
    pub unannounced_wait: Duration,
    /// Names announced ahead (scheduled streams): their waiting rooms are always kept.
    pub announce: Vec<String>,
    /// A publisher that sends no audio for this long is lost (the grace period starts).
    pub source_timeout: Duration,
    /// How long a relay remembers that its parent refused a name (not found, overloaded).
    pub refusal_memory: Duration,
    /// How long a relay's parent has to say a name is live before the relay counts it as
    /// a waiting room.
    pub probe: Duration,
    pub max_connections: u64,
    /// HTTP connections served at once: each holds a file descriptor, so the binary sets
    /// this from the descriptors it may open (QUIC connections share one socket).
    pub max_http_connections: u64,
    pub connect_timeout: Duration,
    /// How long subscribers are asked to delay their ACKs (zero: not asked).
    pub ack_delay: Duration,
    /// New connections are refused while the node's tasks run this late (zero: never).
    pub overload_lag: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "quicast".into(),
            store: StoreConfig::default(),
            segment_duration: Duration::from_secs(1),
            publish_token: None,
            upstream: Vec::new(),
            upstream_trust: None,
            waiting_room: Duration::from_secs(3600),
            linger: Duration::from_secs(5),
            publisher_grace: Duration::from_secs(10),
            http_wait: Duration::from_secs(30),
            source_password: None,
            max_subscriptions_per_conn: 16,
            max_waiting_per_conn: 4,
            max_waiting_per_addr: 64,
            unannounced_wait: Duration::from_secs(30),
            announce: Vec::new(),
            source_timeout: Duration::from_secs(3),
            refusal_memory: Duration::from_secs(5),
            probe: Duration::from_secs(2),
            max_connections: 100_000,
            max_http_connections: u64::MAX,
            connect_timeout: Duration::from_secs(3),
            ack_delay: Duration::from_secs(1),
            overload_lag: Duration::from_secs(1),
        }
    }
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub subscriptions: AtomicU64,
    pub subscriptions_total: AtomicU64,
    pub upstream_subscriptions_total: AtomicU64,
    pub skips_total: AtomicU64,
    pub refused_total: AtomicU64,
    pub publishers: AtomicU64,
    pub http_connections: AtomicU64,
    /// Connections refused because the node was overloaded (also in `refused_total`).
    pub shed_total: AtomicU64,
    /// How late the node's tasks last ran, in ms (see `watch_load`).
    pub lag_ms: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

pub struct Node {
    pub cfg: NodeConfig,
    pub registry: Arc<Registry>,
    pub stats: Stats,
    upstream: Option<Arc<Upstream>>,
    overloaded: std::sync::atomic::AtomicBool,
    /// Waiting subscriptions by listener address (see `Peer`).
    waiting_by_addr: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// Names a relay's parent refused lately, and why: asked again, they are refused at
    /// once rather than asked of the parent again.
    refused: moka::sync::Cache<String, (ErrorCode, String)>,
}

/// Who subscribes, for the bounds on subscriptions to streams that are not live: per
/// connection, and per address for listeners (a child relay carries its own listeners'
/// waiting rooms, bounded by its own node).
#[derive(Clone, Debug)]
pub struct Peer {
    pub role: Role,
    pub addr: IpAddr,
    /// Waiting subscriptions this connection holds now.
    pub waiting: Arc<AtomicUsize>,
}

impl Peer {
    pub fn new(role: Role, addr: IpAddr) -> Peer {
        Peer {
            role,
            addr,
            waiting: Arc::default(),
        }
    }
}

/// One waiting subscription's place in its peer's bounds; given back when it goes.
struct WaitPermit {
    node: Arc<Node>,
    peer: Peer,
}

impl Drop for WaitPermit {
    fn drop(&mut self) {
        self.peer.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.peer.role != Role::Relay {
            let mut m = self
                .node
                .waiting_by_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&self.peer.addr) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.peer.addr);
                }
            }
        }
    }
}

impl Node {
    pub fn new(cfg: NodeConfig) -> Result<Arc<Node>> {
        let registry = Registry::with_announced(
            cfg.store.clone(),
            crate::store::Announced::new(cfg.announce.clone()),
        );
        let upstream = if cfg.upstream.is_empty() {
            None
        } else {
            let trust = cfg.upstream_trust.clone().ok_or_else(|| {
                Error::Tls("a relay needs --ca or --fingerprint to trust its parents".into())
            })?;
            Some(Upstream::new(
                cfg.upstream.clone(),
                &trust,
                cfg.connect_timeout,
                (cfg.store.max_streams + cfg.store.max_waiting) as u64,
            )?)
        };
        let refused = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(cfg.refusal_memory.max(Duration::from_millis(1)))
            .build();
        Ok(Arc::new(Node {
            cfg,
            registry,
            stats: Stats::default(),
            upstream,
            overloaded: Default::default(),
            waiting_by_addr: Default::default(),
            refused,
        }))
    }

    /// Whether new connections are being refused to protect the listeners already served.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Sets the overload state (normally `watch_load` does).
    pub fn set_overloaded(&self, on: bool) {
        self.overloaded.store(on, Ordering::Relaxed);
    }

    /// Whether a new HTTP connection may be taken: as `admit`, and within the descriptors
    /// the process may open (`max_http_connections`).
    pub fn admit_http(&self) -> bool {
        if self.stats.http_connections.load(Ordering::Relaxed) >= self.cfg.max_http_connections {
            inc(&self.stats.refused_total);
            return false;
        }
        self.admit()
    }

    /// Whether a new connection (QUIC or HTTP) may be taken: under the connection limit and
    /// not overloaded. Counts a refusal.
    pub fn admit(&self) -> bool {
        let open = self.stats.connections.load(Ordering::Relaxed)
            + self.stats.http_connections.load(Ordering::Relaxed);
        let ok = if open >= self.cfg.max_connections {
            false
        } else if self.overloaded() {
            inc(&self.stats.shed_total);
            false
        } else {
            true
        };
        if !ok {
            inc(&self.stats.refused_total);
        }
        ok
    }

    pub fn is_relay(&self) -> bool {
        self.upstream.is_some()
    }

    /// Subscribes to `path` for any kind of subscriber: counts it, starts the upstream fetch
    /// on a relay's first subscriber, and waits up to `wait` for the stream to start (the
    /// waiting room; `not_found` after that). Who waited hears the stream from its first packet.
    ///
    /// A name that is not live costs a stranger its own bounds, never the node's: at most
    /// `max_waiting_per_conn` such subscriptions per connection and `max_waiting_per_addr`
    /// per listener address, and a name nobody announced waits `unannounced_wait` at most.
    pub async fn subscribe(
        self: &Arc<Self>,
        path: &str,
        start: Start,
        wait: Duration,
        peer: &Peer,
    ) -> Result<Subscriber> {
        if let Some((code, reason)) = self.refused.get(path) {
            return Err(Error::refused(code, reason));
        }
        // A name that is not live here takes a place in the peer's bounds before it costs
        // the node anything; on a relay, only once the parent has had its chance to say the
        // stream is live (a stream live upstream is no waiting room).
        let live = self
            .registry
            .get(path)
            .is_some_and(|s| s.broadcast().is_some());
        let mut permit = if live || self.is_relay() {
            None
        } else {
            Some(self.wait_permit(peer)?)
        };
        let how = if self.is_relay() {
            Create::Asking
        } else {
            Create::Waiting
        };
        let (guard, created) = self.registry.subscribe(path, how)?;
        inc(&self.stats.subscriptions);
        inc(&self.stats.subscriptions_total);
        let counted = Counted(self.clone());
        if created {
            if let Some(up) = &self.upstream {
                up.spawn_fetch(self.clone(), guard.slot.clone(), start);
            }
        }
        let waited = guard.slot.broadcast().is_none();
        if waited {
            debug!("stream has not started: waiting room");
        }
        let wait = if guard.slot.announced {
            wait
        } else {
            wait.min(self.cfg.unannounced_wait)
        };
        let deadline = tokio::time::Instant::now() + wait;
        let not_found = |_| {
            Error::refused(
                ErrorCode::NotFound,
                format!("stream {path} did not start within {} s", wait.as_secs()),
            )
        };
        let b = match guard.slot.broadcast() {
            Some(b) => b,
            None => {
                let answered = if permit.is_none() {
                    let probe = self.cfg.probe.min(wait);
                    tokio::time::timeout(probe, guard.slot.wait_broadcast())
                        .await
                        .ok()
                } else {
                    None
                };
                match answered {
                    Some(b) => b?,
                    None => {
                        if permit.is_none() {
                            permit = Some(self.wait_permit(peer)?);
                        }
                        tokio::time::timeout_at(deadline, guard.slot.wait_broadcast())
                            .await
                            .map_err(not_found)??
                    }
                }
            }
        };
        drop(permit);
        let cursor = if waited && start == Start::Live {
            b.cursor_from_first()
        } else {
            b.cursor(start)
        };
        Ok(Subscriber {
            cursor,
            _guard: guard,
            _counted: counted,
        })
    }

    /// A place for one more subscription to a stream that is not live, within `peer`'s bounds.
    fn wait_permit(self: &Arc<Self>, peer: &Peer) -> Result<WaitPermit> {
        let held = peer.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = WaitPermit {
            node: self.clone(),
            peer: peer.clone(),
        };
        if peer.role == Role::Relay {
            return Ok(permit);
        }
        let per_addr = {
            let mut m = self
                .waiting_by_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = m.entry(peer.addr).or_default();
            *n += 1;
            *n
        };
        if held >= self.cfg.max_waiting_per_conn {
            inc(&self.stats.refused_total);
            return Err(Error::refused(
                ErrorCode::Overloaded,
                format!(
                    "at most {} subscriptions per connection to streams that are not live",
                    self.cfg.max_waiting_per_conn
                ),
            ));
        }
        if per_addr > self.cfg.max_waiting_per_addr {
            inc(&self.stats.refused_total);
            return Err(Error::refused(
                ErrorCode::Overloaded,
                format!(
                    "at most {} subscriptions from one address to streams that are not live",
                    self.cfg.max_waiting_per_addr
                ),
            ));
        }
        Ok(permit)
    }

    /// Remembers for a while that the parent refused `path` (see `Node::refused`).
    pub fn remember_refusal(&self, path: &str, code: ErrorCode, reason: &str) {
        self.refused
            .insert(path.to_string(), (code, reason.to_string()));
    }

    /// Subscriptions a connection of `role` may hold.
    pub fn max_subscriptions(&self, role: Role) -> usize {
        if role == Role::Relay {
            self.cfg.store.max_streams + self.cfg.store.max_waiting
        } else {
            self.cfg.max_subscriptions_per_conn
        }
    }

    /// How many subscriptions this node has served for `path` (child relays included).
    pub fn subscriptions_for(&self, path: &str) -> u64 {
        self.registry
            .get(path)
            .map(|s| s.subscriptions_total.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// A subscription on this node: where it is in the broadcast, and its place in the counts.
pub struct Subscriber {
    pub cursor: Cursor,
    _guard: SubscriberGuard,
    _counted: Counted,
}

struct Counted(Arc<Node>);

impl Drop for Counted {
    fn drop(&mut self) {
        dec(&self.0.stats.subscriptions);
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A running QUIC listener for a node.
pub struct Server {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub fingerprint: String,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}

impl Server {
    pub async fn start(node: Arc<Node>, listen: SocketAddr, identity: &Identity) -> Result<Server> {
        let endpoint = crate::tls::server_endpoint(
            crate::tls::server_config(identity, node.cfg.ack_delay)?,
            listen,
        )?;
        let addr = endpoint.local_addr()?;
        let role = if node.is_relay() { "relay" } else { "origin" };
        info!(%addr, role, node = %node.cfg.name, fingerprint = %identity.fingerprint, "listening (QUIC)");
        if !node.is_relay() && node.cfg.publish_token.is_none() {
            warn!("no publish token configured: any client can publish to this origin (set --publish-token)");
        }
        let ep = endpoint.clone();
        let n = node.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                // Refusing costs one small packet and no cryptography.
                if !n.admit() {
                    incoming.refuse();
                    continue;
                }
                let remote = incoming.remote_address();
                let span = info_span!("conn", node = %n.cfg.name, %remote);
                let n = n.clone();
                tokio::spawn(
                    async move {
                        inc(&n.stats.connections);
                        inc(&n.stats.connections_total);
                        match incoming.await {
                            Ok(conn) => handle_connection(n.clone(), conn).await,
                            Err(e) => debug!("handshake failed: {e}"),
                        }
                        dec(&n.stats.connections);
                    }
                    .instrument(span),
                );
            }
        });
        let mut tasks = vec![accept];
        if !node.cfg.overload_lag.is_zero() {
            tasks.push(tokio::spawn(watch_load(node.clone())));
        }
        if !node.is_relay() {
            tasks.push(tokio::spawn(sweep(node.clone())));
        }
        Ok(Server {
            node,
            addr,
            fingerprint: identity.fingerprint.clone(),
            endpoint,
            tasks,
        })
    }

    /// Closes every connection (peers are told `going_away`) and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(ErrorCode::GoingAway.varint(), b"node shutting down");
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits for connections to be closed cleanly (after `close`).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// How often `watch_load` measures.
const LOAD_PROBE: Duration = Duration::from_millis(100);

/// The next overload state, given how late a task woke: on at `limit`, off only below half
/// of it, so the state does not flap at the edge.
pub fn next_overload(overloaded: bool, lag: Duration, limit: Duration) -> bool {
    if overloaded {
        lag >= limit / 2
    } else {
        lag >= limit
    }
}

/// Load shedding. A node past its CPU serves every listener late, and each handshake it
/// takes on makes that worse (the 10,000-listener benchmark on one core: 973 hello timeouts
/// and gaps for listeners already in). So a task measures how late it wakes from a short
/// timer, the time every task waits for the CPU, and while that exceeds `overload-lag-ms`,
/// new connections are refused at once (QUIC CONNECTION_REFUSED, HTTP 503), cheaply, so
/// clients can go to another relay, and the listeners already here keep their audio.
async fn watch_load(node: Arc<Node>) {
    let limit = node.cfg.overload_lag;
    loop {
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(LOAD_PROBE).await;
        let lag = t0.elapsed().saturating_sub(LOAD_PROBE);
        node.stats
            .lag_ms
            .store(lag.as_millis() as u64, Ordering::Relaxed);
        let was = node.overloaded();
        let now = next_overload(was, lag, limit);
        if now != was {
            node.set_overloaded(now);
            if now {
                warn!(
                    lag_ms = lag.as_millis() as u64,
                    limit_ms = limit.as_millis() as u64,
                    "overloaded: refusing new connections"
                );
            } else {
                info!(
                    lag_ms = lag.as_millis() as u64,
                    shed_total = node.stats.shed_total.load(Ordering::Relaxed),
                    "load back to normal: taking new connections"
                );
            }
        }
    }
}

/// Drops origin streams nobody publishes or listens to.
async fn sweep(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for slot in node.registry.list() {
            let live = slot.broadcast().is_some_and(|b| !b.is_ended());
            if !live && node.registry.remove_if_idle(&slot) {
                debug!(path = %slot.path, "idle stream removed");
            }
        }
    }
}

/// The sending side of a connection's control stream, shared by its tasks.
#[derive(Clone)]
struct Ctl(Arc<tokio::sync::Mutex<SendStream>>);

impl Ctl {
    /// Writes `m` to the control stream; when this returns it is written, so that what the
    /// caller sends next on other streams cannot overtake it at our end. (A lock rather than a
    /// writer task and channel: a connection writes a handful of messages in its life, and a
    /// task plus channel cost every connection ~3 KB.)
    ///
    /// The write runs in its own task, so a caller that is cancelled (an aborted subscription)
    /// never leaves half a message on the stream.
    async fn send(&self, m: Message) -> Result<()> {
        let stream = self.0.clone();
        let write = tokio::spawn(async move { write_message(&mut *stream.lock().await, &m).await });
        write.await.map_err(|_| Error::Closed)?
    }

    /// Tells the peer `e` (an ERROR message) and closes its connection with the same code.
    async fn fail(&self, conn: &Connection, e: &Error) {
        let (code, reason) = (e.code(), e.reason());
        let _ = self
            .send(Message::Error {
                code: code.as_u64(),
                reason: reason.clone(),
            })
            .await;
        close(conn, code, &reason);
    }
}

fn close(conn: &Connection, code: ErrorCode, reason: &str) {
    conn.close(code.varint(), reason.as_bytes());
}

async fn refuse(conn: &Connection, send: &mut SendStream, code: ErrorCode, reason: &str) {
    warn!(%code, reason, "refusing peer");
    let _ = write_message(
        send,
        &Message::Error {
            code: code.as_u64(),
            reason: reason.into(),
        },
    )
    .await;
    close(conn, code, reason);
}

fn token_ok(expected: &Option<String>, got: &[u8]) -> bool {
    match expected {
        None => true,
        Some(t) => secret_eq(t.as_bytes(), got),
    }
}

/// What a credential (a token, a password) is remembered as: its SHA-256.
pub fn credential(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two secrets in time that does not depend on where they differ (their digests).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    credential(a)
        .iter()
        .zip(credential(b).iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn handle_connection(node: Arc<Node>, conn: Connection) {
    let accepted = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
    let (mut send, recv) = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!("closed before its control stream: {e}"),
        Err(_) => return close(&conn, ErrorCode::Timeout, "no control stream"),
    };
    let mut reader = ControlReader::new(recv);
    let hello = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
    let role = match hello {
        Ok(Ok(Some(Message::Hello {
            version,
            role,
            token,
        }))) => {
            if version != proto::VERSION {
                let r = format!(
                    "protocol version {version} is not supported (this node speaks {})",
                    proto::VERSION
                );
                return refuse(&conn, &mut send, ErrorCode::UnsupportedVersion, &r).await;
            }
            if role == Role::Publisher {
                if node.is_relay() {
                    return refuse(
                        &conn,
                        &mut send,
                        ErrorCode::NotAllowed,
                        "a relay takes no publishers; publish to the origin",
                    )
                    .await;
                }
                if !token_ok(&node.cfg.publish_token, &token) {
                    let why = if token.is_empty() {
                        "publish token required"
                    } else {
                        "wrong publish token"
                    };
                    return refuse(&conn, &mut send, ErrorCode::Unauthorized, why).await;
                }
            }
            role
        }
        Ok(Ok(Some(other))) => {
            let r = format!("first message must be hello, got {other:?}");
            return refuse(&conn, &mut send, ErrorCode::ProtocolViolation, &r).await;
        }
        Ok(Err(e)) => return refuse(&conn, &mut send, e.code(), &e.reason()).await,
        Ok(Ok(None)) => return,
        Err(_) => return close(&conn, ErrorCode::Timeout, "no hello"),
    };
    debug!(?role, "hello");
    match role {
        // A publisher gets its one frame stream; nobody else may open any (a stream the
        // node never reads would hold its receive window for the connection's life).
        Role::Publisher => conn.set_max_concurrent_uni_streams(1u32.into()),
        // A child relay carries many streams at once: room for all of them in flight.
        Role::Relay => conn.set_send_window(crate::tls::RELAY_WINDOW),
        Role::Listener => {}
    }
    // The credential a publisher proved (see `PublisherClaim`).
    let credential = match (&node.cfg.publish_token, role) {
        (Some(t), Role::Publisher) => Some(credential(t.as_bytes())),
        _ => None,
    };
    let peer = Peer::new(role, conn.remote_address().ip());
    if write_message(
        &mut send,
        &Message::HelloOk {
            version: proto::VERSION,
            node: node.cfg.name.clone(),
        },
    )
    .await
    .is_err()
    {
        return;
    }

    // Every task of this connection writes control messages through this one lock.
    let ctl = Ctl(Arc::new(tokio::sync::Mutex::new(send)));
    let mut subs: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let mut publishing: Option<tokio::task::JoinHandle<()>> = None;
    let outcome: Result<()> = loop {
        let msg = tokio::select! {
            m = reader.next() => m,
            e = conn.closed() => break Err(conn_error(e)),
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg {
            Message::Subscribe { id, path, start } => {
                subs.retain(|_, h| !h.is_finished());
                if subs.contains_key(&id) {
                    break Err(Error::refused(
                        ErrorCode::ProtocolViolation,
                        format!("subscription id {id} reused"),
                    ));
                }
                let max = node.max_subscriptions(role);
                if subs.len() >= max {
                    let reason = format!("at most {max} subscriptions per connection");
                    let _ = ctl
                        .send(Message::SubscribeError {
                            id,
                            code: ErrorCode::Overloaded.as_u64(),
                            reason,
                        })
                        .await;
                    continue;
                }
                let span = info_span!("sub", id, %path, ?role);
                let task = tokio::spawn(
                    serve_subscription(
                        node.clone(),
                        conn.clone(),
                        ctl.clone(),
                        peer.clone(),
                        (id, path, start),
                    )
                    .instrument(span),
                );
                subs.insert(id, task.abort_handle());
            }
            Message::Unsubscribe { id } => {
                if let Some(h) = subs.remove(&id) {
                    h.abort();
                }
            }
            Message::Publish { path, codec } => {
                if role != Role::Publisher {
                    break Err(Error::refused(
                        ErrorCode::NotAllowed,
                        "publish without the publisher role",
                    ));
                }
                if publishing.is_some() {
                    break Err(Error::refused(
                        ErrorCode::ProtocolViolation,
                        "one publish per connection",
                    ));
                }
                let span = info_span!("publish", %path);
                publishing = Some(tokio::spawn(
                    serve_publish(
                        node.clone(),
                        conn.clone(),
                        ctl.clone(),
                        path,
                        codec,
                        credential,
                    )
                    .instrument(span),
                ));
            }
            other => {
                break Err(Error::refused(
                    ErrorCode::ProtocolViolation,
                    format!("unexpected message {other:?}"),
                ));
            }
        }
    };
    for (_, h) in subs.drain() {
        h.abort();
    }
    match outcome {
        Ok(()) => {
            // The peer finished its control stream: let a publisher's last frames land.
            if let Some(p) = publishing.take() {
                let _ = p.await;
            }
            close(&conn, ErrorCode::NoError, "bye");
        }
        Err(
            Error::Remote { .. }
            | Error::Connection(_)
            | Error::Read(quinn::ReadError::ConnectionLost(_)),
        ) => {
            debug!("connection closed")
        }
        Err(e) => {
            warn!(side = "downstream", code = %e.code(), "closing connection: {e}");
            ctl.fail(&conn, &e).await;
        }
    }
    // A publish task is never aborted: it ends with its stream and must run its cleanup
    // (end the broadcast, or keep it for the publisher's return).
    drop(publishing);
}

async fn serve_subscription(
    node: Arc<Node>,
    conn: Connection,
    ctl: Ctl,
    peer: Peer,
    (id, path, start): (u64, String, Start),
) {
    let mut sub = match node
        .subscribe(&path, start, node.cfg.waiting_room, &peer)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            info!("{e}");
            let (code, reason) = (e.code().as_u64(), e.reason());
            let _ = ctl.send(Message::SubscribeError { id, code, reason }).await;
            return;
        }
    };
    let b = sub.cursor.broadcast().clone();
    debug!(instance = b.instance, "subscribed");
    let subscribed = Message::Subscribed {
        id,
        instance: b.instance,
        codec: b.codec.clone(),
    };
    if ctl.send(subscribed).await.is_err() {
        return;
    }
    let mut sink = QuicSink {
        conn: &conn,
        id,
        out: None,
        header: None,
        ended: None,
        chunks: Vec::new(),
    };
    match fan_out(&node, &mut sub.cursor, &mut sink).await {
        Ok(last) => {
            debug!(?last, "broadcast ended");
            sink.finish_ended();
            let _ = ctl
                .send(Message::StreamEnd {
                    id,
                    last_seq: last.unwrap_or(0),
                })
                .await;
        }
        Err(e) => debug!("subscription ended: {e}"),
    }
}

/// A QUIC subscriber: each segment on its own uni stream; a skip resets it.
struct QuicSink<'a> {
    conn: &'a Connection,
    id: u64,
    out: Option<SendStream>,
    /// The segment header, sent with the segment's first frames rather than in a packet of
    /// its own (a segment begins before its first batch of frames is due).
    header: Option<Bytes>,
    /// The segment that ended, its FIN not yet sent: it goes with the next segment's first
    /// frames instead of in a packet of its own. Dropping the sink sends it too.
    ended: Option<SendStream>,
    chunks: Vec<Bytes>,
}

impl QuicSink<'_> {
    fn finish_ended(&mut self) {
        if let Some(mut s) = self.ended.take() {
            let _ = s.finish();
        }
    }
}

impl Sink for QuicSink<'_> {
    async fn begin(&mut self, seq: u64) -> Result<()> {
        let s = match futures_util::FutureExt::now_or_never(self.conn.open_uni()) {
            Some(s) => s,
            None => {
                // No stream credit now: the held-back FIN must not wait for it (the peer
                // may be waiting for that FIN to give credit back).
                self.finish_ended();
                self.conn.open_uni().await
            }
        }
        .map_err(conn_error)?;
        let mut hdr = bytes::BytesMut::new();
        proto::SegmentHeader {
            sub_id: self.id,
            seq,
        }
        .encode(&mut hdr);
        self.header = Some(hdr.freeze());
        self.out = Some(s);
        Ok(())
    }

    async fn frames(&mut self, _frames: &[Stored], wire: &[Bytes]) -> Result<Delivery> {
        self.finish_ended();
        let Some(s) = self.out.as_mut() else {
            return Ok(Delivery::Done);
        };
        // The same Bytes every subscriber gets (a run of frames, usually one): no copy.
        self.chunks.clear();
        self.chunks.extend(self.header.take());
        self.chunks.extend_from_slice(wire);
        match s.write_all_chunks(&mut self.chunks).await {
            Ok(()) => Ok(Delivery::Done),
            Err(quinn::WriteError::Stopped(_)) => {
                self.out = None;
                Ok(Delivery::Stopped)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn end(&mut self, _seq: u64) {
        if let Some(mut s) = self.out.take() {
            // A segment without frames still shows the subscriber its header. A fresh
            // stream has credit for a few bytes; if not, the segment is reset instead.
            let unsent = self.header.take();
            let sent = unsent.is_none_or(|h| {
                matches!(
                    futures_util::FutureExt::now_or_never(s.write_all(&h)),
                    Some(Ok(()))
                )
            });
            if sent {
                self.finish_ended();
                self.ended = Some(s);
            } else {
                let _ = s.reset(ErrorCode::Skipped.varint());
            }
        }
    }

    fn skip(&mut self) {
        self.finish_ended();
        self.header = None;
        if let Some(mut s) = self.out.take() {
            let _ = s.reset(ErrorCode::Skipped.varint());
        }
    }
}

/// A QUIC publisher: one ordered stream of frames into the shared ingest.
async fn serve_publish(
    node: Arc<Node>,
    conn: Connection,
    ctl: Ctl,
    path: String,
    codec: Codec,
    credential: Option<[u8; 32]>,
) {
    let mut publishing = match Publishing::claim(&node, &path, codec, credential) {
        Ok(p) => p,
        Err(e) => {
            warn!(side = "downstream", code = %e.code(), "publish refused: {e}");
            return ctl.fail(&conn, &e).await;
        }
    };
    let displaced = publishing.displaced();
    let silence = node.cfg.source_timeout;
    let result = async {
        ctl.send(Message::PublishOk {
            instance: publishing.broadcast.instance,
        })
        .await?;
        let recv = tokio::time::timeout(silence, conn.accept_uni())
            .await
            .map_err(|_| Error::Timeout("publisher opened no frame stream"))?
            .map_err(conn_error)?;
        let mut reader = FrameReader::new(recv);
        let header = tokio::time::timeout(silence, reader.header())
            .await
            .map_err(|_| Error::Timeout("publisher sent no audio"))??;
        if header != UniHeader::Publish {
            return Err(Error::refused(
                ErrorCode::ProtocolViolation,
                format!("{header:?} stream where frames were expected"),
            ));
        }
        let mut frames = Vec::new();
        loop {
            frames.clear();
            // A publisher is never silent for long: one that sends nothing for
            // `source-timeout` is lost (crashed, or cut off), and its grace period starts.
            tokio::time::timeout(silence, reader.frames(&mut frames))
                .await
                .map_err(|_| Error::Timeout("publisher sent no audio"))??;
            if frames.is_empty() {
                return Ok(());
            }
            publishing.push(frames.drain(..).map(|(f, _)| f))?;
        }
    };
    let result = tokio::select! {
        r = result => r,
        _ = displaced.notified() => {
            info!("a publisher with the same credentials took over: leaving");
            let e = Error::refused(
                ErrorCode::Conflict,
                "a newer publisher with the same credentials took this stream over",
            );
            ctl.fail(&conn, &e).await;
            return;
        }
    };
    match result {
        Ok(()) => publishing.finish(),
        Err(e) => {
            match &e {
                Error::Remote { .. } | Error::Connection(_) | Error::Read(_) => {
                    warn!(side = "downstream", "publisher lost: {e}")
                }
                Error::Timeout(_) => {
                    warn!(
                        side = "downstream",
                        silence_ms = silence.as_millis() as u64,
                        "publisher lost: {e}"
                    );
                    ctl.fail(&conn, &e).await;
                }
                _ => {
                    warn!(side = "downstream", code = %e.code(), "publisher refused: {e}");
                    ctl.fail(&conn, &e).await;
                }
            }
            publishing.lost();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_overload;
    use std::time::Duration;

    #[test]
    fn overload_turns_on_at_the_limit_and_off_below_half_of_it() {
        let ms = Duration::from_millis;
        let limit = ms(1000);
        assert!(!next_overload(false, ms(999), limit));
        assert!(next_overload(false, ms(1000), limit));
        // Once on, it stays on until the lag is below half the limit.
        assert!(next_overload(true, ms(600), limit));
        assert!(next_overload(true, ms(500), limit));
        assert!(!next_overload(true, ms(499), limit));
        assert!(!next_overload(false, ms(700), limit));
    }
}
