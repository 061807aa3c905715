//! HLS benchmark: what an LL-HLS listener costs an edge against a progressive Ogg listener,
//! and what an HTTP cache in front of the edge leaves it to do.
//!
//!   cargo bench --bench hls                         # N = 300 listeners of each kind, 15 s
//!   QUICAST_BENCH_N=500 QUICAST_BENCH_SECS=20 QUICAST_BENCH_CACHED=1000 cargo bench --bench hls
//!   QUICAST_BENCH_RELAY_BIN=/path/to/other/quicast cargo bench --bench hls   # A/B an edge build
//!
//! The edge (a relay under an origin) is pinned to core 0, everything else to core 1. Each
//! HLS listener follows the playlist as an LL-HLS player does: a blocking reload on the
//! hinted part, then that part (one keep-alive connection each). Ogg listeners read
//! `GET /STREAM.ogg`. Runs alternate Ogg, HLS, Ogg, HLS. Then, with nginx
//! (config/nginx-hls-cache.conf) in front, QUICAST_BENCH_CACHED HLS listeners through it:
//! the edge's requests per second. Writes target/hls/results.md.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::{cert, publisher, source, spawn_bin, Killed, Log, BIN};

const LOG: &str = "warn,quicast::server=info";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(at) = s.rfind(')') else { return 0 };
    let f: Vec<&str> = s[at + 2..].split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A keep-alive HTTP/1.1 connection that reads `Content-Length` bodies.
