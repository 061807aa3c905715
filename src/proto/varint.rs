//! QUIC variable-length integers (RFC 9000 §16): 1, 2, 4 or 8 bytes, the top two bits of
//! the first byte giving the length. Values up to 2^62 - 1.

use bytes::{Buf, BufMut};

use super::DecodeError;

pub const MAX: u64 = (1 << 62) - 1;

pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Writes `v`. Values above `MAX` are a bug in the caller and are clamped (never sent by quicast).
pub fn put_varint(buf: &mut impl BufMut, v: u64) {
    debug_assert!(v <= MAX, "varint out of range");
    let v = v.min(MAX);
    match varint_len(v) {
        1 => buf.put_u8(v as u8),
        2 => buf.put_u16(0x4000 | v as u16),
        4 => buf.put_u32(0x8000_0000 | v as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | v),
    }
}

/// Reads a varint if the whole of it is present; otherwise returns None and leaves `buf` as it was.
pub fn try_get(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = (first & 0x3f) as u64;
    for b in &buf[1..len] {
        v = (v << 8) | *b as u64;
    }
    *buf = &buf[len..];
    Some(v)
}

pub fn get_varint(buf: &mut impl Buf) -> Result<u64, DecodeError> {
    if !buf.has_remaining() {
        return Err(DecodeError::Truncated);
    }
    let first = buf.chunk()[0];
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    let mut v = (buf.get_u8() & 0x3f) as u64;
    for _ in 1..len {
        v = (v << 8) | buf.get_u8() as u64;
    }
    Ok(v)
}
