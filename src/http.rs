//! HTTP at the edge of every node: an egress adapter for ordinary players and browsers
//! (`GET /STREAM.ogg`, a listening page, `/streams`), and at the origin an Icecast-compatible
//! source ingest (`PUT /STREAM` as ffmpeg's `icecast://` sends it, and the legacy `SOURCE`).
//!
//! HTTP listeners run the same fan-out as QUIC ones (`fanout::fan_out`); sources feed the
//! same ingest as QUIC publishers (`ingest::Publishing`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::{Error, ErrorCode, Result};
use crate::fanout::{fan_out, Delivery, Sink};
use crate::ingest::Publishing;
use crate::media::{OggEvent, OggOpusDemuxer, OggOpusWriter};
use crate::proto::{self, Frame, Role, Start};
use crate::server::{Node, Peer};
use crate::store::Stored;

type Body = BoxBody<Bytes, Infallible>;

/// Ogg page chunks queued for one HTTP listener; a listener whose socket is full fills this,
/// its writes block, and the fan-out moves it forward like any slow subscriber.
const LISTENER_QUEUE: usize = 8;
const MAX_HEAD: usize = 16 * 1024;

/// A running HTTP listener for a node.
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
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        info!(%addr, node = %node.cfg.name, "listening (HTTP)");
        if node.is_relay() {
            debug!("relay: HTTP serves listeners only");
        } else if node.cfg.source_password.is_none() {
            info!("no source password: HTTP source ingest (Icecast PUT/SOURCE) is disabled");
        }
        let task = tokio::spawn(async move {
            let mut reserve = Reserve::take();
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
                let span = info_span!("http", node = %node.cfg.name, %remote);
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

/// Peeks at the socket until a whole request head is there (at most 16 KiB, 10 s).
async fn peek_head(tcp: &TcpStream) -> Option<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
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
    if let Some(head) = peek_head(&tcp).await {
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
        .header_read_timeout(Duration::from_secs(10))
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

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
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
    let mut resp = match (req.method(), path.as_str()) {
        (&Method::OPTIONS, _) => {
            let mut r = full(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            r.headers_mut().insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        (&Method::GET | &Method::HEAD, "/") => {
            full(StatusCode::OK, "text/html; charset=utf-8", page(&node))
        }
        (&Method::GET | &Method::HEAD, "/streams") => {
            full(StatusCode::OK, "application/json", streams_json(&node))
        }
        (&Method::GET | &Method::HEAD, p) if p.ends_with(".ogg") => {
            let name = &p[1..p.len() - 4];
            match proto::check_path(name) {
                Err(e) => text(StatusCode::BAD_REQUEST, format!("bad stream name: {e}")),
                Ok(()) if req.method() == Method::HEAD => head_stream(&node, name, &peer).await,
                Ok(()) => listen(node.clone(), name.to_string(), &peer).await,
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

/// HEAD answers as GET would, without the body: a relay that does not hold the stream yet
/// asks its parent (briefly), so a player probing with HEAD is not turned away.
async fn head_stream(node: &Arc<Node>, name: &str, peer: &Peer) -> Response<Body> {
    let live = match node.registry.get(name).and_then(|s| s.broadcast()) {
        Some(_) => true,
        None if node.is_relay() => {
            let wait = node.cfg.http_wait.min(Duration::from_secs(5));
            node.subscribe(name, Start::Live, wait, peer).await.is_ok()
        }
        None => false,
    };
    if live {
        let mut r = full(StatusCode::OK, "audio/ogg", Bytes::new());
        ogg_headers(&mut r);
        r
    } else {
        text(StatusCode::NOT_FOUND, format!("stream {name} is not live"))
    }
}

/// An HTTP listener: Ogg pages into a bounded queue that the response body drains.
struct HttpSink {
    tx: mpsc::Sender<Bytes>,
    ogg: OggOpusWriter,
}

impl Sink for HttpSink {
    async fn begin(&mut self, _seq: u64) -> Result<()> {
        Ok(())
    }

    async fn frames(&mut self, frames: &[Stored], _wire: &[Bytes]) -> Result<Delivery> {
        let pages = self
            .ogg
            .packets(frames.iter().map(|f| (&f.frame.payload, f.frame.duration)));
        if !pages.is_empty() {
            self.tx.send(pages).await.map_err(|_| Error::Closed)?;
        }
        Ok(Delivery::Done)
    }

    fn end(&mut self, _seq: u64) {}

    /// The Ogg stream simply continues from the newer segment: granule positions count what
    /// this listener heard, so players see a short jump in the audio, never a broken file.
    fn skip(&mut self) {}
}

async fn listen(node: Arc<Node>, name: String, peer: &Peer) -> Response<Body> {
    let span = info_span!("sub", path = %name, role = "http");
    let sub = match node
        .subscribe(&name, Start::Live, node.cfg.http_wait, peer)
        .instrument(span.clone())
        .await
    {
        Ok(s) => s,
        Err(e) => return text(status_for(&e), e.reason()),
    };
    // Players buffer before they start (Chromium probes a few seconds of Ogg): begin one
    // whole segment further back than the live edge, so they start at once.
    let mut sub = sub;
    sub.cursor.back(1);
    let (tx, mut rx) = mpsc::channel::<Bytes>(LISTENER_QUEUE);
    let mut ogg = OggOpusWriter::new(rand::random());
    let headers = ogg.headers(&sub.cursor.broadcast().codec.header);
    let _ = tx.try_send(headers);
    tokio::spawn(
        async move {
            let mut sub = sub;
            let mut sink = HttpSink { tx, ogg };
            match fan_out(&node, &mut sub.cursor, &mut sink).await {
                Ok(_) => {
                    let tail = sink.ogg.finish();
                    let _ = sink.tx.send(tail).await;
                    debug!("broadcast ended");
                }
                Err(e) => debug!("listener left: {e}"),
            }
        }
        .instrument(span),
    );
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|b| Ok(BodyFrame::data(b))))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    ogg_headers(&mut r);
    r
}

/// `Authorization: Basic base64(source:PASSWORD)` against the configured password.
fn source_authorized(
    node: &Node,
    auth: Option<&[u8]>,
) -> std::result::Result<(), (StatusCode, &'static str)> {
    let Some(expected) = &node.cfg.source_password else {
        return Err((
            StatusCode::FORBIDDEN,
            "HTTP source ingest is disabled on this node (no source password set)",
        ));
    };
    let creds = auth
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    let Some(creds) = creds else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "source password required (basic auth)",
        ));
    };
    let (user, pass) = match creds.iter().position(|c| *c == b':') {
        Some(i) => (&creds[..i], &creds[i + 1..]),
        None => return Err((StatusCode::UNAUTHORIZED, "wrong source credentials")),
    };
    let d = |x: &[u8]| ring::digest::digest(&ring::digest::SHA256, x);
    let same = d(pass)
        .as_ref()
        .iter()
        .zip(d(expected.as_bytes()).as_ref())
        .fold(0u8, |a, (x, y)| a | (x ^ y))
        == 0;
    if user == b"source" && same {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "wrong source credentials"))
    }
}

/// Checks what must hold before a source may send its body.
fn source_precheck(
    node: &Node,
    name: &str,
    auth: Option<&[u8]>,
) -> std::result::Result<(), (StatusCode, String)> {
    if node.is_relay() {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "a relay takes no sources; send to the origin".into(),
        ));
    }
    source_authorized(node, auth).map_err(|(s, m)| (s, m.to_string()))?;
    proto::check_path(name)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad stream name: {e}")))?;
    if node
        .registry
        .get(name)
        .is_some_and(|s| !s.may_claim(source_credential(node)))
    {
        return Err((
            StatusCode::CONFLICT,
            format!("stream {name} already has a source"),
        ));
    }
    Ok(())
}

