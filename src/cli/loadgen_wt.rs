//! The load generator's WebTransport envelope (`loadgen --webtransport`): its listeners
//! reach the node as a browser does (see `server::webtransport` for the node's side), and
//! inside the session speak the same listener protocol as the native ones.
//!
//! - On the handshake: our HTTP/3 control stream with SETTINGS (WebTransport, one session)
//!   and an extended CONNECT request on a bidirectional stream; the session is up once the
//!   node answers 200, and its id is the CONNECT stream's.
//! - The listener's control stream is the session's first bidirectional stream, begun
//!   `0x41`, session id (`control_preamble`).
//! - Each unidirectional stream of the node says first what it is (`uni_preamble`): `0x00`,
//!   its HTTP/3 control stream (read and let go for the connection's life), or `0x54`,
//!   session id, then a segment stream as the native protocol has it.
//!
//! Everything here is bounded: the CONNECT response is read up to `MAX_RESPONSE`, a uni
//! stream's preamble is two varints.

use bytes::{Buf, BytesMut};
use quinn_proto::{Connection, Dir, StreamId, VarInt};
use web_transport_proto as wtp;

use quicast::engine::{read_stream, read_stream_at_most, Read};
use quicast::proto::QuicUrl;
use quicast::{Error, ErrorKind, Result};

/// Most bytes of the node's CONNECT response we wait for (a HEADERS frame of a status and
/// a header or two: a few dozen bytes).
const MAX_RESPONSE: usize = 16 * 1024;

/// HTTP/3's codes (RFC 9114 §8.1) this client closes or stops streams with.
pub(crate) const H3_NO_ERROR: u32 = 0x100;
const H3_STREAM_CREATION_ERROR: u32 = 0x103;

/// Uni stream types (RFC 9114 §6.2, draft-ietf-webtrans-http3 §4.2).
const UNI_CONTROL: u64 = 0x00;
const UNI_WEBTRANSPORT: u64 = 0x54;
/// The signal that begins a WebTransport bidirectional stream.
const BI_WEBTRANSPORT: u32 = 0x41;

/// The URL a session asks for: `https://HOST:PORT/STREAM` for `quic://HOST:PORT/STREAM`.
pub(crate) fn session_url(url: &QuicUrl) -> Result<url::Url> {
    let s = format!("https://{}/{}", url.authority(), url.stream()?);
    url::Url::parse(&s).map_err(|e| Error::local(format!("{s} is not a URL: {e}")))
}

/// One connection's WebTransport session, from the CONNECT request on.
pub(crate) struct WtClient {
    /// The CONNECT request's stream; its id is the session's.
    connect: StreamId,
    /// The node's response as it comes; `None` once the session is up.
    response: Option<BytesMut>,
    /// The node's streams read only to be let go (its HTTP/3 control stream).
    ignored: Vec<StreamId>,
}

/// What a uni stream of the node turned out to be.
pub(crate) enum Uni {
    /// Its preamble has not all come.
    Pending,
    /// A segment stream of our session: its preamble is gone from the buffer, the segment
    /// stream follows.
    Segment,
    /// Not a segment stream (the node's HTTP/3 control stream, read and let go; anything
    /// else, stopped): the caller forgets it.
    Other,
}

