//! A node's front doors, where the shells meet: the QUIC server (accept, handshake, the
//! control loop that hands subscriptions to the egress and a publish to the ingress) and the
//! HTTP server (accept, framing, routing to the egress, the ingress and the node's pages).

mod admin;
mod control;
mod delivery;
mod hello;
pub mod http;
mod publishing;
mod quic;
mod session;
mod webtransport;

use std::sync::Arc;

pub use admin::AdminServer;
pub use http::HttpServer;
pub use quic::QuicServer;

use crate::client::QuicParents;
use crate::error::Result;
use crate::node::{Node, NodeConfig, Parents};

/// A node that runs `cfg`: a relay reaches its parents over QUIC.
pub fn new_node(cfg: NodeConfig) -> Result<Arc<Node>> {
    let parents = if cfg.is_relay() {
        Some(Arc::new(QuicParents::new(&cfg)?) as Arc<dyn Parents>)
    } else {
        None
    };
    Node::new(cfg, parents)
}
