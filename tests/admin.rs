//! The admin port, as an operator's tools use it: Prometheus scrapes `/metrics` (promtool
//! parses it), load balancers probe `/healthz` and `/readyz`. Separate processes: an
//! origin and a relay under it, each with `--admin`; a publisher and a listener.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::media::make_opus;
use common::procs::*;

/// (status, body) of `GET http://ADDR/PATH`.
fn get(addr: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.trim_end().to_string())
}

/// The admin address a node logged.
fn admin_addr(n: &mut Node) -> String {
    let l = n.p.wait_line("listening (admin)");
    l.split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Scrapes `/metrics`: checks it with promtool (and the OpenMetrics form) and returns each
/// series (name and labels as written) with its value.
fn scrape(admin: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(admin, "/metrics");
    assert_eq!(code, "200");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{body}\n").as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Prometheus itself asks for OpenMetrics: the same series, ending with # EOF.
    let open = Command::new("curl")
        .args([
            "-s",
            "-H",
            "Accept: application/openmetrics-text; version=1.0.0",
        ])
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    let open = String::from_utf8_lossy(&open.stdout);
    assert!(open.trim_end().ends_with("# EOF"));
    assert!(open.contains("# TYPE quicast_joins counter"));
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_and_health_tell_an_operator_what_a_node_does() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let c = certs();
    let mut o = origin_node(&c, &["--admin", "127.0.0.1:0", "--drain-secs", "60"]);
    let o_admin = admin_addr(&mut o);
    let mut r = relay_node(&c, &[&o], &["--admin", "127.0.0.1:0"]);
    let r_admin = admin_addr(&mut r);
    let _pub = publish(&c, &[&o], "talk", &src);
    let out = work.path().join("heard.opus");
    let _l = listen(&c, &[&r], "talk", &out, 60);
    // The listener's subscription has its broadcast: the stream is live at the relay.
    r.p.wait_lines(&["stream comes from", "egress::quic: subscribed"]);
    // The relay: one stream, one listener, from the origin; its parent is up.
    let m = scrape(&r_admin);
    assert_eq!(m["quicast_streams"], 1.0);
    assert_eq!(m["quicast_listeners{stream=\"talk\"}"], 1.0);
    let from = format!(
        "quicast_stream_parent{{stream=\"talk\",parent=\"{}\",rank=\"0\"}}",
        o.addr
    );
    assert_eq!(m.get(&from), Some(&1.0), "{m:?}");
    assert_eq!(m["quicast_parents_up"], 1.0);
    assert_eq!(m["quicast_parents"], 1.0);
    assert_eq!(m["quicast_upstream_subscriptions_total"], 1.0);
    assert_eq!(m["quicast_parent_failovers_total"], 0.0);
    assert_eq!(
        m["quicast_build_info{version=\"0.1.0\",role=\"relay\"}"],
        1.0
    );
    assert!(m["quicast_stream_bitrate_bytes_per_second{stream=\"talk\"}"] > 4_000.0);
    // The origin: one publisher, the relay its one subscriber however many listen below.
    let m = scrape(&o_admin);
    assert_eq!(m["quicast_publishers"], 1.0);
    assert_eq!(m["quicast_listeners{stream=\"talk\"}"], 1.0);
    assert!(!m.keys().any(|k| k.starts_with("quicast_parents")));
    for a in [&o_admin, &r_admin] {
        assert_eq!(get(a, "/healthz"), ("200".into(), "ok".into()));
        assert_eq!(get(a, "/readyz"), ("200".into(), "ready".into()));
        assert_eq!(get(a, "/nothing").0, "404");
    }
    // The origin drains: not ready, and its relay has no parent left to take from.
    o.sigterm();
    o.p.wait_line("draining: telling every peer to go");
    assert_eq!(get(&o_admin, "/readyz"), ("503".into(), "draining".into()));
    assert_eq!(get(&o_admin, "/healthz").0, "200");
    assert_eq!(scrape(&o_admin)["quicast_draining"], 1.0);
    r.p.wait_line("parent is draining");
    assert_eq!(
        get(&r_admin, "/readyz"),
        ("503".into(), "no parent reachable (0 of 1)".into())
    );
    assert_eq!(scrape(&r_admin)["quicast_parent_failovers_total"], 1.0);
    assert_eq!(get(&r_admin, "/healthz").0, "200");
}

#[test]
fn the_admin_port_is_refused_on_the_public_address() {
    let out = Command::new(BIN)
        .args([
            "origin",
            "--http",
            "127.0.0.1:18080",
            "--admin",
            "127.0.0.1:18080",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin"), "{err}");
}

/// `--log-format json`: every line a JSON object; a QUIC listener's connection and an HTTP
/// listener each end with one line of totals.
#[test]
fn json_logs_parse_and_say_what_each_listener_got() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let c = certs();
    let mut o = Node::spawn(
        &c,
        &[
            "--log-format",
            "json",
            "origin",
            "--segment-ms",
            "500",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let http = {
        let l = o.p.wait_line("listening (HTTP)");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        v["fields"]["addr"].as_str().unwrap().to_string()
    };
    let _pub = publish(&c, &[&o], "talk", &src);
    // A QUIC listener for two seconds, an HTTP one for two.
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&o], "talk", &out, 2);
    let curl = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            "-o",
            "/dev/null",
            &format!("http://{http}/talk.ogg"),
        ])
        .status()
        .unwrap();
    assert!(!curl.success(), "curl stopped by its time limit");
    assert!(l.wait_exit().success());
    o.p.wait_lines(&["connection ended", "HTTP listener ended"]);
    let mut seen = Vec::new();
    for line in &o.p.log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        seen.push(v);
    }
    let listener = seen
        .iter()
        .find(|v| v["fields"]["message"] == "connection ended" && v["fields"]["role"] == "Listener")
        .expect("the QUIC listener's line");
    assert!(listener["fields"]["bytes_sent"].as_u64().unwrap() > 8_000);
    assert_eq!(listener["fields"]["subscriptions"], 1);
    let h = seen
        .iter()
        .find(|v| v["fields"]["message"] == "HTTP listener ended")
        .expect("the HTTP listener's line");
    assert!(h["fields"]["frames"].as_u64().unwrap() >= 50, "{h}");
    assert!(h["fields"]["bytes"].as_u64().unwrap() > 8_000, "{h}");
    assert_eq!(h["fields"]["skips"], 0);
    assert_eq!(h["span"]["path"], "talk", "the line carries its span: {h}");
}
