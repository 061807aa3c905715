//! Real links: every node in a network namespace of its own, joined to the test's through a
//! veth pair, and every node-to-node link through a UDP forwarding proxy in the test that
//! adds delay, jitter and a little loss (this kernel has no `tc netem`). A mid's link is cut
//! mid-stream (the veth goes down: no goodbye, no ICMP, nothing); and, with the links
//! impaired but healthy, no relay fails over at all for a minute.
//!
//! Namespaces need root: these tests fail loudly without it (CI runs as root).
//!
//! ```text
//!                 publisher (test's namespace)
//!                      |
//!                   origin
//!                  /      \        each line: a proxy in the test's namespace
//!              mid-a      mid-b
//!                | \      / |
//!                |  \    /  |
//!              edge-1    edge-2
//!                |          |
//!            listener    listener  (test's namespace)
//! ```

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::media::{make_opus, packet_crcs};
use common::netns::*;
use common::procs::*;

/// One deployment at a time: each runs a dozen debug-build processes and their proxies on
/// this machine's two cores, and together they starved one another into failures that were
/// the machine's, not the tree's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Deployment {
    _net: Net,
    ns: Vec<Ns>,
    _rt: tokio::runtime::Runtime,
    origin: Node,
    mids: Vec<Node>,
    edges: Vec<Node>,
}

/// The tree above, every node-to-node link through an impaired proxy.
fn deploy(t: u8, c: &Certs, imp: Impair) -> Deployment {
    let (net, ns) = Net::new(t, &["origin", "mid-a", "mid-b", "edge-1", "edge-2"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = |n: &Node| n.addr.parse::<SocketAddr>().unwrap();
    let origin = node_in(&ns[0], c, &["origin", "--segment-ms", "500"]);
    let mut mids = Vec::new();
    for m in &ns[1..3] {
        let up = format!("quic://{}", proxy(&rt, &m.host, target(&origin), imp));
        let mut args = vec!["relay", "--fingerprint", &c.fp, "--upstream", &up];
        args.extend_from_slice(SLOW_BUILD);
        mids.push(node_in(m, c, &args));
    }
    let mut edges = Vec::new();
    for e in &ns[3..5] {
        let ups: Vec<String> = mids
            .iter()
            .map(|m| format!("quic://{}", proxy(&rt, &e.host, target(m), imp)))
            .collect();
        let mut args = vec![
            "relay",
            "--fingerprint",
            &c.fp,
            "--upstream",
            &ups[0],
            "--upstream",
            &ups[1],
        ];
        args.extend_from_slice(SLOW_BUILD);
        edges.push(node_in(e, c, &args));
    }
    Deployment {
        _net: net,
        ns,
        _rt: rt,
        origin,
        mids,
        edges,
    }
}

/// Which mid (0: mid-a, 1: mid-b) an edge takes the stream from: the edge knows its
/// parents by their proxies' addresses, listed in that order on its command line.
fn mid_behind(edge: &mut Node) -> usize {
    let from = parents_of(edge);
    // The edge's arguments name its parents in order: mid-a's proxy, then mid-b's.
    let args = std::fs::read_to_string(format!("/proc/{}/cmdline", edge.p.child.id())).unwrap();
    let parents: Vec<&str> = args
        .split('\0')
        .filter(|a| a.starts_with("quic://"))
        .map(|a| a.trim_start_matches("quic://"))
        .collect();
    parents.iter().position(|p| *p == from[0]).unwrap()
}

const LINK: Impair = Impair {
    delay: Duration::from_millis(15),
    jitter: Duration::from_millis(5),
    loss_ppm: 10_000,
};

#[test]
fn a_mids_links_cut_mid_stream_cost_no_frame() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let mut d = deploy(1, &c, LINK);
    let _pub = publish(&c, &[&d.origin], "talk", &src);
    let outs: Vec<_> = (0..2)
        .map(|i| work.path().join(format!("heard{i}.opus")))
        .collect();
    let mut ls: Vec<Proc> = (0..2)
        .map(|i| listen(&c, &[&d.edges[i]], "talk", &outs[i], 8))
        .collect();
    // The mid the first edge prefers for the stream. Each edge ranks its parents by its own
    // names for them (its proxies' addresses), so the other may prefer the other mid: it
    // hedges over both, holds a link to each, and loses this one all the same.
    let victim = mid_behind(&mut d.edges[0]);
    let _ = mid_behind(&mut d.edges[1]);
    std::thread::sleep(Duration::from_secs(3));
    // The cut: the victim's only link goes down, both ways, for good.
    ip(&["link", "set", &d.ns[1 + victim].host_if, "down"]);
    for e in &mut d.edges {
        e.p.wait_line("parent lost");
    }
    for (l, out) in ls.iter_mut().zip(&outs) {
        assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
        // Shown if the run is not whole: what the listener saw (moves, skips).
        eprintln!("listener: {}", l.log.join("\n"));
        assert_one_run(out, &src_crcs, 7 * 50);
    }
}

#[test]
fn a_minute_on_impaired_healthy_links_fails_over_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let mut d = deploy(2, &c, LINK);
    let _pub = publish(&c, &[&d.origin], "talk", &src);
    let outs: Vec<_> = (0..2)
        .map(|i| work.path().join(format!("heard{i}.opus")))
        .collect();
    let mut ls: Vec<Proc> = (0..2)
        .map(|i| listen(&c, &[&d.edges[i]], "talk", &outs[i], 60))
        .collect();
    for (l, out) in ls.iter_mut().zip(&outs) {
        assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
        // Shown if the run is not whole: what the listener saw (moves, skips).
        eprintln!("listener: {}", l.log.join("\n"));
        assert_one_run(out, &src_crcs, 59 * 50);
    }
    // Nobody lost a parent nor left one, and every relay took the stream once.
    for n in d.mids.iter_mut().chain(d.edges.iter_mut()) {
        while let Ok(l) = n.p.lines.try_recv() {
            n.p.log.push(l);
        }
        for bad in ["parent lost", "leaving parent", "moved to"] {
            assert!(
                !n.p.log.iter().any(|l| l.contains(bad)),
                "{bad}: {}",
                n.p.log.join("\n")
            );
        }
    }
}

