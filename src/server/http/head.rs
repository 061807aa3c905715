//! An HTTP/1.x request head: parsed (no I/O: bytes in, a head or a clear refusal out) and
//! read from a connection on readiness into a buffer that exists only once bytes arrive.
//! Every size is bounded; nothing a client sends can panic it.

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

/// Largest request head taken (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a head.
const MAX_HEADERS: usize = 48;
/// How much a read asks for at a time: a typical head in one read, no more held per
/// connection than its head needs.
const READ_STEP: usize = 2048;

/// The method, as far as the node tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Put,
    /// Icecast's legacy source method.
    Source,
    Other,
}

/// What the node uses of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The target's path (origin form, or the path of an absolute form), not decoded.
    pub path: String,
    pub query: Option<String>,
    /// HTTP/1.0 (else 1.1).
    pub http10: bool,
    /// Whether the client keeps the connection for another request.
    pub keep_alive: bool,
    pub authorization: Option<Vec<u8>>,
    pub expect_continue: bool,
    /// The body is chunked (the only transfer coding taken).
    pub chunked: bool,
    pub content_length: Option<u64>,
    pub accept: Option<String>,
    pub user_agent: Option<String>,
    /// The body's `Content-Type` (a source says its format with it).
    pub content_type: Option<String>,
    /// `Icy-MetaData: 1`: the listener takes ICY metadata blocks within the audio.
    pub icy_metadata: bool,
}

/// A head the node will not take: the status to answer with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

