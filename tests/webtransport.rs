//! Browsers over WebTransport: headless Chromium opens an edge's page, whose player takes
//! the node's listener protocol over a WebTransport session on its QUIC port, decodes the
//! Opus frames with WebCodecs and plays them from an AudioWorklet. The page reports what it
//! got: frames decoded, gaps in their timestamps, decoder errors, latency from the origin's
//! receive stamp to decoded.

mod common;

use std::time::Duration;

use common::browser::{headless_with, page_server, publish_sample, INSERT_PAGE_JS};
use common::*;
use quicast::HttpServer;

async fn http(s: &Server) -> HttpServer {
    HttpServer::start(s.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Seconds each page plays (the benchmark's run: QUICAST_WT_SECS=60).
fn play_secs() -> u64 {
    std::env::var("QUICAST_WT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// The test's page: the node's page (`http://NODE/`) taken into it with the node as its
/// base address (and `<body>`'s attributes, which say where WebTransport is), `before` run
/// first (to hide what a browser may lack), then play pressed; after `secs` of playing it
/// reports the path taken and the player's stats to `/report?...`.
fn test_page(node: &str, stream: &str, before: &str, secs: u64) -> String {
    test_page_then(node, stream, before, secs, 0)
}

/// The same, the node's page asked for with `query` (`?token=T`).
fn test_page_asking(node: &str, stream: &str, query: &str, secs: u64) -> String {
    test_page_then(&format!("{node}/{query}"), stream, "", secs, 0)
}

/// The same; with `then` > 0 it goes on after its report: once the player has connected
/// again (its node lost), it plays `then` seconds more and reports again.
fn test_page_then(node: &str, stream: &str, before: &str, secs: u64, then: u64) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body><div id="root"></div><script>
{INSERT_PAGE_JS}
{before}
const page = 'http://{node}';
const node = new URL('/', page).href;
const reportTo = location.origin + '/report?';
let reports = 0;
const report = q => {{ if (reports++ < 2) fetch(reportTo + q); }};
window.addEventListener('error', e => report('error=' + encodeURIComponent('script: ' + e.message)));
async function load() {{
  for (let i = 0; i < 80; i++) {{
    const html = await (await fetch(page)).text();
    if (html.includes('data-stream="{stream}"')) return html;
    await new Promise(r => setTimeout(r, 250));
  }}
  throw new Error('the page never listed the stream');
}}
load().then(html => {{
  insertPage(html, node);
  const a = document.querySelector('audio[data-stream="{stream}"]');
  const stats = () => {{
    const s = a.quicast ? a.quicast.stats() : {{}};
    return 'path=' + a.dataset.path + '&' + Object.entries(s).map(([k, v]) => k + '=' + v).join('&') +
      '&behind=' + a.dataset.behind + '&ct=' + a.currentTime;
  }};
  // A play() the player's fallback interrupts (a new source) is not a failure.
  a.play().catch(e => e.name === 'AbortError' || report('error=' + encodeURIComponent(String(e)) + '&' + stats()));
  const t0 = performance.now();
  const wait = () => {{
    const s = a.quicast ? a.quicast.stats() : null;
    const since = s && s.firstSound !== undefined ? performance.now() - t0 - s.firstSound : -1;
    if (since >= {secs} * 1000 || (a.dataset.path !== 'wt' && a.currentTime > 2)) {{ report(stats()); if ({then} > 0) after(); }}
    else if (performance.now() - t0 > ({secs} + 30) * 1000) report('error=not+played&' + stats());
    else setTimeout(wait, 200);
  }};
  wait();
  // After its node is lost: `then` seconds of playing after it connected again.
  let back = null;
  const after = () => {{
    const s = a.quicast.stats();
    if (back === null && s.reconnects > 0) back = performance.now();
    if (back !== null && performance.now() - back >= {then} * 1000) report(stats());
    else if (performance.now() - t0 > ({secs} + {then} + 60) * 1000) report('error=not+back&' + stats());
    else setTimeout(after, 200);
  }};
}}).catch(e => report('error=' + encodeURIComponent(String(e))));
</script></body></html>"#
    )
}

/// The value of `key` in a report.
fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn num(report: &str, key: &str) -> f64 {
    field(report, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the page's report: {report}"))
}

/// Opens `page` in headless Chromium (with `flags`) and returns what it reported.
async fn browse(page: String, flags: &[&str]) -> String {
    let (addr, mut rx) = page_server(page).await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = headless_with(&format!("http://{addr}/"), profile.path(), flags);
    let report = tokio::time::timeout(Duration::from_secs(play_secs() + 90), rx.recv())
        .await
        .expect("the page reported")
        .unwrap();
    let _ = browser.kill().await;
    eprintln!("page reported {report}");
    report
}

/// A WebTransport page's report: it played over WebTransport, every frame decoded and none
/// missing, for `secs`.
fn assert_played(report: &str, secs: u64) {
    assert_eq!(field(report, "path"), Some("wt"), "{report}");
    assert!(field(report, "error").is_none(), "{report}");
    // 50 frames a second; what it played is at least most of that (startup aside).
    let frames = num(report, "frames");
    assert!(
        frames >= (secs * 40) as f64,
        "{frames} frames in {secs} s: {report}"
    );
    assert_eq!(num(report, "gaps"), 0.0, "frames missing: {report}");
    assert_eq!(num(report, "decodeErrors"), 0.0, "{report}");
    // Decoded in order, none twice.
    assert_eq!(num(report, "backwards"), 0.0, "{report}");
    assert!(num(report, "played") > 0.0, "{report}");
    eprintln!(
        "latency origin to decoded: p50 {} ms, p99 {} ms, max {} ms; play() to first sound {} ms; underruns {}",
        num(report, "p50"),
        num(report, "p99"),
        num(report, "max"),
        num(report, "firstSound"),
        num(report, "underruns")
    );
}

/// A self-signed tree: the edge's page passes its browser certificate's hash, and Chromium
/// plays two hops below the origin over WebTransport with no flag about certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_over_webtransport_two_hops_down_pinning_the_edges_certificate() {
    let o = origin_with(test_config()).await;
    let mid = relay(&[&o]).await;
    let edge = relay(&[&mid]).await;
    let edge_http = http(&edge).await;
    let publisher = publish_sample(&o, "live");
    wait_live(&o, "live").await;
    let secs = play_secs();
    let report = browse(
        test_page(&edge_http.addr.to_string(), "live", "", secs),
        &[],
    )
    .await;
    publisher.abort();
    assert_played(&report, secs);
}

/// The page's order: WebTransport + WebCodecs where the browser has both, else LL-HLS (here
/// Chromium's Media Source player). Hidden from the page, an Opus decoder said to be
/// unsupported (found only once play is pressed), or a node whose UDP never answers, the
/// page plays the next way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_falls_back_to_ll_hls_without_webtransport_or_an_opus_decoder() {
    let o = origin_with(test_config()).await;
    let edge = relay(&[&o]).await;
    let edge_http = http(&edge).await;
    let publisher = publish_sample(&o, "live");
    wait_live(&o, "live").await;
    let node = edge_http.addr.to_string();
    // A node whose UDP never answers (a firewall that drops it): the player waits a few
    // seconds for the session, then takes LL-HLS over TCP.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dropped = format!(
        "const Real = WebTransport; window.WebTransport = class extends Real {{ constructor(u, o) {{ super('https://127.0.0.1:{}/', o); }} }};",
        silent.local_addr().unwrap().port()
    );
    for hide in [
        "delete window.WebTransport;",
        "delete window.AudioDecoder;",
        "AudioDecoder.isConfigSupported = async () => ({ supported: false });",
        dropped.as_str(),
    ] {
        let report = browse(test_page(&node, "live", hide, 3), &[]).await;
        assert_eq!(field(&report, "path"), Some("mse"), "{hide}: {report}");
        assert!(field(&report, "error").is_none(), "{hide}: {report}");
        assert!(num(&report, "ct") > 2.0, "{hide}: {report}");
    }
    publisher.abort();
}

/// A tree whose nodes hold a certificate from the operator's CA (here the test's own: in the
/// browser's certificate store, and by flag, since Chromium's QUIC takes a root that is not
/// a public one only for origins it is told of): the page passes no hash. The edge the page came from
/// is killed (SIGKILL) while the page plays: the player finds the stream silent, connects
/// to the alternate the page named, and resumes from the segment it was in, skipping what
/// it had: no frame missing, none decoded twice, no decoder error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_trusting_the_operators_ca_fails_over_to_the_alternate_edge_when_its_edge_is_killed(
) {
    fail_over(true).await;
}

