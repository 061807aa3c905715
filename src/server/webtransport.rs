//! WebTransport on the node's QUIC port: a browser's connection (ALPN `h3`) carries the
//! same listener protocol as the native client, on the same engine and fan-out. Only the
//! envelope differs, and only at the start of streams:
//!
//! - HTTP/3 first: each side's control stream with its SETTINGS (ours say WebTransport, one
//!   session), the browser's QPACK streams (read and let go: no dynamic table here), and an
//!   extended CONNECT request on a bidirectional stream, answered 200: the session.
//! - The session's first bidirectional stream (`0x41`, session id) is the listener's control
//!   stream; each segment stream the node opens begins `0x54`, session id (`Envelope`), and a
//!   segment given up is reset with WebTransport's code for `skipped`.
//!
//! The HTTP/3 framing and QPACK are `web-transport-proto`'s (sans I/O, no dynamic table):
//! the crates that drive WebTransport themselves (web-transport-quinn, wtransport, h3) own
//! their connections on quinn's async endpoint, and the node's connections are the engine's.

use std::collections::HashMap;

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use quinn_proto::{Connection, Dir, StreamId, VarInt};
use tracing::debug;
use web_transport_proto as wtp;

use super::session::{Session, Sessions};
use crate::egress::quic::Envelope;
use crate::engine::{read_stream, read_stream_at_most, Read};
use crate::proto::webtransport::{preamble, segment_prefix, wt_code, Preamble};
use crate::proto::ErrorCode;

/// Most bytes a browser's stream may send before it says what it is (a CONNECT request's
/// headers are a few hundred).
const MAX_PREAMBLE: usize = 16 * 1024;
/// Unidirectional streams a browser opens: its HTTP/3 control stream and QPACK's two (and
/// one to spare).
const PEER_UNI: u32 = 4;
/// Bidirectional: the CONNECT request and the session's control stream.
const PEER_BI: u32 = 2;

/// HTTP/3 error codes (RFC 9114 §8.1) the node closes with.
pub(super) mod h3 {
    pub const NO_ERROR: u32 = 0x100;
    pub const STREAM_CREATION_ERROR: u32 = 0x103;
    pub const CLOSED_CRITICAL_STREAM: u32 = 0x104;
    pub const REQUEST_REJECTED: u32 = 0x10b;
    pub const MESSAGE_ERROR: u32 = 0x10e;
}

/// One browser connection's HTTP/3 state.
pub(super) struct Wt {
    /// The browser's streams whose first bytes have not yet said what they are.
    opening: HashMap<StreamId, BytesMut>,
    /// Its HTTP/3 control stream and QPACK's two (by type 0, 2, 3): read only to be let go,
    /// one of each for the connection's life.
    critical: [Option<StreamId>; 4],
    /// The session's CONNECT stream, once answered.
    session: Option<StreamId>,
    /// The session's control stream was taken.
    control: bool,
    /// What the session's segment streams carry first.
    pub(super) envelope: Envelope,
}

/// What a browser's stream came to.
pub(super) enum Next {
    Nothing,
    /// The session's control stream, with what followed its preamble.
    Control(StreamId, BytesMut),
    /// The connection ends: HTTP/3 code, why.
    Close(u32, String),
}

impl Wt {
    /// HTTP/3 begins on a connection that chose `h3`: our control stream with our SETTINGS,
    /// and room for the browser's streams.
    pub(super) fn start(conn: &mut Connection) -> Option<Wt> {
        conn.set_max_concurrent_streams(Dir::Uni, VarInt::from_u32(PEER_UNI));
        conn.set_max_concurrent_streams(Dir::Bi, VarInt::from_u32(PEER_BI));
        let id = conn.streams().open(Dir::Uni)?;
        let mut settings = wtp::Settings::default();
        settings.enable_webtransport(1);
        let mut buf = BytesMut::new();
        settings.encode(&mut buf);
        // A few dozen bytes into a fresh stream: taken whole.
        conn.send_stream(id).write(&buf).ok()?;
        Some(Wt {
            opening: HashMap::new(),
            critical: [None; 4],
            session: None,
            control: false,
            envelope: Envelope::native(),
        })
    }

    /// The browser opened streams: each is read until it says what it is.
    pub(super) fn opened(&mut self, conn: &mut Connection, dir: Dir) -> Vec<StreamId> {
        let mut new = Vec::new();
        while let Some(id) = conn.streams().accept(dir) {
            self.opening.insert(id, BytesMut::new());
            new.push(id);
        }
        new
    }

    /// Whether `id` is one of the browser's streams this state reads.
    pub(super) fn reads(&self, id: StreamId) -> bool {
        self.opening.contains_key(&id)
            || self.critical.contains(&Some(id))
            || self.session == Some(id)
    }

