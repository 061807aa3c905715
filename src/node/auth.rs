//! Credentials: checked in time that does not depend on where they differ, and remembered
//! by their digest (a publisher that proves the same one is the same publisher).

/// What a credential (a token, a password) is remembered as: its SHA-256.
pub fn credential(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two secrets in time that does not depend on where they differ (their digests).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    credential(a)
        .iter()
        .zip(credential(b).iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_eq(b"s3cret", b"s3cret"));
        assert!(!secret_eq(b"s3cret", b"s3cre"));
        assert!(!secret_eq(b"", b"x"));
        assert_eq!(credential(b"a"), credential(b"a"));
    }
}
