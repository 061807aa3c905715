//! What a decoder says of bytes it cannot take.

use super::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated input")]
    Truncated,
    #[error("{what} is {len} bytes, limit {max}")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("unknown message type {0:#x}")]
    UnknownType(u64),
    #[error("unknown {what} {value}")]
    BadValue { what: &'static str, value: u64 },
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
    #[error("bad stream path: {0}")]
    BadPath(&'static str),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::ProtocolViolation,
        }
    }
}
