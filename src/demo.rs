//! `quicast demo`: an origin, a mid-tier relay and two edge relays in one process on loopback,
//! with the shipped sample published in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info_span, warn, Instrument};

use crate::client::{Client, QuicUrl};
use crate::error::Result;
use crate::proto::Role;
use crate::publish::{publish, Input, PublishOptions};
use crate::server::{Node, NodeConfig, Server};
use crate::tls::{Identity, Trust};

/// A short Ogg Opus clip (8 s of tones, made with ffmpeg's libopus), shipped in the binary.
pub const SAMPLE: &[u8] = include_bytes!("demo/sample.opus");
pub const STREAM: &str = "demo";

pub struct Demo {
    pub origin: Server,
    pub mid: Server,
    pub edges: Vec<Server>,
    /// HTTP listeners on the edges (players and browsers).
    pub edge_http: Vec<crate::http::HttpServer>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

async fn node(name: &str, port: u16, upstream: Option<&Server>) -> Result<Server> {
    let mut cfg = NodeConfig {
        name: name.into(),
        ..NodeConfig::default()
    };
    if let Some(parent) = upstream {
        cfg.upstream = vec![QuicUrl::parse(&format!("quic://{}", parent.addr))?];
        cfg.upstream_trust = Some(Trust::pinned(std::slice::from_ref(&parent.fingerprint))?);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let span = info_span!("node", name);
    let _e = span.enter();
    Server::start(Node::new(cfg)?, addr, &Identity::self_signed(&[])?).await
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
        edge_http.push(crate::http::HttpServer::start(e.node.clone(), addr).await?);
    }

    let url = QuicUrl::parse(&format!("quic://{}/{STREAM}", origin.addr))?;
    let trust = Trust::pinned(std::slice::from_ref(&origin.fingerprint))?;
    let publisher = tokio::spawn(
        async move {
            let opts = PublishOptions {
                path: STREAM.into(),
                input: Input::Memory(Bytes::from_static(SAMPLE)),
                looping: true,
                realtime: true,
            };
            loop {
                let r = async {
                    let addr = url.resolve().await?;
                    let client = Client::for_target(&addr, &trust)?;
                    let session = client.connect(&url, Role::Publisher, "").await?;
                    publish(&session, &opts).await
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

    pub fn nodes(&self) -> Vec<&Server> {
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

pub fn node_arc(s: &Server) -> &Arc<Node> {
    &s.node
}
