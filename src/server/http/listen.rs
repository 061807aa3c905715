//! `GET /STREAM.ogg` (`.mp3`, `.aac`, or bare `/STREAM`): the connection becomes a progressive
//! stream in the codec's own format (Ogg Opus, MP3, AAC in ADTS), with ICY metadata for a
//! listener that asks, for as long as the broadcast lasts (its end, or the listener's, closes
//! it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::auth::{may_listen, refusal_reply, ListenToken};
use super::body::Conn;
use super::head::RequestHead;
use super::{cors, Reply};
use crate::egress::progressive;
use crate::node::{HttpAdmission, Node, Peer};
use crate::proto::Role;

/// The kernel's send buffer for a listener's socket (it doubles what is asked). Small, so a
/// listener that stops reading fills it within seconds, its writes block, and the fan-out
/// moves it forward by whole segments as it does a QUIC listener: what it costs stays
/// bounded in the kernel too (left to itself, the kernel grows a send buffer to megabytes).
/// Large enough for the burst a player is sent as it joins.
pub(super) const LISTENER_SEND_BUFFER: usize = 32 * 1024;

pub(super) fn stream_headers(r: &mut Reply, content_type: &'static str) {
    r.set("Content-Type", content_type);
    r.set("Cache-Control", "no-cache, no-store");
    r.set("X-Content-Type-Options", "nosniff");
}

/// Whether a bare `/NAME` names a stream this node knows of (live here or in the tree): a
/// request for anything else (a browser's `/favicon.ico`) is not held in a waiting room.
pub(super) fn known(node: &Node, name: &str) -> bool {
    node.registry.get(name).is_some() || node.catalog().contains_key(name)
}

/// Answers a listener of `name` on `conn` and hands it to the stream's herd (or refuses it).
/// `codec`: the one its URL's extension asks for.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream(
    node: &Arc<Node>,
    herds: &progressive::Herds,
    mut conn: Conn,
    head: &RequestHead,
    remote: SocketAddr,
    (name, codec, low_latency): (String, Option<u64>, bool),
    arrived: Instant,
    admission: HttpAdmission,
) {
    if codec.is_none() && !known(node, &name) {
        let mut r = Reply::text(404, format!("no stream {name}"));
        cors(&mut r);
        let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
        return;
    }
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
    let listener =
        match progressive::listen(node.clone(), name.clone(), &peer, low_latency, codec).await {
            Ok(l) if head.icy_metadata => l.with_icy(crate::media::icy::DEFAULT_METAINT),
            Ok(l) => l,
            Err(e) => {
                let mut r = refusal_reply(&e);
                cors(&mut r);
                let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
                return;
            }
        };
    let mut r = Reply::new(200, listener.content_type, bytes::Bytes::new());
    stream_headers(&mut r, listener.content_type);
    if head.icy_metadata {
        // As Icecast says it: the interval, and the stream's name.
        r.set(
            "icy-metaint",
            crate::media::icy::DEFAULT_METAINT.to_string(),
        );
        r.set("icy-name", name);
    }
    cors(&mut r);
    let start = r.head(None, false, head.http10);
    if conn.tcp.write_all(&start).await.is_err() {
        return;
    }
    // From here the stream's herd serves it, with every other HTTP listener of the stream.
    herds.join(listener, conn.tcp, remote, admission);
}
