//! Startup benchmark: page load → `playing` in headless Chromium, through the node page's
//! own player: LL-HLS on Media Source Extensions (`mse`) against progressive Ogg (`ogg`).
//!
//!   cargo bench --bench startup                       # 10 rounds: mse, ogg, mse, ogg, ...
//!   QUICAST_BENCH_ROUNDS=3 cargo bench --bench startup
//!
//! One origin and one relay (the edge, serving HTTP) run as processes; a publisher loops
//! the 64 kbit/s source in real time. The stream is held warm at the edge for the whole
//! run (a playlist request, then one Ogg listener kept connected: a relay lets go of a
//! stream `linger-secs` after its last listener). Each round is a fresh headless Chromium
//! (fresh profile) on a small test page (as tests/hls_player.rs): it fetches the edge's page
//! (`http://EDGE/`), takes it in with a `<base href>`, runs its script and presses play.
//! The player's path is forced with `?player=mse|ogg` on the test page's address (the
//! player reads `location.search`), and checked (`audio.dataset.path`).
//!
//! Two figures a round: page→playing, from the test page's first script (before it fetches
//! the node's page) to the element's `playing`; script→playing, from the node page's script
//! start to `playing`. A round fails on an error, the wrong path, no `playing` in 30 s, or
//! less than half a second of audio played in the two seconds after `playing`. Writes
//! target/startup/results.md.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{cert, publisher, source, spawn_bin, Killed, Log, BIN};

const LOG: &str = "warn,quicast::server=info";
const STREAM: &str = "bench";
/// A round without a report by then has failed.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Chromium, as installed (apt-get install -y chromium).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// The test page: the round and the forced path come in its own query
/// (`?round=N&player=P`). It reports to `/report?round=N&...`.
fn test_page(edge: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body><div id="root"></div><script>
const t0 = performance.now();
const node = 'http://{edge}/';
const round = new URLSearchParams(location.search).get('round');
const reportTo = location.origin + '/report?round=' + round + '&';
let reported = false;
const report = q => {{ if (!reported) {{ reported = true; fetch(reportTo + q); }} }};
window.addEventListener('error', e => report('error=' + encodeURIComponent('script: ' + e.message)));
let tries = 0;
async function load() {{
  for (; tries < 40; tries++) {{
    const html = await (await fetch(node, {{ cache: 'no-store' }})).text();
    if (html.includes('data-stream="{STREAM}"')) return html;
    // Not held at the edge (it should be): a playlist request makes it hold the stream.
    await fetch(node + '{STREAM}.m3u8').catch(() => {{}});
    await new Promise(r => setTimeout(r, 250));
  }}
  throw new Error('the page never listed the stream');
}}
load().then(html => {{
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const base = document.createElement('base');
  base.href = node;
  document.head.appendChild(base);
  const root = document.getElementById('root');
  root.innerHTML = doc.body.innerHTML;
  const inserted = performance.now();
  // Scripts put in by innerHTML do not run: these run as they would have in the page.
  for (const old of root.querySelectorAll('script')) {{
    const s = document.createElement('script');
    s.textContent = old.textContent;
    old.replaceWith(s);
  }}
  const a = document.querySelector('audio[data-stream="{STREAM}"]');
  const state = () => 'path=' + a.dataset.path + '&ready=' + a.readyState + '&ct=' + a.currentTime;
  a.addEventListener('error', () => report('error=media' + (a.error && a.error.code) + '&' + state()));
  a.addEventListener('playing', () => {{
    const w0 = performance.now(), c0 = a.currentTime;
    // Two seconds on, to see that it really plays.
    setTimeout(() => report('page=' + (w0 - t0) + '&startup=' + (w0 - inserted) + '&nav=' + w0 +
      '&played=' + (a.currentTime - c0) + '&tries=' + tries + '&' + state()), 2000);
  }}, {{ once: true }});
  setTimeout(() => report('error=not+playing+after+25+s&' + state()), 25000);
  a.play().catch(e => report('error=' + encodeURIComponent(String(e)) + '&' + state()));
}}).catch(e => report('error=' + encodeURIComponent(String(e))));
</script></body></html>"#
    )
}

