//! The listener protocol inside a WebTransport session (HTTP/3, draft-ietf-webtrans-http3):
//! what the first bytes of a browser's stream say it is, the envelope that begins each
//! segment stream, and WebTransport's error codes. Free of I/O: `server::webtransport`
//! reads the streams and acts on what this says.

use bytes::{Bytes, BytesMut};
use web_transport_proto as wtp;

/// HTTP/3's stream type of a WebTransport unidirectional stream, and the signal value that
/// begins a WebTransport bidirectional one.
pub const WT_UNI: u64 = 0x54;
pub const WT_BIDI: u64 = 0x41;

/// What the first bytes of a stream a browser opened say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preamble {
    /// Not all of it has come.
    More,
    /// One of HTTP/3's own unidirectional streams, by type (0: its control stream, 2 and 3:
    /// QPACK's encoder and decoder): read and let go; one of each, open for the
    /// connection's life.
    Critical(u64),
    /// A unidirectional stream of a kind not taken here (a push, a WebTransport stream of
    /// the browser's own).
    Refuse,
    /// A WebTransport bidirectional stream of session `session`; what follows its first
    /// `used` bytes is the listener protocol.
    Stream { session: u64, used: usize },
    /// An HTTP/3 request: a WebTransport CONNECT (its URL), or why it is not one.
    Request(Result<String, String>),
}

/// Reads the preamble of a browser's stream (`uni`: unidirectional) from its first bytes.
pub fn preamble(buf: &[u8], uni: bool) -> Preamble {
    let mut r = buf;
    let Ok(kind) = wtp::VarInt::decode(&mut r) else {
        return Preamble::More;
    };
    let kind = kind.into_inner();
    if uni {
        // 0: HTTP/3 control, 2 and 3: QPACK's encoder and decoder.
        return match kind {
            0x00 | 0x02 | 0x03 => Preamble::Critical(kind),
            _ => Preamble::Refuse,
        };
    }
    if kind == WT_BIDI {
        return match wtp::VarInt::decode(&mut r) {
            Ok(session) => Preamble::Stream {
                session: session.into_inner(),
                used: buf.len() - r.len(),
            },
            Err(_) => Preamble::More,
        };
    }
    let mut whole = buf;
    match wtp::ConnectRequest::decode(&mut whole) {
        Err(wtp::ConnectError::UnexpectedEnd) => Preamble::More,
        Ok(req) => Preamble::Request(Ok(req.url.to_string())),
        Err(e) => Preamble::Request(Err(e.to_string())),
    }
}

/// What begins each segment stream of session `session`: WebTransport's stream type, then
/// the session (the id of its CONNECT stream).
pub fn segment_prefix(session: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(10);
    for v in [WT_UNI, session] {
        if let Ok(v) = wtp::VarInt::from_u64(v) {
            v.encode(&mut b);
        }
    }
    b.freeze()
}

/// WebTransport's application error code `n`, as HTTP/3 carries it (its codes skip
/// HTTP/3's reserved values: draft-ietf-webtrans-http3 §4.4).
pub fn wt_code(n: u32) -> u64 {
    let n = u64::from(n);
    0x52e4_a40f_a8db + n + n / 0x1e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn webtransport_codes_skip_http3s_reserved_values() {
        assert_eq!(wt_code(0), 0x52e4_a40f_a8db);
        assert_eq!(wt_code(5), 0x52e4_a40f_a8e0);
        // 0x1e: the first that steps over a reserved value.
        assert_eq!(wt_code(0x1e), 0x52e4_a40f_a8db + 0x1f);
    }

    #[test]
    fn segment_streams_begin_with_webtransports_type_and_the_session() {
        // 0x54 needs a two-byte varint; session 0 (the first bidirectional stream) one byte.
        assert_eq!(&segment_prefix(0)[..], &hex("405400")[..]);
        assert_eq!(&segment_prefix(4)[..], &hex("405404")[..]);
        assert_eq!(&segment_prefix(300)[..], &hex("4054412c")[..]);
    }

    #[test]
    fn preambles_say_what_a_stream_is_or_ask_for_more() {
        // The control stream of session 0, then HELLO.
        let ctl = hex("4041000103010100");
        assert_eq!(
            preamble(&ctl, false),
            Preamble::Stream {
                session: 0,
                used: 3
            }
        );
        for cut in 0..3 {
            assert_eq!(preamble(&ctl[..cut], false), Preamble::More, "{cut}");
        }
        assert_eq!(preamble(&hex("00"), true), Preamble::Critical(0));
        assert_eq!(preamble(&hex("02"), true), Preamble::Critical(2));
        assert_eq!(preamble(&hex("03"), true), Preamble::Critical(3));
        assert_eq!(preamble(&hex("01"), true), Preamble::Refuse);
        assert_eq!(preamble(&hex("405400"), true), Preamble::Refuse);
        assert_eq!(preamble(&[], true), Preamble::More);
    }

    #[test]
    fn a_connect_request_is_read_whole_and_anything_else_is_refused() {
        let mut req = Vec::new();
        wtp::ConnectRequest::new(url::Url::parse("https://edge.example:4433/live").unwrap())
            .encode(&mut req)
            .unwrap();
        assert_eq!(
            preamble(&req, false),
            Preamble::Request(Ok("https://edge.example:4433/live".into()))
        );
        for cut in 0..req.len() {
            assert_eq!(preamble(&req[..cut], false), Preamble::More, "{cut}");
        }
        // A HEADERS frame whose field section is not a request: refused, with why.
        assert!(matches!(
            preamble(&hex("01020000"), false),
            Preamble::Request(Err(_))
        ));
        // Another frame type first (DATA).
        assert!(matches!(
            preamble(&hex("000100"), false),
            Preamble::Request(Err(_))
        ));
    }
}
