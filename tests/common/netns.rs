//! Network namespaces for the tests that need real links: a namespace per node joined to
//! the test's through a veth pair, and UDP forwarding proxies in the test's namespace that
//! carry (and may impair) the links between them. Namespaces need root.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::procs::*;

/// How a proxied link is impaired, both ways.
#[derive(Clone, Copy)]
pub struct Impair {
    pub delay: Duration,
    pub jitter: Duration,
    /// Packets lost, per million.
    pub loss_ppm: u64,
}

/// A small deterministic generator (xorshift): the proxies' loss and jitter.
struct Dice(AtomicU64);

impl Dice {
    fn roll(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x
    }
}

/// Sends `pkt` from `sock` to `to` after the link's delay, unless the link loses it.
fn impaired_send(
    rt: &tokio::runtime::Handle,
    sock: Arc<tokio::net::UdpSocket>,
    to: SocketAddr,
    pkt: Vec<u8>,
    imp: Impair,
    dice: &Dice,
) {
    if dice.roll() % 1_000_000 < imp.loss_ppm {
        return;
    }
    let jitter = imp.jitter.as_micros() as u64;
    let wait = imp.delay + Duration::from_micros(if jitter > 0 { dice.roll() % jitter } else { 0 });
    rt.spawn(async move {
        tokio::time::sleep(wait).await;
        // A link that is down (the target's veth) drops the packet: as a cut link does.
        let _ = sock.send_to(&pkt, to).await;
    });
}

/// A UDP forwarding proxy on `bind` (in the test's namespace) to `target`: one upstream
/// socket per client address, impaired both ways. Returns the address it listens on.
pub fn proxy(rt: &tokio::runtime::Runtime, bind: &str, target: SocketAddr, imp: Impair) -> String {
    proxy_at(rt, &format!("{bind}:0"), target, imp)
}

/// As `proxy`, listening on `bind` (an address and port).
pub fn proxy_at(
    rt: &tokio::runtime::Runtime,
    bind: &str,
    target: SocketAddr,
    imp: Impair,
) -> String {
    let std_sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    std_sock.set_nonblocking(true).unwrap();
    let addr = std_sock.local_addr().unwrap().to_string();
    let seed = std::process::id() as u64 ^ (std_sock.local_addr().unwrap().port() as u64) << 32;
    rt.spawn(async move {
        let h = tokio::runtime::Handle::current();
        let dice = Arc::new(Dice(AtomicU64::new(seed | 1)));
        let down = Arc::new(tokio::net::UdpSocket::from_std(std_sock).unwrap());
        let mut ups: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = down.recv_from(&mut buf).await else {
                continue;
            };
            let up = match ups.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap());
                    ups.insert(from, u.clone());
                    // The way back: the server's packets to this client.
                    let (u2, down2, dice2, h2) = (u.clone(), down.clone(), dice.clone(), h.clone());
                    h.spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match u2.recv_from(&mut buf).await {
                                Ok((n, _)) => impaired_send(
                                    &h2,
                                    down2.clone(),
                                    from,
                                    buf[..n].to_vec(),
                                    imp,
                                    &dice2,
                                ),
                                // An ICMP error from a cut link, reported on a later call.
                                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                        }
                    });
                    u
                }
            };
            impaired_send(&h, up, target, buf[..n].to_vec(), imp, &dice);
        }
    });
    addr
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces one test made, deleted (with their veth pairs) when it ends.
pub struct Net {
    names: Vec<String>,
    /// `/etc/netns/NAME` folders made for a namespace's own resolver configuration.
    etc: Vec<std::path::PathBuf>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for d in &self.etc {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One node's namespace: its veth's end in the test's namespace is `host` (10.T.N.1), its
/// own address `addr` (10.T.N.2).
pub struct Ns {
    pub name: String,
    pub host_if: String,
    /// Its veth's end inside the namespace.
    pub peer_if: String,
    pub host: String,
    pub addr: String,
}

impl Net {
    /// Namespaces `nodes` for test number `t` (its own 10.(200+t).0.0/16: tests run at once).
    pub fn new(t: u8, nodes: &[&str]) -> (Net, Vec<Ns>) {
        assert!(
            is_root(),
            "the network-namespace tests need root (ip netns, veth): run them as root"
        );
        let pid = std::process::id() % 100_000;
        let mut net = Net {
            names: Vec::new(),
            etc: Vec::new(),
        };
        let mut all = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("qc{pid}-{t}-{node}");
            let (host_if, peer_if) = (format!("q{pid}{t}{i}h"), format!("q{pid}{t}{i}n"));
            let (host, addr) = (
                format!("10.{}.{}.1", 200 + t, i + 1),
                format!("10.{}.{}.2", 200 + t, i + 1),
            );
            ip(&["netns", "add", &name]);
            net.names.push(name.clone());
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ]);
            ip(&["link", "set", &peer_if, "netns", &name]);
            ip(&["addr", "add", &format!("{host}/24"), "dev", &host_if]);
            ip(&["link", "set", &host_if, "up"]);
            let inside = |args: &[&str]| {
                let mut a = vec!["-n", name.as_str()];
                a.extend_from_slice(args);
                ip(&a);
            };
            inside(&["link", "set", "lo", "up"]);
            inside(&["addr", "add", &format!("{addr}/24"), "dev", &peer_if]);
            inside(&["link", "set", &peer_if, "up"]);
            inside(&["route", "add", "default", "via", &host]);
            all.push(Ns {
                name,
                host_if,
                peer_if,
                host,
                addr,
            });
        }
        (net, all)
    }
}

impl Net {
    /// Gives namespace `ns` its own resolver configuration: `ip netns exec` mounts
    /// `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf` for what it runs there.
    pub fn resolv_conf(&mut self, ns: &Ns, nameserver: &str) {
        let dir = std::path::Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        self.etc.push(dir.clone());
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
    }
}

pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `quicast ARGS` in namespace `ns`, serving QUIC on its address.
pub fn node_in(ns: &Ns, c: &Certs, args: &[&str]) -> Node {
    let listen = format!("{}:4433", ns.addr);
    let mut all = vec!["netns", "exec", ns.name.as_str(), BIN];
    all.extend_from_slice(args);
    all.extend([
        "--listen",
        &listen,
        "--cert",
        c.cert.to_str().unwrap(),
        "--key",
        c.key.to_str().unwrap(),
    ]);
    let mut p = Proc::spawn_program("ip", &all);
    let addr = p.addr();
    Node { p, addr }
}

/// `cargo test` runs debug builds of the nodes (and of the proxies, in this process) on a
/// loaded CI machine: there the default 300 ms parent timeout once saw a debug node or
/// proxy stall past it (a false failover in the healthy minute). Debug builds get 600 ms;
/// release builds (`cargo test --release`) run the default, which the claim is about.
pub const SLOW_BUILD: &[&str] = if cfg!(debug_assertions) {
    &["--parent-timeout-ms", "600"]
} else {
    &[]
};
