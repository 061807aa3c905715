//! A node's HTTP front door: the listener and its accept loop (admission, file
//! descriptors), HTTP framing, and routing to the egress (`GET /STREAM.ogg`), the ingress
//! (Icecast sources) and the node's own pages (`admin`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admin::status;
use crate::egress::{hls, http_ogg};
use crate::error::{Error, Kind, Result};
use crate::ingress::icecast::{self, ChunkSource};
use crate::node::{inc, Node, Peer};

use super::http_auth::{from_query, listen_token, may_listen, playlist_with_token};
use crate::proto::{self, Role};

pub(super) type Body = BoxBody<Bytes, Infallible>;

const MAX_HEAD: usize = 16 * 1024;

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

impl HttpServer {
    pub async fn start(node: Arc<Node>, addr: SocketAddr) -> Result<HttpServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::local(format!("cannot serve HTTP on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        info!(%addr, node = %node.name(), "listening (HTTP)");
        if node.is_relay() {
            debug!("relay: HTTP serves listeners only");
        } else if node.cfg.source_password.is_none() {
            info!("no source password: HTTP source ingest (Icecast PUT/SOURCE) is disabled");
        }
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
                                http_connections =
                                    node.stats.http_connections.load(Ordering::Relaxed),
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
                let node = node.clone();
                let span = info_span!("http", node = %node.name(), %remote);
                // HTTP and QUIC connections share the node's limit and its overload state;
                // HTTP connections are also bounded by the descriptors the process has.
                if !node.admit_http() {
                    tokio::spawn(refuse(tcp));
                    continue;
                }
                node.stats.http_connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(
                    async move {
                        serve_connection(node.clone(), tcp, remote).await;
                        node.stats.http_connections.fetch_sub(1, Ordering::Relaxed);
                    }
                    .instrument(span),
                );
            }
        });
        Ok(HttpServer { addr, task })
    }

    pub fn close(&self) {
        self.task.abort();
    }
}

/// The answer to a connection the node cannot take now (limits, overload, descriptors):
/// small enough to go out in one non-blocking write, so refusing costs nothing.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Answers 503 and closes, reading (for at most a second) what the client sent meanwhile:
/// closing on unread bytes would reset the connection and lose the answer.
async fn refuse(mut tcp: TcpStream) {
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

/// What a request's head says, read by peeking (nothing consumed).
struct Head {
    len: usize,
    method: String,
    path: String,
    authorization: Option<Vec<u8>>,
    expect_continue: bool,
    chunked: bool,
    content_length: Option<u64>,
}

/// Peeks at the socket until a whole request head is there (at most 16 KiB, and what the
/// node gives a client to say who it is: `hello-timeout-ms`).
async fn peek_head(tcp: &TcpStream, wait: Duration) -> Option<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    tokio::time::timeout(wait, async {
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if n > seen {
                seen = n;
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf[..n]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let find = |name: &str| {
                            req.headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(name))
                                .map(|h| h.value)
                        };
                        let lower = |v: Option<&[u8]>| {
                            v.map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
                        };
                        return Some(Head {
                            len,
                            method: req.method.unwrap_or("").to_string(),
                            path: req.path.unwrap_or("/").to_string(),
                            authorization: find("authorization").map(|v| v.to_vec()),
                            expect_continue: lower(find("expect"))
                                .is_some_and(|v| v.contains("100-continue")),
                            chunked: lower(find("transfer-encoding"))
                                .is_some_and(|v| v.contains("chunked")),
                            content_length: lower(find("content-length"))
                                .and_then(|v| v.trim().parse().ok()),
                        });
                    }
                    Ok(httparse::Status::Partial) if n < MAX_HEAD => {}
                    // Too large or not HTTP: let hyper answer it.
                    _ => return None,
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
    .flatten()
}

async fn serve_connection(node: Arc<Node>, tcp: TcpStream, remote: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    // Icecast sources (the legacy SOURCE method, and the PUT of ffmpeg's icecast:// output)
    // stream their body with neither a length nor chunking, which HTTP/1.1 reads as empty.
    // They get their own small path; everything else is hyper's.
    let head_wait = node.cfg.hello_timeout_ms.get();
    if let Some(head) = peek_head(&tcp, head_wait).await {
        if head.method == "SOURCE" || (head.method == "PUT" && !head.chunked) {
            return raw_source(node, tcp, head).await;
        }
    }
    let service = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(route(node, req, remote).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_wait)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tcp), service);
    if let Err(e) = conn.await {
        debug!("connection ended: {e}");
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    r
}

pub(super) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m = msg.into();
    m.push('\n');
    full(status, "text/plain; charset=utf-8", m)
}

fn cors(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
}

