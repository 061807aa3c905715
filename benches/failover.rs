//! Failover benchmark: N listeners (`quicast loadgen`) on an edge with two parents (mids
//! under one origin); the mid the stream comes from is killed with SIGKILL mid-stream.
//! Reports, with hedging on and off (interleaved runs): frames lost (must be 0), the time
//! the edge took to notice (kill to its "parent lost" log line), and the stall each
//! listener saw (its longest wait between two deliveries: p50/p99/max; the delivery
//! interval, 100 ms, is the floor; a control run, hedged with nothing killed, measures it).
//!
//!   cargo bench --bench failover                  # N = 1000, two rounds of on/off, 20 s
//!   QUICAST_BENCH_N=300 QUICAST_BENCH_ROUNDS=1 QUICAST_BENCH_SECS=12 cargo bench --bench failover
//!
//! The edge runs on core 0, everything else on core 1. Writes target/failover/results.md.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{cert, field, publisher, source, spawn_bin, Killed, Log, BIN};

const LOG: &str = "warn,quicast::server=info,quicast::node=info";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    /// "on", "off", or "control" (hedged, nothing killed: the stall's floor).
    hedge: &'static str,
    n: usize,
    connected: u64,
    lost: u64,
    skips: u64,
    detect_ms: Option<f64>,
    stall: (f64, f64, f64),
    moves: u64,
}

fn run_one(hedge: &'static str, n: usize, secs: u64, dir: &std::path::Path) -> Row {
    let src = source(dir);
    let (c, k, fp) = cert(dir);
    let node = |role: &str, ups: &[&str], pin: &str, extra: &[&str]| {
        let mut args = vec![role, "--listen", "127.0.0.1:0", "--cert", &c, "--key", &k];
        for u in ups {
            args.extend(["--upstream", u, "--fingerprint", &fp]);
        }
        args.extend_from_slice(extra);
        let mut p = spawn_bin(BIN, &args, Some(pin), LOG);
        let mut log = Log::of(&mut p);
        let addr = log.addr();
        (p, log, addr)
    };
    let (_origin, _olog, oaddr) = node("origin", &[], "1", &[]);
    let up = format!("quic://{oaddr}");
    let (mut mid_a, _alog, aaddr) = node("relay", &[&up], "1", &[]);
    let (mut mid_b, _blog, baddr) = node("relay", &[&up], "1", &[]);
    let maxc = (n + 1000).to_string();
    let (ua, ub) = (format!("quic://{aaddr}"), format!("quic://{baddr}"));
    let (_edge, mut elog, eaddr) = node(
        "relay",
        &[&ua, &ub],
        "0",
        &[
            "--hedge",
            if hedge == "off" { "off" } else { "on" },
            "--max-connections",
            &maxc,
        ],
    );
    let _publisher = publisher(&oaddr, "bench", &src, &fp, Some("1"));
    let ramp = (n as f64 / 2500.0).max(1.0);
    let mut loadgen = Killed(
        Command::new("taskset")
            .args(["-c", "1", BIN, "loadgen", &format!("quic://{eaddr}/bench")])
            .args([
                "--listeners",
                &n.to_string(),
                "--duration",
                &secs.to_string(),
            ])
            .args(["--ramp", &format!("{ramp}"), "--fingerprint", &fp, "--json"])
            .env("RUST_LOG", "error,quicast::cli::loadgen=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lglog = Log::of(&mut loadgen);
    let limit = Duration::from_secs_f64(ramp + secs as f64);
    if lglog.wait("every listener has joined", limit).is_none() {
        eprintln!("  (not every listener joined in time)");
    }
    // Mid-stream: a few seconds after the last join.
    std::thread::sleep(Duration::from_secs(3));
    let (_, line) = elog
        .wait("stream comes from", Duration::from_secs(5))
        .expect("the edge says where the stream comes from");
    let active = field(&line, "parents=[\"")
        .trim_end_matches(['"', ',', ']'])
        .to_string();
    let victim = if active == aaddr {
        &mut mid_a
    } else {
        &mut mid_b
    };
    assert!(
        active == aaddr || active == baddr,
        "active parent {active:?}"
    );
    let detect_ms = if hedge == "control" {
        None
    } else {
        victim.0.kill().unwrap();
        let killed = Instant::now();
        victim.0.wait().unwrap();
        elog.wait("parent lost", Duration::from_secs(30))
            .map(|(at, _)| (at - killed).as_secs_f64() * 1000.0)
    };
    let out = std::mem::replace(&mut loadgen.0, Command::new("true").spawn().unwrap());
    let out = out.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default();
    let f = |k: &str| r[k].as_u64().unwrap_or(0);
    let q = |k: &str| r["stall_ms"][k].as_f64().unwrap_or(f64::NAN);
    Row {
        hedge,
        n,
        connected: f("connected"),
        lost: f("gaps"),
        skips: f("skips"),
        detect_ms,
        stall: (q("p50"), q("p99"), q("max")),
        moves: f("moves"),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: only a real run
    // benchmarks.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_or("QUICAST_BENCH_N", 1000usize);
    let rounds = env_or("QUICAST_BENCH_ROUNDS", 2usize);
    let secs = env_or("QUICAST_BENCH_SECS", 20u64);
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for round in 0..rounds {
        for hedge in ["on", "off", "control"] {
            eprintln!("round {round}: {n} listeners, hedge {hedge}");
            let row = run_one(hedge, n, secs, dir.path());
            eprintln!(
                "  lost {} frames, detected in {:?} ms, stall p50/p99/max {:?} ms",
                row.lost, row.detect_ms, row.stall
            );
            rows.push(row);
        }
    }
    let mut md = String::from(
        "| hedge | listeners | connected | frames lost | skips | detect (ms) | stall p50 / p99 / max (ms) | moves |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {} |\n",
            r.hedge,
            r.n,
            r.connected,
            r.lost,
            r.skips,
            r.detect_ms.map_or("-".into(), |d| format!("{d:.0}")),
            r.stall.0,
            r.stall.1,
            r.stall.2,
            r.moves
        );
    }
    print!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/failover");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.md"), md).unwrap();
}
