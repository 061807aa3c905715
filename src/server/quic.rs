//! A node's QUIC front door: one thread per shard of the port (see `transport::shards`),
//! each driving an engine (quinn-proto, no task, waker or lock per connection) with every
//! connection made on its socket. Each broadcast's wake-up reaches a thread once; the loop
//! steps each of its subscribers' cursors and writes their frames straight into the
//! connections' streams, a slice at a time between rounds of I/O, and sends every
//! connection's packets together. What a connection says is `server::session`'s.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::delivery;
use super::session::Sessions;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{since_epoch, Broadcast};
use crate::node::{Node, Subscriber};
use crate::proto::ErrorCode;
use crate::transport::shards::{self, ShardCids};
use crate::transport::{self, Identity};

/// A node's QUIC front door: its shards (threads, each with an engine on its own socket of
/// the port, and the connections that live on it).
pub struct QuicServer {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub fingerprint: String,
    shards: Vec<Shard>,
    /// The certificates browsers get, where the node's identity is self-signed.
    web: std::sync::Mutex<Option<Arc<transport::WebCerts>>>,
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// One QUIC server thread, as the rest of the node sees it.
struct Shard {
    tx: mpsc::UnboundedSender<Cmd>,
    /// True once the thread has ended (its connections closed, or given up on).
    done: watch::Receiver<bool>,
}

/// What reaches a shard's loop from elsewhere.
pub(super) enum Cmd {
    /// A subscription the node made (or refused) for connection `conn` (`uid`).
    Subscribed {
        conn: usize,
        uid: u64,
        id: u64,
        low_latency: bool,
        sub: Result<Subscriber>,
    },
    /// Broadcast `key.0` woke its subscribers (its low-latency ones if `key.1`), at `at`
    /// (µs of `since_epoch`).
    Tick { key: WakeKey, at: u64 },
    /// Broadcast `key.0` is over: the watch `wanted` names ended.
    Unwatched {
        key: WakeKey,
        wanted: Arc<AtomicBool>,
    },
    /// A newer publisher took connection `conn`'s stream over.
    Displaced { conn: usize, uid: u64 },
    /// The node drains: every peer is told to go (and where).
    GoAway(Vec<String>),
    /// New connections get this configuration (a certificate reloaded).
    Config(Arc<quinn_proto::ServerConfig>),
    /// Close every connection and end the thread.
    Stop,
}

/// Longest a stopping shard waits for its connections' closes to be sent.
const SHARD_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Subscribers served per slice of a wake-up, between rounds of I/O.
const SLICE: usize = 256;
/// Longest a slice of a wake-up runs before I/O has its turn.
const SLICE_BUDGET: Duration = Duration::from_millis(5);
/// Most QUIC threads (connection IDs name their thread in one byte).
const MAX_THREADS: usize = 255;

/// QUIC threads by default: one per core this process may run on.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl QuicServer {
    pub async fn start(
        node: Arc<Node>,
        listen: SocketAddr,
        identity: &Identity,
    ) -> Result<QuicServer> {
        let web = browser_certs(identity, None)?;
        let cfg = Arc::new(transport::server_config(
            identity,
            web.as_ref(),
            node.cfg.ack_delay_ms.get(),
            node.cfg.max_packet_bytes.value() as u16,
        )?);
        let threads = node
            .cfg
            .quic_threads
            .map_or_else(default_threads, |t| t.value() as usize)
            .clamp(1, MAX_THREADS) as u8;
        let sockets = shards::bind(listen, threads)
            .map_err(|e| Error::local(format!("cannot serve QUIC on {listen}: {e}")))?;
        let addr = sockets
            .first()
            .ok_or_else(|| Error::local("no QUIC socket"))?
            .local_addr()?;
        let count = sockets.len() as u8;
        let mut shards = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let cids = ShardCids {
                shard: i as u8,
                shards: count,
            };
            shards.push(Shard::start(node.clone(), cfg.clone(), socket, cids).await?);
        }
        let _ = node.web.set(crate::node::WebDoor {
            port: addr.port(),
            certs: std::sync::RwLock::new(web.clone()),
        });
        let role = if node.is_relay() { "relay" } else { "origin" };
        info!(%addr, role, node = %node.name(), threads = count, fingerprint = %identity.fingerprint, "listening (QUIC)");
        if !node.is_relay() && node.access().open_to_publishers() {
            warn!("no token key nor publish token configured: any client can publish to this origin (set --token-key)");
        }
        Ok(QuicServer {
            node,
            addr,
            fingerprint: identity.fingerprint.clone(),
            shards,
            web: std::sync::Mutex::new(web),
        })
    }

    /// Serves new connections with `identity` (a reload: connections already in keep the
    /// certificate they were made with).
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        let mut held = self.web.lock().unwrap_or_else(|p| p.into_inner());
        let web = browser_certs(identity, held.clone())?;
        let cfg = Arc::new(transport::server_config(
            identity,
            web.as_ref(),
            self.node.cfg.ack_delay_ms.get(),
            self.node.cfg.max_packet_bytes.value() as u16,
        )?);
        for s in &self.shards {
            let _ = s.tx.send(Cmd::Config(cfg.clone()));
        }
        // The page passes the hashes browsers now get (none once a CA signs the certificate).
        if let Some(door) = self.node.web.get() {
            *door.certs.write().unwrap_or_else(|p| p.into_inner()) = web.clone();
        }
        *held = web;
        Ok(())
    }

    /// The node drains: it takes no newcomers, and tells every peer to go (listeners and
    /// child relays move to their other nodes, or to `alternatives`).
    pub fn drain(&self, alternatives: Vec<String>) {
        self.node.drain();
        info!(
            connections = self.node.stats.connections.load(Ordering::Relaxed),
            "draining: telling every peer to go"
        );
        for s in &self.shards {
            let _ = s.tx.send(Cmd::GoAway(alternatives.clone()));
        }
    }

    /// Waits until every peer has gone (after `drain`), at most `wait`.
    pub async fn drained(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async {
            while self.node.stats.connections.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Closes every connection (peers are told `going_away`) and stops accepting; each
    /// thread ends once its closes are out.
    pub fn close(&self) {
        for s in &self.shards {
            let _ = s.tx.send(Cmd::Stop);
        }
    }

    /// Waits for the threads to end (after `close`): their connections closed cleanly, or
    /// given up on after a few seconds.
    pub async fn wait_idle(&self) {
        for s in &self.shards {
            let mut done = s.done.clone();
            let _ = tokio::time::timeout(SHARD_CLOSE_WAIT * 2, done.wait_for(|d| *d)).await;
        }
    }
}

impl Shard {
    async fn start(
        node: Arc<Node>,
        cfg: Arc<quinn_proto::ServerConfig>,
        socket: std::net::UdpSocket,
        cids: ShardCids,
    ) -> Result<Shard> {
        let (ready_tx, ready) = oneshot::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(false);
        let retry_above = node
            .cfg
            .retry_above_per_sec
            .value()
            .div_ceil(cids.shards as u64);
        let sessions = Sessions::new(node.clone(), tx.clone(), retry_above);
        let thread = move || {
            // Said however the thread ends.
            struct Done(watch::Sender<bool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.send_replace(true);
                }
            }
            let _done = Done(done_tx);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            let mut engine = match Engine::server(socket, cfg, cids, sessions) {
                Ok(e) => e,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            engine.set_join_wait(node.cfg.join_queue_ms.get());
            // Several threads on the port: datagrams must reach the steering program one
            // by one (see `shards::unmerged`).
            if cids.shards > 1 {
                shards::unmerged(engine.raw_fd());
            }
            let _ = ready_tx.send(Ok(()));
            rt.block_on(async move {
                let probe = (!node.cfg.overload_lag_ms.get().is_zero()).then(|| node.probe_load());
                run(engine, rx).await;
                if let Some(p) = probe {
                    p.abort();
                }
            });
        };
        std::thread::Builder::new()
            .name(format!("quic-{}", cids.shard))
            .spawn(thread)
            .map_err(|e| Error::local(format!("cannot start a QUIC thread: {e}")))?;
        ready
            .await
            .map_err(|_| Error::local("a QUIC thread ended at its start"))?
            .map_err(|e| Error::local(format!("cannot start a QUIC endpoint: {e}")))?;
        Ok(Shard { tx, done })
    }
}

/// The certificates browsers get with `identity`: none if a CA signed it (browsers check it
/// as any site's); else short-lived ones named by their hashes (`held`, if there are some
/// already), made and turned over here. A self-signed certificate the operator gave
/// (`--cert`) counts as self-signed: a browser takes it only by a hash, and only short-lived.
fn browser_certs(
    identity: &Identity,
    held: Option<Arc<transport::WebCerts>>,
) -> Result<Option<Arc<transport::WebCerts>>> {
    let own = identity.self_signed
        || identity
            .certs
            .first()
            .is_some_and(|c| transport::self_issued(c));
    if !own {
        info!("WebTransport: browsers get the node's certificate (signed by a CA)");
        return Ok(None);
    }
    if let Some(w) = held {
        return Ok(Some(w));
    }
    let w = transport::WebCerts::new(&[
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    info!(hashes = %w.hashes().join(","), "WebTransport: browsers get a short-lived certificate; its page passes these hashes (serverCertificateHashes)");
    tokio::spawn(turn_web_certs(Arc::downgrade(&w)));
    Ok(Some(w))
}

/// Turns the browsers' certificates over when due (checked hourly), while the server lives.
async fn turn_web_certs(web: std::sync::Weak<transport::WebCerts>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        let Some(w) = web.upgrade() else { return };
        match w.turn_if_due(std::time::SystemTime::now()) {
            Ok(true) => info!(hashes = ?w.hashes(), "WebTransport certificate turned over"),
            Ok(false) => {}
            Err(e) => warn!("WebTransport certificate not turned over: {e}"),
        }
    }
}

/// A broadcast (its local id), and whether the wake-ups are its low-latency ones (every
/// frame) or its paced ones.
pub(super) type WakeKey = (u64, bool);

/// Who is woken when: each broadcast's subscribers on this thread, and those due.
#[derive(Default)]
struct Wakes {
    by_broadcast: HashMap<WakeKey, Watched>,
    /// Subscribers woken and not served yet, with when they were woken (a wake-up is
    /// served a slice at a time, so handshakes and ACKs never wait behind all of it). Each
    /// at most once (`Sub::queued`): a wake-up that comes before the last was served adds
    /// nobody twice.
    due: VecDeque<(usize, u64, u64, u64)>,
}

/// A broadcast's subscribers here, and the task that watches its wake-ups for them.
struct Watched {
    /// (connection, its uid, subscription id).
    subs: Vec<(usize, u64, u64)>,
    /// Cleared when nobody here listens any more: the task ends at the next wake-up.
    wanted: Arc<AtomicBool>,
}

/// The loop: waits for datagrams, timers or commands, and lets the engine work.
async fn run(mut engine: Engine<Sessions>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let tx = engine.app().tx.clone();
    let mut wakes = Wakes::default();
    // SAFETY: the descriptor is the engine's socket, open for as long as `engine` lives,
    // which outlives `fd` (both are this function's, `fd` declared after).
    let fd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            Fd(engine.raw_fd()),
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    } {
        Ok(fd) => fd,
        Err(e) => return warn!("QUIC thread: {e}"),
    };
    'run: loop {
        // Commands first: subscriptions made (on this thread at once, or by their tasks),
        // broadcasts woken.
        for cmd in std::mem::take(&mut engine.app().ready) {
            apply(&mut engine, &mut wakes, &tx, cmd);
        }
        while let Ok(cmd) = rx.try_recv() {
            if !apply(&mut engine, &mut wakes, &tx, cmd) {
                break 'run;
            }
        }
        deadlines(&mut engine);
        let serving = serve_slice(&mut engine, &mut wakes);
        let more = match engine.work() {
            Ok(m) => m || serving,
            Err(e) => {
                warn!("QUIC socket: {e}");
                serving
            }
        } || !engine.app().ready.is_empty();
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let next = [
            engine.next_timer(),
            engine.app().deadlines.peek().map(|d| d.0 .0),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(tokio::time::Instant::from_std)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = fd.readable() => {
                if let Ok(mut g) = r {
                    g.clear_ready();
                }
            }
            // The socket was full: on as soon as it takes more (readiness seen before the
            // last send was refused is cleared here, and the next wait is a real one).
            w = fd.writable(), if engine.sending() => {
                if let Ok(mut g) = w {
                    g.clear_ready();
                }
            }
            _ = tokio::time::sleep_until(next) => {}
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                if !apply(&mut engine, &mut wakes, &tx, cmd) {
                    break;
                }
            }
        }
    }
    // Newcomers from now on are refused: nobody is let in only to be dropped.
    engine.app().stopping = true;
    engine.close_all(
        Instant::now(),
        ErrorCode::GoingAway.as_u64() as u32,
        b"node shutting down",
    );
    let until = Instant::now() + SHARD_CLOSE_WAIT;
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