async fn route(node: Arc<Node>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let peer = Peer::new(Role::Listener, remote.ip());
    let path = req.uri().path().to_string();
    let hls = hls::parse(&path, req.uri().query());
    let mut resp = match (req.method(), path.as_str()) {
        (&Method::OPTIONS, _) => {
            let mut r = full(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            r.headers_mut().insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        (&Method::GET | &Method::HEAD, "/") => full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status::page(&node),
        ),
        (&Method::GET | &Method::HEAD, "/streams") => full(
            StatusCode::OK,
            "application/json",
            status::streams_json(&node),
        ),
        (&Method::GET | &Method::HEAD, _) if hls.is_some() => match hls {
            Some(Ok(r)) => {
                let token = listen_token(&req);
                match may_listen(&node, r.name(), token.as_deref()) {
                    Ok(protected) => {
                        // A token given in the query goes on in every URI of a playlist
                        // (a player asks for those without it otherwise).
                        // (Only a checked one: a stream that needs a token.)
                        let query_token = token.filter(|_| protected && from_query(&req));
                        serve_hls(&node, r, &peer, protected, query_token.as_deref()).await
                    }
                    Err(resp) => *resp,
                }
            }
            Some(Err(e)) => text(StatusCode::BAD_REQUEST, e.to_string()),
            None => text(StatusCode::NOT_FOUND, "no such page"),
        },
        (&Method::GET | &Method::HEAD, p) if p.ends_with(".ogg") => {
            let name = &p[1..p.len() - 4];
            let token = listen_token(&req);
            match proto::check_path(name) {
                Err(e) => text(StatusCode::BAD_REQUEST, format!("bad stream name: {e}")),
                Ok(()) => match may_listen(&node, name, token.as_deref()) {
                    Err(refused) => *refused,
                    Ok(_) if req.method() == Method::HEAD => head_ogg(&node, name, &peer).await,
                    Ok(_) => {
                        let low = req
                            .uri()
                            .query()
                            .is_some_and(|q| q.split('&').any(|kv| kv == "latency=low"));
                        listen_ogg(node.clone(), name.to_string(), &peer, low).await
                    }
                },
            }
        }
        (&Method::PUT, p) => source(node.clone(), p[1..].to_string(), req).await,
        (&Method::GET | &Method::HEAD, _) => text(StatusCode::NOT_FOUND, "no such page"),
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS, PUT"),
            );
            r
        }
    };
    cors(&mut resp);
    resp
}

fn ogg_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// HEAD answers as GET would, without the body.
async fn head_ogg(node: &Arc<Node>, name: &str, peer: &Peer) -> Response<Body> {
    if http_ogg::is_live(node, name, peer).await {
        let mut r = full(StatusCode::OK, "audio/ogg", Bytes::new());
        ogg_headers(&mut r);
        r
    } else {
        text(StatusCode::NOT_FOUND, format!("stream {name} is not live"))
    }
}

/// `GET /STREAM.ogg`: a progressive Ogg Opus stream, for as long as the broadcast lasts.
/// `?latency=low` asks for every frame at once (see `Cursor::eager`).
async fn listen_ogg(
    node: Arc<Node>,
    name: String,
    peer: &Peer,
    low_latency: bool,
) -> Response<Body> {
    let mut rx = match http_ogg::listen(node, name, peer, low_latency).await {
        Ok(rx) => rx,
        Err(e) => return text(status_for(&e), e.reason()),
    };
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|b| Ok(BodyFrame::data(b))))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    ogg_headers(&mut r);
    r
}

/// What must hold before a source may send its body (a relay takes none).
fn source_precheck(node: &Node, name: &str, auth: Option<&[u8]>) -> Result<()> {
    if node.is_relay() {
        return Err(Error::new(
            Kind::NotAllowed,
            "a relay takes no sources; send to the origin",
        ));
    }
    let r = icecast::precheck(node, name, auth);
    if matches!(&r, Err(e) if e.kind() == Kind::Unauthorized) {
        inc(&node.stats.auth_refused_total);
    }
    r
}

/// An HLS playlist, init segment, segment or part (see `egress::hls`).
async fn serve_hls(
    node: &Arc<Node>,
    r: hls::Resource,
    peer: &Peer,
    protected: bool,
    query_token: Option<&str>,
) -> Response<Body> {
    let playlist = matches!(r, hls::Resource::Playlist { .. });
    match hls::serve(node, r, peer).await {
        Ok(reply) => {
            let body = match query_token {
                Some(t) if playlist => playlist_with_token(&reply.body, t),
                _ => reply.body,
            };
            let mut resp = full(StatusCode::OK, reply.content_type, body);
            // A stream that needs a token is for its holder only: no shared cache keeps it.
            let cache = if protected {
                HeaderValue::from_str(&reply.cache_control.replace("public", "private"))
                    .unwrap_or(HeaderValue::from_static("private, no-store"))
            } else {
                HeaderValue::from_static(reply.cache_control)
            };
            resp.headers_mut().insert(header::CACHE_CONTROL, cache);
            resp
        }
        Err(e) => {
            debug!("HLS request refused: {e}");
            let mut resp = text(status_for(&e), e.to_string());
            // Not there yet, or no more: a cache asks again soon, not at once.
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=1"),
            );
            resp
        }
    }
}

