//! Separate processes: the `quicast` binary as operators run it, its log watched line by line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_quicast");

/// A child process killed when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process whose stderr (the log) is watched line by line.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_program(BIN, args)
    }

    /// `program` with `args` (the binary run through a wrapper such as `prlimit`).
    pub fn spawn_program(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,quicast::node=debug,quicast::egress=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quicast");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle` (the event), failing after a generous limit.
    pub fn wait_line(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until a line containing each of `needles` has been seen, in any order.
    pub fn wait_lines(&mut self, needles: &[&str]) {
        let seen = |log: &[String], n: &str| log.iter().any(|l| l.contains(n));
        while let Some(missing) = needles.iter().find(|n| !seen(&self.log, n)) {
            self.wait_line(missing);
        }
    }

    pub fn addr(&mut self) -> String {
        let l = self.wait_line("listening (QUIC)");
        if l.starts_with('{') {
            // --log-format json
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            return v["fields"]["addr"].as_str().unwrap().to_string();
        }
        let a = l
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        a.to_string()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            // Drain the log so the child never blocks on a full pipe.
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.log.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Its stderr is closed: it is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
            }
        }
        panic!("process did not exit; log:\n{}", self.log.join("\n"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts `got` is a contiguous run of `src`, at least `min` packets long; returns where it starts.
pub fn assert_contiguous_run<T: PartialEq + std::fmt::Debug>(
    got: &[T],
    src: &[T],
    min: usize,
) -> usize {
    assert!(
        got.len() >= min,
        "only {} packets received, expected at least {min}",
        got.len()
    );
    let start = (0..src.len()).find(|&i| src[i..].starts_with(got));
    start.unwrap_or_else(|| {
        // Where does the longest run that matches break, and how?
        let (at, len) = (0..src.len())
            .map(|i| {
                let n = got.iter().zip(&src[i..]).take_while(|(a, b)| a == b).count();
                (i, n)
            })
            .max_by_key(|&(_, n)| n)
            .unwrap_or((0, 0));
        let next = got.get(len);
        let found_later = next.and_then(|p| src[at + len..].iter().position(|q| q == p));
        panic!(
            "received packets are not a contiguous run of the source's: {} packets, the first {len} \
             match the source from packet {at}; packet {len} is {next:?}, which the source has \
             {found_later:?} packets further on (Some(k): k packets missing; None: a packet from elsewhere)",
            got.len()
        )
    })
}

pub struct Certs {
    pub _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fp: String,
}

/// A CA, and a certificate it signed for 127.0.0.1 and localhost (the nodes' `--cert`):
/// the nodes' certificates, the CA's PEM file, and its key's SPKI SHA-256 in base64.
#[allow(dead_code)]
pub fn ca_signed(dir: &Path) -> (Certs, PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "quicast test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "quicast test node");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let (cert, key, ca_pem) = (
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let c = Certs {
        _dir: tempfile::tempdir().unwrap(),
        fp: quicast::sha256_hex(leaf.der()),
        cert,
        key,
    };
    let spki = ring::digest::digest(&ring::digest::SHA256, &ca_key.public_key_der());
    use base64::Engine as _;
    let spki = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    (c, ca_pem, spki)
}

pub fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let fp = quicast::sha256_hex(ck.cert.der());
    Certs {
        _dir: dir,
        cert,
        key,
        fp,
    }
}

/// An origin and two relays in a chain, as separate processes.
pub struct Tree {
    pub origin: Proc,
    pub _r1: Proc,
    pub _r2: Proc,
    pub origin_addr: String,
    pub r2_addr: String,
    pub c: Certs,
}

pub fn tree() -> Tree {
    let c = certs();
    let (cert, key) = (c.cert.to_str().unwrap(), c.key.to_str().unwrap());
    let mut origin = Proc::spawn(&[
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        cert,
        "--key",
        key,
        "--publish-token",
        "tok",
        "--segment-ms",
        "500",
    ]);
    let origin_addr = origin.addr();
    // A relay whose parent is at `parent`, trusting it by the shared certificate's fingerprint.
    let relay = |parent: &str| {
        let up = format!("quic://{parent}");
        Proc::spawn(&[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--fingerprint",
            &c.fp,
            "--cert",
            cert,
            "--key",
            key,
        ])
    };
    let mut r1 = relay(&origin_addr);
    let mut r2 = relay(&r1.addr());
    let r2_addr = r2.addr();
    Tree {
        origin,
        _r1: r1,
        _r2: r2,
        origin_addr,
        r2_addr,
        c,
    }
}

/// `quicast publish --loop` of `src` to `stream` on the tree's origin, once it is publishing.
pub fn publish_loop(t: &Tree, stream: &str, src: &Path) -> Proc {
    let url = format!("quic://{}/{stream}", t.origin_addr);
    let mut p = Proc::spawn(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--token",
        "tok",
        "--fingerprint",
        &t.c.fp,
    ]);
    p.wait_line("publishing");
    p
}

/// A node of a test tree, as a separate process: its process and QUIC address.
pub struct Node {
    pub p: Proc,
    pub addr: String,
}

impl Node {
    /// Starts `quicast ARGS` on a loopback port with the shared certificate.
    pub fn spawn(c: &Certs, args: &[&str]) -> Node {
        Node::spawn_on(c, "127.0.0.1:0", args)
    }

    /// Starts `quicast ARGS` serving QUIC on `listen` (a node restarted on its address).
    pub fn spawn_on(c: &Certs, listen: &str, args: &[&str]) -> Node {
        let mut all = args.to_vec();
        all.extend([
            "--listen",
            listen,
            "--cert",
            c.cert.to_str().unwrap(),
            "--key",
            c.key.to_str().unwrap(),
        ]);
        let mut p = Proc::spawn(&all);
        let addr = p.addr();
        Node { p, addr }
    }

    /// The address in the node's `listening (WHAT)` line, which may be in its log already
    /// (`what`: `admin`, `HTTP`).
    pub fn logged_addr(&mut self, what: &str) -> String {
        let needle = format!("listening ({what})");
        self.p.wait_lines(&[&needle]);
        let l = self.p.log.iter().find(|l| l.contains(&needle)).unwrap();
        l.split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    /// The HTTP address of a node started with `--http 127.0.0.1:0`.
    pub fn http_addr(&mut self) -> String {
        self.logged_addr("HTTP")
    }

    pub fn url(&self, stream: &str) -> String {
        format!("quic://{}/{stream}", self.addr)
    }

    /// SIGTERM: the operator's polite stop (drain).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGKILL: the machine dies. Returns once the process is gone.
    pub fn kill9(&mut self) {
        self.p.child.kill().unwrap();
        self.p.child.wait().unwrap();
    }
}

/// `quicast origin` with 500 ms segments.
pub fn origin_node(c: &Certs, extra: &[&str]) -> Node {
    let mut args = vec!["origin", "--segment-ms", "500"];
    args.extend_from_slice(extra);
    Node::spawn(c, &args)
}

/// `quicast relay` under `parents`, in that order.
pub fn relay_node(c: &Certs, parents: &[&Node], extra: &[&str]) -> Node {
    let ups: Vec<String> = parents
        .iter()
        .map(|p| format!("quic://{}", p.addr))
        .collect();
    let mut args = vec!["relay", "--fingerprint", &c.fp];
    for u in &ups {
        args.extend(["--upstream", u.as_str()]);
    }
    args.extend_from_slice(extra);
    Node::spawn(c, &args)
}

/// origin → mid → edge as separate processes, the origin and the edge serving HTTP, the mid
/// none: `http_tree` builds it.
pub struct HttpTree {
    pub c: Certs,
    pub origin: Node,
    pub origin_http: String,
    pub mid: Node,
    pub edge: Node,
    pub edge_http: String,
}

/// `quicast origin --http 127.0.0.1:0 ORIGIN... BOTH...`, `quicast relay` under it (no
/// flags of its own) and `quicast relay --http 127.0.0.1:0 BOTH...` under that, all with one
/// new certificate; returned once each listens on QUIC and the origin and the edge on HTTP
/// (at the addresses in `origin_http` and `edge_http`). `origin`: flags for the origin alone
/// (its segments are of its default length, a second, unless these say otherwise); `both`:
/// flags for the origin and the edge.
pub fn http_tree(origin: &[&str], both: &[&str]) -> HttpTree {
    let c = certs();
    let mut args = vec!["origin", "--http", "127.0.0.1:0"];
    args.extend_from_slice(origin);
    args.extend_from_slice(both);
    let mut origin = Node::spawn(&c, &args);
    let origin_http = origin.http_addr();
    let mid = relay_node(&c, &[&origin], &[]);
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(both);
    let mut edge = relay_node(&c, &[&mid], &args);
    let edge_http = edge.http_addr();
    HttpTree {
        c,
        origin,
        origin_http,
        mid,
        edge,
        edge_http,
    }
}

/// Every "stream comes from" line a relay logged so far, in order: (stream, parents).
pub fn parent_choices(log: &[String]) -> Vec<(String, Vec<String>)> {
    log.iter()
        .filter(|l| l.contains("stream comes from parents="))
        .map(|l| {
            let path = l.split("path=").nth(1).unwrap();
            let path = path.split(['}', ' ']).next().unwrap().to_string();
            let list = l
                .split("parents=[")
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap();
            let parents = list
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect();
            (path, parents)
        })
        .collect()
}

/// `quicast publish --loop` of `src` to every origin of `to`, once it is publishing.
pub fn publish(c: &Certs, to: &[&Node], stream: &str, src: &Path) -> Proc {
    let mut args = vec!["publish".to_string()];
    args.extend(to.iter().map(|n| n.url(stream)));
    args.extend([
        "--input".into(),
        src.to_str().unwrap().into(),
        "--loop".into(),
        "--fingerprint".into(),
        c.fp.clone(),
    ]);
    let mut p = Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    p.wait_line("publishing");
    p
}

/// `quicast listen` of `stream` through `nodes`, for `secs`, into `out`.
pub fn listen(c: &Certs, nodes: &[&Node], stream: &str, out: &Path, secs: u32) -> Proc {
    let mut args = vec!["listen".to_string()];
    args.extend(nodes.iter().map(|n| n.url(stream)));
    args.extend([
        "--fingerprint".into(),
        c.fp.clone(),
        "--output".into(),
        out.to_str().unwrap().into(),
        "--duration".into(),
        secs.to_string(),
    ]);
    Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits for the edge to say (first) which parents the stream comes from; returns them
/// (HOST:PORT). The line may already be in the log.
pub fn parents_of(edge: &mut Node) -> Vec<String> {
    edge.p.wait_lines(&["stream comes from"]);
    parent_choices(&edge.p.log).remove(0).1
}

/// The listener's output decodes cleanly and is one contiguous run of the looped source,
/// at least `min` packets long (packets of 20 ms).
pub fn assert_one_run(out: &Path, src_crcs: &[(String, String)], min: usize) {
    super::media::assert_decodes_cleanly(out);
    let got = super::media::packet_crcs(out);
    let looped: Vec<_> = src_crcs
        .iter()
        .cycle()
        .take(src_crcs.len() * (got.len() / src_crcs.len().max(1) + 2))
        .cloned()
        .collect();
    assert_contiguous_run(&got, &looped, min);
}