    /// Stream `id` has data (or ended).
    pub(super) fn readable(&mut self, conn: &mut Connection, id: StreamId) -> Next {
        if self.session == Some(id) || self.critical.contains(&Some(id)) {
            // Capsules on the session (a close, maybe) and the browser's HTTP/3 and QPACK
            // streams: read and let go. The session's end ends the connection; so does the
            // end of a stream HTTP/3 keeps open for the connection's life.
            let mut sink = BytesMut::new();
            let end = read_stream(conn, id, &mut sink);
            return match end {
                Read::More => Next::Nothing,
                _ if self.session == Some(id) => {
                    Next::Close(h3::NO_ERROR, "the browser closed its session".into())
                }
                _ => Next::Close(
                    h3::CLOSED_CRITICAL_STREAM,
                    "the browser closed an HTTP/3 control or QPACK stream".into(),
                ),
            };
        }
        let Some(buf) = self.opening.get_mut(&id) else {
            return Next::Nothing;
        };
        let room = MAX_PREAMBLE.saturating_sub(buf.len());
        let end = read_stream_at_most(conn, id, buf, room);
        let ended = !matches!(end, Read::More);
        let got = self.classify(conn, id);
        match got {
            Next::Nothing
                if ended
                    || self
                        .opening
                        .get(&id)
                        .is_some_and(|b| b.len() >= MAX_PREAMBLE) =>
            {
                self.opening.remove(&id);
                if ended {
                    debug!(?id, "a browser stream ended before it said what it is");
                    return Next::Nothing;
                }
                Next::Close(h3::MESSAGE_ERROR, "a stream's preamble is too long".into())
            }
            other => other,
        }
    }

    /// Says what stream `id` is, once its first bytes have come.
    fn classify(&mut self, conn: &mut Connection, id: StreamId) -> Next {
        let Some(buf) = self.opening.get(&id) else {
            return Next::Nothing;
        };
        let said = preamble(buf, id.dir() == Dir::Uni);
        if said == Preamble::More {
            return Next::Nothing;
        }
        let Some(mut buf) = self.opening.remove(&id) else {
            return Next::Nothing;
        };
        match said {
            Preamble::More => Next::Nothing,
            Preamble::Critical(kind) => {
                let slot = &mut self.critical[kind as usize & 3];
                if slot.is_some() {
                    return Next::Close(
                        h3::STREAM_CREATION_ERROR,
                        format!("a second HTTP/3 stream of type {kind}"),
                    );
                }
                *slot = Some(id);
                self.readable(conn, id)
            }
            Preamble::Refuse => {
                let _ = conn
                    .recv_stream(id)
                    .stop(VarInt::from_u32(h3::STREAM_CREATION_ERROR));
                Next::Nothing
            }
            Preamble::Stream { session, used } => {
                // The session's first stream is its control stream; it has only one.
                if self.session.map(u64::from) != Some(session) || self.control {
                    let _ = conn.recv_stream(id).stop(code(wt_code(0)));
                    let _ = conn.send_stream(id).reset(code(wt_code(0)));
                    return Next::Nothing;
                }
                self.control = true;
                buf.advance(used);
                Next::Control(id, buf)
            }
            Preamble::Request(request) => self.request(conn, id, request),
        }
    }

    /// An HTTP/3 request on stream `id`: the session's CONNECT, once.
    fn request(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        request: Result<String, String>,
    ) -> Next {
        let status = match (&request, self.session) {
            (Ok(_), Some(_)) => http::StatusCode::TOO_MANY_REQUESTS,
            (Ok(url), None) => {
                debug!(%url, "WebTransport session");
                http::StatusCode::OK
            }
            (Err(e), _) => {
                debug!(?id, "not a WebTransport request: {e}");
                http::StatusCode::BAD_REQUEST
            }
        };
        let mut out = BytesMut::new();
        if wtp::ConnectResponse::new(status).encode(&mut out).is_err() {
            return Next::Close(h3::REQUEST_REJECTED, "cannot answer a request".into());
        }
        let _ = conn.send_stream(id).write(&out);
        if status != http::StatusCode::OK {
            let _ = conn.send_stream(id).finish();
            let _ = conn
                .recv_stream(id)
                .stop(VarInt::from_u32(h3::REQUEST_REJECTED));
            return Next::Nothing;
        }
        self.session = Some(id);
        self.envelope = Envelope {
            prefix: segment_prefix(u64::from(id)),
            skipped: code(wt_code(ErrorCode::Skipped.as_u64() as u32)),
            titles: false,
        };
        // What came after the request on its stream (capsules) is read from now on.
        self.readable(conn, id)
    }
}

/// Whether the peer chose HTTP/3 (a browser, for WebTransport) rather than quicast's own ALPN.
pub(super) fn chose_h3(conn: &Connection) -> bool {
    conn.crypto_session()
        .handshake_data()
        .and_then(|d| {
            d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                .ok()
        })
        .is_some_and(|d| d.protocol.as_deref() == Some(crate::transport::H3))
}

impl Sessions {
    /// One of a browser's streams has data: HTTP/3 until its session's control stream, which
    /// is read as a native client's is.
    pub(super) fn browser_stream(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        id: StreamId,
        now: Instant,
    ) {
        let Some(wt) = s.wt.as_mut() else { return };
        match wt.readable(conn, id) {
            Next::Nothing => {}
            Next::Control(id, rest) => {
                s.ctl = Some(id);
                s.ctl_in = rest;
                self.read_control(conn, s, now);
            }
            Next::Close(code, why) => {
                debug!(remote = %s.remote, "browser connection closed: {why}");
                s.why = Some(why.clone());
                conn.close(now, VarInt::from_u32(code), Bytes::from(why.into_bytes()));
            }
        }
    }
}

/// A WebTransport code as QUIC takes it (every one fits a varint).
fn code(n: u64) -> VarInt {
    VarInt::from_u64(n).unwrap_or(VarInt::from_u32(0))
}