/// The `connection ended` line of a listener's connection, as the origin logged it.
fn listener_ended(n: &mut Node) -> String {
    loop {
        let l = n.p.wait_line("connection ended");
        if l.contains("role=Listener") {
            return l;
        }
    }
}

#[test]
fn packets_grow_to_1452_where_the_path_carries_them_and_fall_back_without_a_gap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let (_net, ns) = Net::new(3, &["origin"]);
    let mut origin = node_in(&ns[0], &c, &["origin", "--segment-ms", "500"]);
    let _pub = publish(&c, &[&origin], "talk", &src);

    // A path that carries 1500-byte packets: one probe, and the connection's packets may be
    // 1452 bytes.
    let out = work.path().join("first.opus");
    let mut l = listen(&c, &[&origin], "talk", &out, 3);
    assert!(l.wait_exit().success());
    let ended = listener_ended(&mut origin);
    assert!(
        ended.contains("mtu=1452") && ended.contains("mtu_probes=1"),
        "{ended}"
    );

    // Mid-stream the path shrinks to 1280 bytes (both ends of the link): large packets
    // vanish (the origin's kernel refuses them, as a router would drop them). quinn's
    // black-hole detection falls back to 1200 bytes on the same connection (or, if it is
    // slower than the listener's silence timeout of 1.5 s, the listener moves to a new
    // connection, which starts at 1200 bytes and whose one probe fails, resuming where it
    // was). No frame is lost.
    let out = work.path().join("second.opus");
    let mut l = listen(&c, &[&origin], "talk", &out, 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Two seconds of audio in: the probe has been answered long since.
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 16_000 {
        assert!(std::time::Instant::now() < deadline, "no audio");
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["link", "set", "dev", &ns[0].host_if, "mtu", "1280"]);
    ip(&[
        "-n",
        &ns[0].name,
        "link",
        "set",
        "dev",
        &ns[0].peer_if,
        "mtu",
        "1280",
    ]);
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_one_run(&out, &src_crcs, 8 * 50);
    // Its last connection ended at 1200 bytes: fallen back, or begun there.
    let mut ended;
    loop {
        ended = listener_ended(&mut origin);
        if ended.contains("mtu=1200") {
            break;
        }
    }
    // It tried (a probe and its retries), and stayed at the size that gets through.
    assert!(!ended.contains("mtu_probes=0"), "{ended}");
}
