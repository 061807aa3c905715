//! What an operator meets, with the binary as separate processes: a crashed publisher that
//! comes back, descriptor limits, and bad inputs, each refused once, by name, never a panic.

use std::process::Command;

mod common;

use common::media::{assert_decodes_cleanly, make_opus, packet_crcs};
use common::procs::*;

/// Runs the binary with `args`, expecting it to fail cleanly (exit 1, or 2 for a flag the
/// command line parser refuses; not a panic's 101); returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "{args:?}: {:?} {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

fn origin(c: &Certs, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        c.cert.to_str().unwrap(),
        "--key",
        c.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    let addr = p.addr();
    (p, addr)
}

#[test]
fn a_publisher_killed_with_sigkill_and_restarted_takes_its_broadcast_back() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let (mut o, addr) = origin(&c, &["--publish-token", "tok"]);
    let publish = || {
        let mut p = Proc::spawn(&[
            "publish",
            &format!("quic://{addr}/talk"),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--token",
            "tok",
            "--fingerprint",
            &c.fp,
        ]);
        p.wait_line("publishing");
        p
    };
    let mut first = publish();
    let out = work.path().join("heard.opus");
    let mut l = Proc::spawn(&[
        "listen",
        &format!("quic://{addr}/talk"),
        "--fingerprint",
        &c.fp,
        "--output",
        out.to_str().unwrap(),
        "--duration",
        "6",
    ]);
    o.wait_line("subscribed");
    // The publisher crashes (no goodbye, no FIN: UDP), and is restarted at once, as a
    // service manager would: with the same token, it takes the stream over.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _second = publish();
    o.wait_line("took the stream over");
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert!(
        l.log.iter().any(|x| x.contains("ended=false")),
        "the broadcast went on: {}",
        l.log.join("\n")
    );
    assert!(!o.log.iter().any(|x| x.contains("broadcast ended")));
    // One valid Ogg stream: what the first publisher sent, then the second from its start.
    assert_decodes_cleanly(&out);
    let got = packet_crcs(&out);
    let looped: Vec<_> = src_crcs
        .iter()
        .cycle()
        .take(src_crcs.len() * 4)
        .cloned()
        .collect();
    let restart = (1..got.len())
        .rev()
        .find(|&k| {
            got[k..].iter().zip(&looped).all(|(a, b)| a == b)
                && looped.windows(k).any(|w| w == &got[..k])
        })
        .unwrap_or_else(|| panic!("not one run of each publisher: {} packets", got.len()));
    assert!(
        got.len() - restart >= 100,
        "the second publisher was heard for {} packets",
        got.len() - restart
    );
}

#[test]
fn the_node_raises_its_descriptor_limit_and_answers_503_near_it() {
    use std::io::{Read, Write};
    let c = certs();
    // Soft limit 100, hard 4096: the node raises it.
    let mut args = vec![
        "--nofile=100:4096",
        BIN,
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--cert",
        c.cert.to_str().unwrap(),
        "--key",
        c.key.to_str().unwrap(),
    ];
    let mut p = Proc::spawn_program("prlimit", &args);
    let l = p.wait_line("file descriptors");
    assert!(
        l.contains("limit=4096") && l.contains("raised_from=100"),
        "{l}"
    );
    drop(p);
    // 128 in all: HTTP connections beyond the budget are answered 503 at once.
    args[0] = "--nofile=128:128";
    let mut p = Proc::spawn_program("prlimit", &args);
    let l = p.wait_line("file descriptors");
    let budget: usize = l
        .split("http_connections=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(budget > 10 && budget < 128, "{l}");
    let http = p.wait_line("listening (HTTP)");
    let http = http
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // Idle clients take the whole budget: each holds a descriptor of the node's.
    let idle: Vec<_> = (0..budget)
        .map(|_| std::net::TcpStream::connect(&http).unwrap())
        .collect();
    // Make sure the node has taken them all in: one request on the last one answers.
    let mut probe = std::net::TcpStream::connect(&http).unwrap();
    probe
        .write_all(b"GET /streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    for _ in 0..20 {
        let mut more = std::net::TcpStream::connect(&http).unwrap();
        let mut answer = String::new();
        more.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }
    // Some leave: newcomers are served again.
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut s = std::net::TcpStream::connect(&http).unwrap();
        s.write_all(b"GET /streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        // The node notices closed idle connections as their reads end.
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {answer}"
        );
        std::thread::yield_now();
    }
    assert!(
        !p.log.iter().any(|x| x.contains("accept failed")),
        "the node never ran out of descriptors"
    );
}