struct Conn {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let (r, w) = TcpStream::connect(addr).await?.into_split();
        Ok(Conn {
            rd: BufReader::new(r),
            wr: w,
        })
    }

    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.wr
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        self.rd.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0;
        loop {
            line.clear();
            if self.rd.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.rd.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// The hinted part in a playlist: (path relative to the playlist's directory, msn, part).
fn hint(playlist: &str) -> Option<(String, u64, u64)> {
    let l = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = l.split("URI=\"").nth(1)?.split('"').next()?.to_string();
    let f = uri.rsplit('/').next()?.strip_suffix(".m4s")?;
    let (m, k) = f.split_once('.')?;
    Some((uri.clone(), m.parse().ok()?, k.parse().ok()?))
}

/// One LL-HLS listener until `end`: counts the parts it got.
async fn hls_listener(addr: String, end: Instant, parts: Arc<AtomicU64>) {
    let Ok(mut c) = Conn::open(&addr).await else {
        return;
    };
    let Ok((_, body)) = c.get("/bench.m3u8").await else {
        return;
    };
    let mut pl = String::from_utf8_lossy(&body).to_string();
    while Instant::now() < end {
        let Some((uri, msn, part)) = hint(&pl) else {
            return;
        };
        match c.get(&format!("/{uri}")).await {
            Ok((200, _)) => {
                parts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => return,
        }
        match c
            .get(&format!("/bench.m3u8?_HLS_msn={msn}&_HLS_part={part}"))
            .await
        {
            Ok((200, b)) => pl = String::from_utf8_lossy(&b).to_string(),
            _ => return,
        }
    }
}

/// One progressive Ogg listener until `end`: counts the bytes it got.
async fn ogg_listener(addr: String, end: Instant, bytes: Arc<AtomicU64>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    if s.write_all(b"GET /bench.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16384];
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

struct Setup {
    _origin: Killed,
    edge: Killed,
    _edge_log: Log,
    _publisher: Killed,
    edge_http: String,
}

fn setup(dir: &Path) -> Setup {
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
        Some("1"),
        LOG,
    );
    let oaddr = Log::of(&mut origin).addr();
    let up = format!("quic://{oaddr}");
    // QUICAST_BENCH_RELAY_BIN: another build as the edge, for interleaved A/B runs.
    let edge_bin = std::env::var("QUICAST_BENCH_RELAY_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut edge = spawn_bin(
        &edge_bin,
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
        Some("0"),
        LOG,
    );
    let mut edge_log = Log::of(&mut edge);
    let edge_http = edge_log.http_addr();
    let publisher = publisher(&oaddr, "bench", &src, &fp, Some("1"));
    Setup {
        _origin: origin,
        edge,
        _edge_log: edge_log,
        _publisher: publisher,
        edge_http,
    }
}

/// `n` listeners of `kind` on `addr` for `secs`; returns the edge's CPU (% of a core) over
/// the steady part, and what the listeners got (parts or bytes).
fn run(
    rt: &tokio::runtime::Runtime,
    kind: &str,
    n: usize,
    secs: u64,
    addr: &str,
    edge_pid: u32,
) -> (f64, u64) {
    let got = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs + 3);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (addr, got) = (addr.to_string(), got.clone());
            if kind == "hls" {
                rt.spawn(hls_listener(addr, end, got))
            } else {
                rt.spawn(ogg_listener(addr, end, got))
            }
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let tick = 100.0; // USER_HZ on Linux
    let (c0, t0, g0) = (
        cpu_ticks(edge_pid),
        Instant::now(),
        got.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, t1, g1) = (
        cpu_ticks(edge_pid),
        Instant::now(),
        got.load(Ordering::Relaxed),
    );
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    (
        (c1 - c0) as f64 / tick / (t1 - t0).as_secs_f64() * 100.0,
        g1 - g0,
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_or("QUICAST_BENCH_N", 300usize);
    let secs = env_or("QUICAST_BENCH_SECS", 15u64);
    let cached = env_or("QUICAST_BENCH_CACHED", 1000usize);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The load runs on core 1 with the rest.
    let _ = std::process::Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .output();
    let s = setup(dir.path());
    let pid = s.edge.0.id();
    std::thread::sleep(Duration::from_secs(3));
    let mut md = String::from("| listeners | kind | edge CPU (% of a core) | per 100 listeners | got |\n|---|---|---|---|---|\n");
    let (idle, _) = run(&rt, "ogg", 0, 5, &s.edge_http, pid);
    md += &format!("| 0 | idle | {idle:.1} | - | - |\n");
    for round in 0..2 {
        for kind in ["ogg", "hls"] {
            let (cpu, got) = run(&rt, kind, n, secs, &s.edge_http, pid);
            let unit = if kind == "hls" { "parts" } else { "bytes" };
            eprintln!("round {round}: {n} {kind}: edge {cpu:.1} % ({got} {unit})");
            md += &format!(
                "| {n} | {kind} | {cpu:.1} | {:.2} | {got} {unit} |\n",
                (cpu - idle) / n as f64 * 100.0
            );
        }
    }
    // Behind nginx: what reaches the edge.
    if cached > 0 {
        let ng = nginx(&s.edge_http, dir.path());
        let (cpu, got) = run(&rt, "hls", cached, secs, &ng.addr, pid);
        let log = std::fs::read_to_string(&ng.log).unwrap_or_default();
        let upstream = log.lines().filter(|l| !l.starts_with('-')).count();
        let through = log.lines().count();
        // The log covers the whole run (secs + 5 s of joins and tail).
        let span = (secs + 5) as f64;
        eprintln!(
            "{cached} hls via nginx: edge {cpu:.1} %, {upstream} of {through} requests reached it"
        );
        md += &format!(
            "| {cached} via nginx | hls | {cpu:.1} | {:.2} | {got} parts; {:.1} requests/s reached the edge of {:.0}/s through nginx |\n",
            (cpu - idle) / cached as f64 * 100.0,
            upstream as f64 / span,
            through as f64 / span
        );
    }
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hls");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), md).unwrap();
}

struct Nginx {
    _p: Killed,
    addr: String,
    log: std::path::PathBuf,
}

/// Debian's nginx with config/nginx-hls-cache.conf in front of `edge` (as tests/hls.rs).
fn nginx(edge: &str, dir: &Path) -> Nginx {
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx-hls-cache.conf"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("upstream.log");
    let snippet = snippet
        .replace("127.0.0.1:8000", edge)
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "/var/cache/nginx/quicast",
            d.join("cache").to_str().unwrap(),
        )
        .replace(
            "add_header X-Cache-Status $upstream_cache_status;",
            &format!(
                "add_header X-Cache-Status $upstream_cache_status;\n        access_log {} up;",
                log.display()
            ),
        );
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\nworker_rlimit_nofile 65536;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  log_format up '$upstream_addr $request_uri $status';\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{snippet}\n}}\n",
        d = d.display()
    );
    let path = d.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let p = spawn_bin(
        "nginx",
        &["-c", path.to_str().unwrap(), "-e", "stderr"],
        Some("1"),
        "",
    );
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { _p: p, addr, log }
}
