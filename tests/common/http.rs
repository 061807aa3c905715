//! HTTP/1.1 spoken by hand, as radio players and encoders speak it to a node: a request with
//! any header lines, the response's head, and a body read as it streams until the node
//! closes the connection (a live stream has no length).

use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response's status line and headers (names in lower case).
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: HashMap<String, String>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A response whose body is still coming.
pub struct Streaming {
    pub head: Head,
    /// Body bytes that came with the head, not yet handed out.
    early: Vec<u8>,
    tcp: TcpStream,
}

impl Streaming {
    /// The next piece of the body; None once the node has closed the connection.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if !self.early.is_empty() {
            return Some(std::mem::take(&mut self.early));
        }
        let mut buf = vec![0u8; 16 * 1024];
        match self.tcp.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) => panic!("reading the body: {e}"),
        }
    }

    /// The rest of the body, to its end.
    pub async fn rest(mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(piece) = self.next().await {
            all.extend_from_slice(&piece);
        }
        all
    }
}

/// `METHOD path` to `addr` (HOST:PORT) with `headers` (`Name: value` lines); the response
/// head once it is whole. The body is read from what is returned.
pub async fn request(addr: &str, method: &str, path: &str, headers: &[&str]) -> Streaming {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "{method} {path}: closed before a whole response head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {text:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // A live body runs to the close: any other framing would be read as audio here.
    assert!(
        !headers.contains_key("transfer-encoding"),
        "{method} {path}: a transfer coding: {text}"
    );
    Streaming {
        head: Head { status, headers },
        early: raw[end + 4..].to_vec(),
        tcp,
    }
}

/// `GET path` with `headers`: the head, and the whole body once the node closes it.
pub async fn get(addr: &str, path: &str, headers: &[&str]) -> (Head, Vec<u8>) {
    let r = request(addr, "GET", path, headers).await;
    let head = r.head.clone();
    (head, r.rest().await)
}

/// The `Authorization` header line of HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {b}")
}
