//! Error types shared by the library. Every error carries a numeric code that is
//! what a peer is told (in a message, a stream reset or a connection close).

use std::fmt;

/// Numeric error codes of wire protocol v1 (see `proto/SPEC.md`, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ErrorCode {
    NoError = 0,
    ProtocolViolation = 1,
    Unauthorized = 2,
    NotFound = 3,
    TooLarge = 4,
    /// A subscriber fell too far behind and was moved forward: the segment stream is reset.
    Skipped = 5,
    UnsupportedVersion = 6,
    NotAllowed = 7,
    Conflict = 8,
    Internal = 9,
    Upstream = 10,
    Timeout = 11,
    BadMedia = 12,
    GoingAway = 13,
    Cancelled = 14,
    Overloaded = 15,
}

impl ErrorCode {
    pub fn from_u64(v: u64) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            0 => NoError,
            1 => ProtocolViolation,
            2 => Unauthorized,
            3 => NotFound,
            4 => TooLarge,
            5 => Skipped,
            6 => UnsupportedVersion,
            7 => NotAllowed,
            8 => Conflict,
            9 => Internal,
            10 => Upstream,
            11 => Timeout,
            12 => BadMedia,
            13 => GoingAway,
            14 => Cancelled,
            15 => Overloaded,
            _ => return None,
        })
    }

    pub fn as_u64(self) -> u64 {
        self as u64
    }

    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            NoError => "no_error",
            ProtocolViolation => "protocol_violation",
            Unauthorized => "unauthorized",
            NotFound => "not_found",
            TooLarge => "too_large",
            Skipped => "skipped",
            UnsupportedVersion => "unsupported_version",
            NotAllowed => "not_allowed",
            Conflict => "conflict",
            Internal => "internal",
            Upstream => "upstream",
            Timeout => "timeout",
            BadMedia => "bad_media",
            GoingAway => "going_away",
            Cancelled => "cancelled",
            Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u64)
    }
}

/// Where an error came from, as an operator reads it in a log: the peer we fetch
/// from, the peer we serve, or ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protocol error: {0}")]
    Protocol(crate::proto::DecodeError),
    #[error("{code} from peer: {reason}")]
    Remote { code: ErrorCode, reason: String },
    #[error("{code}: {reason}")]
    Refused { code: ErrorCode, reason: String },
    #[error("media error: {0}")]
    Media(String),
    /// Media of a kind quicast does not carry (not Ogg, not Opus).
    #[error("unsupported media: {0}")]
    Unsupported(String),
    #[error("tls error: {0}")]
    Tls(String),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("closed")]
    Closed,
}

impl From<crate::proto::DecodeError> for Error {
    fn from(e: crate::proto::DecodeError) -> Self {
        Error::Protocol(e)
    }
}

impl Error {
    /// What a peer is told with the code: the reason alone (the code travels beside it).
    pub fn reason(&self) -> String {
        match self {
            Error::Remote { reason, .. } | Error::Refused { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    pub fn refused(code: ErrorCode, reason: impl Into<String>) -> Self {
        Error::Refused {
            code,
            reason: reason.into(),
        }
    }

    /// The code a peer is told for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Protocol(e) => e.code(),
            Error::Remote { code, .. } | Error::Refused { code, .. } => *code,
            Error::Media(_) | Error::Unsupported(_) => ErrorCode::BadMedia,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Closed => ErrorCode::Cancelled,
            _ => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
