//! An answer to a request: a status, a few headers and a body, written as one vectored
//! write. Streams (progressive Ogg) get a head with no length and run until the connection
//! closes, as Icecast's do.

use std::borrow::Cow;
use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", Cow::Borrowed(content_type))],
            body: body.into(),
        }
    }

    /// A plain-text answer: the message and a newline.
    pub fn text(status: u16, msg: impl Into<String>) -> Reply {
        let mut m = msg.into();
        m.push('\n');
        Reply::new(status, "text/plain; charset=utf-8", m)
    }

    /// Sets header `name` (once: a second call replaces the first).
    pub fn set(&mut self, name: &'static str, value: impl Into<Cow<'static, str>>) {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value,
            None => self.headers.push((name, value)),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Reply {
        self.set(name, value);
        self
    }

    /// The status line and headers. `length`: the body's (a HEAD's is the GET's), or None for
    /// a stream that ends with the connection.
    pub fn head(&self, length: Option<usize>, keep_alive: bool, http10: bool) -> BytesMut {
        let mut h = BytesMut::with_capacity(256);
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        put(&mut h, &format!("{version} {} {reason}\r\n", self.status));
        for (n, v) in &self.headers {
            // Values come from the node, but never let one end a header early.
            if !v.bytes().any(|b| b == b'\r' || b == b'\n') {
                put(&mut h, n);
                put(&mut h, ": ");
                put(&mut h, v);
                put(&mut h, "\r\n");
            }
        }
        put(&mut h, "Date: ");
        put(&mut h, &date());
        put(&mut h, "\r\n");
        if let Some(n) = length {
            put(&mut h, &format!("Content-Length: {n}\r\n"));
        }
        let keep = keep_alive && length.is_some();
        put(
            &mut h,
            match (keep, http10) {
                (true, true) => "Connection: keep-alive\r\n\r\n",
                (true, false) => "\r\n",
                (false, _) => "Connection: close\r\n\r\n",
            },
        );
        h
    }

    /// Writes the whole response (without its body for a HEAD request).
    pub async fn send(
        &self,
        tcp: &mut TcpStream,
        head_only: bool,
        keep_alive: bool,
        http10: bool,
    ) -> std::io::Result<()> {
        let head = self.head(Some(self.body.len()), keep_alive, http10);
        let body: &[u8] = if head_only { &[] } else { &self.body };
        write_two(tcp, &head, body).await
    }
}

fn put(h: &mut BytesMut, s: &str) {
    h.put_slice(s.as_bytes());
}

/// Writes `a` then `b`, vectored: one system call for a head and its body when the socket
/// takes both.
pub async fn write_two(tcp: &mut TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = tcp
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    tcp.write_all(b).await
}

/// Now as an HTTP date, formatted once a second per thread.
fn date() -> String {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_length_and_connection_as_the_request_allows() {
        let r = Reply::text(404, "no such page").with("Cache-Control", "no-store");
        let h = String::from_utf8(r.head(Some(r.body.len()), true, false).to_vec()).unwrap();
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\n"), "{h}");
        assert!(h.contains("Content-Length: 13\r\n") && h.contains("Cache-Control: no-store\r\n"));
        assert!(!h.contains("Connection:") && h.ends_with("\r\n\r\n"));
        let h = String::from_utf8(r.head(None, true, true).to_vec()).unwrap();
        assert!(h.starts_with("HTTP/1.0 404") && h.ends_with("Connection: close\r\n\r\n"));
        assert!(!h.contains("Content-Length"));
        let bad = Reply::text(200, "x").with("X-Bad", "a\r\nSet-Cookie: y".to_string());
        let h = String::from_utf8(bad.head(Some(2), false, false).to_vec()).unwrap();
        assert!(!h.contains("Set-Cookie"));
    }
}
