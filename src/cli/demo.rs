//! `quicast demo`: an origin, a mid-tier relay and two edge relays in one process on loopback,
//! with the shipped sample published in a loop.

use std::net::SocketAddr;
use std::time::Duration;

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
