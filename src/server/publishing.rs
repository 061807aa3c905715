//! A QUIC publisher on its connection: its frame stream taken and fed to the ingress (paced
//! to real time), its silence watched, its failure or takeover told. No task per publisher:
//! the shard's loop calls in with each event (see `session`).

use std::cmp::Reverse;
use std::time::Instant;

use quinn_proto::{Connection, Dir};
use tracing::{info, warn};

use super::control::{close, refuse_quietly};
use super::session::{Due, Session, Sessions};
use crate::error::{Error, Kind};
use crate::proto::{ErrorCode, Role};
use crate::transport::varint;

impl Sessions {
    /// Takes the publisher's frame stream, once it publishes and has opened it.
    /// Streams a native peer opens that it should not have (any but a publisher's one frame stream) are stopped unread.
    pub(super) fn open_frames(&mut self, conn: &mut Connection, s: &mut Session, now: Instant) {
        if let Some(ingest) = s.ingest.as_mut() {
            if ingest.stream.is_none() {
                if let Some(id) = conn.streams().accept(Dir::Uni) {
                    ingest.stream = Some(id);
                    self.feed(conn, s, now);
                }
            }
        }
        // Before its hello a peer may be a publisher whose frame stream came first: it
        // waits. After, a stream that is not the frame stream is not read.
        let publishing = s.ingest.as_ref().is_some_and(|i| i.stream.is_none())
            || (!s.published && s.hello.as_ref().is_some_and(|h| h.0 == Role::Publisher));
        if s.hello.is_some() && !publishing {
            while let Some(id) = conn.streams().accept(Dir::Uni) {
                let _ = conn
                    .recv_stream(id)
                    .stop(varint(ErrorCode::ProtocolViolation));
            }
        }
    }

    pub(super) fn feed(&mut self, conn: &mut Connection, s: &mut Session, now: Instant) {
        let Some(ingest) = s.ingest.as_mut() else {
            return;
        };
        match ingest.feed(&self.node, conn, now) {
            Ok(false) => {
                // Ahead of real time: read again when due (once: `paced` is the one pending).
                if let Some(at) = ingest.paced_until(now) {
                    if !std::mem::replace(&mut s.paced, true) {
                        self.deadlines
                            .push(Reverse((at, s.handle, s.uid, Due::Pace)));
                    }
                }
            }
            Ok(true) => {
                if let Some(i) = s.ingest.take() {
                    i.publishing.finish();
                }
                if s.closing {
                    close(conn, ErrorCode::NoError, "bye");
                }
            }
            Err(e) => self.publisher_failed(conn, s, e),
        }
    }

    /// The publish ended badly: the peer is told (unless it is gone, or ended it), and the
    /// broadcast waits out its grace period for the publisher's return.
    pub(super) fn publisher_failed(&mut self, conn: &mut Connection, s: &mut Session, e: Error) {
        let Some(i) = s.ingest.take() else { return };
        if e.is_gone() || e.remote_code().is_some() {
            warn!(side = "downstream", remote = %s.remote, "publisher lost: {e}");
        } else if e.kind() == Kind::Timeout {
            let silence_ms = self.node.cfg.source_timeout_ms.get().as_millis() as u64;
            warn!(side = "downstream", remote = %s.remote, silence_ms, "publisher lost: {e}");
            refuse_quietly(conn, s, &e);
        } else {
            warn!(side = "downstream", code = %e.code(), remote = %s.remote, "publisher refused: {e}");
            refuse_quietly(conn, s, &e);
        }
        i.publishing.lost();
        if s.closing {
            close(conn, ErrorCode::NoError, "bye");
        }
    }

    pub(super) fn watch_silence(&mut self, s: &Session, now: Instant) {
        let at = now + self.node.cfg.source_timeout_ms.get();
        self.deadlines
            .push(Reverse((at, s.handle, s.uid, Due::Silence)));
    }

    /// A newer publisher with the same credentials took this one's stream over.
    pub(super) fn displaced(&mut self, conn: &mut Connection, s: &mut Session) {
        if s.ingest.take().is_some() {
            info!(remote = %s.remote, "a publisher with the same credentials took over: leaving");
            let e = Error::new(
                Kind::Conflict,
                "a newer publisher with the same credentials took this stream over",
            );
            refuse_quietly(conn, s, &e);
        }
    }
}