/// Connections' deadlines that came.
fn deadlines(engine: &mut Engine<Sessions>) {
    let now = Instant::now();
    while let Some(&Reverse((at, h, uid, due))) = engine.app().deadlines.peek() {
        if at > now {
            break;
        }
        engine.app().deadlines.pop();
        let mut again = None;
        engine.with_app(h, |app, c, s| {
            if s.uid == uid {
                again = app.due(c, s, now, due);
            }
        });
        if let Some(at) = again {
            engine.app().deadlines.push(Reverse((at, h, uid, due)));
        }
    }
}

/// Acts on a command. Returns false when the thread is to stop.
fn apply(
    engine: &mut Engine<Sessions>,
    wakes: &mut Wakes,
    tx: &mpsc::UnboundedSender<Cmd>,
    cmd: Cmd,
) -> bool {
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
            engine.with(conn, |c, s| {
                if s.uid == uid {
                    joined = delivery::subscribed(&node, c, s, id, low_latency, sub);
                }
            });
            if let Some((b, eager)) = joined {
                let key = (b.local_id(), eager);
                // One watcher per broadcast (and kind) while anyone here listens.
                let w = wakes.by_broadcast.entry(key).or_insert_with(|| {
                    let wanted = Arc::new(AtomicBool::new(true));
                    watch_wakes(&b, key, wanted.clone(), tx.clone());
                    Watched {
                        subs: Vec::new(),
                        wanted,
                    }
                });
                w.subs.push((conn, uid, id));
            }
        }
        Cmd::Unwatched { key, wanted } => {
            // That watch's, not a newer one's for the same key.
            if let Some(w) = wakes.by_broadcast.get(&key) {
                if Arc::ptr_eq(&w.wanted, &wanted) {
                    wakes.by_broadcast.remove(&key);
                }
            }
        }
        Cmd::Tick { key, at } => {
            // Queued, not served at once: the loop serves them a slice at a time between
            // rounds of I/O. Subscriptions that ended leave the broadcast's list here.
            let Some(w) = wakes.by_broadcast.get_mut(&key) else {
                return true;
            };
            w.subs.retain(|&(conn, uid, id)| {
                let Some(sub) = engine
                    .get_mut(conn)
                    .filter(|s| s.uid == uid)
                    .and_then(|s| s.subs.get_mut(&id))
                else {
                    return false;
                };
                if !sub.queued {
                    sub.queued = true;
                    wakes.due.push_back((conn, uid, id, at));
                }
                true
            });
            if w.subs.is_empty() {
                w.wanted.store(false, Ordering::Relaxed);
                wakes.by_broadcast.remove(&key);
            }
        }
        Cmd::Displaced { conn, uid } => {
            engine.with_app(conn, |app, c, s| {
                if s.uid == uid {
                    app.displaced(c, s);
                }
            });
        }
        Cmd::GoAway(alternatives) => {
            engine.app().away = Some(alternatives.clone());
            engine.for_each(|c, s| delivery::go_away(c, s, alternatives.clone()));
        }
        Cmd::Config(cfg) => engine.set_server_config(cfg),
        Cmd::Stop => return false,
    }
    true
}

