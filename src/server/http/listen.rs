//! `GET /STREAM.ogg`: the connection becomes a progressive Ogg Opus stream, for as long as
//! the broadcast lasts (its end, or the listener's, closes it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::auth::{may_listen, ListenToken};
use super::body::Conn;
use super::head::RequestHead;
use super::{cors, status_for, Reply};
use crate::egress::http_ogg;
use crate::node::{Node, Peer};
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

/// Serves a listener of `name` on `conn` until the broadcast or the listener ends.
pub(super) async fn ogg(
    node: &Arc<Node>,
    mut conn: Conn,
    head: &RequestHead,
    remote: SocketAddr,
    name: String,
    low_latency: bool,
    arrived: Instant,
) {
    let token = ListenToken::of(head);
    if let Err(mut refusal) = may_listen(node, &name, token.value()) {
        cors(&mut refusal);
        let _ = refusal.send(&mut conn.tcp, false, false, head.http10).await;
        return;
    }
    let _ = socket2::SockRef::from(&conn.tcp).set_send_buffer_size(LISTENER_SEND_BUFFER);
    let mut peer = Peer::new(Role::Listener, remote.ip());
    peer.since = arrived;
    let mut rx = match http_ogg::listen(node.clone(), name, &peer, low_latency).await {
        Ok(rx) => rx,
        Err(e) => {
            let mut r = Reply::text(status_for(&e), e.reason());
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
    // Each delivery's shared pages in as few writes as the socket takes (writev).
    while let Some(pages) = rx.recv().await {
        if write_all_vectored(&mut conn.tcp, &pages).await.is_err() {
            return;
        }
    }
    let _ = conn.tcp.shutdown().await;
}

/// Writes every byte of `bufs`, vectored: a delivery's pages are a few shared `Bytes`.
async fn write_all_vectored(
    tcp: &mut tokio::net::TcpStream,
    bufs: &[bytes::Bytes],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    const MAX: usize = 16;
    let (mut i, mut off) = (0, 0);
    while i < bufs.len() {
        let mut slices = [std::io::IoSlice::new(&[]); MAX];
        let mut k = 0;
        for (j, b) in bufs[i..].iter().take(MAX).enumerate() {
            slices[j] = std::io::IoSlice::new(if j == 0 { &b[off..] } else { b });
            k = j + 1;
        }
        let mut n = tcp.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < bufs.len() && n >= bufs[i].len() - off {
            n -= bufs[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}
