//! The admin port, as an operator's tools use it: Prometheus scrapes `/metrics` (promtool
//! parses it), load balancers probe `/healthz` and `/readyz`. Separate processes: an
//! origin and a relay under it, each with `--admin`; a publisher and listeners.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::media::make_opus;
use common::procs::*;
use quicast::client::Client;
use quicast::proto::{Message, QuicUrl, Role, Start, VERSION};
use quicast::Trust;

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
    n.logged_addr("admin")
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
    assert!(open.contains("# TYPE quicast_join_seconds histogram"));
    series(&body)
}

/// Each series of a Prometheus text exposition, with its value.
fn series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            (series.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Scrapes `admin` (without promtool) until `ok` holds of what it says, for at most a
/// minute; returns that scrape.
fn scrape_until(
    admin: &str,
    what: &str,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(admin, "/metrics");
        assert_eq!(code, "200");
        let m = series(&body);
        if ok(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last scrape: {m:#?}"
        );
        // The next poll.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A series' value, 0 if it is not there (yet).
fn at(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// `quicast_listeners` of `stream` served as `egress`.
fn listeners(m: &BTreeMap<String, f64>, stream: &str, egress: &str) -> f64 {
    at(
        m,
        &format!("quicast_listeners{{stream=\"{stream}\",egress=\"{egress}\"}}"),
    )
}

/// A QUIC listener that subscribes and then never reads its segment streams: the node may
/// open as many as it grants (16, one per segment), then its writes to it block, and each
/// time it falls `max-lag-segments` behind the fan-out moves it forward (a skip). QUIC
/// itself keeps the connection up (the listener's stack still acknowledges).
struct Stalled {
    client: Client,
    _conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
    rt: tokio::runtime::Runtime,
}

impl Stalled {
    fn subscribe(c: &Certs, node: &Node, stream: &str) -> Stalled {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let url = QuicUrl::parse(&node.url(stream)).unwrap();
        let addr: SocketAddr = node.addr.parse().unwrap();
        let trust = Trust::pinned(&[c.fp.parse().unwrap()]);
        let (client, conn, control) = rt.block_on(async {
            let client = Client::for_target(&addr, &trust).unwrap();
            let conn = client.connect_raw(&url).await.unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let hello = Message::Hello {
                version: VERSION,
                role: Role::Listener,
                token: Bytes::new(),
            };
            let subscribe = Message::Subscribe {
                id: 1,
                path: stream.to_string(),
                start: Start::Live,
                flags: 0,
            };
            for m in [hello, subscribe] {
                send.write_all(&m.to_bytes()).await.unwrap();
            }
            (client, conn, (send, recv))
        });
        Stalled {
            client,
            _conn: conn,
            _control: control,
            rt,
        }
    }

    /// Closes the connection politely: the node lets the listener go at once.
    fn close(self) {
        self.rt.block_on(self.client.close());
    }
}

/// A 48-byte HMAC secret in `dir`, for `--token-key`.
fn secret(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("k1");
    let s: String = (0..48)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    std::fs::write(&p, format!("{s}\n")).unwrap();
    p
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
    assert_eq!(m["quicast_listeners{stream=\"talk\",egress=\"quic\"}"], 1.0);
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
    assert_eq!(
        m["quicast_listeners{stream=\"talk\",egress=\"relay\"}"],
        1.0
    );
    assert_eq!(m["quicast_listeners{stream=\"talk\",egress=\"quic\"}"], 0.0);
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

/// A relay whose parent does not answer is not ready from its start (a load balancer sends
/// it nobody) and says why, though no listener has asked it for anything; once its parent
/// answers, it is ready without being asked either.
#[test]
fn a_relay_is_ready_only_once_a_parent_answers() {
    let c = certs();
    let mut o = origin_node(&c, &[]);
    o.kill9();
    let mut r = relay_node(&c, &[&o], &["--admin", "127.0.0.1:0"]);
    let r_admin = admin_addr(&mut r);
    assert_eq!(
        get(&r_admin, "/readyz"),
        ("503".into(), "no parent reachable (0 of 1)".into())
    );
    assert_eq!(scrape(&r_admin)["quicast_parents_up"], 0.0);
    r.p.wait_line("cannot connect");
    assert_eq!(get(&r_admin, "/readyz").0, "503");
    // The origin comes back on its address: the relay finds it on its own.
    let _o2 = Node::spawn_on(&c, &o.addr, &["origin", "--segment-ms", "500"]);
    r.p.wait_line("connected to parent");
    assert_eq!(get(&r_admin, "/readyz"), ("200".into(), "ready".into()));
    assert_eq!(scrape(&r_admin)["quicast_parents_up"], 1.0);
}

/// The known scenario, in numbers: an origin and a relay; a publisher; on the relay two QUIC
/// listeners, one HTTP Ogg listener, one listener that stops reading (moved forward: skips)
/// and one HTTP request refused for want of a token. Each node's metrics say exactly that,
/// and promtool passes them.
#[test]
fn the_metrics_of_a_known_scenario_are_exact() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let key = format!("k1={}", secret(work.path()).display());
    let c = certs();
    let mut o = origin_node(&c, &["--admin", "127.0.0.1:0"]);
    let o_admin = admin_addr(&mut o);
    // The relay checks `paid/` listeners' tokens (its parent, without keys, does not ask
    // it for a relay token).
    let mut r = relay_node(
        &c,
        &[&o],
        &[
            "--admin",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--token-key",
            &key,
            "--listen-policy",
            "paid/=token",
        ],
    );
    let r_admin = admin_addr(&mut r);
    let r_http = r.logged_addr("HTTP");
    let _pub = publish(&c, &[&o], "talk", &src);
    // First the listener that will stall: its 16 segment streams take 8 s to use up.
    let stalled = Stalled::subscribe(&c, &r, "talk");
    let (a, b) = (work.path().join("a.opus"), work.path().join("b.opus"));
    let _quic = [
        listen(&c, &[&r], "talk", &a, 300),
        listen(&c, &[&r], "talk", &b, 300),
    ];
    let _ogg = Killed(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "300"])
            .arg(format!("http://{r_http}/talk.ogg"))
            .spawn()
            .unwrap(),
    );
    assert_eq!(get(&r_http, "/paid/show.ogg").0, "401");

    // Everyone is in and heard audio, and the stalled listener has been moved forward.
    let m = scrape_until(&r_admin, "four joined, one skipped", |m| {
        listeners(m, "talk", "quic") == 3.0
            && listeners(m, "talk", "http_ogg") == 1.0
            && at(m, "quicast_join_seconds_count") == 4.0
            && at(m, "quicast_skips_total") >= 1.0
    });
    assert_eq!(m["quicast_joins_total"], 4.0, "{m:#?}");
    // It leaves; the others stay.
    stalled.close();
    scrape_until(&r_admin, "the stalled listener gone", |m| {
        listeners(m, "talk", "quic") == 2.0
    });

    let m = scrape(&r_admin);
    assert_eq!(m["quicast_streams"], 1.0);
    assert_eq!(listeners(&m, "talk", "quic"), 2.0);
    assert_eq!(listeners(&m, "talk", "http_ogg"), 1.0);
    assert_eq!(listeners(&m, "talk", "relay"), 0.0);
    assert_eq!(listeners(&m, "talk", "hls"), 0.0);
    assert_eq!(m["quicast_subscriptions"], 3.0);
    assert_eq!(m["quicast_refusals_total{reason=\"auth\"}"], 1.0);
    assert_eq!(m["quicast_refusals_total{reason=\"not_found\"}"], 0.0);
    assert!(m["quicast_skips_total"] >= 1.0);
    // A peer stuck in its own writes is not the node's load: no interval was stretched.
    assert_eq!(m["quicast_delivery_interval_floor_seconds"], 0.0, "{m:#?}");
    // Every join timed, once: two QUIC listeners, the stalled one, the HTTP one.
    assert_eq!(m["quicast_joins_total"], 4.0);
    assert_eq!(m["quicast_join_seconds_count"], 4.0);
    assert_eq!(m["quicast_join_seconds_bucket{le=\"+Inf\"}"], 4.0);
    assert!(m["quicast_join_seconds_sum"] < 4.0 * 30.0, "{m:#?}");
    // Audio from the parent: one latency sample per segment, at loopback's age.
    let samples = m["quicast_publisher_latency_seconds_count"];
    assert!(samples >= 1.0, "{m:#?}");
    assert!(
        m["quicast_publisher_latency_seconds_sum"] / samples < 2.0,
        "{m:#?}"
    );
    assert!(m["quicast_frames_received_total"] >= samples);
    assert!(m["quicast_bytes_received_total"] > m["quicast_frames_received_total"]);
    assert!(m["quicast_frames_sent_total"] > 0.0, "{m:#?}");
    assert!(m["quicast_bytes_sent_total"] > m["quicast_frames_sent_total"]);
    assert!(m["quicast_cached_segments"] >= 1.0);
    assert!(m["quicast_cached_bytes"] > 0.0);

    // The origin: the relay its one subscriber, timed from its subscribe; no stamps older
    // than its own.
    let m = scrape(&o_admin);
    assert_eq!(listeners(&m, "talk", "relay"), 1.0);
    assert_eq!(listeners(&m, "talk", "quic"), 0.0);
    assert_eq!(listeners(&m, "talk", "http_ogg"), 0.0);
    assert_eq!(m["quicast_joins_total"], 1.0);
    assert_eq!(m["quicast_join_seconds_count"], 1.0);
    assert_eq!(m["quicast_publisher_latency_seconds_count"], 0.0);
    assert_eq!(m["quicast_refusals_total{reason=\"auth\"}"], 0.0);
    assert!(m["quicast_frames_received_total"] > 0.0);
    assert!(m["quicast_bytes_received_total"] > m["quicast_frames_received_total"]);
    assert!(m["quicast_frames_sent_total"] > 0.0, "{m:#?}");
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
