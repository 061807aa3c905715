//! The library's one error type: what went wrong (a kind, from which the code a peer is told
//! and an HTTP status follow), on which side (the peer we fetch from, the peer we serve, or
//! ourselves), and why, in words for a person.
//!
//! The cause's text is part of the reason, so a log line or a peer's message says it all
//! once; `source()` is left empty so that printing the chain does not say it twice.

use std::borrow::Cow;
use std::fmt;

use crate::proto::{DecodeError, ErrorCode};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A message or stream broke the protocol.
    Protocol,
    /// A length or count over its limit.
    TooLarge,
    /// No such stream (or it did not start in time).
    NotFound,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The role may not do this.
    NotAllowed,
    /// The stream already has a publisher.
    Conflict,
    /// Media that breaks its format's rules.
    BadMedia,
    /// Media of a kind quicast does not carry (not Ogg, not Opus).
    Unsupported,
    /// A per-connection or per-node bound is reached.
    Overloaded,
    /// Something due did not come in time.
    Timeout,
    /// The peer went away: a closed or lost connection, a reset stream. Nobody's fault here.
    Closed,
    /// The node is shutting down.
    GoingAway,
    /// The receiver does not want this stream.
    Cancelled,
    /// A protocol version this side does not speak.
    Version,
    /// A subscriber was moved forward past a segment.
    Skipped,
    /// The node cannot reach its parents.
    Upstream,
    /// A file, a socket, a certificate, a setting: the node's own.
    Local,
    /// A bug, or a peer's code we do not know.
    Internal,
}

impl Kind {
    /// The code a peer is told.
    pub fn code(self) -> ErrorCode {
        match self {
            Kind::Protocol => ErrorCode::ProtocolViolation,
            Kind::TooLarge => ErrorCode::TooLarge,
            Kind::NotFound => ErrorCode::NotFound,
            Kind::Unauthorized => ErrorCode::Unauthorized,
            Kind::NotAllowed => ErrorCode::NotAllowed,
            Kind::Conflict => ErrorCode::Conflict,
            Kind::BadMedia | Kind::Unsupported => ErrorCode::BadMedia,
            Kind::Overloaded => ErrorCode::Overloaded,
            Kind::Timeout => ErrorCode::Timeout,
            Kind::Closed | Kind::Cancelled => ErrorCode::Cancelled,
            Kind::GoingAway => ErrorCode::GoingAway,
            Kind::Version => ErrorCode::UnsupportedVersion,
            Kind::Skipped => ErrorCode::Skipped,
            Kind::Upstream => ErrorCode::Upstream,
            Kind::Local | Kind::Internal => ErrorCode::Internal,
        }
    }

    /// The kind a peer's code says.
    pub fn from_code(code: ErrorCode) -> Kind {
        match code {
            ErrorCode::NoError | ErrorCode::Cancelled => Kind::Cancelled,
            ErrorCode::ProtocolViolation => Kind::Protocol,
            ErrorCode::Unauthorized => Kind::Unauthorized,
            ErrorCode::NotFound => Kind::NotFound,
            ErrorCode::TooLarge => Kind::TooLarge,
            ErrorCode::Skipped => Kind::Skipped,
            ErrorCode::UnsupportedVersion => Kind::Version,
            ErrorCode::NotAllowed => Kind::NotAllowed,
            ErrorCode::Conflict => Kind::Conflict,
            ErrorCode::Internal => Kind::Internal,
            ErrorCode::Upstream => Kind::Upstream,
            ErrorCode::Timeout => Kind::Timeout,
            ErrorCode::BadMedia => Kind::BadMedia,
            ErrorCode::GoingAway => Kind::GoingAway,
            ErrorCode::Overloaded => Kind::Overloaded,
        }
    }
}

