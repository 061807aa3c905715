//! A node's HTTP front door: the listener and its accept loop (admission, file
//! descriptors), each connection's requests read on readiness and answered in turn
//! (keep-alive), and routing to the egress (`GET /STREAM.ogg`, HLS), the ingress (Icecast
//! sources) and the node's own pages. The framing is ours (heads parsed by httparse): a
//! listener's socket goes straight to its stream, with nothing in between.

mod auth;
mod body;
pub mod head;
mod listen;
mod reply;
pub mod route;
mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admin::status;
use crate::egress::hls;
use crate::error::{Error, Kind, Result};
use crate::node::{HttpAdmission, Node, Peer};
use crate::proto::Role;

use auth::{may_listen, playlist_with_token, refusal_reply, ListenToken};
use body::Conn;
use head::{Method, NoHead, RequestHead};
pub use reply::Reply;
use route::Route;

/// A body a request that needs none may carry and still keep its connection.
const MAX_IGNORED_BODY: u64 = 64 * 1024;
/// How long a kept connection may sit idle before its next request starts.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);

/// A node's HTTP front door: its listener and accept loop.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the front door keeps across connections.
struct Door {
    node: Arc<Node>,
    /// Sources' wrong passwords, by address (see `source::Guesses`).
    guesses: source::Guesses,
    /// Its HTTP progressive listeners, by stream (see `egress::progressive`).
    herds: crate::egress::progressive::Herds,
}

impl HttpServer {
    pub async fn start(node: Arc<Node>, addr: SocketAddr) -> Result<HttpServer> {
        let listener =
            listen(addr).map_err(|e| Error::local(format!("cannot serve HTTP on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        info!(%addr, node = %node.name(), "listening (HTTP)");
        if node.is_relay() {
            debug!("relay: HTTP serves listeners only");
        } else if node.cfg.source_password.is_none() {
            info!("no source password: HTTP source ingest (Icecast PUT/SOURCE) is disabled");
        }
        let door = Arc::new(Door {
            node: node.clone(),
            guesses: source::Guesses::new(),
            herds: Default::default(),
        });
        // Taken now, while the process surely has a descriptor to spare.
        let mut reserve = Reserve::take();
        let task = tokio::spawn(async move {
            let mut last_warning: Option<tokio::time::Instant> = None;
            loop {
                if !reserve.held() {
                    reserve = Reserve::take();
                }
                let (tcp, remote) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        let out_of_descriptors = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
                        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            warn!(
                                http_connections = node
                                    .stats
                                    .http_connections
                                    .load(std::sync::atomic::Ordering::Relaxed),
                                "accept failed: {e}{}",
                                if out_of_descriptors {
                                    " (out of file descriptors: newcomers get 503 until some leave; raise LimitNOFILE)"
                                } else {
                                    ""
                                }
                            );
                            last_warning = Some(tokio::time::Instant::now());
                        }
                        if out_of_descriptors && reserve.release() {
                            // The waiting connection gets a clear answer, not a hang.
                            if let Ok((tcp, _)) = listener.accept().await {
                                answer_busy_now(tcp);
                            }
                            reserve = Reserve::take();
                        } else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                };
                // HTTP and QUIC connections share the node's limit and its overload state;
                // HTTP connections are also bounded by the descriptors the process has.
                let Some(admitted) = node.admit_http() else {
                    tokio::spawn(refuse(tcp));
                    continue;
                };
                let span = info_span!("http", node = %node.name(), %remote);
                tokio::spawn(
                    serve_connection(door.clone(), tcp, remote, admitted).instrument(span),
                );
            }
        });
        Ok(HttpServer { addr, task })
    }

    pub fn close(&self) {
        self.task.abort();
    }
}

/// Connections the kernel may hold for the accept loop (it caps this at
/// `net.core.somaxconn`, 4,096 on current kernels): a crowd's connections arriving within one
/// turn of the runtime wait here rather than being dropped (tokio's default is 1,024).
const BACKLOG: i32 = 65_535;

/// The HTTP listening socket, with a backlog for a crowd.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// The answer to a connection the node cannot take now (limits, overload, descriptors):
/// small enough to go out in one non-blocking write, so refusing costs nothing.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Answers 503 and closes, reading (for at most a second) what the client sent meanwhile:
/// closing on unread bytes would reset the connection and lose the answer.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tokio::time::timeout(Duration::from_secs(1), tcp.write_all(BUSY))
        .await
        .is_err()
    {
        return;
    }
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while let Ok(n) = tcp.read(&mut sink).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    })
    .await;
}

