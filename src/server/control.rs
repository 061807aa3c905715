//! A QUIC connection's control stream, our side: messages queued and written as the
//! stream takes them (bounded), and refusals (an ERROR, then the connection closed with the
//! same code and reason).

use std::time::Instant;

use bytes::Bytes;
use quinn_proto::Connection;

use super::session::Session;
use crate::egress::quic::{write_all, Wrote};
use crate::error::Error;
use crate::proto::{ErrorCode, Message};
use crate::transport::varint;

/// Control messages a peer may leave unread before it is let go.
const MAX_CONTROL_BACKLOG: usize = 64;

/// Queues a control message and writes what the stream takes.
pub(super) fn control(conn: &mut Connection, s: &mut Session, m: &Message) {
    s.ctl_out.push(m.to_bytes());
    flush_control(conn, s);
}

pub(super) fn flush_control(conn: &mut Connection, s: &mut Session) {
    let Some(id) = s.ctl else { return };
    if s.ctl_out.is_empty() {
        return;
    }
    if let Wrote::Stopped | Wrote::Gone = write_all(conn, id, &mut s.ctl_out) {
        s.ctl_out.clear();
    }
    // Bounded: a peer that never reads its control stream is not worth holding.
    if s.ctl_out.len() > MAX_CONTROL_BACKLOG {
        refuse(conn, s, Error::protocol("control stream not read"));
    }
}

pub(super) fn close(conn: &mut Connection, code: ErrorCode, reason: &str) {
    conn.close(
        Instant::now(),
        varint(code),
        Bytes::copy_from_slice(reason.as_bytes()),
    );
}

/// Tells the peer why, logs it, and closes.
pub(super) fn refuse(conn: &mut Connection, s: &mut Session, e: Error) {
    let e = e.downstream();
    crate::bounded_warn!(
        crate::node::PEER_MISTAKES,
        side = %e.side(),
        code = %e.code(),
        remote = %s.remote,
        "closing connection: {e}"
    );
    refuse_quietly(conn, s, &e);
}

/// Tells the peer `e` (an ERROR on its control stream, if it has one) and closes its
/// connection with the same code and reason.
pub(super) fn refuse_quietly(conn: &mut Connection, s: &mut Session, e: &Error) {
    if conn.is_closed() {
        return;
    }
    s.why = Some(e.to_string());
    if let Some(id) = s.ctl {
        let m = Message::Error {
            code: e.code().as_u64(),
            reason: e.reason().to_string(),
        }
        .to_bytes();
        let _ = conn.send_stream(id).write(&m);
    }
    close(conn, e.code(), e.reason());
}
