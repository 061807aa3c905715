//! Parents found by DNS, with a real DNS server: Debian's dnsmasq, in a network namespace of
//! its own, serves `mids.test` from a hosts file it reads again on SIGHUP (TTL 1 s). An edge
//! in another namespace, whose `/etc/netns/NAME/resolv.conf` points at that server, has one
//! upstream, `quic://mids.test:4433`, and takes each address the name has as a parent.
//! Adding a third mid to the records moves the streams that hash to it, and removing one
//! moves its streams off it: every listener's audio stays one run, no frame lost, on an
//! edge that hedges (each stream from two parents) and on one that does not.
//!
//! Namespaces need root; without it the test says so and does nothing.
//!
//! ```text
//!   publishers ─▶ origin ─▶ mid-a  mid-b  mid-c      dnsmasq (mids.test: a, b; then a, b, c;
//!                              \     |     /                   then b, c)
//!                                  edge ─▶ listeners
//! ```
//! Every node-to-node link (and the edge's DNS queries) goes through a proxy in the test's
//! namespace: a mid's parent address in the records is its proxy's, `10.204.M.1:4433`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::media::{make_opus, packet_crcs};
use common::netns::*;
use common::procs::*;

const NONE: Impair = Impair {
    delay: Duration::ZERO,
    jitter: Duration::ZERO,
    loss_ppm: 0,
};

/// A CA, and a certificate it signed for `mids.test` only: the edge trusts its parents by
/// the CA, so a handshake with an address of the name is verified against the name.
fn mid_certs() -> (Certs, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["mids.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file, ca_file) = (
        dir.path().join("mid.pem"),
        dir.path().join("mid-key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let fp = quicast::sha256_hex(leaf.der());
    (
        Certs {
            _dir: dir,
            cert,
            key: key_file,
            fp,
        },
        ca_file,
    )
}

/// dnsmasq in namespace `ns`, answering for the names in `hosts` (re-read on SIGHUP) with a
/// TTL of one second, and nothing else.
fn dnsmasq(ns: &Ns, hosts: &Path) -> Proc {
    let has = Command::new("sh")
        .args(["-c", "command -v dnsmasq || test -x /usr/sbin/dnsmasq"])
        .output()
        .unwrap();
    assert!(
        has.status.success(),
        "dnsmasq is needed (Debian's dnsmasq package; .ci/run installs it)"
    );
    let listen = format!("--listen-address={}", ns.addr);
    let hosts = format!("--addn-hosts={}", hosts.display());
    let mut p = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "dnsmasq",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--log-facility=-",
            "--user=root",
            "--pid-file",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            &hosts,
            "--local-ttl=1",
            "--log-queries",
        ],
    );
    p.wait_line("started, version");
    p
}

/// Writes the records (whole, then renamed into place) and tells dnsmasq to read them.
fn set_records(dns: &Proc, hosts: &Path, addrs: &[&str]) {
    let tmp = hosts.with_extension("new");
    let text: String = addrs.iter().map(|a| format!("{a} mids.test\n")).collect();
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, hosts).unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &dns.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `GET http://ADDR/PATH`: (status, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.trim_end().to_string())
}

/// Each stream's parents on the edge now, as its `/streams` says (in the stream's order).
fn parents_now(http: &str) -> BTreeMap<String, Vec<String>> {
    let (code, body) = get(http, "/streams");
    if code != "200" {
        return BTreeMap::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let parents = s["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            (s["name"].as_str().unwrap_or_default().to_string(), parents)
        })
        .collect()
}