/// What an authorized source proved: the source password (see `PublisherClaim`).
fn source_credential(node: &Node) -> Option<[u8; 32]> {
    node.cfg
        .source_password
        .as_ref()
        .map(|p| crate::server::credential(p.as_bytes()))
}

/// The HTTP status for an error, from its kind and code (never from its text).
fn status_for(e: &Error) -> StatusCode {
    match (e, e.code()) {
        (Error::Unsupported(_), _) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        (_, ErrorCode::Conflict) => StatusCode::CONFLICT,
        (_, ErrorCode::NotFound) => StatusCode::NOT_FOUND,
        (_, ErrorCode::Overloaded) => StatusCode::SERVICE_UNAVAILABLE,
        (_, ErrorCode::Unauthorized) => StatusCode::UNAUTHORIZED,
        (_, ErrorCode::NotAllowed) => StatusCode::FORBIDDEN,
        (_, ErrorCode::Timeout) => StatusCode::REQUEST_TIMEOUT,
        (_, ErrorCode::Upstream) => StatusCode::BAD_GATEWAY,
        (_, ErrorCode::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
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
    if let Err((status, msg)) = source_precheck(&node, &name, auth.as_deref()) {
        span.in_scope(|| warn!(side = "downstream", %status, "source refused: {msg}"));
        let mut r = text(status, msg);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"quicast\""),
            );
        }
        return r;
    }
    let mut body = HyperBody(req.into_body());
    let result = ingest_body(&node, &name, &mut body)
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

