//! A node's QUIC front door: the endpoint and its accept loop (admission before any
//! cryptography), each connection's handshake and control loop, which hands subscriptions
//! to the QUIC egress and a publish to the QUIC ingress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Connection, SendStream};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::egress::quic::serve_subscription;
use crate::error::{Error, Kind, Result};
use crate::ingress::quic::serve_publish;
use crate::node::{credential, dec, inc, Node, Peer, Presented};
use crate::proto::{self, ErrorCode, Message, Role};
use crate::transport::shards::{self, ShardCids};
use crate::transport::{
    self, close, conn_error, write_message, ControlReader, ControlWriter, Identity,
};

/// A node's QUIC front door: its shards (threads, each with an endpoint on its own socket of
/// the port, and the connections that live on it; see `transport::shards`).
pub struct QuicServer {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub fingerprint: String,
    shards: Vec<Shard>,
    /// Set when the node drains: every connection tells its peer to go (and where).
    going_away: watch::Sender<Option<Vec<String>>>,
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// One QUIC server thread: a current-thread runtime driving its endpoint, its accept loop,
/// and every task of its connections (so a connection's work never crosses threads).
struct Shard {
    endpoint: quinn::Endpoint,
    /// Sent (or dropped) to end the thread: it lets its connections' closes go out, then
    /// stops.
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

/// Longest a stopping shard waits for its connections' closes to be sent.
const SHARD_CLOSE_WAIT: Duration = Duration::from_secs(3);

impl Shard {
    async fn start(
        node: Arc<Node>,
        cfg: quinn::ServerConfig,
        socket: std::net::UdpSocket,
        cids: ShardCids,
        away: watch::Receiver<Option<Vec<String>>>,
    ) -> Result<Shard> {
        let (ready_tx, ready) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let retry_above = node
            .cfg
            .retry_above_per_sec
            .value()
            .div_ceil(cids.shards as u64);
        let thread = move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            rt.block_on(async move {
                let ep = match transport::server_endpoint(cfg, socket, cids) {
                    Ok(ep) => ep,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = ready_tx.send(Ok(ep.clone()));
                let probe = (!node.cfg.overload_lag_ms.get().is_zero()).then(|| node.probe_load());
                let accept = tokio::spawn(accept(node, ep.clone(), away, retry_above));
                let _ = stopped.await;
                accept.abort();
                if let Some(p) = probe {
                    p.abort();
                }
                ep.close(
                    transport::varint(ErrorCode::GoingAway),
                    b"node shutting down",
                );
                let _ = tokio::time::timeout(SHARD_CLOSE_WAIT, ep.wait_idle()).await;
            });
        };
        std::thread::Builder::new()
            .name(format!("quic-{}", cids.shard))
            .spawn(thread)
            .map_err(|e| Error::local(format!("cannot start a QUIC thread: {e}")))?;
        let endpoint = ready
            .await
            .map_err(|_| Error::local("a QUIC thread ended at its start"))?
            .map_err(|e| Error::local(format!("cannot start a QUIC endpoint: {e}")))?;
        Ok(Shard {
            endpoint,
            stop: std::sync::Mutex::new(Some(stop)),
        })
    }
}

/// A shard's accept loop: admission before any cryptography, then a task per connection.
async fn accept(
    n: Arc<Node>,
    ep: quinn::Endpoint,
    away: watch::Receiver<Option<Vec<String>>>,
    retry_above: u64,
) {
    let mut rate = HandshakeRate::default();
    while let Some(incoming) = ep.accept().await {
        // Refusing costs one small packet and no cryptography.
        if !n.admit() {
            incoming.refuse();
            continue;
        }
        // A flood of handshakes: each client proves its address first (a spoofed
        // source never sees the Retry), costing a real one a round trip.
        if rate.tick(std::time::Instant::now()) > retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            inc(&n.stats.retries_total);
            if incoming.retry().is_err() {
                debug!("could not send a Retry");
            }
            continue;
        }
        let remote = incoming.remote_address();
        let span = info_span!("conn", node = %n.name(), %remote);
        let n = n.clone();
        let away = away.clone();
        tokio::spawn(
            async move {
                inc(&n.stats.connections);
                inc(&n.stats.connections_total);
                match incoming.await {
                    Ok(conn) => handle_connection(n.clone(), conn, away).await,
                    Err(e) => debug!("handshake failed: {e}"),
                }
                dec(&n.stats.connections);
            }
            .instrument(span),
        );
    }
}

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
        let cfg = transport::server_config(
            identity,
            node.cfg.ack_delay_ms.get(),
            node.cfg.max_packet_bytes.value() as u16,
        )?;
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
        let (going_away, away) = watch::channel(None);
        let mut shards = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let cids = ShardCids {
                shard: i as u8,
                shards: count,
            };
            shards.push(Shard::start(node.clone(), cfg.clone(), socket, cids, away.clone()).await?);
        }
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
            going_away,
        })
    }

    /// Serves new connections with `identity` (a reload: connections already in keep the
    /// certificate they were made with).
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        let cfg = transport::server_config(
            identity,
            self.node.cfg.ack_delay_ms.get(),
            self.node.cfg.max_packet_bytes.value() as u16,
        )?;
        for s in &self.shards {
            s.endpoint.set_server_config(Some(cfg.clone()));
        }
        Ok(())
    }

    /// The node drains: it takes no newcomers, and tells every peer to go (listeners and
    /// child relays move to their other nodes, or to `alternatives`).
    pub fn drain(&self, alternatives: Vec<String>) {
        self.node.drain();
        info!(
            connections = self
                .node
                .stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            "draining: telling every peer to go"
        );
        self.going_away.send_replace(Some(alternatives));
    }

    /// Waits until every peer has gone (after `drain`), at most `wait`.
    pub async fn drained(&self, wait: std::time::Duration) -> bool {
        tokio::time::timeout(wait, async {
            while self
                .node
                .stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Closes every connection (peers are told `going_away`) and stops accepting; each
    /// thread ends once its closes are out.
    pub fn close(&self) {
        for s in &self.shards {
            s.endpoint.close(
                transport::varint(ErrorCode::GoingAway),
                b"node shutting down",
            );
            if let Some(stop) = s.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = stop.send(());
            }
        }
    }

    /// Waits for connections to be closed cleanly (after `close`), as long as the threads
    /// wait for them (a thread that gave up never says its endpoint is idle).
    pub async fn wait_idle(&self) {
        for s in &self.shards {
            let _ = tokio::time::timeout(SHARD_CLOSE_WAIT, s.endpoint.wait_idle()).await;
        }
    }
}

/// Most QUIC threads (connection IDs name their thread in one byte).
const MAX_THREADS: usize = 255;

/// New connections a second: those counted in the current second, or in the last whole one
/// if that was more (a burst is seen at once, and for a second after).
#[derive(Default)]
struct HandshakeRate {
    second: Option<std::time::Instant>,
    now: u64,
    last: u64,
}

impl HandshakeRate {
    fn tick(&mut self, at: std::time::Instant) -> u64 {
        match self.second {
            Some(s) if at.duration_since(s) < std::time::Duration::from_secs(1) => {}
            Some(s) if at.duration_since(s) < std::time::Duration::from_secs(2) => {
                self.last = self.now;
                self.now = 0;
                self.second = Some(s + std::time::Duration::from_secs(1));
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

/// Tells a peer that did not get as far as the control loop why, and closes.
async fn refuse(conn: &Connection, send: &mut SendStream, e: Error) {
    let (code, reason) = (e.code(), e.reason().to_string());
    warn!(side = "downstream", %code, reason, "refusing peer");
    let _ = write_message(
        send,
        &Message::Error {
            code: code.as_u64(),
            reason: reason.clone(),
        },
    )
    .await;
    close(conn, code, &reason);
}

/// The hello: who the peer is and what token it holds, checked before anything else is
/// taken from it.
async fn hello(
    node: &Node,
    conn: &Connection,
    send: &mut SendStream,
    reader: &mut ControlReader,
) -> Option<(Role, Presented)> {
    let hello = tokio::time::timeout(node.cfg.hello_timeout_ms.get(), reader.next()).await;
    let refusal = match hello {
        Ok(Ok(Some(Message::Hello {
            version,
            role,
            token,
        }))) => {
            if version != proto::VERSION {
                Error::new(
                    Kind::Version,
                    format!(
                        "protocol version {version} is not supported (this node speaks {})",
                        proto::VERSION
                    ),
                )
            } else if role == Role::Publisher && node.is_relay() {
                Error::new(
                    Kind::NotAllowed,
                    "a relay takes no publishers; publish to the origin",
                )
            } else {
                let access = node.access();
                let presented = access.present(&token);
                let checked = match role {
                    Role::Publisher => access.publisher(&presented),
                    Role::Relay => access.relay(&presented),
                    // A listener's token is checked against each path it asks for.
                    Role::Listener => Ok(()),
                };
                match checked {
                    Ok(()) => return Some((role, presented)),
                    Err(why) => {
                        // Counted here, said once by `refuse`.
                        inc(&node.stats.auth_refused_total);
                        why.into_error()
                    }
                }
            }
        }
        Ok(Ok(Some(other))) => {
            Error::protocol(format!("first message must be hello, got {other:?}"))
        }
        Ok(Err(e)) => e,
        Ok(Ok(None)) => return None,
        Err(_) => {
            close(conn, ErrorCode::Timeout, "no hello");
            return None;
        }
    };
    refuse(conn, send, refusal.downstream()).await;
    None
}

async fn handle_connection(
    node: Arc<Node>,
    conn: Connection,
    mut going_away: watch::Receiver<Option<Vec<String>>>,
) {
    let started = std::time::Instant::now();
    let accepted = tokio::time::timeout(node.cfg.hello_timeout_ms.get(), conn.accept_bi()).await;
    let (mut send, recv) = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!("closed before its control stream: {e}"),
        Err(_) => return close(&conn, ErrorCode::Timeout, "no control stream"),
    };
    let mut reader = ControlReader::new(recv);
    let Some((role, presented)) = hello(&node, &conn, &mut send, &mut reader).await else {
        return;
    };
    debug!(?role, "hello");
    match role {
        // A publisher gets its one frame stream; nobody else may open any (a stream the
        // node never reads would hold its receive window for the connection's life).
        Role::Publisher => conn.set_max_concurrent_uni_streams(1u32.into()),
        // A child relay carries many streams at once: room for all of them in flight.
        Role::Relay => conn.set_send_window(transport::RELAY_WINDOW),
        Role::Listener => {}
    }
    // The credential a publisher proved (see `PublisherClaim`): the shared token, or a
    // signed token's path (whoever may publish there may take a lost publisher's place).
    let credential = match (&presented, role) {
        (Presented::Secret, Role::Publisher) => node
            .access()
            .publish_secret()
            .map(|t| credential(t.expose().as_bytes())),
        (Presented::Signed(Ok(c)), Role::Publisher) => {
            Some(credential(format!("signed:{}", c.path).as_bytes()))
        }
        _ => None,
    };
    let peer = Peer::new(role, conn.remote_address().ip());
    let ok = Message::HelloOk {
        version: proto::VERSION,
        node: node.name().to_string(),
    };
    if write_message(&mut send, &ok).await.is_err() {
        return;
    }

    // Every task of this connection writes control messages through this one writer.
    let ctl = ControlWriter::new(send);
    let mut subs: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let mut publishing: Option<tokio::task::JoinHandle<()>> = None;
    let mut told = false;
    let mut subscribed = 0u64;
    let outcome: Result<()> = loop {
        let msg = tokio::select! {
            m = reader.next() => m,
            e = conn.closed() => break Err(conn_error(e)),
            Ok(()) = going_away.changed(), if !told => {
                let alternatives = going_away.borrow_and_update().clone();
                if let Some(alternatives) = alternatives {
                    told = true;
                    debug!("telling the peer to go");
                    let _ = ctl.send(Message::GoAway { alternatives }).await;
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg {
            Message::Subscribe {
                id,
                path,
                start,
                flags,
            } => {
                subscribed += 1;
                subs.retain(|_, h| !h.is_finished());
                if subs.contains_key(&id) {
                    break Err(Error::protocol(format!("subscription id {id} reused")));
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
                if let Err(why) = node
                    .access()
                    .may_listen(&presented, &path, role == Role::Relay)
                {
                    node.refused_auth(&format!("a subscription to {path}"), &why);
                    let e = why.into_error();
                    let _ = ctl
                        .send(Message::SubscribeError {
                            id,
                            code: e.code().as_u64(),
                            reason: e.reason().to_string(),
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
                        (id, path, start, flags),
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
            Message::Publish {
                path,
                codec,
                broadcast,
            } => {
                if role != Role::Publisher {
                    break Err(Error::new(
                        Kind::NotAllowed,
                        "publish without the publisher role",
                    ));
                }
                if publishing.is_some() {
                    break Err(Error::protocol("one publish per connection"));
                }
                if let Err(why) = node.access().may_publish(&presented, &path) {
                    inc(&node.stats.auth_refused_total);
                    break Err(why.into_error());
                }
                let span = info_span!("publish", %path);
                publishing = Some(tokio::spawn(
                    serve_publish(
                        node.clone(),
                        conn.clone(),
                        ctl.clone(),
                        path,
                        codec,
                        broadcast,
                        credential,
                    )
                    .instrument(span),
                ));
            }
            other => break Err(Error::protocol(format!("unexpected message {other:?}"))),
        }
    };
    for (_, h) in subs.drain() {
        h.abort();
    }
    // One line per connection when it ends, with its totals (for operators and log
    // collectors: --log-format json).
    let stats = conn.stats();
    let why = match &outcome {
        Ok(()) => "bye".to_string(),
        Err(e) => e.to_string(),
    };
    info!(
        ?role,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_sent = stats.udp_tx.bytes,
        bytes_received = stats.udp_rx.bytes,
        packets_sent = stats.udp_tx.datagrams,
        mtu = stats.path.current_mtu,
        mtu_probes = stats.path.sent_plpmtud_probes,
        black_holes = stats.path.black_holes_detected,
        subscriptions = subscribed,
        why,
        "connection ended"
    );
    match outcome {
        Ok(()) => {
            // The peer finished its control stream: let a publisher's last frames land.
            if let Some(p) = publishing.take() {
                let _ = p.await;
            }
            close(&conn, ErrorCode::NoError, "bye");
        }
        Err(e) if e.is_gone() || e.remote_code().is_some() => debug!("connection closed: {e}"),
        Err(e) => {
            let e = e.downstream();
            warn!(side = %e.side(), code = %e.code(), "closing connection: {e}");
            ctl.fail(&conn, &e).await;
        }
    }
    // A publish task is never aborted: it ends with its stream and must run its cleanup
    // (end the broadcast, or keep it for the publisher's return).
    drop(publishing);
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