/// Where an error came from, as an operator reads it in a log: the peer we fetch from, the
/// peer we serve, or ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Upstream,
    Downstream,
    Internal,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Upstream => "upstream",
            Side::Downstream => "downstream",
            Side::Internal => "internal",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    kind: Kind,
    side: Side,
    /// The code the peer told us, for an error a peer reported.
    remote: Option<ErrorCode>,
    reason: Cow<'static, str>,
}

impl Error {
    /// An error of `kind`, on our side until said otherwise (`upstream`, `downstream`).
    pub fn new(kind: Kind, reason: impl Into<Cow<'static, str>>) -> Error {
        Error {
            kind,
            side: Side::Internal,
            remote: None,
            reason: reason.into(),
        }
    }

    /// A refusal with the code a peer is to be told.
    /// How the reason of a node's refusal of a new connection starts (its phrase follows).
    pub const REFUSED: &'static str = "the node refused a new connection: ";

    /// A node's refusal of a new connection, if this is one: why, when to come back, where
    /// else to go.
    pub fn refusal(&self) -> Option<crate::proto::Refusal> {
        let phrase = self.reason.strip_prefix(Error::REFUSED)?;
        Some(crate::proto::Refusal::parse(phrase.as_bytes()))
    }

    pub fn refused(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::from_code(code), reason)
    }

    /// What a peer told us (an ERROR, a SUBSCRIBE_ERROR, a close or reset with its code).
    pub fn remote(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Error {
        Error {
            remote: Some(code),
            ..Error::new(Kind::from_code(code), reason)
        }
    }

    /// A peer went away (its connection closed or was lost, its stream reset).
    pub fn closed(reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Closed, reason)
    }

    pub fn timeout(what: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Timeout, what)
    }

    pub fn media(reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::BadMedia, reason)
    }

    pub fn unsupported(reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Unsupported, reason)
    }

    pub fn protocol(reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Protocol, reason)
    }

    /// The node's own trouble: a file, a socket, a certificate.
    pub fn local(reason: impl Into<Cow<'static, str>>) -> Error {
        Error::new(Kind::Local, reason)
    }

    /// Marks the error as the peer we fetch from's.
    pub fn upstream(mut self) -> Error {
        self.side = Side::Upstream;
        self
    }

    /// Marks the error as the peer we serve's.
    pub fn downstream(mut self) -> Error {
        self.side = Side::Downstream;
        self
    }

    /// Puts `context` before the reason ("reading X: ...").
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.reason = format!("{context}: {}", self.reason).into();
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The code a peer is told for this error.
    pub fn code(&self) -> ErrorCode {
        self.remote.unwrap_or_else(|| self.kind.code())
    }

    /// The code a peer told us, if a peer reported this error.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        self.remote
    }

    /// What a peer is told with the code: the reason alone (the code travels beside it).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The peer went away, or said it was done: nothing to tell it, nothing to log loudly.
    pub fn is_gone(&self) -> bool {
        matches!(self.kind, Kind::Closed | Kind::GoingAway)
            || self.remote == Some(ErrorCode::NoError)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = self.remote {
            return write!(f, "{code} from peer: {}", self.reason);
        }
        match self.kind {
            Kind::Protocol => write!(f, "protocol error: {}", self.reason),
            Kind::BadMedia => write!(f, "media error: {}", self.reason),
            Kind::Unsupported => write!(f, "unsupported media: {}", self.reason),
            Kind::Timeout => write!(f, "timed out: {}", self.reason),
            Kind::Local | Kind::Closed => f.write_str(&self.reason),
            k => write!(f, "{}: {}", k.code(), self.reason),
        }
    }
}

impl std::error::Error for Error {}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        let kind = match e {
            DecodeError::TooLarge { .. } => Kind::TooLarge,
            _ => Kind::Protocol,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<crate::proto::UrlError> for Error {
    fn from(e: crate::proto::UrlError) -> Self {
        Error::local(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::local(e.to_string())
    }
}

/// An I/O error as an operator reads it: what is wrong, without the OS's error number.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "a directory, not a file".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
