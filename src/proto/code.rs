//! The error codes of wire protocol v1: what a peer is told (in ERROR and SUBSCRIBE_ERROR,
//! a stream reset, a connection close). See `proto/SPEC.md`, "Error codes".

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

    /// The code a peer sent: an unknown one (a newer peer's) reads as `internal`.
    pub fn from_wire(v: u64) -> ErrorCode {
        ErrorCode::from_u64(v).unwrap_or(ErrorCode::Internal)
    }

    pub fn as_u64(self) -> u64 {
        self as u64
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
