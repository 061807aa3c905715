//! `quicast loadgen --webtransport`: listeners that reach a node as browsers do (ALPN h3, an
//! extended CONNECT session carrying the listener protocol), run against an origin process
//! beside a native run, and both report the same figures from the same stream.

use std::process::{Child, Command, Stdio};

mod common;

use common::media::make_opus;
use common::procs::*;

/// The value of `key=` in a log line, up to the next space.
fn logged(line: &str, key: &str) -> String {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_string()
}

/// `quicast loadgen URL --listeners N --json ARGS` started (its report read by `report`).
fn loadgen(url: &str, listeners: usize, secs: &str, args: &[&str]) -> Child {
    let n = listeners.to_string();
    Command::new(BIN)
        .args([
            "loadgen",
            url,
            "--listeners",
            &n,
            "--duration",
            secs,
            "--ramp",
            "0.5",
            "--endpoints",
            "2",
            "--json",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quicast loadgen")
}

/// The run's JSON report (the last line of its stdout), once it has ended well.
fn report(run: Child) -> serde_json::Value {
    let o = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}): {stdout}"))
}

/// Every listener joined, heard the stream and missed nothing of it.
fn assert_all_heard(v: &serde_json::Value, listeners: u64, what: &str) {
    assert_eq!(v["listeners"], listeners, "{what}: {v}");
    assert_eq!(v["connected"], listeners, "{what}: {v}");
    assert_eq!(
        v["heard"], listeners,
        "{what}: every listener heard frames: {v}"
    );
    assert_eq!(v["failed"], 0, "{what}: {v}");
    assert_eq!(v["gaps"], 0, "{what}: frames missing: {v}");
    assert_eq!(v["skips"], 0, "{what}: segments skipped: {v}");
    assert_eq!(v["refused"], 0, "{what}: {v}");
    // 20 ms frames for the whole run: each listener heard a second of them at least.
    assert!(
        v["frames"].as_u64().unwrap() >= listeners * 50,
        "{what}: {v}"
    );
    for k in ["p50", "p99", "max"] {
        assert!(
            v["latency_ms"][k].as_f64().unwrap() > 0.0,
            "{what}: latency_ms.{k} in {v}"
        );
    }
}

/// A self-signed origin: native listeners pin its identity, WebTransport ones the browser
/// certificate it serves on h3 (the first of the hashes it logs). Twenty of each listen to
/// one stream at once, and both runs say the same: everyone heard it, nothing missing.
#[test]
fn webtransport_listeners_hear_what_native_ones_do_and_report_alike() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 2);
    let mut origin = Proc::spawn(&[
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--publish-token",
        "tok",
        "--segment-ms",
        "500",
    ]);
    let (web, listening) = (
        "WebTransport: browsers get a short-lived certificate",
        "listening (QUIC)",
    );
    origin.wait_lines(&[web, listening]);
    let line = |needle: &str| origin.log.iter().find(|l| l.contains(needle)).unwrap();
    let hashes = logged(line(web), "hashes=");
    let served = hashes.split(',').next().unwrap().to_string();
    let listening = line(listening).clone();
    let (addr, identity) = (
        logged(&listening, "addr="),
        logged(&listening, "fingerprint="),
    );
    assert_ne!(served, identity, "browsers get a certificate of their own");
    let url = format!("quic://{addr}/live");
    let mut publisher = Proc::spawn(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--token",
        "tok",
        "--fingerprint",
        &identity,
    ]);
    publisher.wait_line("publishing");

    let wt = loadgen(&url, 20, "3", &["--webtransport", "--fingerprint", &served]);
    let native = loadgen(&url, 20, "3", &["--fingerprint", &identity]);
    let (wt, native) = (report(wt), report(native));
    assert_all_heard(&wt, 20, "WebTransport");
    assert_all_heard(&native, 20, "native");
    // The same figures, so that runs compare directly.
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&wt), keys(&native));

    // Over h3 the node serves its browser certificate, not its identity: a WebTransport
    // listener pinning the identity is turned away by its own TLS check.
    let wrong = report(loadgen(
        &url,
        2,
        "1",
        &["--webtransport", "--fingerprint", &identity],
    ));
    assert_eq!(wrong["connected"], 0, "{wrong}");
    assert_eq!(wrong["failed"], 2, "{wrong}");
    // (The reason, cut to 120 characters, names the fingerprint it did not pin.)
    assert!(
        wrong["failures"]
            .to_string()
            .contains("server certificate fingerprint"),
        "{wrong}"
    );
}

/// A node given a CA-signed certificate (`--cert/--key`) serves it to h3 too: WebTransport
/// listeners trust it by the CA, as native ones do.
#[test]
fn webtransport_listeners_trust_a_nodes_ca_signed_certificate() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 2);
    let (c, ca, _) = ca_signed(work.path());
    let origin = origin_node(&c, &["--publish-token", "tok"]);
    let url = origin.url("live");
    let mut publisher = Proc::spawn(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--token",
        "tok",
        "--fingerprint",
        &c.fp,
    ]);
    publisher.wait_line("publishing");
    let v = report(loadgen(
        &url,
        5,
        "2",
        &["--webtransport", "--ca", ca.to_str().unwrap()],
    ));
    assert_all_heard(&v, 5, "WebTransport");
}