/// Tells the loop of each of broadcast `b`'s wake-ups (each frame's too for `key.1`, its
/// low-latency subscribers), until it ends or nobody here wants them.
fn watch_wakes(
    b: &Arc<Broadcast>,
    key: WakeKey,
    wanted: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Cmd>,
) {
    let mut w = if key.1 { b.eager_watch() } else { b.watch() };
    // Its first subscriber was served before this watch began: a wake-up in between is
    // not missed.
    w.mark_changed();
    // Weak: the broadcast (which holds the sender) is not kept for the watch's sake.
    let b = Arc::downgrade(b);
    tokio::spawn(async move {
        while w.changed().await.is_ok() {
            if !wanted.load(Ordering::Relaxed) {
                return;
            }
            let Some(b) = b.upgrade() else { break };
            let at = b.last_wake().1;
            if tx.send(Cmd::Tick { key, at }).is_err() {
                return;
            }
            if b.is_finished() {
                break;
            }
        }
        let _ = tx.send(Cmd::Unwatched { key, wanted });
    });
}

/// Serves up to `SLICE` due subscribers. Returns whether more are due. How long after its
/// wake-up a subscriber was served is how late the node runs (its load watch stretches
/// intervals on it).
fn serve_slice(engine: &mut Engine<Sessions>, wakes: &mut Wakes) -> bool {
    if wakes.due.is_empty() {
        return false;
    }
    let node = engine.app().node.clone();
    let now = since_epoch(tokio::time::Instant::now());
    let mut late = 0;
    let started = Instant::now();
    for k in 0..SLICE {
        // A slice is short in time too (a slow build, a starved core): I/O comes between.
        if k % 32 == 31 && started.elapsed() >= SLICE_BUDGET {
            break;
        }
        let Some((conn, uid, id, at)) = wakes.due.pop_front() else {
            break;
        };
        late = late.max(now.saturating_sub(at));
        engine.with(conn, |c, s| {
            if s.uid == uid {
                if let Some(sub) = s.subs.get_mut(&id) {
                    sub.queued = false;
                }
                delivery::step(&node, c, s, id);
            }
        });
    }
    node.stats.fanout_late_us.fetch_max(late, Ordering::Relaxed);
    !wakes.due.is_empty()
}

