//! QUIC's errors, read as the library's: a peer's close or reset carries its code; a lost,
//! reset or timed-out connection is the peer gone.

use crate::error::{Error, Kind};
use crate::proto::ErrorCode;

/// An error code as QUIC carries it.
pub fn varint(code: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u64() as u32)
}

/// Why a connection ended: the peer's code and reason when the peer closed it.
pub fn conn_error(e: quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as C;
    match e {
        C::ApplicationClosed(c) => Error::remote(
            ErrorCode::from_wire(c.error_code.into_inner()),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        C::LocallyClosed => Error::closed("connection closed"),
        C::TimedOut => Error::closed("connection timed out: the peer stopped answering"),
        C::Reset => Error::closed("connection reset by the peer"),
        // Refused before any handshake: the node's phrase says why, when to come back, and
        // where else to go (`proto::Refusal`).
        C::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            let r = crate::proto::Refusal::parse(&c.reason);
            let code = if r.why == "draining" {
                ErrorCode::GoingAway
            } else {
                ErrorCode::Overloaded
            };
            Error::remote(
                code,
                format!("{}{}", Error::REFUSED, String::from_utf8_lossy(&c.reason)),
            )
        }
        C::ConnectionClosed(c) => Error::closed(format!("connection closed by the peer: {c}")),
        C::VersionMismatch => Error::new(Kind::Version, "the peer speaks no QUIC version we do"),
        C::TransportError(t) => Error::protocol(t.to_string()),
        C::CidsExhausted => Error::local("out of connection ids"),
    }
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        conn_error(e)
    }
}

impl From<quinn::ConnectError> for Error {
    fn from(e: quinn::ConnectError) -> Self {
        Error::local(format!("cannot connect: {e}"))
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        use quinn::WriteError as W;
        match e {
            W::Stopped(code) => Error::remote(
                ErrorCode::from_wire(code.into_inner()),
                "the peer stopped the stream",
            ),
            W::ConnectionLost(e) => conn_error(e),
            W::ClosedStream => Error::closed("stream closed"),
            W::ZeroRttRejected => Error::new(Kind::Internal, "0-RTT rejected"),
        }
    }
}

impl From<quinn::ReadError> for Error {
    fn from(e: quinn::ReadError) -> Self {
        use quinn::ReadError as R;
        match e {
            R::Reset(code) => Error::remote(
                ErrorCode::from_wire(code.into_inner()),
                "the peer reset the stream",
            ),
            R::ConnectionLost(e) => conn_error(e),
            R::ClosedStream => Error::closed("stream closed"),
            R::IllegalOrderedRead => Error::new(Kind::Internal, "illegal ordered read"),
            R::ZeroRttRejected => Error::new(Kind::Internal, "0-RTT rejected"),
        }
    }
}

impl From<quinn::ClosedStream> for Error {
    fn from(_: quinn::ClosedStream) -> Self {
        Error::closed("stream closed")
    }
}