/// The same tree; the page's edge is drained (SIGTERM): it sends GOAWAY naming its
/// alternate, and the player moves there before the edge goes, losing no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_edge_sends_its_browsers_to_its_alternate_with_no_frame_lost() {
    fail_over(false).await;
}

/// The page plays from edge A (alternate: B), then A is killed (`kill`) or drained.
async fn fail_over(kill: bool) {
    use common::media::make_opus;
    use common::procs::{origin_node, publish, relay_node};
    let work = tempfile::tempdir().unwrap();
    let (c, ca, ca_spki) = common::procs::ca_signed(work.path());
    // The browser's own certificate store (NSS, under its HOME) trusts the test's CA.
    let home = work.path().join("home");
    let nss = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "quicast-test-ca",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let st = std::process::Command::new("certutil")
            .args(&args)
            .status()
            .expect("certutil is needed (.ci/run installs it: apt-get install -y libnss3-tools)");
        assert!(st.success(), "certutil {args:?}");
    }
    let src = make_opus(work.path(), 3);
    let o = origin_node(&c, &[]);
    let b = relay_node(&c, &[&o], &[]);
    let alternate = format!("quic://{}", b.addr);
    let mut a = relay_node(
        &c,
        &[&o],
        &[
            "--http",
            "127.0.0.1:0",
            "--alternates",
            &alternate,
            "--drain-secs",
            "20",
        ],
    );
    let page_from = a.http_addr();
    let _publisher = publish(&c, &[&o], "talk", &src);
    let secs = 4;
    let (addr, mut rx) = page_server(test_page_then(&page_from, "talk", "", secs, 5)).await;
    let profile = tempfile::tempdir().unwrap();
    let spki = format!("--ignore-certificate-errors-spki-list={ca_spki}");
    let quic = format!("--origin-to-force-quic-on={},{}", a.addr, b.addr);
    let mut cmd = common::browser::headless_command(
        &format!("http://{addr}/"),
        profile.path(),
        &[&spki, &quic],
    );
    cmd.env("HOME", &home);
    let mut browser = cmd.spawn().unwrap();
    let wait = Duration::from_secs(90);
    let first = tokio::time::timeout(wait, rx.recv())
        .await
        .expect("the page reported")
        .unwrap();
    eprintln!("page reported {first}");
    assert_played(&first, secs);
    assert_eq!(num(&first, "reconnects"), 0.0, "{first}");
    if kill {
        tokio::task::block_in_place(|| a.kill9());
    } else {
        a.sigterm();
    }
    let second = tokio::time::timeout(wait, rx.recv())
        .await
        .expect("the page reported again")
        .unwrap();
    let _ = browser.kill().await;
    eprintln!("page reported {second}");
    assert_played(&second, secs + 5);
    assert!(num(&second, "reconnects") >= 1.0, "{second}");
    assert!(
        num(&second, "frames") > num(&first, "frames") + 4.0 * 40.0,
        "{second}"
    );
}