/// Serves `html` at any address but `/report?QUERY`, whose QUERY it sends on.
async fn page_server(
    html: String,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = pages.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let html = Arc::new(html);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = pages.accept().await {
            let (html, tx) = (html.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or("");
                if let Some(q) = line.strip_prefix("GET /report?") {
                    let _ = tx.send(q.split_whitespace().next().unwrap_or("").to_string());
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n")
                        .await;
                } else {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    (addr, rx)
}

/// The value of `key` in a query string (not decoded).
fn qfield<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `GET path` on `addr` (Connection: close): the status and the body, headers and all.
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// One Ogg listener on the edge, reading until aborted: it keeps the stream held there.
/// Sends the bytes it got first once there are some.
async fn holder(addr: String, first: tokio::sync::oneshot::Sender<usize>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let req = format!("GET /{STREAM}.ogg HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16384];
    let mut first = Some(first);
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(f) = first.take() {
                    let _ = f.send(n);
                }
            }
        }
    }
}

struct Nodes {
    _origin: Killed,
    _origin_log: Log,
    _edge: Killed,
    _edge_log: Log,
    _publisher: Killed,
    edge_http: String,
}

fn nodes(dir: &std::path::Path) -> Nodes {
    let src = source(dir);
    let (c, k, fp) = cert(dir);
    let mut origin = spawn_bin(
        BIN,
        &[
            "origin",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &c,
            "--key",
            &k,
        ],
        None,
        LOG,
    );
    let mut origin_log = Log::of(&mut origin);
    let oaddr = origin_log.addr();
    let up = format!("quic://{oaddr}");
    let mut edge = spawn_bin(
        BIN,
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &c,
            "--key",
            &k,
            "--upstream",
            &up,
            "--fingerprint",
            &fp,
            "--http",
            "127.0.0.1:0",
        ],
        None,
        LOG,
    );
    let mut edge_log = Log::of(&mut edge);
    let edge_http = edge_log.http_addr();
    let publisher = publisher(&oaddr, STREAM, &src, &fp, None);
    Nodes {
        _origin: origin,
        _origin_log: origin_log,
        _edge: edge,
        _edge_log: edge_log,
        _publisher: publisher,
        edge_http,
    }
}

/// What a round measured.
struct Round {
    /// The test page's first script to `playing`.
    page_ms: f64,
    /// The node page's script to `playing`.
    script_ms: f64,
    /// The browser's navigation start to `playing`.
    nav_ms: f64,
    /// Seconds of audio played in the 2 s after `playing`.
    played: f64,
    /// Fetches of the node's page until it listed the stream (1: it was held).
    fetches: u32,
}

