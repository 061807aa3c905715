//! Fan-out benchmark: one relay, pinned to one core, serving N listeners of a 64 kbit/s Opus
//! stream. Origin, relay, publisher and load generator are separate processes.
//!
//!   cargo bench --bench fanout                       # N = 1000, 5000, 10000
//!   QUICAST_BENCH_N=1000,2000 QUICAST_BENCH_SECS=20 cargo bench --bench fanout
//!   QUICAST_BENCH_DELIVER_MS=0 cargo bench --bench fanout     # the origin's --deliver-ms
//!   QUICAST_BENCH_RELAY_BIN=/path/to/other/quicast cargo bench --bench fanout   # A/B a relay build
//!   QUICAST_BENCH_ORIGIN_BIN=/path/to/other/quicast ...   # and the origin (its pacing)
//!   QUICAST_BENCH_RELAY_ARGS="--max-deliver-ms 0" ...     # extra relay flags
//!   QUICAST_BENCH_RAMP=10 ...  # seconds over which listeners join [default: N / 2500]
//!   QUICAST_BENCH_HOG=-5 ...   # a busy loop on the relay's core at this nice: a slower core,
//!                              # to overload the relay with listeners the load generator can drive
//!   QUICAST_BENCH_LOADGEN_BIN=/path/to/other/quicast ...  # A/B the load generator
//!   QUICAST_BENCH_RELAY_CPUS=0,1 QUICAST_BENCH_RELAY_ARGS="--quic-threads 2" ...  # the relay on two cores
//!   QUICAST_BENCH_CODEC=mp3 ...  # the stream in MP3 at 128 kbit/s (an Icecast radio's), not Opus 64k
//!   QUICAST_BENCH_WEBTRANSPORT=1 ...  # listeners over WebTransport (`loadgen --webtransport`,
//!                                     # as browsers), to a self-signed relay pinned by the
//!                                     # hash of the certificate it serves browsers
//!
//! For each N it reports the relay's CPU (% of one core, from /proc over a steady window after
//! every listener joined), its RSS per listener (RSS growth over the idle relay / N), and what
//! the listeners heard (latency p50/p99, gaps, join p99), and writes
//! target/fanout/results.md and target/fanout/results.svg.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{addr, cert, publisher, source, spawn_bin, Killed, BIN};

const LOG: &str = "warn,quicast::server=info,quicast::node=info";

