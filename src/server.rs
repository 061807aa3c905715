//! A quicast node. An origin and a relay are this same server; they differ only in where a
//! stream's segments come from: publishers (ingest) or a parent (the upstream fetcher).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use quinn::{Connection, SendStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::client::{conn_error, QuicUrl};
use crate::error::{Error, ErrorCode, Result};
use crate::media::opus_packet_samples;
use crate::proto::{
    self, Codec, Message, Role, Start, MAX_FRAMES_PER_SEGMENT, MAX_SEGMENT_BYTES, UNI_PUBLISH,
};
use crate::store::{Broadcast, Cursor, Registry, Step, StoreConfig, Stored};
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
    pub max_subscriptions_per_conn: usize,
    pub max_connections: u64,
    pub connect_timeout: Duration,
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
            max_subscriptions_per_conn: 16,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(3),
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
}

impl Node {
    pub fn new(cfg: NodeConfig) -> Result<Arc<Node>> {
        let registry = Registry::new(cfg.store.clone());
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
            )?)
        };
        Ok(Arc::new(Node {
            cfg,
            registry,
            stats: Stats::default(),
            upstream,
        }))
    }

    pub fn is_relay(&self) -> bool {
        self.upstream.is_some()
    }

    /// How many subscriptions this node has served for `path` (child relays included).
    pub fn subscriptions_for(&self, path: &str) -> u64 {
        self.registry
            .get(path)
            .map(|s| s.subscriptions_total.load(Ordering::Relaxed))
            .unwrap_or(0)
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
        let endpoint = quinn::Endpoint::server(crate::tls::server_config(identity)?, listen)?;
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
                if n.stats.connections.load(Ordering::Relaxed) >= n.cfg.max_connections {
                    inc(&n.stats.refused_total);
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
struct Ctl(mpsc::Sender<(Message, Option<oneshot::Sender<()>>)>);

impl Ctl {
    async fn send(&self, m: Message) -> Result<()> {
        self.0.send((m, None)).await.map_err(|_| Error::Closed)
    }

    /// Sends `m` and waits until it is written to the stream, so that what the caller sends
    /// next on other streams cannot overtake it at our end.
    async fn send_written(&self, m: Message) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((m, Some(tx)))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
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
        // Compare digests so the time taken does not depend on where the inputs differ.
        Some(t) => {
            let a = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
            let b = ring::digest::digest(&ring::digest::SHA256, got);
            a.as_ref()
                .iter()
                .zip(b.as_ref())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
        }
    }
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
        Ok(Err(e)) => return refuse(&conn, &mut send, e.code(), &e.to_string()).await,
        Ok(Ok(None)) => return,
        Err(_) => return close(&conn, ErrorCode::Timeout, "no hello"),
    };
    debug!(?role, "hello");
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

    // Every task of this connection writes control messages through one writer.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Message, Option<oneshot::Sender<()>>)>(64);
    let ctl = Ctl(ctl_tx);
    let writer = tokio::spawn(async move {
        while let Some((m, written)) = ctl_rx.recv().await {
            if write_message(&mut send, &m).await.is_err() {
                break;
            }
            if let Some(w) = written {
                let _ = w.send(());
            }
        }
    });
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
                if subs.len() >= node.cfg.max_subscriptions_per_conn {
                    let reason = format!(
                        "at most {} subscriptions per connection",
                        node.cfg.max_subscriptions_per_conn
                    );
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
                    serve_subscription(node.clone(), conn.clone(), ctl.clone(), id, path, start)
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
                    serve_publish(node.clone(), conn.clone(), ctl.clone(), path, codec)
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
            let _ = ctl
                .send(Message::Error {
                    code: e.code().as_u64(),
                    reason: e.to_string(),
                })
                .await;
            close(&conn, e.code(), &e.to_string());
        }
    }
    // A publish task is never aborted: it ends with its stream and must run its cleanup
    // (end the broadcast, or keep it for the publisher's return).
    drop(publishing);
    writer.abort();
}