/// The HTTP status for an error, from its kind (never from its text).
pub(super) fn status_for(e: &Error) -> StatusCode {
    match e.kind() {
        Kind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Overloaded | Kind::GoingAway => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::NotAllowed => StatusCode::FORBIDDEN,
        Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
        Kind::Upstream => StatusCode::BAD_GATEWAY,
        Kind::Internal | Kind::Local => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `PUT /STREAM`: an Icecast source, as ffmpeg's `icecast://` output sends it.
async fn source(node: Arc<Node>, name: String, req: Request<Incoming>) -> Response<Body> {
    let span = info_span!("source", path = %name);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    if let Err(e) = source_precheck(&node, &name, auth.as_deref()) {
        let status = status_for(&e);
        span.in_scope(|| warn!(side = "downstream", %status, "source refused: {}", e.reason()));
        let mut r = text(status, e.reason());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"quicast\""),
            );
        }
        return r;
    }
    let mut body = HyperBody(req.into_body());
    let result = icecast::ingest(&node, &name, &mut body)
        .instrument(span.clone())
        .await;
    match result {
        Ok(()) => text(StatusCode::OK, "source ended"),
        Err(e) => {
            let status = status_for(&e);
            span.in_scope(|| warn!(side = "downstream", %status, "source refused: {e}"));
            text(status, e.reason())
        }
    }
}

struct HyperBody(Incoming);

impl ChunkSource for HyperBody {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.0.frame().await {
                None => return Ok(None),
                // Trailers carry no audio.
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => return Ok(Some(d)),
                    Err(_) => continue,
                },
                Some(Err(e)) => return Err(Error::closed(format!("source body: {e}"))),
            }
        }
    }
}

/// A raw source body: the rest of the connection.
struct RawBody<R> {
    rd: R,
}

impl<R: AsyncRead + Unpin> ChunkSource for RawBody<R> {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        read_chunk(&mut self.rd).await
    }
}

/// An Icecast source whose body is the raw rest of the connection: `SOURCE /mount` (legacy)
/// or ffmpeg's `PUT /mount` with `Expect: 100-continue`.
async fn raw_source(node: Arc<Node>, mut tcp: TcpStream, head: Head) {
    let name = head
        .path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let legacy = head.method == "SOURCE";
    let span = info_span!("source", path = %name, method = %head.method);
    let respond = |status: StatusCode, msg: &str| {
        let auth = if status == StatusCode::UNAUTHORIZED {
            "WWW-Authenticate: Basic realm=\"quicast\"\r\n"
        } else {
            ""
        };
        let reason = status.canonical_reason().unwrap_or("");
        format!(
            "HTTP/1.{} {} {reason}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}\n",
            if legacy { 0 } else { 1 },
            status.as_u16(),
            msg.len() + 1
        )
    };
    // Consume the head we peeked at.
    let mut skip = vec![0u8; head.len];
    if tcp.read_exact(&mut skip).await.is_err() {
        return;
    }
    if let Err(e) = source_precheck(&node, &name, head.authorization.as_deref()) {
        let status = status_for(&e);
        span.in_scope(|| warn!(side = "downstream", %status, "source refused: {}", e.reason()));
        let _ = tcp.write_all(respond(status, e.reason()).as_bytes()).await;
        return;
    }
    // A PUT that asked gets 100 Continue and its final status at the end; a legacy source is
    // told 200 at once, as Icecast does.
    let go: &[u8] = if head.expect_continue {
        b"HTTP/1.1 100 Continue\r\n\r\n"
    } else if legacy {
        b"HTTP/1.0 200 OK\r\n\r\n"
    } else {
        b""
    };
    if tcp.write_all(go).await.is_err() {
        return;
    }
    let (rd, mut wr) = tcp.into_split();
    let result = match head.content_length {
        Some(n) => {
            icecast::ingest(&node, &name, &mut RawBody { rd: rd.take(n) })
                .instrument(span.clone())
                .await
        }
        None => {
            icecast::ingest(&node, &name, &mut RawBody { rd })
                .instrument(span.clone())
                .await
        }
    };
    let (status, msg) = match &result {
        Ok(()) => (StatusCode::OK, "source ended".to_string()),
        Err(e) => {
            let status = status_for(e);
            span.in_scope(|| warn!(side = "downstream", %status, "source refused: {e}"));
            (status, e.reason().to_string())
        }
    };
    if !legacy {
        let _ = wr.write_all(respond(status, &msg).as_bytes()).await;
    }
}

async fn read_chunk(rd: &mut (impl AsyncRead + Unpin)) -> Result<Option<Bytes>> {
    let mut b = vec![0u8; 16 * 1024];
    let n = rd.read(&mut b).await?;
    if n == 0 {
        return Ok(None);
    }
    b.truncate(n);
    Ok(Some(Bytes::from(b)))
}