#[test]
fn bad_cli_and_config_inputs_are_refused_never_a_panic() {
    let url = "quic://127.0.0.1:9/x";
    let e = fails(&[
        "listen",
        url,
        "--output",
        "-",
        "--fingerprint",
        &"é".repeat(32),
    ]);
    assert!(
        e.contains("fingerprint") && e.contains("64 hex digits"),
        "{e}"
    );
    let e = fails(&[
        "listen",
        url,
        "--output",
        "-",
        "--fingerprint",
        &"+f".repeat(32),
    ]);
    assert!(e.contains("64 hex digits"), "{e}");
    for d in ["1e20", "1e19", "-1", "NaN", "inf"] {
        let e = fails(&[
            "listen",
            url,
            "--output",
            "-",
            "--fingerprint",
            &"ab".repeat(32),
            &format!("--duration={d}"),
        ]);
        assert!(e.contains("--duration"), "{d}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "upstream = [\"quic://127.0.0.1:9\"]\nfingerprint = [\"{}\"]\n",
            "ü".repeat(32)
        ),
    )
    .unwrap();
    let e = fails(&["relay", "--config", cfg.to_str().unwrap()]);
    assert!(e.contains("fingerprint"), "{e}");
    // A stream path in a parent's URL means a mistake: refused, not ignored.
    let e = fails(&[
        "relay",
        "--upstream",
        "quic://127.0.0.1:9/live",
        "--fingerprint",
        &"ab".repeat(32),
    ]);
    assert!(
        e.contains("upstream") && e.contains("no stream path"),
        "{e}"
    );
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tls_file_problems_name_the_file_and_say_what_is_wrong_once() {
    let c = certs();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let serve = |cert: &str, key: &str| {
        fails(&[
            "origin",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert,
            "--key",
            key,
        ])
    };
    let (cert, key) = (c.cert.to_str().unwrap(), c.key.to_str().unwrap());

    let e = serve(cert, "/nope.pem");
    assert!(
        e.contains("key: /nope.pem: cannot read it (no such file)"),
        "{e}"
    );
    assert_eq!(
        e.to_lowercase().matches("no such file").count(),
        1,
        "said once: {e}"
    );
    assert!(!e.contains("os error"), "{e}");

    // A key where the certificate should be; a certificate block that is not one.
    let e = serve(key, key);
    assert!(
        e.contains("cert:") && e.contains(&format!("{key}: no CERTIFICATE")),
        "{e}"
    );
    std::fs::write(
        p("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = serve(&p("garbage.pem"), key);
    assert!(
        e.contains("garbage.pem") && e.contains("not a valid X.509 certificate"),
        "{e}"
    );
    let e = fails(&[
        "relay",
        "--upstream",
        "quic://127.0.0.1:9",
        "--ca",
        &p("garbage.pem"),
    ]);
    assert!(e.contains("ca:") && e.contains("garbage.pem"), "{e}");

    // A key that belongs to another certificate.
    let other = certs();
    let e = serve(cert, other.key.to_str().unwrap());
    assert!(e.contains("does not belong to the certificate"), "{e}");
    assert!(!e.contains("cannot serve"), "{e}");

    // An encrypted key, and an RSA key too small to use.
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        key,
        "-out",
        &p("enc.pem"),
        "-passout",
        "pass:x",
    ]);
    let e = serve(cert, &p("enc.pem"));
    assert!(e.contains("enc.pem") && e.contains("encrypted"), "{e}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        &p("rsa.key"),
        "-out",
        &p("rsa.crt"),
        "-subj",
        "/CN=localhost",
        "-days",
        "1",
    ]);
    let e = serve(&p("rsa.crt"), &p("rsa.key"));
    assert!(
        e.contains("rsa.key") && e.contains("RSA of 2048 bits or more"),
        "{e}"
    );
}

#[test]
fn refusals_from_a_peer_are_said_once_and_silence_is_not_success() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 2);
    let c = certs();
    let (_o, addr) = origin(&c, &[]);
    let url = format!("quic://{addr}/one");
    let mut first = Proc::spawn(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--fingerprint",
        &c.fp,
    ]);
    first.wait_line("publishing");
    let e = fails(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--fingerprint",
        &c.fp,
    ]);
    assert!(e.contains("already has a publisher"), "{e}");
    assert_eq!(e.matches("conflict").count(), 1, "said once: {e}");
    // A listener that hears nothing in its time fails, saying so.
    let e = fails(&[
        "listen",
        &format!("quic://{addr}/nobody"),
        "--fingerprint",
        &c.fp,
        "--output",
        "-",
        "--duration",
        "1",
    ]);
    assert!(
        e.contains("no audio received") && e.contains("has not started"),
        "{e}"
    );
}