/// New connections a second: those counted in the current second, or in the last whole one
/// if that was more (a burst is seen at once, and for a second after).
#[derive(Default)]
pub(super) struct HandshakeRate {
    second: Option<Instant>,
    now: u64,
    last: u64,
}

impl HandshakeRate {
    pub(super) fn tick(&mut self, at: Instant) -> u64 {
        match self.second {
            Some(s) if at.duration_since(s) < Duration::from_secs(1) => {}
            Some(s) if at.duration_since(s) < Duration::from_secs(2) => {
                self.last = self.now;
                self.now = 0;
                self.second = Some(s + Duration::from_secs(1));
            }
            _ => {
                self.last = 0;
                self.now = 0;
                self.second = Some(at);
            }
        }
        self.now += 1;
        self.now.max(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::HandshakeRate;
    use std::time::{Duration, Instant};

    #[test]
    fn the_handshake_rate_is_this_second_or_the_last_whichever_is_more() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = HandshakeRate::default();
        for k in 0..100u64 {
            assert_eq!(r.tick(t0 + ms(k)), k + 1);
        }
        // The next second: the burst is still seen, until this one passes it.
        assert_eq!(r.tick(t0 + ms(1_100)), 100);
        for _ in 0..150 {
            r.tick(t0 + ms(1_200));
        }
        assert_eq!(r.tick(t0 + ms(1_300)), 152);
        // After a quiet second and more: from nothing.
        assert_eq!(r.tick(t0 + ms(5_000)), 1);
    }
}