/// A fresh Chromium on the test page with `?round=N&player=P`: its report, or why none.
async fn round(
    chromium: &str,
    page: std::net::SocketAddr,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    n: usize,
    path: &str,
) -> Result<Round, String> {
    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--autoplay-policy=no-user-gesture-required",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("http://{page}/?round={n}&player={path}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("chromium: {e}"))?;
    let end = tokio::time::Instant::now() + ROUND_LIMIT;
    let want = format!("round={n}&");
    let report = loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(r)) if r.starts_with(&want) => break Some(r),
            Ok(Some(_)) => continue, // a report from an earlier round's browser
            Ok(None) | Err(_) => break None,
        }
    };
    // The browser and every process it started (its process group).
    if let Some(pid) = browser.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = browser.kill().await;
    let _ = browser.wait().await;
    drop(profile);
    let report = report.ok_or_else(|| format!("no report in {} s", ROUND_LIMIT.as_secs()))?;
    if let Some(e) = qfield(&report, "error") {
        return Err(format!("error {e} ({report})"));
    }
    if qfield(&report, "path") != Some(path) {
        return Err(format!("took another path ({report})"));
    }
    let num = |k: &str| qfield(&report, k).and_then(|v| v.parse::<f64>().ok());
    let (Some(page_ms), Some(script_ms), Some(nav_ms), Some(played), Some(tries)) = (
        num("page"),
        num("startup"),
        num("nav"),
        num("played"),
        num("tries"),
    ) else {
        return Err(format!("incomplete report ({report})"));
    };
    if played < 0.5 {
        return Err(format!(
            "played only {played:.2} s in the 2 s after `playing` ({report})"
        ));
    }
    Ok(Round {
        page_ms,
        script_ms,
        nav_ms,
        played,
        fetches: tries as u32 + 1,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: only a real run
    // benchmarks.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(chromium) = chromium() else {
        eprintln!("startup: chromium is needed (apt-get install -y chromium); nothing measured");
        return;
    };
    let rounds = env_or("QUICAST_BENCH_ROUNDS", 10usize);
    let dir = tempfile::tempdir().unwrap();
    let n = nodes(dir.path());
    let edge = n.edge_http.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let paths = ["mse", "ogg"];
    let results: Vec<(usize, Vec<Round>)> = rt.block_on(async {
        // Live at the edge: the playlist request waits until the stream is (and makes the
        // edge fetch it), then one Ogg listener keeps it held for all the rounds.
        let t = Instant::now();
        match get(&edge, &format!("/{STREAM}.m3u8")).await {
            Ok((200, _)) => eprintln!(
                "stream live at the edge {edge} ({:.1} s)",
                t.elapsed().as_secs_f64()
            ),
            Ok((s, body)) => panic!("GET /{STREAM}.m3u8: {s}\n{body}"),
            Err(e) => panic!("GET /{STREAM}.m3u8: {e}"),
        }
        let (tx, first) = tokio::sync::oneshot::channel();
        let hold = tokio::spawn(holder(edge.clone(), tx));
        match tokio::time::timeout(Duration::from_secs(10), first).await {
            Ok(Ok(b)) => eprintln!("an Ogg listener holds the stream at the edge ({b} bytes first)"),
            _ => panic!("GET /{STREAM}.ogg gave nothing in 10 s"),
        }
        // A few segments before the first page: it starts from the newest of several.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (page, mut rx) = page_server(test_page(&edge)).await;
        let mut out: Vec<(usize, Vec<Round>)> = paths.iter().map(|_| (0, Vec::new())).collect();
        for r in 0..rounds {
            for (i, path) in paths.iter().enumerate() {
                let id = r * paths.len() + i;
                match round(chromium, page, &mut rx, id, path).await {
                    Ok(m) => {
                        eprintln!(
                            "round {r} {path}: page→playing {:.0} ms, script→playing {:.0} ms \
                             (navigation→playing {:.0} ms, {:.2} s played in 2 s, {} page fetch(es))",
                            m.page_ms, m.script_ms, m.nav_ms, m.played, m.fetches
                        );
                        out[i].1.push(m);
                    }
                    Err(e) => {
                        eprintln!("round {r} {path}: FAILED: {e}");
                        out[i].0 += 1;
                    }
                }
                // The browser gone before the next one starts.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        hold.abort();
        out
    });
    let mut md = String::from(
        "| path | runs | failed | median page→playing (ms) | min | max | median script→playing (ms) |\n|---|---|---|---|---|---|---|\n",
    );
    for (path, (failed, ok)) in paths.iter().zip(&results) {
        let page: Vec<f64> = ok.iter().map(|m| m.page_ms).collect();
        let script: Vec<f64> = ok.iter().map(|m| m.script_ms).collect();
        let label = if *path == "mse" {
            "hls (Media Source)"
        } else {
            "ogg"
        };
        let fmt = |v: f64| {
            if v.is_finite() {
                format!("{v:.0}")
            } else {
                "-".into()
            }
        };
        md += &format!(
            "| {label} | {} | {failed} | {} | {} | {} | {} |\n",
            ok.len() + failed,
            fmt(median(&page)),
            fmt(page.iter().copied().fold(f64::INFINITY, f64::min)),
            fmt(page.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            fmt(median(&script)),
        );
    }
    print!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/startup");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), md).unwrap();
    drop(n);
}