/// Answers 503 and closes at once, in one non-blocking write to the fresh socket's empty
/// buffer (the descriptor is needed back at once).
fn answer_busy_now(tcp: TcpStream) {
    use std::io::Write;
    if let Ok(mut s) = tcp.into_std() {
        let _ = s.write(BUSY);
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// A file descriptor held in reserve. When accept fails for want of descriptors, the
/// connection waiting in the backlog can neither be answered nor cleared, and accept fails
/// again at once: giving up the reserve takes it, answers it 503 and closes it.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn take() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    /// Gives the descriptor up; false if there was none.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }
}

/// One connection: its requests, in turn, until it closes, asks to, or is handed to a
/// stream (a listener, a source).
async fn serve_connection(
    door: Arc<Door>,
    tcp: TcpStream,
    remote: SocketAddr,
    admitted: HttpAdmission,
) {
    let _ = tcp.set_nodelay(true);
    let node = door.node.clone();
    let mut conn = Conn {
        tcp,
        buf: BytesMut::new(),
    };
    let whole = node.cfg.hello_timeout_ms.get();
    let mut idle = whole;
    loop {
        let head = match head::read(&conn.tcp, &mut conn.buf, idle, whole).await {
            Ok(h) => h,
            Err(NoHead::Closed) => return,
            Err(NoHead::Timeout) => {
                // A request begun and not finished in time is told so; a silent kept
                // connection simply closes.
                if !conn.buf.is_empty() {
                    let r = Reply::text(408, "request head not received in time");
                    let _ = r.send(&mut conn.tcp, false, false, false).await;
                }
                return;
            }
            Err(NoHead::Refused(r)) => {
                crate::bounded_info!(
                    node.logs.requests,
                    status = r.status,
                    "bad request: {}",
                    r.reason
                );
                let mut reply = Reply::text(r.status, r.reason);
                cors(&mut reply);
                let _ = reply.send(&mut conn.tcp, false, false, false).await;
                return;
            }
        };
        idle = KEEP_ALIVE_IDLE;
        let arrived = std::time::Instant::now();
        let route = route::route(&head);
        match route {
            Route::Listen {
                name,
                low_latency,
                codec,
            } if head.method == Method::Get => {
                // The connection becomes the stream.
                return listen::stream(
                    &node,
                    &door.herds,
                    conn,
                    &head,
                    remote,
                    (name, codec, low_latency),
                    arrived,
                    admitted,
                )
                .await;
            }
            Route::Source { name } => {
                return source::serve(&door, conn, &head, remote, name).await;
            }
            route => {
                let mut keep = head.keep_alive;
                // A request that needs no body may still carry a small one: read past it.
                if head.chunked {
                    keep = false;
                } else if let Some(n) = head.content_length.filter(|n| *n > 0) {
                    match conn.discard(n, MAX_IGNORED_BODY).await {
                        Ok(true) => {}
                        Ok(false) => keep = false,
                        Err(_) => return,
                    }
                }
                let mut reply = match route {
                    Route::Metadata { query } => source::metadata(&door, &head, remote, &query),
                    route => answer(&node, route, &head, remote).await,
                };
                cors(&mut reply);
                let head_only = head.method == Method::Head;
                if reply
                    .send(&mut conn.tcp, head_only, keep, head.http10)
                    .await
                    .is_err()
                    || !keep
                {
                    return;
                }
            }
        }
    }
}

/// The answer to a request that is not a stream.
async fn answer(node: &Arc<Node>, route: Route, head: &RequestHead, remote: SocketAddr) -> Reply {
    match route {
        Route::Options => {
            Reply::new(204, "text/plain", Bytes::new()).with("Access-Control-Max-Age", "86400")
        }
        Route::Page => {
            // Only a query token (restricted to a token's characters: it is written into
            // the page for the player).
            let token = ListenToken::of(head);
            let t = token.in_query();
            let r = Reply::new(200, "text/html; charset=utf-8", status::page(node, t));
            match t {
                Some(_) => r.with("Cache-Control", "private, no-store"),
                None => r,
            }
        }
        Route::Streams => Reply::new(200, "application/json", status::streams_json(node)),
        Route::Hls(r) => {
            let token = ListenToken::of(head);
            match may_listen(node, r.name(), token.value()) {
                Ok(presented) => {
                    let peer = Peer::new(Role::Listener, remote.ip()).presenting(presented);
                    let client =
                        crate::node::audience::client_key(remote.ip(), head.user_agent.as_deref());
                    serve_hls(node, r, &peer, client, token.in_query()).await
                }
                Err(refusal) => refusal,
            }
        }
        Route::Listen { name, codec, .. } => {
            // HEAD: as GET would answer, without the body.
            let token = ListenToken::of(head);
            match may_listen(node, &name, token.value()) {
                Err(refusal) => refusal,
                Ok(_) if codec.is_none() && !listen::known(node, &name) => {
                    Reply::text(404, format!("no stream {name}"))
                }
                Ok(presented) => {
                    let peer = Peer::new(Role::Listener, remote.ip()).presenting(presented);
                    match crate::egress::progressive::is_live(node, &name, &peer).await {
                        Ok(true) => {
                            let ct = node
                                .registry
                                .get(&name)
                                .and_then(|s| s.broadcast())
                                .map_or("audio/ogg", |b| crate::media::content_type(&b.codec));
                            let mut r = Reply::new(200, ct, Bytes::new());
                            listen::stream_headers(&mut r, ct);
                            r
                        }
                        Ok(false) => Reply::text(404, format!("stream {name} is not live")),
                        // As GET would be refused.
                        Err(e) => refusal_reply(&e),
                    }
                }
            }
        }
        Route::Bad(why) => Reply::text(400, why),
        // Answered with the sources' door (its wrong-password count): see above.
        Route::Metadata { .. } => Reply::text(500, "misrouted"),
        Route::NotFound => Reply::text(404, "no such page"),
        Route::MethodNotAllowed | Route::Source { .. } => {
            Reply::text(405, "method not allowed").with("Allow", "GET, HEAD, OPTIONS, PUT")
        }
    }
}

fn cors(r: &mut Reply) {
    r.set("Access-Control-Allow-Origin", "*");
    r.set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS");
    r.set("Access-Control-Allow-Headers", "*");
    r.set("Access-Control-Expose-Headers", "*");
}

/// An HLS playlist, init segment, segment or part (see `egress::hls`).
async fn serve_hls(
    node: &Arc<Node>,
    r: hls::Resource,
    peer: &Peer,
    client: u64,
    query_token: Option<&str>,
) -> Reply {
    let playlist = matches!(r, hls::Resource::Playlist { .. });
    match hls::serve(node, r, peer, client).await {
        Ok(reply) => {
            // A token given in the query goes on in every URI of a playlist (a player asks
            // for those without it otherwise); only a checked one, for a stream that needs
            // a token.
            let body = match query_token {
                Some(t) if playlist && reply.private => playlist_with_token(&reply.body, t),
                _ => reply.body,
            };
            // A stream that needs a token is for its holder only: no shared cache keeps it.
            let cache = if reply.private {
                reply.cache_control.replace("public", "private")
            } else {
                reply.cache_control.to_string()
            };
            Reply::new(200, reply.content_type, body).with("Cache-Control", cache)
        }
        Err(e) => {
            debug!("HLS request refused: {e}");
            match status_for(&e) {
                // This client's refusal (its token, or a node that cannot check one): no
                // shared cache may hand it to another.
                401 | 403 | 500 => refusal_reply(&e).with("Cache-Control", "private, no-store"),
                // Not there yet, or no more: a cache asks again soon, not at once.
                status => {
                    Reply::text(status, e.to_string()).with("Cache-Control", "public, max-age=1")
                }
            }
        }
    }
}

/// The HTTP status for an error, from its kind (never from its text).
pub(super) fn status_for(e: &Error) -> u16 {
    match e.kind() {
        Kind::Unsupported => 415,
        Kind::Conflict => 409,
        Kind::NotFound => 404,
        Kind::Overloaded | Kind::GoingAway => 503,
        Kind::Unauthorized => 401,
        Kind::NotAllowed => 403,
        Kind::Timeout => 408,
        Kind::Upstream => 502,
        Kind::Internal | Kind::Local => 500,
        _ => 400,
    }
}

/// For the fuzz target: parses any bytes as a request head and routes it, as the server
/// would, and renders the page it would answer for an error. Never panics.
pub fn fuzz_head(data: &[u8]) -> Option<String> {
    match head::parse(data) {
        Ok(Some((h, len))) => {
            assert!(len <= data.len());
            Some(format!("{:?}", route::route(&h)))
        }
        Ok(None) => None,
        Err(r) => {
            let reply = Reply::text(r.status, r.reason);
            let _ = reply.head(Some(reply.body.len()), false, false);
            None
        }
    }
}
