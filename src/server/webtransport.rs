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

use bytes::{Buf, BytesMut};
use quinn_proto::{Connection, Dir, StreamId, VarInt};
use tracing::debug;
use web_transport_proto as wtp;

use crate::egress::quic::Envelope;
use crate::engine::{read_stream, read_stream_at_most, Read};

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
    pub const REQUEST_REJECTED: u32 = 0x10b;
    pub const MESSAGE_ERROR: u32 = 0x10e;
}

/// WebTransport's application error code `n`, as HTTP/3 carries it (RFC 9297 §4.4,
/// draft-ietf-webtrans-http3 §4.3): codes in HTTP/3's space skip its reserved values.
pub fn wt_code(n: u32) -> VarInt {
    let n = u64::from(n);
    VarInt::from_u64(0x52e4_a40f_a8db + n + n / 0x1e).unwrap_or(VarInt::from_u32(0))
}

/// One browser connection's HTTP/3 state.
pub(super) struct Wt {
    /// The browser's streams whose first bytes have not yet said what they are.
    opening: HashMap<StreamId, BytesMut>,
    /// Its streams read only to be let go (its HTTP/3 control stream, QPACK's).
    ignored: Vec<StreamId>,
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
            ignored: Vec::new(),
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
        self.opening.contains_key(&id) || self.ignored.contains(&id) || self.session == Some(id)
    }

    /// Stream `id` has data (or ended).
    pub(super) fn readable(&mut self, conn: &mut Connection, id: StreamId) -> Next {
        if self.session == Some(id) || self.ignored.contains(&id) {
            // Capsules on the session (a close, maybe) and the browser's HTTP/3 and QPACK
            // streams: read and let go. The session's end ends the connection.
            let mut sink = BytesMut::new();
            let end = read_stream(conn, id, &mut sink);
            return match end {
                Read::More => Next::Nothing,
                _ if self.session == Some(id) => {
                    Next::Close(h3::NO_ERROR, "the browser closed its session".into())
                }
                _ => Next::Nothing,
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
            Next::Nothing if ended || self.opening.get(&id).is_some_and(|b| b.len() >= MAX_PREAMBLE) => {
                self.opening.remove(&id);
                if ended {
                    debug!(?id, "a browser stream ended before it said what it is");
                    return Next::Nothing;
                }
                Next::Close(
                    h3::MESSAGE_ERROR,
                    "a stream's preamble is too long".into(),
                )
            }
            other => other,
        }
    }

    /// Says what stream `id` is, once its first bytes have come.
    fn classify(&mut self, conn: &mut Connection, id: StreamId) -> Next {
        let Some(buf) = self.opening.get(&id) else {
            return Next::Nothing;
        };
        let mut r = &buf[..];
        let Ok(kind) = wtp::VarInt::decode(&mut r) else {
            return Next::Nothing;
        };
        let kind = kind.into_inner();
        if id.dir() == Dir::Uni {
            self.opening.remove(&id);
            // 0: HTTP/3 control, 2 and 3: QPACK encoder and decoder. Anything else (a
            // push, a browser's own WebTransport stream) is not wanted here.
            if matches!(kind, 0x00 | 0x02 | 0x03) {
                self.ignored.push(id);
                let _ = self.readable(conn, id);
            } else {
                let _ = conn
                    .recv_stream(id)
                    .stop(VarInt::from_u32(h3::STREAM_CREATION_ERROR));
            }
            return Next::Nothing;
        }
        if kind == 0x41 {
            // A WebTransport stream: its session, then the listener protocol.
            let Ok(session) = wtp::VarInt::decode(&mut r) else {
                return Next::Nothing;
            };
            let used = buf.len() - r.len();
            let Some(mut buf) = self.opening.remove(&id) else {
                return Next::Nothing;
            };
            if self.session.map(u64::from) != Some(session.into_inner()) || self.control {
                let _ = conn.recv_stream(id).stop(wt_code(0));
                let _ = conn.send_stream(id).reset(wt_code(0));
                return Next::Nothing;
            }
            self.control = true;
            buf.advance(used);
            return Next::Control(id, buf);
        }
        // An HTTP/3 request: the session's CONNECT, once.
        let mut whole = &buf[..];
        let request = wtp::ConnectRequest::decode(&mut whole);
        if let Err(wtp::ConnectError::UnexpectedEnd) = request {
            return Next::Nothing;
        }
        self.opening.remove(&id);
        let status = match (&request, self.session) {
            (Ok(_), Some(_)) => http::StatusCode::TOO_MANY_REQUESTS,
            (Ok(req), None) => {
                debug!(url = %req.url, "WebTransport session");
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
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(h3::REQUEST_REJECTED));
            return Next::Nothing;
        }
        self.session = Some(id);
        let mut prefix = BytesMut::new();
        wtp::VarInt::from_u32(0x54).encode(&mut prefix);
        if let Ok(v) = wtp::VarInt::from_u64(u64::from(id)) {
            v.encode(&mut prefix);
        }
        self.envelope = Envelope {
            prefix: prefix.freeze(),
            skipped: wt_code(crate::proto::ErrorCode::Skipped.as_u64() as u32),
        };
        // What came after the request on its stream (capsules) is read from now on.
        let _ = self.readable(conn, id);
        Next::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::wt_code;

    #[test]
    fn webtransport_codes_skip_http3s_reserved_values() {
        assert_eq!(wt_code(0).into_inner(), 0x52e4_a40f_a8db);
        assert_eq!(wt_code(5).into_inner(), 0x52e4_a40f_a8e0);
        // 0x1e: the first that steps over a reserved value.
        assert_eq!(wt_code(0x1e).into_inner(), 0x52e4_a40f_a8db + 0x1f);
    }
}
