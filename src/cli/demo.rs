//! `quicast demo`: an origin, a mid-tier relay and two edge relays in one process on loopback,
//! with the shipped sample published in a loop.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use quicast::client::{publish, Client, Input, Origin, PublishOptions};
use quicast::proto::QuicUrl;
use quicast::{new_node, HttpServer, Identity, NodeConfig, QuicServer, Result, Trust};
use tracing::{info_span, warn, Instrument};

/// A short Ogg Opus clip (8 s of tones, made with ffmpeg's libopus), shipped in the binary.
pub const SAMPLE: &[u8] = include_bytes!("demo/sample.opus");
pub const STREAM: &str = "demo";

pub struct Demo {
    pub origin: QuicServer,
    pub mid: QuicServer,
    pub edges: Vec<QuicServer>,
    /// HTTP listeners on the edges (players and browsers).
    pub edge_http: Vec<HttpServer>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

async fn node(name: &str, port: u16, upstream: Option<&QuicServer>) -> Result<QuicServer> {
    let mut cfg = NodeConfig {
        name: Some(name.parse().map_err(quicast::Error::local)?),
        ..NodeConfig::default()
    };
    if let Some(parent) = upstream {
        cfg.upstream = vec![QuicUrl::parse(&format!("quic://{}", parent.addr))?];
        cfg.fingerprint = vec![parent.fingerprint.parse().map_err(quicast::Error::local)?];
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let span = info_span!("node", name);
    let _e = span.enter();
    QuicServer::start(new_node(cfg)?, addr, &Identity::self_signed(&[])?).await
}

/// Starts the tree. `base_port` 0 picks free ports.
pub async fn start(base_port: u16) -> Result<Demo> {
    let port = |i: u16| if base_port == 0 { 0 } else { base_port + i };
    let origin = node("origin", port(0), None).await?;
    let mid = node("mid", port(1), Some(&origin)).await?;
    let edges = vec![
        node("edge-1", port(2), Some(&mid)).await?,
        node("edge-2", port(3), Some(&mid)).await?,
    ];
    // HTTP on the same port numbers as QUIC (TCP beside UDP).
    let mut edge_http = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], port(2 + i as u16)));
        edge_http.push(HttpServer::start(e.node.clone(), addr).await?);
    }

    let url = QuicUrl::parse(&format!("quic://{}/{STREAM}", origin.addr))?;
    let origin_addr = origin.addr;
    let trust = Trust::pinned(&[origin.fingerprint.parse().map_err(quicast::Error::local)?]);
    let publisher = tokio::spawn(
        async move {
            let opts = PublishOptions {
                path: STREAM.into(),
                input: Input::Memory(Bytes::from_static(SAMPLE)),
                looping: true,
                realtime: true,
                title: Some("quicast demo: a tone, looped".into()),
            };
            loop {
                let r = async {
                    let origin = Origin {
                        client: Client::for_target(&origin_addr, &trust)?,
                        url: url.clone(),
                        token: String::new(),
                    };
                    publish(vec![origin], &opts).await
                }
                .await;
                if let Err(e) = r {
                    warn!("demo publisher: {e}; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        .instrument(info_span!("demo_publisher")),
    );
    Ok(Demo {
        origin,
        mid,
        edges,
        edge_http,
        publisher,
    })
}

impl Demo {
    pub fn shutdown(&self) {
        self.publisher.abort();
        for h in &self.edge_http {
            h.close();
        }
        for s in self.edges.iter().chain([&self.mid, &self.origin]) {
            s.close();
        }
    }

    pub fn nodes(&self) -> Vec<&QuicServer> {
        let mut v = vec![&self.origin, &self.mid];
        v.extend(self.edges.iter());
        v
    }

    pub fn edge_urls(&self) -> Vec<(String, String)> {
        self.edges
            .iter()
            .map(|e| (format!("quic://{}/{STREAM}", e.addr), e.fingerprint.clone()))
            .collect::<Vec<_>>()
    }
}

pub(crate) async fn run_demo(base_port: u16) -> anyhow::Result<()> {
    let demo = start(base_port).await.with_context(|| {
        format!(
            "starting the demo on ports {base_port}..{} (try --base-port)",
            base_port.saturating_add(3)
        )
    })?;
    println!(
        "quicast demo: origin {} -> mid relay {} -> edges {}",
        demo.origin.addr,
        demo.mid.addr,
        demo.edges
            .iter()
            .map(|e| e.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "publishing the sample in a loop to stream '{}'. Listen on an edge with:",
        STREAM
    );
    for (url, fp) in demo.edge_urls() {
        println!("  quicast listen {url} --fingerprint {fp} --output - | ffplay -nodisp -");
    }
    for h in &demo.edge_http {
        println!(
            "  ffplay -nodisp http://{}/{}.ogg     (or open http://{}/ in a browser)",
            h.addr, STREAM, h.addr
        );
    }
    println!("A browser plays from an edge's page:");
    for h in &demo.edge_http {
        println!(
            "  open http://{}/     (WebTransport + WebCodecs in Chromium, Edge, Firefox; else LL-HLS, else Ogg)",
            h.addr
        );
    }
    println!("(or: cargo run --release -- listen ... ; add --duration 10 --output demo.opus to save 10 s)");
    println!("Ctrl-C stops the demo.");
    crate::shutdown_signal().await;
    println!("stopping");
    demo.shutdown();
    for s in demo.nodes() {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.wait_idle()).await;
    }
    Ok(())
}
