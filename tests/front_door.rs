//! One request must not shut the door: what a stranger sends to a node's HTTP, admin and
//! QUIC ports costs only that stranger. Each test runs the node as operators do (its own
//! process) and checks what everyone who comes next gets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::media::{ffmpeg, make_opus, packet_crcs};
use common::procs::*;

/// Sends `req` on a fresh connection and returns what came back before the node closed it
/// (or a few seconds passed).
fn raw(addr: &str, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req);
    // Half-closed: the node answers what it was sent, then sees the end, and closes (a
    // kept-alive connection would otherwise be read until the timeout).
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a response.
fn status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// curl of `url`: (status, body), within `secs` seconds.
fn curl(url: &str, secs: u32) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            &secs.to_string(),
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    let mut body = out.stdout;
    let at = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[at + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(at);
    (code, body)
}

/// A series of the node's `/metrics` (the sum of its labelled values).
fn metric(admin: &str, name: &str) -> f64 {
    let (code, body) = curl(&format!("http://{admin}/metrics"), 10);
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` until `name` satisfies `ok` (an event the node reaches by itself).
fn wait_metric(admin: &str, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(admin, name);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < until, "{name} stayed at {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Takes the log lines a process has written so far (until it is quiet for half a second).
fn drain_log(p: &mut Proc) {
    while let Ok(l) = p.lines.recv_timeout(Duration::from_millis(500)) {
        p.log.push(l);
    }
}

/// Lines at INFO or above that contain `what` (the tests' processes also log at DEBUG,
/// where the lines held back go).
fn said(p: &Proc, what: &str) -> u64 {
    p.log
        .iter()
        .filter(|l| l.contains(what) && (l.contains(" INFO ") || l.contains(" WARN ")))
        .count() as u64
}

/// An origin process with HTTP and admin ports and a source password, and a looped
/// publisher on `live`.
struct Origin {
    _work: tempfile::TempDir,
    c: Certs,
    node: Node,
    http: String,
    admin: String,
    src: std::path::PathBuf,
    _publisher: Proc,
}

fn origin_with(extra: &[&str]) -> Origin {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 4);
    let c = certs();
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--source-password",
        "hunter22",
    ];
    args.extend_from_slice(extra);
    let mut node = origin_node(&c, &args);
    let http = node.http_addr();
    let admin = node.logged_addr("admin");
    let publisher = publish(&c, &[&node], "live", &src);
    Origin {
        _work: work,
        c,
        node,
        http,
        admin,
        src,
        _publisher: publisher,
    }
}

/// A new QUIC listener and a new HTTP listener both hear `live`.
fn newcomers_hear_audio(o: &Origin) {
    let out = o._work.path().join("quic.opus");
    let mut l = listen(&o.c, &[&o.node], "live", &out, 2);
    assert!(
        l.wait_exit().success(),
        "quicast listen: {}",
        l.log.join("\n")
    );
    assert_one_run(&out, &packet_crcs(&o.src), 40);
    let (code, body) = curl(&format!("http://{}/live.ogg", o.http), 3);
    assert_eq!(code, 200);
    let ogg = o._work.path().join("http.ogg");
    std::fs::write(&ogg, body).unwrap();
    assert!(
        packet_crcs(&ogg).len() >= 40,
        "the HTTP listener heard too little"
    );
}

#[test]
fn no_request_line_header_or_path_shuts_the_door() {
    // A small connection limit: before the fix, each of these requests that panicked the
    // router leaked one count of it, and 64 of them refused every newcomer for good.
    let o = origin_with(&["--max-connections", "64"]);
    let hostile: &[&[u8]] = &[
        // The authority form outside CONNECT (the request that panicked).
        b"PUT example.com:80 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT http://example.com HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"SOURCE http://x HTTP/1.0\r\n\r\n",
        b"HEAD http://x/.ogg HTTP/1.1\r\n\r\n",
        b"GET /.ogg?latency=low HTTP/1.1\r\n\r\n",
        b"GET /a//b.m3u8?_HLS_msn=99999999999999999999 HTTP/1.1\r\n\r\n",
        b"GET /live.hls/1/999999999999999999999.0.m4s HTTP/1.1\r\n\r\n",
        b"GET /live.hls//init.mp4 HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"PUT /live HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PUT /live HTTP/1.1\r\nAuthorization: Basic \xff\xfe\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"DELETE /live HTTP/1.1\r\n\r\n",
        b"GET /streams HTTP/1.1\r\nX: \x01\x02\r\n\r\n",
    ];
    for round in 0..4 {
        for req in hostile {
            let resp = raw(&o.http, req);
            // Every one gets an answer (or a close), never a hang; none is a 5xx but the
            // refusal of a connection the node cannot take.
            assert!(
                status(&resp) < 500 || status(&resp) == 501,
                "round {round}: {req:?} got {resp:?}"
            );
        }
    }
    // Every connection's count is given back.
    wait_metric(&o.admin, "quicast_http_connections", |v| v == 0.0);
    newcomers_hear_audio(&o);
    let (code, body) = curl(&format!("http://{}/readyz", o.admin), 10);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim()),
        (200, "ready")
    );
}

/// A source PUT from `from` with `password`: the first line of the node's answer.
fn source_try(http: &str, from: &str, password: &str) -> String {
    use base64::Engine as _;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&from.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&http.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("source:{password}"));
    let req = format!(
        "PUT /guessed HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: audio/ogg\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(1) => got.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).trim().to_string()
}

#[test]
fn a_password_guesser_is_slowed_and_costs_the_log_a_few_lines() {
    let mut o = origin_with(&[]);
    let started = Instant::now();
    let answers: Vec<String> = (0..200)
        .map(|_| source_try(&o.http, "127.0.0.1:0", "wrong"))
        .collect();
    let secs = started.elapsed().as_secs() + 1;
    // Five guesses a minute from one address; after that, told to come back later, its
    // password not even checked.
    assert!(
        answers[..5].iter().all(|a| a.contains(" 401 ")),
        "{:?}",
        &answers[..5]
    );
    assert!(
        answers[5..].iter().all(|a| a.contains(" 429 ")),
        "{:?}",
        &answers[5..10]
    );
    assert!(source_try(&o.http, "127.0.0.1:0", "hunter22").contains(" 429 "));
    // Another address with the right password is taken as ever.
    assert_eq!(
        source_try(&o.http, "127.0.0.2:0", "hunter22"),
        "HTTP/1.1 100 Continue"
    );
    // Every refusal counted; the log says a bounded number of lines a second.
    wait_metric(&o.admin, "quicast_refusals_total", |v| v >= 201.0);
    drain_log(&mut o.node.p);
    let lines = said(&o.node.p, "source refused");
    assert!(
        lines <= 10 * secs + 10,
        "{lines} lines for 201 refusals in {secs} s"
    );
    assert!(o
        .node
        .p
        .log
        .iter()
        .any(|l| l.contains("suppressed=") && l.contains("source refused")));
}

/// The node's send queue (bytes) of each of its TCP connections to `port` from `peers`.
fn send_queues(port: u16, peers: &[u16]) -> Vec<u64> {
    let out = Command::new("ss")
        .args([
            "-tnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Recv-Q Send-Q Local Peer
            let peer_port: u16 = f.get(3)?.rsplit(':').next()?.parse().ok()?;
            peers.contains(&peer_port).then(|| f[1].parse().ok())?
        })
        .collect()
}

#[test]
fn http_listeners_that_stop_reading_are_skipped_and_hold_little_memory() {
    // A loud stream (256 kbit/s), so that a listener's socket fills in seconds.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("loud.opus");
    ffmpeg(&[
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=color=white:duration=4:sample_rate=48000",
        "-ac",
        "2",
        "-c:a",
        "libopus",
        "-b:a",
        "256k",
        src.to_str().unwrap(),
    ]);
    let c = certs();
    let mut node = origin_node(&c, &["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let http = node.http_addr();
    let admin = node.logged_addr("admin");
    let _p = publish(&c, &[&node], "loud", &src);
    const STUCK: usize = 10;
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // Its own receive buffer small: the node's side is what fills.
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&http.parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let mut s: TcpStream = sock.into();
        s.write_all(b"GET /loud.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stuck.push(s);
    }
    let ports: Vec<u16> = stuck
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let http_port: u16 = http.rsplit(':').next().unwrap().parse().unwrap();
    // A listener that reads, meanwhile.
    let reader = std::thread::spawn({
        let url = format!("http://{http}/loud.ogg");
        move || curl(&url, 12)
    });
    // Each stuck listener is moved forward like a QUIC one (before the fix: never).
    wait_metric(&admin, "quicast_skips_total", |v| v >= 2.0 * STUCK as f64);
    let queues = send_queues(http_port, &ports);
    assert_eq!(
        queues.len(),
        STUCK,
        "every stuck listener is still connected"
    );
    for q in &queues {
        assert!(
            *q <= 256 * 1024,
            "a stuck listener holds {q} bytes in the node's kernel: {queues:?}"
        );
    }
    let (code, body) = reader.join().unwrap();
    assert_eq!(code, 200);
    let ogg = work.path().join("reader.ogg");
    std::fs::write(&ogg, body).unwrap();
    // The reader was never held up: one unbroken run of the source.
    let looped: Vec<_> = packet_crcs(&src).into_iter().cycle().take(5000).collect();
    assert_contiguous_run(&packet_crcs(&ogg), &looped, 200);
}

#[test]
fn skip_lines_are_bounded_like_refusals() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("loud.opus");
    ffmpeg(&[
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=color=white:duration=4:sample_rate=48000",
        "-ac",
        "2",
        "-c:a",
        "libopus",
        "-b:a",
        "256k",
        src.to_str().unwrap(),
    ]);
    let c = certs();
    let mut node = origin_node(&c, &["--admin", "127.0.0.1:0", "--max-lag-segments", "1"]);
    let admin = node.logged_addr("admin");
    let _p = publish(&c, &[&node], "loud", &src);
    // Connections with many subscriptions that never read a byte, from this process.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: SocketAddr = node.addr.parse().unwrap();
    let fp = c.fp.clone();
    let held = rt.block_on(async move {
        let trust = quicast::Trust::pinned(&[fp.parse().unwrap()]);
        let client = quicast::client::Client::for_target(&addr, &trust).unwrap();
        let url = quicast::proto::QuicUrl::parse(&format!("quic://{addr}/loud")).unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            let conn = client.connect_raw(&url).await.unwrap();
            let streams = common::subscribe_many_and_never_read(&conn, "loud", 16).await;
            held.push((conn, streams));
        }
        held
    });
    let started = Instant::now();
    let skips = wait_metric(&admin, "quicast_skips_total", |v| v >= 300.0);
    let secs = started.elapsed().as_secs() + 2;
    drain_log(&mut node.p);
    let lines = said(&node.p, "fell behind");
    assert!(
        lines <= 10 * secs + 10,
        "{lines} skip lines for {skips} skips in {secs} s"
    );
    drop(held);
}

#[test]
fn the_admin_port_answers_while_strangers_hold_it() {
    let c = certs();
    let mut node = origin_node(&c, &["--admin", "127.0.0.1:0"]);
    let admin = node.logged_addr("admin");
    // Three hundred connections that say nothing (before the fix, 64 of them held every slot
    // of the admin port and a probe waited 20 to 30 s in the backlog).
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&admin).unwrap())
        .collect();
    // A probe with a deadline a load balancer would give it.
    let (code, body) = curl(&format!("http://{admin}/readyz"), 5);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim()),
        (200, "ready")
    );
    let (code, _) = curl(&format!("http://{admin}/metrics"), 5);
    assert_eq!(code, 200);
    drop(silent);
}

#[test]
fn one_address_holds_a_bounded_number_of_idle_quic_connections() {
    let c = certs();
    let mut node = origin_node(
        &c,
        &[
            "--max-idle-per-addr",
            "4",
            "--hello-timeout-ms",
            "500",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = node.logged_addr("admin");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: SocketAddr = node.addr.parse().unwrap();
    let fp = c.fp.clone();
    let held = rt.block_on(async move {
        let trust = quicast::Trust::pinned(&[fp.parse().unwrap()]);
        let client = quicast::client::Client::for_target(&addr, &trust).unwrap();
        let url = quicast::proto::QuicUrl::parse(&format!("quic://{addr}/x")).unwrap();
        // Ten connections from one address, all let in (a crowd behind a NAT arrives
        // together), each saying hello and then nothing.
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(
                client
                    .connect(&url, quicast::proto::Role::Listener, "")
                    .await
                    .expect("newcomers are not refused for their address"),
            );
        }
        // Idle past the hello timeout: six over the bound are closed (whichever the node
        // looked at first), and say why; four stay.
        let until = Instant::now() + Duration::from_secs(60);
        while held.iter().filter(|s| s.is_closed()).count() < 6 {
            assert!(Instant::now() < until, "idle connections were not closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in held.iter().filter(|s| s.is_closed()) {
            let r = s.closed().await.to_string();
            assert!(r.contains("too many idle connections"), "{r}");
        }
        held
    });
    assert_eq!(metric(&admin, "quicast_refusals_total"), 6.0);
    assert_eq!(held.iter().filter(|s| s.is_closed()).count(), 6);
}

#[test]
fn http_ogg_listeners_joining_at_different_moments_each_get_a_clean_contiguous_stream() {
    // Their pages are made once per node and shared; each gets its own header pages
    // numbered just before its first audio page.
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let origin = origin_node(&c, &[]);
    let mut edge = relay_node(&c, &[&origin], &["--http", "127.0.0.1:0"]);
    let http = edge.http_addr();
    let _publisher = publish(&c, &[&origin], "live", &src);
    let curl = |out: &std::path::Path, secs: u32| {
        Command::new("curl")
            .args(["-s", "--max-time", &secs.to_string(), "-o"])
            .arg(out)
            .arg(format!("http://{http}/live.ogg"))
            .spawn()
            .unwrap()
    };
    let (a, b) = (work.path().join("a.ogg"), work.path().join("b.ogg"));
    let mut first = curl(&a, 8);
    // The second joins once the first is well into the stream (its file has grown).
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&a).map_or(0, |m| m.len()) < 40_000 {
        assert!(Instant::now() < until, "the first listener got nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut second = curl(&b, 5);
    let _ = first.wait();
    let _ = second.wait();
    for out in [&a, &b] {
        // ffmpeg decodes it without an error, and it is one run of the source's packets.
        assert_one_run(out, &src_crcs, 3 * 50);
    }
}