/// Where a source's body comes from, chunk by chunk (None at its end).
trait ChunkSource {
    async fn chunk(&mut self) -> Result<Option<Bytes>>;
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
                Some(Err(e)) => return Err(Error::Io(std::io::Error::other(e))),
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

/// Demuxes a source's Ogg Opus body into the ingest. A source that sends no audio for
/// `source-timeout` is lost (bytes that carry no audio do not count), as is one whose body
/// stops without the Ogg end-of-stream page (its encoder crashed: it may come back within
/// the grace period and continue). One that ends its Ogg stream ends the broadcast.
async fn ingest_body(node: &Arc<Node>, name: &str, body: &mut impl ChunkSource) -> Result<()> {
    let mut demux = OggOpusDemuxer::new();
    let mut publishing: Option<Publishing> = None;
    let mut pts = 0u64;
    let mut ended = false;
    let silence = node.cfg.source_timeout;
    let mut deadline = tokio::time::Instant::now() + silence;
    let mut displaced: Option<Arc<tokio::sync::Notify>> = None;
    let outcome: Result<()> = async {
        loop {
            let taken_over = async {
                match &displaced {
                    Some(d) => d.notified().await,
                    None => std::future::pending().await,
                }
            };
            let chunk = tokio::select! {
                r = tokio::time::timeout_at(deadline, body.chunk()) => match r {
                    Ok(r) => r?,
                    Err(_) => return Err(Error::Timeout("source sent no audio")),
                },
                _ = taken_over => return Err(Error::refused(
                    ErrorCode::Conflict,
                    "a newer source with the same credentials took this stream over",
                )),
            };
            let Some(chunk) = chunk else {
                if ended {
                    return Ok(());
                }
                return Err(Error::Closed);
            };
            demux.push(&chunk);
            let mut frames = Vec::new();
            while let Some(ev) = demux.next_event()? {
                match ev {
                    OggEvent::Head(h) => {
                        if publishing.is_some() {
                            return Err(Error::Media("a second OpusHead in one source".into()));
                        }
                        let p = Publishing::claim(node, name, h.codec(), source_credential(node))?;
                        displaced = Some(p.displaced());
                        publishing = Some(p);
                    }
                    OggEvent::Packet(payload, duration, _) => {
                        frames.push(Frame {
                            pts,
                            duration,
                            wall_us: 0,
                            payload,
                        });
                        pts += duration as u64;
                    }
                    OggEvent::End => ended = true,
                }
            }
            if !frames.is_empty() {
                deadline = tokio::time::Instant::now() + silence;
            }
            if let Some(p) = publishing.as_mut() {
                p.push(frames)?;
            }
        }
    }
    .await;
    match (outcome, publishing) {
        (Ok(()), Some(p)) => {
            p.finish();
            Ok(())
        }
        (Ok(()), None) | (Err(Error::Closed), None) => Err(Error::Media(
            "source ended before any Ogg Opus header".into(),
        )),
        (Err(Error::Closed), Some(p)) => {
            warn!(
                side = "downstream",
                "source stopped without ending its Ogg stream: lost"
            );
            p.lost();
            Ok(())
        }
        (Err(e), Some(p)) => {
            p.lost();
            Err(e)
        }
        (Err(e), None) => Err(e),
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
    if let Err((status, msg)) = source_precheck(&node, &name, head.authorization.as_deref()) {
        span.in_scope(|| warn!(side = "downstream", %status, "source refused: {msg}"));
        let _ = tcp.write_all(respond(status, &msg).as_bytes()).await;
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
            ingest_body(&node, &name, &mut RawBody { rd: rd.take(n) })
                .instrument(span.clone())
                .await
        }
        None => {
            ingest_body(&node, &name, &mut RawBody { rd })
                .instrument(span.clone())
                .await
        }
    };
    let (status, msg) = match &result {
        Ok(()) => (StatusCode::OK, "source ended".to_string()),
        Err(e) => {
            let status = status_for(e);
            span.in_scope(|| warn!(side = "downstream", %status, "source refused: {e}"));
            (status, e.reason())
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

#[derive(serde::Serialize)]
struct StreamInfo {
    name: String,
    listeners: usize,
    /// Unix time in seconds.
    started_at: u64,
    codec: &'static str,
    sample_rate: u32,
    channels: u8,
    /// Bits per second over the segments held.
    bitrate: u64,
}

fn live_streams(node: &Node) -> Vec<StreamInfo> {
    node.registry
        .list()
        .into_iter()
        .filter_map(|slot| {
            let b = slot.broadcast()?;
            Some(StreamInfo {
                name: slot.path.clone(),
                listeners: slot.subscribers(),
                started_at: b
                    .started
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                codec: "opus",
                sample_rate: b.codec.sample_rate,
                channels: b.codec.channels,
                bitrate: b.bitrate(),
            })
        })
        .collect()
}

fn streams_json(node: &Node) -> String {
    serde_json::to_string(&live_streams(node)).unwrap_or_else(|_| "[]".into())
}

fn page(node: &Node) -> String {
    let streams = live_streams(node);
    let mut items = String::new();
    for s in &streams {
        // Stream names are restricted to [A-Za-z0-9._~-/]: nothing to escape.
        items += &format!(
            "<li><h2>{n}</h2><p>{l} listening here &middot; {k} kbit/s</p><audio controls preload=\"none\" src=\"/{n}.ogg\"></audio></li>\n",
            n = s.name,
            l = s.listeners,
            k = s.bitrate / 1000
        );
    }
    if streams.is_empty() {
        items = "<li>Nothing is live here right now.</li>".into();
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>quicast: {node}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}li{{list-style:none;margin:1em 0}}h2{{margin:0;font-size:1.1em}}audio{{width:100%}}</style>
</head><body>
<h1>Live on {node}</h1>
<ul id="streams">
{items}</ul>
<p><small>Also as JSON: <a href="/streams">/streams</a>. Any player: <code>ffplay http://HOST:PORT/STREAM.ogg</code></small></p>
</body></html>
"#,
        node = node.cfg.name
    )
}
