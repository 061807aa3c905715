//! What a session's subscriptions are sent: `SUBSCRIBED` (or the refusal) as each is made,
//! then delivery as the broadcast moves (each egress step over the shared store), and the
//! going-away a draining node tells its peers.

use std::sync::Arc;
use std::time::Instant;

use quinn_proto::Connection;
use tracing::debug;

use super::control::control;
use super::session::Session;
use crate::egress::quic::{step as deliver, Envelope, Sub};
use crate::error::Result;
use crate::node::Node;
use crate::proto::{self, Message};

/// Tells a peer (past its hello) to go, and where: once.
pub(super) fn go_away(conn: &mut Connection, s: &mut Session, alternatives: Vec<String>) {
    if s.hello.is_some() && !s.told {
        s.told = true;
        control(conn, s, &Message::GoAway { alternatives });
    }
}

/// Delivers what subscription `id` has due (see `egress::quic`); once its broadcast is over,
/// tells the subscriber.
pub(super) fn step(node: &Node, conn: &mut Connection, s: &mut Session, id: u64) {
    let Some(sub) = s.subs.get_mut(&id) else {
        return;
    };
    if let Some(last) = deliver(node, conn, sub, id) {
        s.subs.remove(&id);
        debug!(id, last, "broadcast ended");
        control(conn, s, &Message::StreamEnd { id, last_seq: last });
        settle(node, conn, s);
    }
}

/// Counts `s` among its address's idle connections while it has nothing to do (no
/// subscription, made or being made, and no publish); see `Due::Idle` for what becomes of
/// one idle too long.
pub(super) fn settle(node: &Node, conn: &mut Connection, s: &mut Session) {
    let idle = s.subs.is_empty() && s.pending.is_empty() && s.ingest.is_none();
    if idle == s.idle || conn.is_closed() {
        return;
    }
    s.idle = idle;
    node.set_idle(s.remote.ip(), idle);
    if idle {
        s.idle_since = Instant::now();
    }
}

/// Steps every subscription of `s` that `wants` (those a stream's credit was waiting for).
pub(super) fn step_each(
    node: &Node,
    conn: &mut Connection,
    s: &mut Session,
    wants: impl Fn(&Sub) -> bool,
) {
    let ids: Vec<u64> = s
        .subs
        .iter()
        .filter(|(_, sub)| wants(sub))
        .map(|(k, _)| *k)
        .collect();
    for id in ids {
        step(node, conn, s, id);
    }
}

/// A subscription the node made (or refused) for `s`: it is told, and delivery starts.
/// Returns its broadcast when it joined, and whether it is a low-latency one (woken at
/// every frame).
pub(super) fn subscribed(
    node: &Node,
    conn: &mut Connection,
    s: &mut Session,
    id: u64,
    low_latency: bool,
    sub: Result<crate::node::Subscriber>,
) -> Option<(Arc<crate::model::Broadcast>, bool)> {
    // Called off meanwhile: nothing to do.
    s.pending.remove(&id)?;
    // A codec the peer's version does not carry (an old relay or client) is refused, naming
    // the version it needs, rather than sent to fail in its decoder.
    let version = s.version;
    let sub = sub.and_then(|sub| {
        let codec = &sub.cursor.broadcast().codec;
        match codec.min_version() {
            need if need > version => Err(crate::error::Error::new(
                crate::error::Kind::Version,
                format!(
                    "the stream is {}, which protocol version {need} carries; this peer says version {version}: upgrade it",
                    codec.name()
                ),
            )),
            _ => Ok(sub),
        }
    });
    match sub {
        Ok(sub) => {
            let b = sub.cursor.broadcast().clone();
            // Who may listen, as this node passes it on: the stricter of the rule the
            // broadcast came with and this node's own policy.
            let info = (s.version >= 2).then(|| proto::StreamInfo {
                started_ms: b.started_ms(),
                access: node.access().rule_for(&b.path, &b.access()),
            });
            let msg = Message::Subscribed {
                id,
                instance: b.instance,
                codec: b.codec.clone(),
                info,
            };
            control(conn, s, &msg);
            let envelope =
                s.wt.as_ref()
                    .map_or_else(Envelope::native, |w| w.envelope.clone())
                    .titled(s.version >= 3);
            s.subs
                .insert(id, Sub::start(sub, id, low_latency, envelope));
            step(node, conn, s, id);
            // Still on (not over at once): woken from now on.
            s.subs.contains_key(&id).then_some((b, low_latency))
        }
        Err(e) => {
            let msg = Message::SubscribeError {
                id,
                code: e.code().as_u64(),
                reason: e.reason().to_string(),
            };
            control(conn, s, &msg);
            settle(node, conn, s);
            None
        }
    }
}
