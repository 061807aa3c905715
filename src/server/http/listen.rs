//! `GET /STREAM.ogg`: the connection becomes a progressive Ogg Opus stream, for as long as
//! the broadcast lasts (its end, or the listener's, closes it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::auth::{may_listen, refusal_reply, ListenToken};
use super::body::Conn;
use super::head::RequestHead;
use super::{cors, Reply};
use crate::egress::http_ogg;
use crate::node::{HttpAdmission, Node, Peer};
use crate::proto::Role;

/// The kernel's send buffer for a listener's socket (it doubles what is asked). Small, so a
/// listener that stops reading fills it within seconds, its writes block, and the fan-out
/// moves it forward by whole segments as it does a QUIC listener: what it costs stays
/// bounded in the kernel too (left to itself, the kernel grows a send buffer to megabytes).
/// Large enough for the burst a player is sent as it joins.
pub(super) const LISTENER_SEND_BUFFER: usize = 32 * 1024;

pub(super) fn ogg_headers(r: &mut Reply) {
    r.set("Content-Type", "audio/ogg");
    r.set("Cache-Control", "no-cache, no-store");
    r.set("X-Content-Type-Options", "nosniff");
}

/// Answers a listener of `name` on `conn` and hands it to the stream's herd (or refuses it).
#[allow(clippy::too_many_arguments)]
pub(super) async fn ogg(
    node: &Arc<Node>,
    herds: &http_ogg::Herds,
    mut conn: Conn,
    head: &RequestHead,
    remote: SocketAddr,
    name: String,
    low_latency: bool,
    arrived: Instant,
    admission: HttpAdmission,
) {
    let token = ListenToken::of(head);
    let presented = match may_listen(node, &name, token.value()) {
        Ok(p) => p,
        Err(mut refusal) => {
            cors(&mut refusal);
            let _ = refusal.send(&mut conn.tcp, false, false, head.http10).await;
            return;
        }
    };
    let _ = socket2::SockRef::from(&conn.tcp).set_send_buffer_size(LISTENER_SEND_BUFFER);
    let mut peer = Peer::new(Role::Listener, remote.ip()).presenting(presented);
    peer.since = arrived;
    let listener = match http_ogg::listen(node.clone(), name, &peer, low_latency).await {
        Ok(l) => l,
        Err(e) => {
            let mut r = refusal_reply(&e);
            cors(&mut r);
            let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
            return;
        }
    };
    let mut r = Reply::new(200, "audio/ogg", bytes::Bytes::new());
    ogg_headers(&mut r);
    cors(&mut r);
    let start = r.head(None, false, head.http10);
    if conn.tcp.write_all(&start).await.is_err() {
        return;
    }
    // From here the stream's herd serves it, with every other HTTP listener of the stream.
    herds.join(listener, conn.tcp, remote, admission);
}