async fn serve_subscription(
    node: Arc<Node>,
    conn: Connection,
    ctl: Ctl,
    id: u64,
    path: String,
    start: Start,
) {
    let (guard, created) = node.registry.subscribe(&path);
    inc(&node.stats.subscriptions);
    inc(&node.stats.subscriptions_total);
    struct Dec<'a>(&'a AtomicU64);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            dec(self.0);
        }
    }
    let _d = Dec(&node.stats.subscriptions);
    if created {
        if let Some(up) = &node.upstream {
            up.spawn_fetch(node.clone(), guard.slot.clone(), start);
        }
    }
    let waited = guard.slot.broadcast().is_none();
    if waited {
        debug!("stream has not started: waiting room");
    }
    let b = match tokio::time::timeout(node.cfg.waiting_room, guard.slot.wait_broadcast()).await {
        Ok(b) => b,
        Err(_) => {
            let reason = format!(
                "stream {path} did not start within {:?}",
                node.cfg.waiting_room
            );
            info!("{reason}");
            let _ = ctl
                .send(Message::SubscribeError {
                    id,
                    code: ErrorCode::NotFound.as_u64(),
                    reason,
                })
                .await;
            return;
        }
    };
    debug!(instance = b.instance, "subscribed");
    if ctl
        .send_written(Message::Subscribed {
            id,
            instance: b.instance,
            codec: b.codec.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    // Who waited for the stream hears it from its first packet.
    let mut cursor = if waited && start == Start::Live {
        b.cursor_from_first()
    } else {
        b.cursor(start)
    };
    match pump(&node, &conn, id, &mut cursor).await {
        Ok(last) => {
            debug!(?last, "broadcast ended");
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

/// Something that blocks on a slow peer, given up if the peer falls too far behind.
async fn unless_lagging<T>(
    cursor: &Cursor,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    // Biased: a write that can complete now always does; only a blocked one is given up.
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = cursor.lagging() => None,
    }
}

/// Walks the store for one QUIC subscriber: each segment on its own uni stream, frames
/// written as they arrive; a subscriber too far behind has its stream reset and is moved to
/// the newest segment. Returns the last segment delivered, once the broadcast ends.
async fn pump(node: &Node, conn: &Connection, id: u64, cursor: &mut Cursor) -> Result<Option<u64>> {
    let mut out: Option<SendStream> = None;
    let mut last = None;
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let mut step = cursor.next().await;
        match step {
            Step::Begin(seq) => {
                let opened = unless_lagging(cursor, async {
                    let mut s = conn.open_uni().await.map_err(conn_error)?;
                    let mut hdr = bytes::BytesMut::new();
                    proto::SegmentHeader { sub_id: id, seq }.encode(&mut hdr);
                    s.write_all(&hdr).await?;
                    Ok::<_, Error>(s)
                })
                .await;
                match opened {
                    Some(s) => out = Some(s?),
                    None => step = cursor.skip_to_live(),
                }
            }
            Step::Frames(ref frames) => {
                if let Some(s) = out.as_mut() {
                    chunks.clear();
                    chunks.extend(frames.iter().map(|f| f.record.clone()));
                    match unless_lagging(cursor, s.write_all_chunks(&mut chunks)).await {
                        Some(Ok(())) => {}
                        Some(Err(quinn::WriteError::Stopped(code))) => {
                            // The peer does not want the rest of this segment.
                            debug!(code = %code, "segment stream stopped by subscriber");
                            out = None;
                            cursor.abandon_segment();
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => step = cursor.skip_to_live(),
                    }
                }
            }
            Step::End(seq) => {
                if let Some(mut s) = out.take() {
                    let _ = s.finish();
                }
                last = Some(seq);
            }
            Step::Skip { .. } | Step::Finished => {}
        }
        match step {
            Step::Skip { from, to } => {
                if let Some(mut s) = out.take() {
                    let _ = s.reset(ErrorCode::Skipped.varint());
                }
                inc(&node.stats.skips_total);
                info!(
                    from,
                    to,
                    skipped = cursor.skipped,
                    "subscriber fell behind: moved forward to the newest segment"
                );
            }
            Step::Finished => return Ok(last),
            _ => {}
        }
    }
}

/// The origin's ingest: frames from one publisher, stamped and cut into segments.
async fn serve_publish(node: Arc<Node>, conn: Connection, ctl: Ctl, path: String, codec: Codec) {
    if let Err(e) = crate::media::OpusHead::parse(&codec.header) {
        let _ = ctl
            .send(Message::Error {
                code: ErrorCode::BadMedia.as_u64(),
                reason: e.to_string(),
            })
            .await;
        warn!("refused: {e}");
        return close(&conn, ErrorCode::BadMedia, &e.to_string());
    }
    let (slot, _) = node.registry.slot(&path);
    if !slot.claim_publisher() {
        let reason = format!("stream {path} already has a publisher");
        warn!("refused: {reason}");
        let _ = ctl
            .send(Message::Error {
                code: ErrorCode::Conflict.as_u64(),
                reason: reason.clone(),
            })
            .await;
        return close(&conn, ErrorCode::Conflict, &reason);
    }
    struct Release(Arc<crate::store::Slot>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release_publisher();
        }
    }
    let _release = Release(slot.clone());
    inc(&node.stats.publishers);
    let b = match slot.broadcast() {
        // The same publisher coming back: carry on with the same broadcast.
        Some(b) if !b.is_ended() && b.codec == codec => b,
        old => {
            if let Some(o) = old {
                o.end();
            }
            let instance = rand::random::<u64>() & proto::varint::MAX;
            let b = Broadcast::new(
                &path,
                instance,
                codec,
                &node.registry.cache,
                &node.registry.cfg,
            );
            slot.set_broadcast(Some(b.clone()));
            b
        }
    };
    info!(instance = b.instance, "publisher connected");
    let result = async {
        ctl.send(Message::PublishOk {
            instance: b.instance,
        })
        .await?;
        let recv = tokio::time::timeout(Duration::from_secs(10), conn.accept_uni())
            .await
            .map_err(|_| Error::Timeout("publisher opened no frame stream"))?
            .map_err(conn_error)?;
        let mut reader = FrameReader::new(recv);
        let kind = reader.varint().await?;
        if kind != UNI_PUBLISH {
            return Err(Error::refused(
                ErrorCode::ProtocolViolation,
                format!("stream kind {kind} where frames were expected"),
            ));
        }
        ingest(&node, &b, &mut reader).await
    }
    .await;
    dec(&node.stats.publishers);
    match result {
        Ok(()) => {
            info!("publisher finished: broadcast ended");
            b.end();
            if slot.broadcast().is_some_and(|cur| Arc::ptr_eq(&cur, &b)) {
                slot.set_broadcast(None);
            }
        }
        Err(e) => {
            if let Some(seg) = b.open_segment() {
                b.seal(&seg);
            }
            match &e {
                Error::Remote { .. } | Error::Connection(_) | Error::Read(_) => {
                    warn!(side = "downstream", "publisher lost: {e}")
                }
                _ => {
                    warn!(side = "downstream", code = %e.code(), "publisher refused: {e}");
                    let _ = ctl
                        .send(Message::Error {
                            code: e.code().as_u64(),
                            reason: e.to_string(),
                        })
                        .await;
                    close(&conn, e.code(), &e.to_string());
                }
            }
            // Keep the broadcast for a while so the publisher can come back without a new instance.
            let grace = node.cfg.publisher_grace;
            let slot = slot.clone();
            drop(_release);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if !slot.has_publisher()
                    && slot.broadcast().is_some_and(|cur| Arc::ptr_eq(&cur, &b))
                {
                    info!(path = %slot.path, "publisher did not come back: broadcast ended");
                    b.end();
                    slot.set_broadcast(None);
                }
            });
        }
    }
}

