//! Browsers over WebTransport: headless Chromium opens an edge's page, whose player takes
//! the node's listener protocol over a WebTransport session on its QUIC port, decodes the
//! Opus frames with WebCodecs and plays them from an AudioWorklet. The page reports what it
//! got: frames decoded, gaps in their timestamps, decoder errors, latency from the origin's
//! receive stamp to decoded.

mod common;

use std::time::Duration;

use common::browser::{headless_with, page_server, publish_sample};
use common::*;
use quicast::{HttpServer, NodeConfig};

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
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body><div id="root"></div><script>
{before}
const node = 'http://{node}/';
const reportTo = location.origin + '/report?';
let reported = false;
const report = q => {{ if (!reported) {{ reported = true; fetch(reportTo + q); }} }};
window.addEventListener('error', e => report('error=' + encodeURIComponent('script: ' + e.message)));
async function load() {{
  for (let i = 0; i < 80; i++) {{
    const html = await (await fetch(node)).text();
    if (html.includes('data-stream="{stream}"')) return html;
    await new Promise(r => setTimeout(r, 250));
  }}
  throw new Error('the page never listed the stream');
}}
load().then(html => {{
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const base = document.createElement('base');
  base.href = node;
  document.head.appendChild(base);
  for (const [k, v] of Object.entries(doc.body.dataset)) document.body.dataset[k] = v;
  const root = document.getElementById('root');
  root.innerHTML = doc.body.innerHTML;
  for (const old of root.querySelectorAll('script')) {{
    const s = document.createElement('script');
    s.textContent = old.textContent;
    old.replaceWith(s);
  }}
  const a = document.querySelector('audio[data-stream="{stream}"]');
  const stats = () => {{
    const s = a.quicast ? a.quicast.stats() : {{}};
    return 'path=' + a.dataset.path + '&' + Object.entries(s).map(([k, v]) => k + '=' + v).join('&') +
      '&behind=' + a.dataset.behind;
  }};
  a.play().catch(e => report('error=' + encodeURIComponent(String(e)) + '&' + stats()));
  const t0 = performance.now();
  const wait = () => {{
    const s = a.quicast ? a.quicast.stats() : null;
    const since = s && s.firstSound !== undefined ? performance.now() - t0 - s.firstSound : -1;
    if (since >= {secs} * 1000 || (a.dataset.path !== 'wt' && a.currentTime > 2)) report(stats());
    else if (performance.now() - t0 > ({secs} + 30) * 1000) report('error=not+played&' + stats());
    else setTimeout(wait, 200);
  }};
  wait();
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
    assert!(frames >= (secs * 40) as f64, "{frames} frames in {secs} s: {report}");
    assert_eq!(num(report, "gaps"), 0.0, "frames missing: {report}");
    assert_eq!(num(report, "decodeErrors"), 0.0, "{report}");
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
    let report = browse(test_page(&edge_http.addr.to_string(), "live", "", secs), &[]).await;
    publisher.abort();
    assert_played(&report, secs);
}