/// The relay under test: this build's binary, or `QUICAST_BENCH_RELAY_BIN` (another build,
/// for interleaved A/B runs in which everything else stays the same).
fn relay_bin() -> String {
    std::env::var("QUICAST_BENCH_RELAY_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The origin: this build's, or `QUICAST_BENCH_ORIGIN_BIN` (the delivery interval is the
/// origin's choice: an A/B of pacing swaps both).
fn origin_bin() -> String {
    std::env::var("QUICAST_BENCH_ORIGIN_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Whether the listeners speak WebTransport (`QUICAST_BENCH_WEBTRANSPORT=1`).
fn webtransport() -> bool {
    std::env::var("QUICAST_BENCH_WEBTRANSPORT").is_ok_and(|v| v == "1")
}

/// What the relay logged as it started.
struct Started {
    addr: String,
    /// The hash of the certificate it serves browsers (h3), if it logged one (a self-signed
    /// relay: the first of its `hashes=`).
    web_hash: Option<String>,
    /// While it runs: the largest delivery-interval floor it logged (its load watch
    /// stretching intervals), in ms.
    floor: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Reads the relay's log until it listens, then goes on reading it in the background.
fn relay_started(k: &mut Killed) -> Started {
    use std::sync::atomic::{AtomicU64, Ordering};
    let floor = std::sync::Arc::new(AtomicU64::new(0));
    let err = k.0.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let mut web_hash = None;
    for l in lines.by_ref() {
        let l = l.unwrap();
        // Logged before "listening (QUIC)".
        if l.contains("WebTransport: browsers get") {
            let hashes = support::field(&l, "hashes=");
            web_hash = hashes.split(',').next().map(str::to_string);
        }
        if l.contains("listening (QUIC)") {
            let at = support::field(&l, "addr=");
            let f = floor.clone();
            std::thread::spawn(move || {
                for l in lines.map_while(|l| l.ok()) {
                    // The relay's load decisions, as they happen.
                    if l.contains("WARN") && (l.contains("CPU load") || l.contains("overloaded")) {
                        eprintln!("  relay: {}", l.trim());
                    }
                    if let Ok(v) = support::field(&l, "floor_ms=").parse::<u64>() {
                        f.fetch_max(v, Ordering::Relaxed);
                    }
                }
            });
            return Started {
                addr: at,
                web_hash,
                floor,
            };
        }
    }
    panic!("relay exited before listening");
}

/// The pid of the quicast process (not of taskset, which execs it: same pid).
fn pid(k: &Killed) -> u32 {
    k.0.id()
}

/// utime + stime in clock ticks.
/// CPU ticks of each of a process's threads, by thread name (threads of one name summed).
fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(s) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[open + 1..close].to_string();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        *by.entry(name).or_insert(0) += ticks;
    }
    by
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// UDP datagrams sent and received by the host so far, halved: on loopback each one is
/// counted once out and once in.
fn udp_datagrams() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    let get = |key: &str| -> u64 {
        let i = names.split_whitespace().position(|k| k == key);
        i.and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("InDatagrams") + get("OutDatagrams")) / 2
}

fn ticks_per_sec() -> f64 {
    let o = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

struct Row {
    n: usize,
    cpu_pct: f64,
    /// The load generator's CPU in the same window (% of its one core).
    loadgen_pct: f64,
    /// Relay CPU per join, µs: its CPU while listeners joined, less serving meanwhile.
    join_cpu_us: f64,
    /// UDP datagrams on the host per listener per second (all of them are the relay's,
    /// near enough: its listeners' packets and their ACKs).
    datagrams: f64,
    rss_per_listener_kib: f64,
    rss_mib: f64,
    /// The largest floor the relay put under delivery intervals (overload), ms.
    floor_ms: u64,
    report: serde_json::Value,
}

fn run_one(n: usize, secs: u64, dir: &Path) -> Row {
    let src = source(dir);
    let (cert, key, fp) = cert(dir);
    let (c, k) = (cert.as_str(), key.as_str());
    let mut oargs = vec!["origin", "--listen", "127.0.0.1:0", "--cert", c, "--key", k];
    let deliver = std::env::var("QUICAST_BENCH_DELIVER_MS").ok();
    if let Some(d) = &deliver {
        oargs.extend(["--deliver-ms", d.as_str()]);
    }
    let mut origin = spawn_bin(&origin_bin(), &oargs, Some("1"), LOG);
    let oaddr = addr(&mut origin);
    let up = format!("quic://{oaddr}");
    let maxc = (n + 1000).to_string();
    let extra = std::env::var("QUICAST_BENCH_RELAY_ARGS").unwrap_or_default();
    let mut rargs = vec![
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--fingerprint",
        &fp,
        "--max-connections",
        &maxc,
    ];
    // Over WebTransport the relay is self-signed, as one serving browsers with no CA is:
    // they get its short-lived browser certificate (the load generator pins its hash).
    if !webtransport() {
        rargs.extend(["--cert", c, "--key", k]);
    }
    rargs.extend(extra.split_whitespace());
    let cpus = std::env::var("QUICAST_BENCH_RELAY_CPUS").unwrap_or_else(|_| "0".into());
    let mut relay = spawn_bin(&relay_bin(), &rargs, Some(&cpus), LOG);
    let Started {
        addr: raddr,
        web_hash,
        floor,
    } = relay_started(&mut relay);
    let (listen_fp, lg_mode) = if webtransport() {
        let hash = web_hash.expect("a self-signed relay logs its browser certificate's hash");
        (hash, Some("--webtransport"))
    } else {
        (fp.clone(), None)
    };
    // A busy loop sharing the relay's core, at a higher priority: the relay gets a fraction
    // of it (the overload run).
    let _hog = std::env::var("QUICAST_BENCH_HOG").ok().map(|nice| {
        Killed(
            Command::new("taskset")
                .args([
                    "-c",
                    "0",
                    "nice",
                    "-n",
                    &nice,
                    "sh",
                    "-c",
                    "while :; do :; done",
                ])
                .spawn()
                .unwrap(),
        )
    });
    let _publisher = publisher(&oaddr, "bench", &src, &fp, Some("1"));
    std::thread::sleep(Duration::from_secs(2));
    let rpid = pid(&relay);
    let rss0 = rss_kib(rpid);
    let ramp = std::env::var("QUICAST_BENCH_RAMP")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or((n as f64 / 2500.0).max(1.0));
    let t0 = Instant::now();
    let cj0 = cpu_ticks(rpid);
    let lg_bin = std::env::var("QUICAST_BENCH_LOADGEN_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut loadgen = Command::new("taskset")
        .args([
            "-c",
            "1",
            &lg_bin,
            "loadgen",
            &format!("quic://{raddr}/bench"),
            "--listeners",
            &n.to_string(),
            "--duration",
            &secs.to_string(),
            "--ramp",
            &format!("{ramp}"),
            "--fingerprint",
            &listen_fp,
            "--json",
        ])
        .args(lg_mode)
        .env("RUST_LOG", "error,quicast::cli::loadgen=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Steady window: from 2 s after every listener joined (the load generator logs it) to 1 s
    // before the listeners leave. Joins are the dearest work (a TLS handshake each), so a
    // window that overlapped them would not measure serving.
    let lpid = loadgen.id();
    let (joined_tx, joined) = std::sync::mpsc::channel();
    let lg_err = BufReader::new(loadgen.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in lg_err.lines().map_while(|l| l.ok()) {
            if line.contains("every listener has joined or failed") {
                let _ = joined_tx.send(());
            }
            eprintln!("{line}");
        }
    });
    let leave = Duration::from_secs_f64(ramp + secs as f64);
    if joined
        .recv_timeout(
            leave
                .saturating_sub(Duration::from_secs(5))
                .saturating_sub(t0.elapsed()),
        )
        .is_err()
    {
        eprintln!("  (not every listener joined in time: the window may include joins)");
    }
    let (cj1, joins_took) = (cpu_ticks(rpid), t0.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let steady_len = leave
        .saturating_sub(Duration::from_secs(1))
        .saturating_sub(t0.elapsed())
        .max(Duration::from_secs(2));
    let (c0, u0, w0, l0) = (
        cpu_ticks(rpid),
        udp_datagrams(),
        Instant::now(),
        cpu_ticks(lpid),
    );
    let th0 = thread_ticks(rpid);
    std::thread::sleep(steady_len);
    let (c1, u1, w1, l1) = (
        cpu_ticks(rpid),
        udp_datagrams(),
        Instant::now(),
        cpu_ticks(lpid),
    );
    let th1 = thread_ticks(rpid);
    // Where the relay's CPU went, by thread (its QUIC threads are quic-0, quic-1, ...).
    let threads: Vec<String> = th1
        .iter()
        .map(|(name, t)| {
            let d = t.saturating_sub(*th0.get(name).unwrap_or(&0));
            (
                name,
                d as f64 / ticks_per_sec() / (w1 - w0).as_secs_f64() * 100.0,
            )
        })
        .filter(|(_, pct)| *pct >= 0.5)
        .map(|(name, pct)| format!("{name} {pct:.1}%"))
        .collect();
    eprintln!("  relay threads: {}", threads.join(", "));
    let rss1 = rss_kib(rpid);
    let out = loadgen.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default();
    let cpu_pct = (c1 - c0) as f64 / ticks_per_sec() / (w1 - w0).as_secs_f64() * 100.0;
    let loadgen_pct = (l1 - l0) as f64 / ticks_per_sec() / (w1 - w0).as_secs_f64() * 100.0;
    // The joins' CPU: the relay's while they came, less what serving took meanwhile (the
    // audience grew from none to all: half the steady rate on average).
    let ramp_cpu = (cj1 - cj0) as f64 / ticks_per_sec();
    let serving = cpu_pct / 100.0 * joins_took.as_secs_f64() / 2.0;
    let join_cpu_us = (ramp_cpu - serving).max(0.0) / n as f64 * 1e6;
    Row {
        n,
        cpu_pct,
        loadgen_pct,
        join_cpu_us,
        datagrams: u1.saturating_sub(u0) as f64 / (w1 - w0).as_secs_f64() / n as f64,
        rss_per_listener_kib: rss1.saturating_sub(rss0) as f64 / n as f64,
        rss_mib: rss1 as f64 / 1024.0,
        floor_ms: floor.load(std::sync::atomic::Ordering::Relaxed),
        report,
    }
}

fn svg(rows: &[Row]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let maxn = rows.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let maxc = rows.iter().map(|r| r.cpu_pct).fold(100.0f64, f64::max);
    let x = |n: f64| pad + n / maxn * (w - 2.0 * pad);
    let y = |c: f64| h - pad - c / maxc * (h - 2.0 * pad);
    let pts: Vec<String> = rows
        .iter()
        .map(|r| format!("{:.1},{:.1}", x(r.n as f64), y(r.cpu_pct)))
        .collect();
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>");
    s += &format!("<rect width='{w}' height='{h}' fill='white'/>");
    s += &format!(
        "<line x1='{pad}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
        h - pad,
        w - pad,
        h - pad
    );
    s += &format!(
        "<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{}' stroke='black'/>",
        h - pad
    );
    s += &format!(
        "<line x1='{pad}' y1='{:.1}' x2='{}' y2='{:.1}' stroke='#c33' stroke-dasharray='4'/>",
        y(50.0),
        w - pad,
        y(50.0)
    );
    s += &format!(
        "<text x='{}' y='{:.1}' fill='#c33'>50% of a core</text>",
        w - pad - 90.0,
        y(50.0) - 4.0
    );
    s += &format!(
        "<polyline points='{}' fill='none' stroke='#36c' stroke-width='2'/>",
        pts.join(" ")
    );
    for r in rows {
        s += &format!(
            "<circle cx='{:.1}' cy='{:.1}' r='4' fill='#36c'/>",
            x(r.n as f64),
            y(r.cpu_pct)
        );
        s += &format!(
            "<text x='{:.1}' y='{:.1}'>{:.0}%</text>",
            x(r.n as f64) + 6.0,
            y(r.cpu_pct) - 6.0,
            r.cpu_pct
        );
        s += &format!(
            "<text x='{:.1}' y='{}' text-anchor='middle'>{}</text>",
            x(r.n as f64),
            h - pad + 16.0,
            r.n
        );
    }
    s += &format!("<text x='{}' y='{}' text-anchor='middle'>listeners on one relay (64 kbit/s Opus, 20 ms frames)</text>", w / 2.0, h - 10.0);
    s += &format!("<text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>relay CPU, % of one core</text>", h / 2.0, h / 2.0);
    s += "</svg>";
    s
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing special: run only as a bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ns: Vec<usize> = std::env::var("QUICAST_BENCH_N")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = std::env::var("QUICAST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fanout");
    std::fs::create_dir_all(&out).unwrap();
    let mut rows = Vec::new();
    for &n in &ns {
        let over = if webtransport() {
            "WebTransport"
        } else {
            "native QUIC"
        };
        eprintln!("fanout: {n} listeners over {over} for {secs} s ...");
        let r = run_one(n, secs, &out);
        eprintln!(
            "  cpu {:.1}%  loadgen {:.1}%  join ≈{:.0} µs  rss/listener {:.1} KiB  datagrams/listener/s {:.1}  floor {} ms  {}",
            r.cpu_pct, r.loadgen_pct, r.join_cpu_us, r.rss_per_listener_kib, r.datagrams, r.floor_ms, r.report
        );
        rows.push(r);
    }
    let mut md = String::from(if webtransport() {
        "Listeners over WebTransport (`QUICAST_BENCH_WEBTRANSPORT=1`).\n\n"
    } else {
        ""
    });
    md.push_str(
        "| listeners | connected | failed | relay CPU (% of 1 core) | loadgen CPU | relay CPU per join | datagrams / listener / s | relay RSS | RSS / listener | latency p50 / p99 ms | steady p50 / p99 ms | gaps | skips | join p99 ms | interval floor reached |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let v = &r.report;
        md += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | ≈{:.0} µs | {:.1} | {:.0} MiB | {:.1} KiB | {} / {} | {} / {} | {} | {} | {} | {} ms |\n",
            r.n,
            v["connected"],
            v["failed"],
            r.cpu_pct,
            r.loadgen_pct,
            r.join_cpu_us,
            r.datagrams,
            r.rss_mib,
            r.rss_per_listener_kib,
            v["latency_ms"]["p50"],
            v["latency_ms"]["p99"],
            v["steady_latency_ms"]["p50"],
            v["steady_latency_ms"]["p99"],
            v["gaps"],
            v["skips"],
            v["join_ms"]["p99"],
            r.floor_ms
        );
    }
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md).unwrap();
    std::fs::write(out.join("results.svg"), svg(&rows)).unwrap();
    println!("wrote {} and results.svg", out.join("results.md").display());
}