/// A series' value in the node's `/metrics`.
fn metric(admin: &str, name: &str) -> Option<f64> {
    let (_, body) = get(admin, "/metrics");
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// What an edge should take each stream from with `mids` as its parents: the first `k` of
/// the stream's rendezvous order (two when hedged), as every relay computes it.
fn expected(mids: &[&str], streams: &[String], k: usize) -> BTreeMap<String, Vec<String>> {
    let named: Vec<(&str, u32)> = mids.iter().map(|m| (*m, 1)).collect();
    streams
        .iter()
        .map(|s| {
            let order = quicast::node::hash_order(&named, s);
            (
                s.clone(),
                order.iter().take(k).map(|i| mids[*i].to_string()).collect(),
            )
        })
        .collect()
}

/// Polls the edge until every stream comes from `want`, within a generous bound.
fn await_parents(edge: &mut Node, http: &str, want: &BTreeMap<String, Vec<String>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = parents_now(http);
        if want.iter().all(|(s, p)| now.get(s) == Some(p)) {
            return;
        }
        if Instant::now() > deadline {
            drain(edge);
            panic!(
                "{what}: the edge's streams come from {now:?}, expected {want:?}; edge log:\n{}",
                edge.p.log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Moves what the node logged so far into its `log`.
fn drain(n: &mut Node) {
    while let Ok(l) = n.p.lines.try_recv() {
        n.p.log.push(l);
    }
}

/// Asserts that from log line `from` on, every stream of `streams` was shown coming first
/// from `first[stream]`: a stream whose first choice did not change never moved.
fn assert_stayed(log: &[String], from: usize, first: &BTreeMap<String, String>, what: &str) {
    for (path, parents) in parent_choices(&log[from..]) {
        if let Some(f) = first.get(&path) {
            assert_eq!(
                parents.first(),
                Some(f),
                "{what}: {path} should have stayed on {f}, yet came from {parents:?}"
            );
        }
    }
}

#[test]
fn a_tier_scaled_by_dns_moves_only_the_streams_it_must_without_a_gap() {
    if !is_root() {
        eprintln!("skipped: the DNS test needs root (network namespaces); CI runs it as root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let (mc, ca) = mid_certs();
    let (mut net, ns) = Net::new(
        4,
        &["dns", "origin", "mid-a", "mid-b", "mid-c", "edge", "solo"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = |n: &Node| n.addr.parse::<SocketAddr>().unwrap();

    // The name server, reached by the edge through a proxy on the test's side of its link.
    let hosts = work.path().join("mids.hosts");
    std::fs::write(&hosts, "").unwrap();
    let mut dns = dnsmasq(&ns[0], &hosts);
    proxy_at(
        &rt,
        &format!("{}:53", ns[0].host),
        format!("{}:53", ns[0].addr).parse().unwrap(),
        NONE,
    );
    net.resolv_conf(&ns[5], &ns[0].host);
    net.resolv_conf(&ns[6], &ns[0].host);

    let origin = node_in(&ns[1], &c, &["origin", "--segment-ms", "500"]);
    // Each mid: its parent the origin (by a proxy), and the address the records give for it
    // (its proxy on 10.204.M.1:4433).
    let mut mids = Vec::new();
    let mut mid_names = Vec::new();
    for m in &ns[2..5] {
        let up = format!("quic://{}", proxy(&rt, &m.host, target(&origin), NONE));
        let mut args = vec!["relay", "--fingerprint", &c.fp, "--upstream", &up];
        args.extend_from_slice(SLOW_BUILD);
        let mid = node_in(m, &mc, &args);
        let name = proxy_at(&rt, &format!("{}:4433", m.host), target(&mid), NONE);
        mid_names.push(name);
        mids.push(mid);
    }
    let (a, b, cc) = (
        mid_names[0].as_str(),
        mid_names[1].as_str(),
        mid_names[2].as_str(),
    );
    let host_of = |n: &str| n.split(':').next().unwrap().to_string();
    set_records(&dns, &hosts, &[&host_of(a), &host_of(b)]);

    // Two edges with the one upstream: one hedged (the default: each stream from its first
    // two parents), one not (`--hedge off`: a stream moves by starting its new leg and
    // stopping the old once the new one has caught up).
    let ca_s = ca.to_str().unwrap().to_string();
    let edge_in = |e: &Ns, extra: &[&str]| {
        let (http, admin) = (format!("{}:8000", e.addr), format!("{}:9100", e.addr));
        let mut args = vec![
            "relay",
            "--ca",
            &ca_s,
            "--upstream",
            "quic://mids.test:4433",
            "--http",
            &http,
            "--admin",
            &admin,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(SLOW_BUILD);
        let mut n = node_in(e, &c, &args);
        n.p.wait_lines(&["parent's name resolved"]);
        (n, http, admin)
    };
    let (mut edge, http, admin) = edge_in(&ns[5], &[]);
    let (mut solo, solo_http, solo_admin) = edge_in(&ns[6], &["--hedge", "off"]);

    // Streams chosen so that each change moves some and leaves others: two that hash first
    // to mid-c, two first to mid-a (of the three), one first to mid-b.
    let mut streams: Vec<String> = Vec::new();
    let mut taken = [0usize; 3];
    let three = [a, b, cc];
    for i in 0..1000 {
        let s = format!("s{i}");
        let named: Vec<(&str, u32)> = three.iter().map(|m| (*m, 1)).collect();
        let top = quicast::node::hash_order(&named, &s)[0];
        let quota = [2, 1, 2][top];
        if taken[top] < quota {
            taken[top] += 1;
            streams.push(s);
        }
        if taken == [2, 1, 2] {
            break;
        }
    }
    assert_eq!(streams.len(), 5);

    let _pubs: Vec<Proc> = streams
        .iter()
        .map(|s| publish(&c, &[&origin], s, &src))
        .collect();
    const SECS: u32 = 40;
    let outs: Vec<_> = streams
        .iter()
        .map(|s| work.path().join(format!("{s}.opus")))
        .collect();
    let solo_outs: Vec<_> = streams
        .iter()
        .map(|s| work.path().join(format!("{s}-solo.opus")))
        .collect();
    let mut ls: Vec<Proc> = streams
        .iter()
        .zip(&outs)
        .map(|(s, out)| listen(&c, &[&edge], s, out, SECS))
        .chain(
            streams
                .iter()
                .zip(&solo_outs)
                .map(|(s, out)| listen(&c, &[&solo], s, out, SECS)),
        )
        .collect();

    // Two mids in the records: each stream from its two, in its order.
    await_parents(
        &mut edge,
        &http,
        &expected(&[a, b], &streams, 2),
        "mids a, b",
    );
    await_parents(
        &mut solo,
        &solo_http,
        &expected(&[a, b], &streams, 1),
        "mids a, b",
    );
    assert_eq!(metric(&admin, "quicast_parents"), Some(2.0));

    // A third joins: the streams that rank it first move to it; the others keep their first.
    drain(&mut edge);
    drain(&mut solo);
    let (mark, solo_mark) = (edge.p.log.len(), solo.p.log.len());
    let before = expected(&[a, b], &streams, 2);
    set_records(&dns, &hosts, &[&host_of(a), &host_of(b), &host_of(cc)]);
    let with_c = expected(&[a, b, cc], &streams, 2);
    await_parents(&mut edge, &http, &with_c, "mid-c added");
    await_parents(
        &mut solo,
        &solo_http,
        &expected(&[a, b, cc], &streams, 1),
        "mid-c added, not hedged",
    );
    assert_eq!(metric(&admin, "quicast_parents"), Some(3.0));
    assert_eq!(metric(&solo_admin, "quicast_parents"), Some(3.0));
    let moved: Vec<&String> = streams
        .iter()
        .filter(|s| with_c[*s][0] != before[*s][0])
        .collect();
    assert!(
        moved.iter().all(|s| with_c[*s][0] == cc) && moved.len() == 2,
        "the streams that move are those that hash first to mid-c: {moved:?}"
    );
    drain(&mut edge);
    drain(&mut solo);
    let stay: BTreeMap<String, String> = streams
        .iter()
        .filter(|s| !moved.contains(s))
        .map(|s| (s.clone(), before[s][0].clone()))
        .collect();
    assert_stayed(&edge.p.log, mark, &stay, "mid-c added");
    assert_stayed(&solo.p.log, solo_mark, &stay, "mid-c added, not hedged");

    // mid-a leaves the records (a graceful scale-down: it still runs): its streams move to
    // their next choice; the others keep their first.
    let (mark, solo_mark) = (edge.p.log.len(), solo.p.log.len());
    set_records(&dns, &hosts, &[&host_of(b), &host_of(cc)]);
    let without_a = expected(&[b, cc], &streams, 2);
    await_parents(&mut edge, &http, &without_a, "mid-a removed");
    await_parents(
        &mut solo,
        &solo_http,
        &expected(&[b, cc], &streams, 1),
        "mid-a removed, not hedged",
    );
    assert_eq!(metric(&admin, "quicast_parents"), Some(2.0));
    let off_a: Vec<&String> = streams.iter().filter(|s| with_c[*s][0] == a).collect();
    assert_eq!(off_a.len(), 2);
    for n in [&mut edge, &mut solo] {
        n.p.wait_line("every stream left the parent that left the set: link closed");
        drain(n);
    }
    let stay: BTreeMap<String, String> = streams
        .iter()
        .filter(|s| !off_a.contains(s))
        .map(|s| (s.clone(), with_c[s][0].clone()))
        .collect();
    assert_stayed(&edge.p.log, mark, &stay, "mid-a removed");
    assert_stayed(&solo.p.log, solo_mark, &stay, "mid-a removed, not hedged");

    // The name server goes away: resolutions fail, are counted, and the parents stay.
    dns.child.kill().unwrap();
    dns.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&admin, "quicast_upstream_resolve_failures_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no resolution failure counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        parents_now(&http),
        without_a,
        "the last good parents are kept"
    );
    assert_eq!(metric(&admin, "quicast_parents"), Some(2.0));

    // The moves happened while every listener listened (else this proves nothing).
    for l in &mut ls {
        assert!(
            l.child.try_wait().unwrap().is_none(),
            "a listener ended before the moves were done: make SECS longer"
        );
    }
    for (l, out) in ls.iter_mut().zip(outs.iter().chain(&solo_outs)) {
        assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
        eprintln!("listener: {}", l.log.join("\n"));
        assert_one_run(out, &src_crcs, (SECS as usize - 1) * 50);
    }
}

/// A relay whose parent's name has no address is not ready, says why, and counts the
/// failed resolutions.
#[test]
fn a_name_without_addresses_is_no_parent_reachable() {
    if !is_root() {
        eprintln!("skipped: the DNS test needs root (network namespaces); CI runs it as root");
        return;
    }
    let c = certs();
    let work = tempfile::tempdir().unwrap();
    let (mut net, ns) = Net::new(5, &["dns", "edge"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hosts = work.path().join("mids.hosts");
    std::fs::write(&hosts, "").unwrap();
    let _dns = dnsmasq(&ns[0], &hosts);
    proxy_at(
        &rt,
        &format!("{}:53", ns[0].host),
        format!("{}:53", ns[0].addr).parse().unwrap(),
        NONE,
    );
    net.resolv_conf(&ns[1], &ns[0].host);
    let admin = format!("{}:9100", ns[1].addr);
    let _edge = node_in(
        &ns[1],
        &c,
        &[
            "relay",
            "--fingerprint",
            &c.fp,
            "--upstream",
            "quic://mids.test:4433",
            "--admin",
            &admin,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&admin, "quicast_upstream_resolve_failures_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no resolution failure counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        get(&admin, "/readyz"),
        ("503".into(), "no parent reachable (0 of 1)".into())
    );
}
