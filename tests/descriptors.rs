//! A node whose process has run out of file descriptors answers newcomers 503 and keeps
//! accepting once it has some again: it never hangs them, nor spins on accept.
//!
//! Alone in its own test binary: it lowers this process's descriptor limit.

mod common;

use common::*;
use quicast::HttpServer;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_newcomers_get_503_not_a_hang() {
    let o = origin().await;
    // No budget of its own: this node relies on the process's limit alone.
    let h = HttpServer::start(o.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(256.min(soft), hard).unwrap();
    // Fill the process with descriptors (nothing else here opens any meanwhile), but for
    // the newcomer's socket: connecting it later takes none.
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    assert!(filler.len() > 100, "filled with {}", filler.len());
    filler.pop();
    let newcomer = tokio::net::TcpSocket::new_v4().unwrap();
    // The node cannot take the newcomer in for good, but answers it.
    let mut c = newcomer.connect(h.addr).await.unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Descriptors free again: newcomers are served.
    drop(filler);
    drop(c);
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
    let (code, body) = loop {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .arg(format!("http://{}/streams", h.addr))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        // The node lets go of the closed connections as it notices them.
        if code != "503" {
            break (code.to_string(), body.to_string());
        }
    };
    assert_eq!(code, "200");
    assert_eq!(body, "[]");
}