/// Parses a request head from the start of `buf`: `Ok(Some((head, len)))` once it is
/// whole (`len` bytes), `Ok(None)` while more may complete it, or the refusal to answer.
pub fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(refused(431, format!("request head over {MAX_HEAD} bytes")))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refused(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(refused(400, format!("malformed request: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(refused(431, format!("request head over {MAX_HEAD} bytes")));
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        "PUT" => Method::Put,
        "SOURCE" => Method::Source,
        _ => Method::Other,
    };
    let (path, query) = target(req.path.unwrap_or(""), method)?;
    let http10 = req.version == Some(0);
    let mut head = RequestHead {
        method,
        path,
        query,
        http10,
        keep_alive: !http10,
        authorization: None,
        expect_continue: false,
        chunked: false,
        content_length: None,
        accept: None,
        user_agent: None,
        content_type: None,
        icy_metadata: false,
    };
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let value = h.value;
        let name = h.name;
        if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = std::str::from_utf8(value)
                .ok()
                .filter(|v| v.len() <= 256)
                .map(|v| v.trim().to_string());
        } else if name.eq_ignore_ascii_case("icy-metadata") {
            head.icy_metadata = value.trim_ascii() == b"1";
        } else if name.eq_ignore_ascii_case("connection") {
            for token in lower(value).split(',').map(str::trim) {
                match token {
                    "close" => head.keep_alive = false,
                    "keep-alive" if http10 => head.keep_alive = true,
                    _ => {}
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = lower(value).contains("100-continue");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` is taken, and only last (RFC 9112 §6.3): anything else
            // cannot be framed here.
            transfer_encoding = true;
            let codings = lower(value);
            let last = codings.rsplit(',').next().unwrap_or("").trim().to_string();
            if last != "chunked" || codings.split(',').filter(|c| c.trim() == "chunked").count() > 1
            {
                return Err(refused(
                    501,
                    format!("transfer coding {codings:?} is not supported"),
                ));
            }
            if codings
                .split(',')
                .any(|c| !matches!(c.trim(), "chunked" | "identity"))
            {
                return Err(refused(
                    501,
                    format!("transfer coding {codings:?} is not supported"),
                ));
            }
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let s = std::str::from_utf8(value).unwrap_or("").trim();
            let n: u64 = if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
            {
                s.parse().map_err(|_| refused(400, "bad Content-Length"))?
            } else {
                return Err(refused(400, "bad Content-Length"));
            };
            if head.content_length.is_some_and(|m| m != n) {
                return Err(refused(400, "conflicting Content-Length fields"));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("accept") {
            head.accept = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    if transfer_encoding && head.content_length.is_some() {
        // Either could frame the body: a request smuggled past a proxy looks like this.
        return Err(refused(400, "both Transfer-Encoding and Content-Length"));
    }
    if http10 && head.chunked {
        return Err(refused(
            400,
            "chunked transfer coding in an HTTP/1.0 request",
        ));
    }
    Ok(Some((head, len)))
}

fn lower(v: &[u8]) -> String {
    String::from_utf8_lossy(v).to_ascii_lowercase()
}

/// The path and query of a request target: origin form (`/path?query`), absolute form
/// (`http://host/path?query`, which servers must take), or `*` (OPTIONS).
fn target(t: &str, method: Method) -> Result<(String, Option<String>), Refused> {
    let rest = if t.starts_with('/') {
        t
    } else if t == "*" && method == Method::Options {
        return Ok(("*".to_string(), None));
    } else if let Some(after) = strip_scheme(t) {
        // The authority ends at the first '/', '?' or the end.
        let at = after.find(['/', '?']).unwrap_or(after.len());
        match &after[at..] {
            "" => "/",
            p if p.starts_with('?') => return Ok(("/".to_string(), Some(p[1..].to_string()))),
            p => p,
        }
    } else {
        return Err(refused(
            400,
            "the request target must be a path (or an absolute URL)",
        ));
    };
    let rest = rest.split('#').next().unwrap_or("");
    Ok(match rest.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (rest.to_string(), None),
    })
}

fn strip_scheme(t: &str) -> Option<&str> {
    for scheme in ["http://", "https://"] {
        // Compared as bytes: a target's first bytes may end inside a character.
        if t.as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
        {
            return Some(&t[scheme.len()..]);
        }
    }
    None
}

/// How reading a head ended without one.
#[derive(Debug)]
pub enum NoHead {
    /// The client closed (or reset) the connection before a whole head.
    Closed,
    /// No head in time.
    Timeout,
    /// A head the node will not take.
    Refused(Refused),
}

/// Reads a request head into `buf` (which may already hold the start of it, from a
/// previous read): waits for readiness, never polls; a connection that sends nothing holds
/// no buffer. The head is consumed from `buf`; what follows it (a body, a next request)
/// stays there. `idle`: how long the first byte may take; `whole`: the whole head after it.
pub async fn read(
    tcp: &TcpStream,
    buf: &mut BytesMut,
    idle: std::time::Duration,
    whole: std::time::Duration,
) -> Result<RequestHead, NoHead> {
    let mut deadline = tokio::time::Instant::now() + if buf.is_empty() { idle } else { whole };
    let mut started = !buf.is_empty();
    // Where the search for the head's end resumes: only new bytes are looked at, so a
    // client sending a byte at a time costs a few comparisons a byte, not a parse.
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(buf, scanned) {
            return match parse(&buf[..end]) {
                Ok(Some((head, len))) => {
                    buf.advance(len);
                    Ok(head)
                }
                // A blank line ends every head httparse takes.
                Ok(None) => Err(NoHead::Refused(refused(400, "malformed request head"))),
                Err(r) => Err(NoHead::Refused(r)),
            };
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= MAX_HEAD {
            return Err(NoHead::Refused(refused(
                431,
                format!("request head over {MAX_HEAD} bytes"),
            )));
        }
        // Anything that cannot start a request is refused early rather than buffered (looked
        // at while short: a request line sent a byte at a time is not parsed again and again).
        if !buf.is_empty() && buf.len() < 256 {
            if let Err(httparse::Error::Token | httparse::Error::Version) =
                httparse::Request::new(&mut [httparse::EMPTY_HEADER; 0]).parse(buf)
            {
                return Err(NoHead::Refused(refused(400, "malformed request line")));
            }
        }
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Err(_) => return Err(NoHead::Timeout),
            Ok(Err(_)) => return Err(NoHead::Closed),
            Ok(Ok(())) => {}
        }
        // Read onto the stack first: a wake-up with nothing to read (readiness can be
        // spurious) costs the connection no buffer.
        let mut step = [0u8; READ_STEP];
        let room = READ_STEP.min(MAX_HEAD - buf.len()).max(1);
        match tcp.try_read(&mut step[..room]) {
            Ok(0) => return Err(NoHead::Closed),
            Ok(n) => {
                buf.extend_from_slice(&step[..n]);
                if !started {
                    started = true;
                    deadline = tokio::time::Instant::now() + whole;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(NoHead::Closed),
        }
    }
}

/// Where the head in `buf` ends (just past its blank line), looking from `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if i >= 1 && buf[i - 1] == b'\n' {
                return Some(i + 1);
            }
            if i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<RequestHead>, u16> {
        parse(s.as_bytes())
            .map(|o| o.map(|(h, _)| h))
            .map_err(|r| r.status)
    }

    #[test]
    fn heads_parse_with_their_targets_and_framing() {
        let h = p("GET /a/b.ogg?token=x HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method, h.path.as_str(), h.query.as_deref()),
            (Method::Get, "/a/b.ogg", Some("token=x"))
        );
        assert!(h.keep_alive && !h.chunked && h.content_length.is_none());
        let h = p("GET http://example.com:8000/x.m3u8?_HLS_msn=1 HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.path.as_str(), h.query.as_deref(), h.keep_alive),
            ("/x.m3u8", Some("_HLS_msn=1"), false)
        );
        let h = p("GET http://example.com HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.path.as_str(), h.keep_alive), ("/", false));
        let h = p("PUT /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.chunked && h.expect_continue);
        let h = p("SOURCE /s ICE/1.0\r\n\r\n");
        // Icecast's legacy SOURCE speaks "ICE/1.0", which is not HTTP: refused as such.
        assert_eq!(h, Err(400));
        assert_eq!(p("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn hostile_heads_are_refused_with_a_status_never_a_panic() {
        // The authority form outside CONNECT (the request that once panicked the router).
        assert_eq!(
            p("PUT example.com:80 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(p("GET * HTTP/1.1\r\n\r\n"), Err(400));
        assert!(p("OPTIONS * HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert_eq!(
            p("GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            p("GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(400)
        );
        assert_eq!(p("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), Err(400));
        assert_eq!(
            p("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            p("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(501)
        );
        assert_eq!(
            p("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(501)
        );
        assert_eq!(
            p("PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            p("GET http:// HTTP/1.1\r\n\r\n").map(|h| h.map(|h| h.path)),
            Ok(Some("/".into()))
        );
        assert_eq!(p("\x00\x01\x02 / HTTP/1.1\r\n\r\n"), Err(400));
        // Found by the fuzzer: a target whose seventh byte is inside a character.
        assert!(parse(b"GET 4/a/b.m\xcd\x8aLS:80 HTTP/1.1\r\nHost:\r\n\r\n").is_err());
        assert!(parse("GET ht\u{34a}tp://x/ HTTP/1.1\r\n\r\n".as_bytes()).is_err());
        let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(p(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(431));
        let long = "a".repeat(MAX_HEAD);
        assert_eq!(p(&format!("GET /{long}")), Err(431));
    }

    #[test]
    fn the_end_of_a_head_is_found_in_new_bytes_only() {
        let h = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT";
        assert_eq!(head_end(h, 0), Some(h.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nx", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost", 0), None);
        // Resuming three bytes back still sees a blank line that spans two reads.
        let h = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(h, h.len() - 5), Some(h.len()));
    }

    /// Counts how often the future it wraps is polled: a head waited for on readiness is
    /// polled once per arrival (and once for its timer), not on a clock.
    struct Polls<F> {
        inner: std::pin::Pin<Box<F>>,
        count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<F: std::future::Future> std::future::Future for Polls<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_silent_or_trickling_client_costs_a_poll_per_arrival_not_per_tick() {
        use tokio::io::AsyncWriteExt;
        // Silent: waited for until the idle bound, with no buffer and a handful of polls
        // (the previous reader polled every 5 ms: 40 polls over these 200 ms).
        let (_c, s) = pair().await;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut buf = BytesMut::new();
        let reading = Polls {
            inner: Box::pin(read(
                &s,
                &mut buf,
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(5),
            )),
            count: count.clone(),
        };
        assert!(matches!(reading.await, Err(NoHead::Timeout)));
        assert!(
            count.load(std::sync::atomic::Ordering::Relaxed) <= 3,
            "{count:?} polls"
        );
        assert_eq!(buf.capacity(), 0, "a silent client is given no buffer");

        // A byte at a time: at most one poll per byte sent (plus the first), and the head
        // arrives whole.
        let (mut c, s) = pair().await;
        let head = b"GET /live.ogg HTTP/1.1\r\nHost: x\r\n\r\n";
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut buf = BytesMut::new();
        let reading = Polls {
            inner: Box::pin(read(
                &s,
                &mut buf,
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5),
            )),
            count: count.clone(),
        };
        let (got, ()) = tokio::join!(reading, async {
            for b in head {
                c.write_all(&[*b]).await.unwrap();
                c.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(got.map(|h| h.path).ok().as_deref(), Some("/live.ogg"));
        let n = count.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n <= head.len() + 2, "{n} polls for {} bytes", head.len());
    }
}