/// `quicast demo` prints a page address for each edge; that page plays over WebTransport in
/// Chromium with no flag (the page passes the edge's certificate hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_page_plays_over_webtransport_with_no_flags() {
    use std::io::{BufRead, BufReader};
    let mut demo = common::procs::Killed(
        std::process::Command::new(common::procs::BIN)
            .args(["demo", "--base-port", "0"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let page = loop {
        let l = lines.next().expect("the demo's output").unwrap();
        if let Some(rest) = l.trim().strip_prefix("open http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    let report = browse(test_page(&page, "demo", "", 3), &[]).await;
    assert_played(&report, 3);
}

/// A stream that needs a listen token plays over WebTransport from the page opened with
/// `?token=`: the player says it in its HELLO, and the edge checks it as it does a native
/// client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_stream_plays_over_webtransport_with_the_pages_token() {
    use quicast::node::{mint, unix_now, Claims, Grant};
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k1");
    let secret: String = (0..48)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    std::fs::write(&key, secret).unwrap();
    let o = origin_with(test_config()).await;
    let edge = relay_with(
        &[&o],
        quicast::NodeConfig {
            token_key: vec![format!("k1={}", key.display()).parse().unwrap()],
            listen_policy: vec!["paid/=token".parse().unwrap()],
            ..test_config()
        },
    )
    .await;
    let edge_http = http(&edge).await;
    let publisher = publish_sample(&o, "paid/show");
    wait_live(&o, "paid/show").await;
    let claims = |path: &str| Claims {
        role: Grant::Listen,
        path: path.into(),
        exp: unix_now() + 600,
        nbf: 0,
        kid: "k1".into(),
    };
    let tok = mint(&key, "k1", &claims("paid/show")).unwrap();
    let node = edge_http.addr.to_string();
    let report = browse(
        test_page_asking(&node, "paid/show", &format!("?token={tok}"), 3),
        &[],
    )
    .await;
    assert_played(&report, 3);
    publisher.abort();
}
