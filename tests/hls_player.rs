//! The web player of a node's page (`/`): Chromium plays a stream from an edge through the
//! page's own LL-HLS player on Media Source Extensions, and through its Ogg fallback.

mod common;

use std::time::Duration;

use common::browser::{headless, page_server, publish_sample, INSERT_PAGE_JS};
use common::*;
use quicast::node::config::Millis;
use quicast::{HttpServer, NodeConfig};

async fn http(s: &Server) -> HttpServer {
    HttpServer::start(s.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The test's page: it takes the edge's page (`http://EDGE/`) into itself, with the edge
/// as its base address so that the player's requests go there (every node answers with
/// `Access-Control-Allow-Origin: *`), runs the page's script, presses play and reports to
/// `/report?...` how it went: the path the player took, how long it took to start, how far
/// `currentTime` moved in six seconds of the wall clock, and how far behind live it said.
fn test_page(edge: &str, stream: &str) -> String {
    test_page_asking(edge, stream, "")
}

/// The same, with `query` on the page's address (and the first playlist's): `?token=T`.
fn test_page_asking(edge: &str, stream: &str, query: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body><div id="root"></div><script>
{INSERT_PAGE_JS}
// These pages test LL-HLS: the player's first choice (WebTransport, tests/webtransport.rs)
// is hidden from them.
delete window.WebTransport;
const node = 'http://{edge}/';
const reportTo = location.origin + '/report?';
let reported = false;
const report = q => {{ if (!reported) {{ reported = true; fetch(reportTo + q); }} }};
const t0 = performance.now();
window.addEventListener('error', e => report('error=' + encodeURIComponent('script: ' + e.message)));
async function load() {{
  for (let i = 0; i < 40; i++) {{
    // An edge holds a stream once someone asks for it: the playlist waits until it is live.
    await fetch(node + '{stream}.m3u8{query}').catch(() => {{}});
    const html = await (await fetch(node + '{query}')).text();
    if (html.includes('data-stream="{stream}"')) return html;
    await new Promise(r => setTimeout(r, 250));
  }}
  throw new Error('the page never listed the stream');
}}
load().then(html => {{
  insertPage(html, node);
  const inserted = performance.now();
  const a = document.querySelector('audio[data-stream="{stream}"]');
  const state = () => 'path=' + a.dataset.path + '&ready=' + a.readyState + '&ct=' + a.currentTime +
    '&buffered=' + [...Array(a.buffered.length).keys()].map(i => a.buffered.start(i).toFixed(2) + '-' + a.buffered.end(i).toFixed(2)).join(',');
  a.addEventListener('error', () => report('error=media' + (a.error && a.error.code) + '&' + state()));
  // Stalls while it plays: each `waiting` after the first `playing`.
  let waits = 0;
  a.addEventListener('waiting', () => waits++);
  a.addEventListener('playing', () => {{
    const c0 = a.currentTime, w0 = performance.now();
    waits = 0;
    setTimeout(() => {{
      const label = a.closest('li').querySelector('.behind').textContent;
      report('t=' + (a.currentTime - c0) + '&wall=' + (performance.now() - w0) +
        '&startup=' + (w0 - inserted) + '&page=' + (w0 - t0) + '&waits=' + waits + '&behind=' + a.dataset.behind +
        '&label=' + encodeURIComponent(label) + '&' + state());
    }}, 6000);
  }}, {{ once: true }});
  setTimeout(() => report('error=not+playing+after+20+s&' + state()), 20000);
  a.play().catch(e => report('error=' + encodeURIComponent(String(e)) + '&' + state()));
}}).catch(e => report('error=' + encodeURIComponent(String(e))));
</script></body></html>"#
    )
}

/// The value of `key` in a query string (not decoded).
fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_page_through_media_source_from_an_edge() {
    // Segments of a second, as an origin has them by default: five parts each.
    let o = origin_with(NodeConfig {
        segment_ms: Millis::new(1000),
        ..test_config()
    })
    .await;
    let r = relay(&[&o]).await;
    let edge = http(&r).await;
    // A real-time Opus stream: the sample the demo ships, looped.
    let publisher = publish_sample(&o, "live");
    // Live for a few segments before the page comes: it starts from the newest of several.
    wait_live(&o, "live").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (page_addr, mut rx) = page_server(test_page(&edge.addr.to_string(), "live")).await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = headless(&format!("http://{page_addr}/"), profile.path());
    let report = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reported")
        .unwrap();
    let _ = browser.kill().await;
    publisher.abort();
    eprintln!("page reported {report}");
    assert_eq!(
        field(&report, "path"),
        Some("mse"),
        "Chromium plays through Media Source Extensions ({report})"
    );
    let t: f64 = field(&report, "t")
        .unwrap_or_else(|| panic!("page reported {report}"))
        .parse()
        .unwrap();
    let startup: f64 = field(&report, "startup").unwrap().parse().unwrap();
    eprintln!(
        "startup: {startup:.0} ms from the page's script to playing; {} s behind live",
        field(&report, "behind").unwrap_or("?")
    );
    // Six seconds after it started playing, the element has played several seconds of audio.
    assert!(
        t >= 3.0,
        "the <audio> element advanced only {t} s in 6 s of playing ({report})"
    );
    // And the page says how far behind live it plays.
    assert!(
        field(&report, "label").is_some_and(|l| l.contains("behind%20live")),
        "the page shows how far behind live it plays ({report})"
    );
}

/// A stream that needs a listen token plays from the page opened with `?token=`: the
/// node checks the token, puts it on the stream's player, and the player carries it on
/// every request (playlist and parts over Media Source Extensions). Without it, the page
/// asks for a token and has no player for the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_a_protected_stream_from_the_page_given_its_token() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k1");
    let secret: String = (0..48)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    std::fs::write(&key, secret).unwrap();
    let o = origin_with(NodeConfig {
        segment_ms: Millis::new(1000),
        ..test_config()
    })
    .await;
    // The edge's own policy protects `paid/` (the origin is open): its page and player.
    let r = relay_with(
        &[&o],
        NodeConfig {
            token_key: vec![format!("k1={}", key.display()).parse().unwrap()],
            listen_policy: vec!["paid/=token".parse().unwrap()],
            ..test_config()
        },
    )
    .await;
    let edge = http(&r).await;
    let publisher = publish_sample(&o, "paid/show");
    wait_live(&o, "paid/show").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tok = quicast::node::mint(
        &key,
        "k1",
        &quicast::node::Claims {
            role: quicast::node::Grant::Listen,
            path: "paid/show".into(),
            exp: quicast::node::unix_now() + 600,
            nbf: 0,
            kid: "k1".into(),
        },
    )
    .unwrap();
    // The edge lists the stream once its parent has told it (every few seconds).
    let listed = async {
        loop {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "--max-time", "5", &format!("http://{}/", edge.addr)])
                .output()
                .await
                .unwrap();
            let page = String::from_utf8(out.stdout).unwrap();
            if page.contains("data-name=\"paid/show\"") {
                break page;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let page = tokio::time::timeout(Duration::from_secs(30), listed)
        .await
        .expect("the edge's page lists the stream");
    assert!(
        page.contains("data-name=\"paid/show\"") && !page.contains("data-stream=\"paid/show\""),
        "without a token, no player: {page}"
    );
    let query = format!("?token={tok}");
    let (page_addr, mut rx) = page_server(test_page_asking(
        &edge.addr.to_string(),
        "paid/show",
        &query,
    ))
    .await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = headless(&format!("http://{page_addr}/"), profile.path());
    let report = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reported")
        .unwrap();
    let _ = browser.kill().await;
    publisher.abort();
    eprintln!("page reported {report}");
    assert_eq!(field(&report, "path"), Some("mse"), "{report}");
    let t: f64 = field(&report, "t")
        .unwrap_or_else(|| panic!("page reported {report}"))
        .parse()
        .unwrap();
    assert!(t >= 3.0, "played only {t} s in 6 s ({report})");
}

/// The page's Ogg fallback (`?player=ogg`: progressive Ogg Opus in an `<audio>` element)
/// from an edge two hops below the origin plays without stalling: no `waiting` event once it
/// plays (it once had one about every 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_ogg_fallback_plays_from_an_edge_two_hops_down_without_stalls() {
    let o = origin_with(NodeConfig {
        segment_ms: Millis::new(1000),
        ..test_config()
    })
    .await;
    let mid = relay(&[&o]).await;
    let r = relay(&[&mid]).await;
    let edge = http(&r).await;
    let publisher = publish_sample(&o, "live");
    wait_live(&o, "live").await;
    // The edge carries the stream (another listener), as an edge that serves a page has,
    // and holds the six segments of a joining Ogg listener's burst.
    let _other = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "60"])
        .arg(format!("http://{}/live.ogg", edge.addr))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_live(&r, "live").await;
    let held = async {
        loop {
            let span = r
                .node
                .registry
                .get("live")
                .and_then(|s| s.broadcast())
                .map(|b| b.span());
            if span.is_some_and(|s| s.latest.unwrap_or(0) >= s.first.unwrap_or(0) + 6) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the edge holds six segments");
    let (page_addr, mut rx) = page_server(test_page(&edge.addr.to_string(), "live")).await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = headless(&format!("http://{page_addr}/?player=ogg"), profile.path());
    let report = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reported")
        .unwrap();
    let _ = browser.kill().await;
    publisher.abort();
    eprintln!("page reported {report}");
    assert_eq!(
        field(&report, "path"),
        Some("ogg"),
        "the Ogg fallback ({report})"
    );
    let t: f64 = field(&report, "t")
        .unwrap_or_else(|| panic!("page reported {report}"))
        .parse()
        .unwrap();
    assert!(
        t >= 3.0,
        "the <audio> element advanced only {t} s in 6 s of playing ({report})"
    );
    assert_eq!(
        field(&report, "waits"),
        Some("0"),
        "it stalled while playing ({report})"
    );
}