impl WtClient {
    /// HTTP/3 begins once the handshake is done: our control stream with our SETTINGS, then
    /// the CONNECT request for `url`.
    pub(crate) fn start(conn: &mut Connection, url: &url::Url) -> Result<WtClient> {
        let mut settings = wtp::Settings::default();
        settings.enable_webtransport(1);
        let mut control = BytesMut::new();
        settings.encode(&mut control);
        let mut request = BytesMut::new();
        wtp::ConnectRequest::new(url.clone())
            .encode(&mut request)
            .map_err(|e| Error::local(format!("cannot write a CONNECT request: {e}")))?;
        let (Some(ctl), Some(connect)) =
            (conn.streams().open(Dir::Uni), conn.streams().open(Dir::Bi))
        else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the node grants no stream for HTTP/3's control stream or the CONNECT request",
            ));
        };
        // A few dozen and a few hundred bytes into fresh streams: taken whole, or the node
        // grants oddly little.
        for (id, bytes) in [(ctl, &control), (connect, &request)] {
            if conn.send_stream(id).write(bytes).ok() != Some(bytes.len()) {
                return Err(Error::protocol(
                    "could not write HTTP/3's SETTINGS or CONNECT",
                ));
            }
        }
        Ok(WtClient {
            connect,
            response: Some(BytesMut::new()),
            ignored: Vec::new(),
        })
    }

    /// The session's id: its CONNECT stream's.
    pub(crate) fn session(&self) -> u64 {
        u64::from(self.connect)
    }

    /// What begins the listener's control stream: `0x41`, session id.
    pub(crate) fn control_preamble(&self) -> Result<Vec<u8>> {
        let mut out = BytesMut::new();
        wtp::VarInt::from_u32(BI_WEBTRANSPORT).encode(&mut out);
        // A stream id is a varint on the wire: it always fits one.
        wtp::VarInt::from_u64(self.session())
            .map_err(|_| Error::new(ErrorKind::Internal, "a stream id over 2^62"))?
            .encode(&mut out);
        Ok(out.to_vec())
    }

    /// Whether stream `id` is the envelope's to read (not the listener's).
    pub(crate) fn reads(&self, id: StreamId) -> bool {
        id == self.connect || self.ignored.contains(&id)
    }

    /// Stream `id` (one `reads` owns) has data or ended: `Ok(true)` when the session has
    /// just come up (the listener's control stream may open), `Err` when the node refused
    /// or ended the session.
    pub(crate) fn readable(&mut self, conn: &mut Connection, id: StreamId) -> Result<bool> {
        if id != self.connect {
            // The node's HTTP/3 control stream: SETTINGS and whatever follows, let go
            // (what one read takes is bounded by the stream's receive window).
            let mut sink = BytesMut::new();
            let _ = read_stream(conn, id, &mut sink);
            return Ok(false);
        }
        let Some(buf) = self.response.as_mut() else {
            // The session is up: capsules (a close, maybe) are let go, its end is the
            // session's.
            let mut sink = BytesMut::new();
            return match read_stream(conn, id, &mut sink) {
                Read::More => Ok(false),
                _ => Err(Error::closed("the node ended the WebTransport session")),
            };
        };
        let room = MAX_RESPONSE.saturating_sub(buf.len());
        let end = read_stream_at_most(conn, id, buf, room);
        let mut r = &buf[..];
        match wtp::ConnectResponse::decode(&mut r) {
            Ok(_) => {
                // What followed the response on its stream (capsules) is let go.
                self.response = None;
                Ok(true)
            }
            Err(wtp::ConnectError::UnexpectedEnd) => match end {
                Read::More if buf.len() < MAX_RESPONSE => Ok(false),
                Read::More => Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("the node's CONNECT response is over {MAX_RESPONSE} bytes"),
                )),
                _ => Err(Error::closed(
                    "the node ended the CONNECT stream before its response",
                )),
            },
            Err(wtp::ConnectError::WrongStatus(status)) => Err(Error::new(
                ErrorKind::NotAllowed,
                format!(
                    "the node refused the WebTransport session: status {}",
                    status.map_or_else(|| "missing".to_string(), |s| s.to_string())
                ),
            )),
            Err(e) => Err(Error::protocol(format!("the node's CONNECT response: {e}"))),
        }
    }

    /// Says what uni stream `id` of the node is from the first bytes of `buf` (what has come
    /// of it), and takes its preamble off a segment stream's.
    pub(crate) fn uni_preamble(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        buf: &mut BytesMut,
    ) -> Result<Uni> {
        let mut r = &buf[..];
        let Ok(kind) = wtp::VarInt::decode(&mut r) else {
            return Ok(Uni::Pending);
        };
        match kind.into_inner() {
            UNI_CONTROL => {
                buf.clear();
                self.ignored.push(id);
                // What is left of it now, and all that comes later, is let go.
                let mut sink = BytesMut::new();
                let _ = read_stream(conn, id, &mut sink);
                Ok(Uni::Other)
            }
            UNI_WEBTRANSPORT => {
                let Ok(session) = wtp::VarInt::decode(&mut r) else {
                    return Ok(Uni::Pending);
                };
                if session.into_inner() != self.session() {
                    return Err(Error::protocol(format!(
                        "a stream of WebTransport session {session}, not ours ({})",
                        self.session()
                    )));
                }
                let used = buf.len() - r.len();
                buf.advance(used);
                Ok(Uni::Segment)
            }
            _ => {
                // QPACK's streams (the node has no dynamic table: none come), pushes,
                // reserved types: none is wanted (RFC 9114 §6.2: stopped unread).
                buf.clear();
                let _ = conn
                    .recv_stream(id)
                    .stop(VarInt::from_u32(H3_STREAM_CREATION_ERROR));
                Ok(Uni::Other)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_asks_for_the_stream_at_the_nodes_authority() {
        let u = QuicUrl::parse("quic://[::1]:4433/live/talk").unwrap();
        assert_eq!(
            session_url(&u).unwrap().as_str(),
            "https://[::1]:4433/live/talk"
        );
        let u = QuicUrl::parse("quic://127.0.0.1:4433").unwrap();
        assert!(session_url(&u).is_err(), "no stream, no session");
    }
}
