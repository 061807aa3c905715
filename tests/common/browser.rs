//! A browser for the tests: headless Chromium on a page the test serves, reporting back
//! over HTTP; and the demo's sample published in real time.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{client, url, Server};

/// A script for a test's page: `insertPage(html, node)` puts a node's page (its body, and
/// `<body>`'s attributes, which tell the player where WebTransport is) into the test's page
/// under `<div id="root">`, with the node as its base address so that the player's requests
/// go there (every node answers with `Access-Control-Allow-Origin: *`), and runs its
/// scripts as they would have run in the page (innerHTML does not run them).
#[allow(dead_code)]
pub const INSERT_PAGE_JS: &str = r#"
function insertPage(html, node) {
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const base = document.createElement('base');
  base.href = node;
  document.head.appendChild(base);
  for (const [k, v] of Object.entries(doc.body.dataset)) document.body.dataset[k] = v;
  const root = document.getElementById('root');
  root.innerHTML = doc.body.innerHTML;
  for (const old of root.querySelectorAll('script')) {
    const s = document.createElement('script');
    s.textContent = old.textContent;
    old.replaceWith(s);
  }
}
"#;

/// Chromium, as installed (.ci/run installs it: apt-get install -y chromium).
pub fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium is needed (.ci/run installs it: apt-get install -y chromium)")
}

/// Headless Chromium on `page` (autoplay allowed, muted), with its profile in `profile`;
/// killed when dropped.
pub fn headless(page: &str, profile: &std::path::Path) -> Child {
    headless_with(page, profile, &[])
}

/// The same, with `extra` flags.
#[allow(dead_code)]
pub fn headless_with(page: &str, profile: &std::path::Path, extra: &[&str]) -> Child {
    headless_command(page, profile, extra).spawn().unwrap()
}

/// The command `headless_with` runs (to add to: a HOME with its own certificate store).
#[allow(dead_code)]
pub fn headless_command(page: &str, profile: &std::path::Path, extra: &[&str]) -> Command {
    let log = std::env::var_os("QUICAST_CHROMIUM_LOG").is_some();
    let mut cmd = Command::new(chromium());
    cmd.args(extra)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--autoplay-policy=no-user-gesture-required",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            &format!("--user-data-dir={}", profile.display()),
            page,
        ])
        // QUICAST_CHROMIUM_LOG=1: the browser's log (the page's console included) on stderr.
        .args(log.then_some("--enable-logging=stderr"))
        .args(log.then_some("--log-net-log=/tmp/chromium-netlog.json"))
        .args(log.then_some("--net-log-capture-mode=Everything"))
        .stdout(Stdio::null())
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .kill_on_drop(true);
    cmd
}

/// The demo's sample, published to `o` as `path` in real time, looped, until aborted.
pub fn publish_sample(o: &Server, path: &str) -> tokio::task::JoinHandle<()> {
    let (c, u, path) = (client(o), url(o, path), path.to_string());
    tokio::spawn(async move {
        let origin = quicast::client::Origin {
            client: c,
            url: u,
            token: String::new(),
        };
        let opts = quicast::client::PublishOptions {
            path,
            input: quicast::client::Input::Memory(bytes::Bytes::from_static(include_bytes!(
                "../../src/cli/demo/sample.opus"
            ))),
            looping: true,
            realtime: true,
            title: None,
        };
        let _ = quicast::client::publish(vec![origin], &opts).await;
    })
}

/// Serves `html` at any address but `/report?QUERY`, whose QUERY it sends to the receiver.
pub async fn page_server(
    html: String,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = pages.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = pages.accept().await.unwrap();
            let (html, tx) = (html.clone(), tx.clone());
            tokio::spawn(async move {
                // The request line and headers, however many reads they take (a report
                // is one long request line).
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 << 10];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 4 << 20 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_string();
                let line = req.lines().next().unwrap_or("").to_string();
                if let Some(q) = line.strip_prefix("GET /report?") {
                    let _ = tx
                        .send(q.split_whitespace().next().unwrap_or("").to_string())
                        .await;
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n")
                        .await;
                } else {
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}", html.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    (addr, rx)
}

/// hls.js as npm has it (`tests/browser/package.json` pins the version, 1.7.4, its lock file
/// the bytes): `dist/hls.min.js`, installed with `npm ci` the first time (.ci/run installs
/// it before the tests). What a site embedding a stream with hls.js runs.
#[allow(dead_code)]
pub fn hls_js() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let js = dir.join("node_modules/hls.js/dist/hls.min.js");
    if !js.exists() {
        let st = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .expect(
                "npm is needed to install hls.js (.ci/run installs it: apt-get install -y npm)",
            );
        assert!(st.success(), "npm ci in {} failed", dir.display());
    }
    std::fs::read_to_string(&js).unwrap_or_else(|e| panic!("{}: {e}", js.display()))
}
