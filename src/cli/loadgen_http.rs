//! The load generator's HTTP crowd: N requests (`GET /STREAM.ogg`, a playlist, anything)
//! opened over a ramp, each read for the run's duration. Reports how many were served, why
//! the others were not, the time to each one's first body byte and the bytes each got.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::loadgen::{Histogram, Quantiles};
use quicast::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpReport {
    pub requests: usize,
    /// Answered 200 with at least one body byte.
    pub served: u64,
    /// The others, by status code or error.
    pub failures: Vec<(String, u64)>,
    /// Request start to the first body byte.
    pub first_byte_ms: Quantiles,
    /// Body bytes each served request got (median).
    pub bytes_p50: u64,
    /// Ogg streams: listeners whose pages skipped sequence numbers after their first audio
    /// page (the node moved them forward: audio lost), and the pages missed in all.
    pub gapped: u64,
    pub pages_missed: u64,
    pub duration_s: f64,
}

/// `url`: `http://HOST:PORT/PATH`.
pub async fn run(url: &str, n: usize, ramp: Duration, hold: Duration) -> Result<HttpReport> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::local("an HTTP crowd needs an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| Error::local(format!("{authority} did not resolve")))?;
    // One descriptor a request: as many as the hard limit allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    ));
    let first = Arc::new(Histogram::new());
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let sizes: Arc<Mutex<Vec<u64>>> = Arc::default();
    let gaps: Arc<Mutex<(u64, u64)>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + ramp.mul_f64(i as f64 / n.max(1) as f64);
        let (request, first, failures, sizes, gaps) = (
            request.clone(),
            first.clone(),
            failures.clone(),
            sizes.clone(),
            gaps.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let t0 = Instant::now();
            let r = one(addr, &request, t0, hold).await;
            match r {
                Ok((first_at, bytes, missed)) => {
                    first.record_us(first_at.duration_since(t0).as_micros() as u64);
                    sizes.lock().unwrap_or_else(|p| p.into_inner()).push(bytes);
                    if missed > 0 {
                        let mut g = gaps.lock().unwrap_or_else(|p| p.into_inner());
                        g.0 += 1;
                        g.1 += missed;
                    }
                }
                Err(why) => {
                    *failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(why)
                        .or_default() += 1
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut sizes = std::mem::take(&mut *sizes.lock().unwrap_or_else(|p| p.into_inner()));
    sizes.sort_unstable();
    let failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    let (gapped, pages_missed) = *gaps.lock().unwrap_or_else(|p| p.into_inner());
    Ok(HttpReport {
        gapped,
        pages_missed,
        requests: n,
        served: first.count(),
        failures: failures.into_iter().collect(),
        first_byte_ms: Quantiles {
            p50: first.quantile_ms(0.5),
            p99: first.quantile_ms(0.99),
            max: Some(first.max_ms()),
        },
        bytes_p50: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        duration_s: start.elapsed().as_secs_f64(),
    })
}

/// One request: when its first body byte came, how many it read in `hold` after, and (an Ogg
/// stream) how many pages it missed.
async fn one(
    addr: std::net::SocketAddr,
    request: &str,
    t0: Instant,
    hold: Duration,
) -> std::result::Result<(Instant, u64, u64), String> {
    let mut pages = PageWalk::default();
    let deadline = t0 + Duration::from_secs(30);
    let mut tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {}", e.kind()))?;
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    // The head, then the first body byte.
    let (first_at, mut bytes) = loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .map_err(|_| "no answer in 30 s".to_string())?
            .map_err(|e| format!("read: {}", e.kind()))?;
        if n == 0 {
            return Err(status(&head).unwrap_or_else(|| "closed before an answer".into()));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if let Some(s) = status(&head).filter(|s| s != "200") {
                return Err(s);
            }
            let body = head.len() - end - 4;
            if body > 0 {
                pages.push(&head[end + 4..]);
                break (Instant::now(), body as u64);
            }
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
                .await
                .map_err(|_| "no body in 30 s".to_string())?
                .map_err(|e| format!("read: {}", e.kind()))?;
            if n == 0 {
                return Err("no body".into());
            }
            pages.push(&buf[..n]);
            break (Instant::now(), n as u64);
        }
        if head.len() > 64 * 1024 {
            return Err("head over 64 KiB".into());
        }
    };
    let end = first_at + hold;
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        bytes += n as u64;
        pages.push(&buf[..n]);
    }
    Ok((first_at, bytes, pages.missed))
}

/// Walks the Ogg pages of a body as it comes, counting the pages missed (sequence numbers
/// skipped) after the first audio page. The jump from a late listener's header pages (0, 1)
/// to its first audio page is not a gap. Anything that is not Ogg stops the walk.
#[derive(Default)]
struct PageWalk {
    /// Bytes of the current page still to pass over.
    skip: usize,
    /// A page header being gathered (up to 27 bytes and its lacing values).
    header: Vec<u8>,
    last: Option<u32>,
    missed: u64,
    not_ogg: bool,
}

impl PageWalk {
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.not_ogg {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                data = &data[k..];
                continue;
            }
            let want = if self.header.len() < 27 {
                27
            } else {
                27 + self.header[26] as usize
            };
            let k = (want - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.header.len() < want {
                continue;
            }
            if want == 27 {
                if &self.header[..4] != b"OggS" {
                    self.not_ogg = true;
                }
                continue;
            }
            let seq = u32::from_le_bytes([
                self.header[18],
                self.header[19],
                self.header[20],
                self.header[21],
            ]);
            self.skip = self.header[27..].iter().map(|&l| l as usize).sum();
            self.header.clear();
            if let Some(last) = self.last.filter(|&l| l > 1) {
                self.missed += seq.wrapping_sub(last).wrapping_sub(1) as u64;
            }
            self.last = Some(seq);
        }
    }
}

/// The status code of a response head, if it has one.
fn status(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\n').next()?;
    let code = std::str::from_utf8(line).ok()?.split_whitespace().nth(1)?;
    Some(code.to_string())
}

#[cfg(test)]
mod tests {
    use super::PageWalk;

    fn page(seq: u32, body: usize) -> Vec<u8> {
        let mut p = b"OggS".to_vec();
        p.extend_from_slice(&[0; 14]);
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(1);
        p.push(body as u8);
        p.extend(std::iter::repeat_n(7u8, body));
        p
    }

    #[test]
    fn pages_missed_are_counted_after_the_first_audio_page_in_any_split() {
        let mut stream = Vec::new();
        for seq in [0, 1, 40, 41, 42, 45, 46] {
            stream.extend(page(seq, 30));
        }
        for cut in [1, 5, 27, 28, 31, 1000] {
            let mut w = PageWalk::default();
            for chunk in stream.chunks(cut) {
                w.push(chunk);
            }
            assert_eq!(w.missed, 2, "read {cut} bytes at a time");
        }
    }
}