async fn ingest(node: &Node, b: &Arc<Broadcast>, reader: &mut FrameReader) -> Result<()> {
    let target = (node.cfg.segment_duration.as_micros() as u64 * b.codec.sample_rate as u64
        / 1_000_000)
        .max(1);
    let mut next_seq = b.edge().latest.map(|l| l + 1).unwrap_or(0);
    let mut seg: Option<(Arc<crate::store::Segment>, u64)> = None;
    let mut last_end: Option<u64> = None;
    let mut frames = Vec::new();
    loop {
        frames.clear();
        reader.frames(&mut frames).await?;
        if frames.is_empty() {
            return Ok(());
        }
        let wall = now_us();
        for (mut f, _) in frames.drain(..) {
            let samples = opus_packet_samples(&f.payload)?;
            if samples as u64 * b.codec.sample_rate as u64 / 48_000 != f.duration as u64 {
                return Err(Error::Media(format!(
                    "frame at pts {} says it lasts {} but its Opus packet lasts {samples} samples",
                    f.pts, f.duration
                )));
            }
            if let Some(end) = last_end {
                if f.pts < end {
                    return Err(Error::refused(
                        ErrorCode::ProtocolViolation,
                        format!("frame pts {} goes back before {end}", f.pts),
                    ));
                }
            }
            last_end = Some(f.pts + f.duration as u64);
            f.wall_us = wall;
            let stored = Stored::new(f);
            let cut = match &seg {
                None => true,
                Some((s, start_pts)) => {
                    stored.frame.pts.saturating_sub(*start_pts) >= target
                        || s.len() + 1 >= MAX_FRAMES_PER_SEGMENT
                        || s.bytes() + stored.record.len() > MAX_SEGMENT_BYTES
                }
            };
            if cut {
                seg = Some((b.begin(next_seq)?, stored.frame.pts));
                next_seq += 1;
            }
            if let Some((s, _)) = &seg {
                b.append(s, stored)?;
            }
        }
    }
}
