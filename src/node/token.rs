//! Signed tokens (JWT): who may publish, listen or relay, on which stream paths, from when
//! to when. A token names its key by key id (`kid`), so a node may hold several keys at once
//! and keys rotate without a flag day: HMAC-SHA256 secrets shared with the service that mints
//! tokens, or ECDSA P-256 public keys (ES256) whose private half never leaves the minter.
//!
//! Claims: `role` (`publish`, `listen`, `relay`), `path` (a stream path, a prefix ending in
//! `/`, or `/` for every stream), `exp` and `nbf` (Unix seconds).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind};

use super::config::{invalid, ConfigError};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Publish,
    Listen,
    Relay,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grant::Publish => "publish",
            Grant::Listen => "listen",
            Grant::Relay => "relay",
        })
    }
}

impl FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Grant, String> {
        match s {
            "publish" => Ok(Grant::Publish),
            "listen" => Ok(Grant::Listen),
            "relay" => Ok(Grant::Relay),
            _ => Err(format!("{s:?}: a role is publish, listen or relay")),
        }
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub role: Grant,
    /// A stream path, a prefix ending in `/`, or `/` (every stream).
    pub path: String,
    /// Not valid from this Unix second on.
    pub exp: u64,
    /// Not valid before this Unix second.
    #[serde(default)]
    pub nbf: u64,
    /// The key it was signed with (from its header; a reload that drops the key ends what
    /// it lets in next).
    #[serde(skip)]
    pub kid: String,
}

impl Claims {
    /// Whether the token's path covers stream `path`.
    pub fn covers(&self, path: &str) -> bool {
        crate::proto::path_covers(&self.path, path)
    }
}

/// Why a token was not taken: said to the peer and the log, and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} token required")]
    Missing(Grant),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unknown token key id {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token for another role ({got}, not {want})")]
    WrongRole { want: Grant, got: Grant },
    #[error("token for another path ({allowed}, not {path})")]
    WrongPath { allowed: String, path: String },
    #[error("wrong publish token")]
    WrongSecret,
    #[error("token {claim} {value} is more than ten years ahead")]
    TooFarAhead { claim: &'static str, value: u64 },
    #[error("token header marks extensions critical ({0}); none is understood here")]
    Critical(String),
    #[error(
        "token signed with key {kid:?}, which may not sign for this stream (it takes {allowed})"
    )]
    KeyNotForStream { kid: String, allowed: String },
    /// The stream needs a token and this node holds no key to check one with: a node set
    /// up without `token-key` fails closed rather than open.
    #[error("{path} needs a listen token and this node holds no token key to check one with: it cannot serve it (the operator must give it a token-key)")]
    CannotCheck { path: String },
    /// The same, asked by a peer that says it is a relay: without a key, its relay token
    /// cannot be checked either, so the stream goes to no one (refused for good: the
    /// relay tells its own listeners at once).
    #[error("{path} needs a listen token and this node holds no token key: it hands it to no relay (the operator must give it a token-key)")]
    NoKeyForRelays { path: String },
}

impl Refusal {
    /// 401 (`unauthorized`) when the holder could not be told apart from anyone; 403
    /// (`not_allowed`) when it is known and may not do this.
    pub fn into_error(self) -> Error {
        let kind = match self {
            Refusal::WrongRole { .. }
            | Refusal::WrongPath { .. }
            | Refusal::NoKeyForRelays { .. } => Kind::NotAllowed,
            Refusal::CannotCheck { .. } => Kind::Local,
            _ => Kind::Unauthorized,
        };
        Error::new(kind, self.to_string())
    }
}

/// Clock difference between the minter and a node that is forgiven, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest a token may be valid for, or wait before it is: ten years (`quicast token
/// --ttl` mints no longer). A signed token cannot be revoked short of retiring its key, so
/// one meant to outlive every key it could be signed with is a mistake, and an `exp` or
/// `nbf` past this is most often milliseconds where seconds belong (or u64::MAX for
/// "never"): refused by name rather than taken as forever.
pub const MAX_AHEAD_SECS: u64 = 10 * 366 * 86_400;
/// Longest key file read (a PEM key or an HMAC secret is far smaller).
const MAX_KEY_FILE: u64 = 64 * 1024;
/// Shortest HMAC secret taken (RFC 7518: at least the hash's size).
pub const MIN_SECRET: usize = 32;
/// Longest token a peer may present (QUIC hello's token field is at most 512 bytes too).
pub const MAX_TOKEN: usize = 512;

/// `token-key`: a key id and the file holding its key, `KID=FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKey {
    pub kid: String,
    pub file: PathBuf,
}

impl FromStr for TokenKey {
    type Err = String;
    fn from_str(s: &str) -> Result<TokenKey, String> {
        let (kid, file) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KID=FILE"))?;
        check_kid(kid)?;
        if file.is_empty() {
            return Err(format!("{s:?}: no file after the key id"));
        }
        Ok(TokenKey {
            kid: kid.to_string(),
            file: PathBuf::from(file),
        })
    }
}

impl<'de> Deserialize<'de> for TokenKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A key id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_kid(kid: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {kid:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// A key file's contents, bounded.
fn read_key(file: &Path) -> Result<Vec<u8>, String> {
    let unreadable = |e: std::io::Error| {
        format!(
            "{}: cannot read it ({})",
            file.display(),
            crate::error::io_reason(&e)
        )
    };
    let meta = std::fs::metadata(file).map_err(unreadable)?;
    if meta.len() > MAX_KEY_FILE {
        return Err(format!(
            "{}: {} bytes is too large for a key",
            file.display(),
            meta.len()
        ));
    }
    std::fs::read(file).map_err(unreadable)
}

/// An HMAC secret: the file's bytes without trailing whitespace (a newline an editor or
/// `openssl rand -base64 48 > FILE` leaves).
fn secret_of(bytes: &[u8], file: &Path) -> Result<Vec<u8>, String> {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let secret = &bytes[..end];
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "{}: an HMAC secret of {} bytes is too short (at least {MIN_SECRET}; e.g. `openssl rand -base64 48`)",
            file.display(),
            secret.len()
        ));
    }
    Ok(secret.to_vec())
}

fn is_pem(bytes: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(bytes).contains(&format!("-----BEGIN {label}-----"))
}

/// The keys a node checks tokens with, by key id.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        write!(f, "KeySet{kids:?}")
    }
}

impl KeySet {
    /// Reads every key file: a PEM public key (`BEGIN PUBLIC KEY`, ECDSA P-256) is an ES256
    /// key, anything else an HMAC secret. A file that cannot be used is refused, naming it.
    pub fn load(specs: &[TokenKey]) -> Result<KeySet, ConfigError> {
        let mut keys = HashMap::new();
        for k in specs {
            let bytes = read_key(&k.file).map_err(|e| invalid("token-key", e))?;
            let key = if is_pem(&bytes, "PUBLIC KEY") {
                let key = DecodingKey::from_ec_pem(&bytes).map_err(|e| {
                    tracing::debug!(file = %k.file.display(), "token key not read: {e}");
                    invalid(
                        "token-key",
                        format!(
                            "{}: not a usable ECDSA P-256 public key (a PEM `BEGIN PUBLIC KEY`, as `openssl pkey -pubout` writes it)",
                            k.file.display()
                        ),
                    )
                })?;
                (Algorithm::ES256, key)
            } else if is_pem(&bytes, "PRIVATE KEY") || is_pem(&bytes, "EC PRIVATE KEY") {
                return Err(invalid(
                    "token-key",
                    format!(
                        "{}: a private key; a node needs only the public key (`openssl pkey -pubout`), keep the private one where tokens are minted",
                        k.file.display()
                    ),
                ));
            } else {
                let secret = secret_of(&bytes, &k.file).map_err(|e| invalid("token-key", e))?;
                (Algorithm::HS256, DecodingKey::from_secret(&secret))
            };
            if keys.insert(k.kid.clone(), key).is_some() {
                return Err(invalid(
                    "token-key",
                    format!("key id {:?} given twice", k.kid),
                ));
            }
        }
        Ok(KeySet { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key ids held, sorted, at most the wire names (`proto::MAX_KEY_IDS`).
    pub fn kids(&self) -> Vec<String> {
        // More than the wire names: the first ones only (fewer keys may sign, never more).
        let mut k: Vec<String> = self.keys.keys().cloned().collect();
        k.sort();
        k.truncate(crate::proto::MAX_KEY_IDS);
        k
    }

    /// Whether a key named `kid` is held.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The claims of `token` if one of the keys signed it and it is valid at `now` (Unix
    /// seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing(Grant::Listen));
        }
        if token.len() > MAX_TOKEN {
            return Err(Refusal::Malformed(format!(
                "{} bytes, at most {MAX_TOKEN}",
                token.len()
            )));
        }
        if token.split('.').count() != 3 {
            return Err(Refusal::Malformed(
                "not a JWT (three base64url parts joined by dots)".into(),
            ));
        }
        // The header read on its own first: `crit`, and an algorithm named in words.
        refuse_critical(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Refusal::Malformed(unreadable(&e)))?;
        let kid = header.kid.unwrap_or_default();
        let (alg, key) = self
            .keys
            .get(&kid)
            .ok_or_else(|| Refusal::UnknownKey(kid.clone()))?;
        if header.alg != *alg {
            return Err(Refusal::Malformed(format!(
                "signed with {:?}, key {kid:?} is {alg:?}",
                header.alg
            )));
        }
        // Times are checked below, with their own words.
        let mut v = Validation::new(*alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let mut claims = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Refusal::BadSignature,
                _ => Refusal::Malformed(unreadable(&e)),
            })?
            .claims;
        if claims.path.is_empty() {
            return Err(Refusal::Malformed("empty path (/ is every stream)".into()));
        }
        claims.kid = kid;
        check_times(&claims, now)?;
        Ok(claims)
    }
}

/// RFC 7515 §4.1.11: a token whose header has `crit` names extensions its signer says a
/// recipient must understand to take it. quicast understands none, so any `crit` is refused
/// (jsonwebtoken's header has no field for it, and would ignore it). The header is read as
/// a JSON object on its own; one that cannot be is malformed (never taken as no `crit`).
fn refuse_critical(token: &str) -> Result<(), Refusal> {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let fields: serde_json::Map<String, serde_json::Value> =
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| Refusal::Malformed("its header is not a JSON object".into()))?;
    if let Some(crit) = fields.get("crit") {
        return Err(Refusal::Critical(crit.to_string()));
    }
    match fields.get("alg").and_then(|a| a.as_str()) {
        Some("HS256" | "ES256") => Ok(()),
        Some(alg) => Err(Refusal::Malformed(format!(
            "signed with {alg:?}; quicast takes HS256 or ES256"
        ))),
        None => Err(Refusal::Malformed("its header names no algorithm".into())),
    }
}

/// Why a token could not be read, in words (the library's detail at debug level).
fn unreadable(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    tracing::debug!("token not read: {e}");
    match e.kind() {
        K::InvalidToken => "not a JWT (three base64url parts joined by dots)".into(),
        K::Base64(_) => "a part of it is not base64url".into(),
        K::Utf8(_) => "a part of it is not UTF-8 text".into(),
        K::Json(j) => {
            let text = j.to_string();
            match text
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                Some(claim) => format!("no `{claim}` claim"),
                None => "its claims are not quicast's: role (publish, listen or relay), path, and exp and nbf in Unix seconds".into(),
            }
        }
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "signed with an algorithm quicast does not take (HS256 or ES256)".into()
        }
        _ => "not a token quicast can read".into(),
    }
}

/// Whether `claims` are valid at `now`, give or take `LEEWAY_SECS`, and neither end of
/// their validity is further off than `MAX_AHEAD_SECS`.
pub fn check_times(claims: &Claims, now: u64) -> Result<(), Refusal> {
    if now >= claims.exp.saturating_add(LEEWAY_SECS) {
        return Err(Refusal::Expired);
    }
    let horizon = now.saturating_add(MAX_AHEAD_SECS + LEEWAY_SECS);
    for (claim, value) in [("exp", claims.exp), ("nbf", claims.nbf)] {
        if value > horizon {
            return Err(Refusal::TooFarAhead { claim, value });
        }
    }
    if now.saturating_add(LEEWAY_SECS) < claims.nbf {
        return Err(Refusal::NotYetValid);
    }
    Ok(())
}

/// A moment as `quicast token` takes it (`--not-before`, `--expires`), in Unix seconds: an
/// RFC 3339 time (`2026-12-24T18:00:00Z`, `2026-12-24T19:00:00+01:00`), or a duration from
/// `now`, before or after it (`+1h`, `-30m`, `90s`, `2d`: s, m, h or d).
pub fn parse_when(s: &str, now: u64) -> Result<i64, String> {
    let s = s.trim();
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let relative = unsigned.starts_with(|c: char| c.is_ascii_digit())
        && unsigned.bytes().all(|b| b.is_ascii_alphanumeric());
    if relative {
        let (sign, rest) = match s.strip_prefix('-') {
            Some(r) => (-1, r),
            None => (1, s.strip_prefix('+').unwrap_or(s)),
        };
        let unit_at = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (n, unit) = rest.split_at(unit_at);
        let scale: i64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => return Err(format!("{s:?}: give a unit, s, m, h or d (e.g. +1h, -30m)")),
            _ => return Err(format!("{s:?}: the unit is s, m, h or d (e.g. +1h, -30m)")),
        };
        let n: i64 = n
            .parse()
            .ok()
            .filter(|n| *n <= 100 * 366 * 86_400)
            .ok_or_else(|| format!("{s:?}: not a number of {unit} this side of a century"))?;
        return Ok(now as i64 + sign * n * scale);
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?}: not a time (RFC 3339, e.g. 2026-12-24T18:00:00Z) nor a duration from now (e.g. +1h, -30m)")
    })
}

/// Unix seconds of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS`, maybe a fraction (dropped),
/// then `Z` or `+HH:MM` / `-HH:MM`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let days_in = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (num(s.len() - 5, 2)?, num(s.len() - 2, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from 1970-01-01 to y-mo-d (proleptic Gregorian; Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs `claims` with the key in `key_file` (a PEM ECDSA P-256 private key: ES256; anything
/// else: an HMAC secret, HS256), naming it `kid`.
pub fn mint(key_file: &Path, kid: &str, claims: &Claims) -> Result<String, String> {
    check_kid(kid)?;
    let bytes = read_key(key_file)?;
    let (alg, key) = if is_pem(&bytes, "PRIVATE KEY") || is_pem(&bytes, "EC PRIVATE KEY") {
        let key = EncodingKey::from_ec_pem(&bytes).map_err(|e| {
            tracing::debug!(file = %key_file.display(), "signing key not read: {e}");
            format!(
                "{}: not a usable ECDSA P-256 private key (PKCS#8 PEM, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it)",
                key_file.display()
            )
        })?;
        (Algorithm::ES256, key)
    } else if is_pem(&bytes, "PUBLIC KEY") {
        return Err(format!(
            "{}: a public key cannot sign; give the private key",
            key_file.display()
        ));
    } else {
        (
            Algorithm::HS256,
            EncodingKey::from_secret(&secret_of(&bytes, key_file)?),
        )
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let token = jsonwebtoken::encode(&header, claims, &key).map_err(|e| {
        tracing::debug!(file = %key_file.display(), "signing failed: {e}");
        format!(
            "{}: cannot sign with this key ({alg:?} needs {})",
            key_file.display(),
            if alg == Algorithm::ES256 {
                "an ECDSA P-256 private key"
            } else {
                "an HMAC secret"
            }
        )
    })?;
    if token.len() > MAX_TOKEN {
        return Err(format!(
            "the token is {} bytes, more than a peer may present ({MAX_TOKEN}): use a shorter path or key id",
            token.len()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Grant, path: &str, exp: u64, nbf: u64) -> Claims {
        Claims {
            role,
            path: path.into(),
            exp,
            nbf,
            kid: String::new(),
        }
    }

    fn hmac_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p
    }

    #[test]
    fn paths_are_covered_exactly_by_prefix_or_whole() {
        let c = |p: &str| claims(Grant::Listen, p, 0, 0);
        assert!(c("/live/a").covers("live/a"));
        assert!(c("live/a").covers("/live/a"));
        assert!(!c("live/a").covers("live/ab"));
        assert!(c("live/").covers("live/ab"));
        assert!(!c("live/").covers("lived/ab"));
        assert!(c("/").covers("anything/at/all"));
    }

    #[test]
    fn hmac_and_es256_tokens_verify_and_each_refusal_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = hmac_file(dir.path(), "k1", &"a".repeat(40));
        let other = hmac_file(dir.path(), "other", &"b".repeat(40));
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = dir.path().join("ec.pem");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        let public = dir.path().join("ec.pub.pem");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let keys = KeySet::load(&[
            TokenKey::from_str(&format!("k1={}", k1.display())).unwrap(),
            TokenKey::from_str(&format!("ec={}", public.display())).unwrap(),
        ])
        .unwrap();
        let now = 1_000_000;
        let good = claims(Grant::Listen, "live/", now + 60, 0);
        let t = mint(&k1, "k1", &good).unwrap();
        assert_eq!(
            keys.verify(&t, now).map(|c| (c.path, c.kid)),
            Ok(("live/".into(), "k1".into()))
        );
        let t = mint(&private, "ec", &good).unwrap();
        assert_eq!(
            keys.verify(&t, now).map(|c| (c.path, c.kid)),
            Ok(("live/".into(), "ec".into()))
        );
        let t = mint(&k1, "k1", &claims(Grant::Listen, "", now + 60, 0)).unwrap();
        assert!(
            matches!(keys.verify(&t, now), Err(Refusal::Malformed(_))),
            "an empty path"
        );

        assert_eq!(keys.verify("", now), Err(Refusal::Missing(Grant::Listen)));
        assert!(matches!(
            keys.verify("x.y.z", now),
            Err(Refusal::Malformed(_))
        ));
        let t = mint(&k1, "k9", &good).unwrap();
        assert_eq!(keys.verify(&t, now), Err(Refusal::UnknownKey("k9".into())));
        let t = mint(&other, "k1", &good).unwrap();
        assert_eq!(keys.verify(&t, now), Err(Refusal::BadSignature));
        let t = mint(&k1, "k1", &claims(Grant::Listen, "/", now - 60, 0)).unwrap();
        assert_eq!(keys.verify(&t, now), Err(Refusal::Expired));
        let t = mint(&k1, "k1", &claims(Grant::Listen, "/", now + 600, now + 300)).unwrap();
        assert_eq!(keys.verify(&t, now), Err(Refusal::NotYetValid));
        // Within the leeway, both ways.
        let t = mint(&k1, "k1", &claims(Grant::Listen, "/", now - 5, now + 5)).unwrap();
        assert!(keys.verify(&t, now).is_ok());
        // An HMAC token under the ES256 key's id: refused, not confused.
        let t = mint(&k1, "ec", &good).unwrap();
        assert!(matches!(keys.verify(&t, now), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn an_expiry_or_start_past_ten_years_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = hmac_file(dir.path(), "k1", &"a".repeat(40));
        let keys =
            KeySet::load(&[TokenKey::from_str(&format!("k1={}", k1.display())).unwrap()]).unwrap();
        let now = unix_now();
        let verify = |exp: u64, nbf: u64| {
            let t = mint(&k1, "k1", &claims(Grant::Listen, "/", exp, nbf)).unwrap();
            keys.verify(&t, now)
        };
        // The probe's token: exp at u64::MAX ("never").
        let e = verify(u64::MAX, 0).unwrap_err();
        assert_eq!(
            e,
            Refusal::TooFarAhead {
                claim: "exp",
                value: u64::MAX
            }
        );
        assert!(e
            .to_string()
            .contains("exp 18446744073709551615 is more than ten years ahead"));
        // Milliseconds where seconds belong, in either claim.
        assert!(matches!(
            verify((now + 3600) * 1000, 0),
            Err(Refusal::TooFarAhead { claim: "exp", .. })
        ));
        assert!(matches!(
            verify(now + 3600, now * 1000),
            Err(Refusal::TooFarAhead { claim: "nbf", .. })
        ));
        // The longest `quicast token --ttl` mints, from a minter whose clock runs ahead.
        assert!(verify(now + MAX_AHEAD_SECS + LEEWAY_SECS, now).is_ok());
        // Checked again at each use, against that moment's clock.
        let c = claims(Grant::Listen, "/", u64::MAX, 0);
        assert!(matches!(
            check_times(&c, now),
            Err(Refusal::TooFarAhead { .. })
        ));
    }

    #[test]
    fn a_token_with_critical_extensions_is_refused_even_well_signed() {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let dir = tempfile::tempdir().unwrap();
        let secret = "a".repeat(40);
        let k1 = hmac_file(dir.path(), "k1", &secret);
        let keys =
            KeySet::load(&[TokenKey::from_str(&format!("k1={}", k1.display())).unwrap()]).unwrap();
        let now = unix_now();
        let body = b64(&serde_json::json!({"role": "listen", "path": "/", "exp": now + 60}));
        let signed = |header: serde_json::Value| {
            let msg = format!("{}.{body}", b64(&header));
            let key = EncodingKey::from_secret(secret.as_bytes());
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{msg}.{sig}")
        };
        // Without `crit`, the same token is good: the signing here is right.
        let t = signed(serde_json::json!({"alg": "HS256", "kid": "k1"}));
        assert!(keys.verify(&t, now).is_ok());
        let t =
            signed(serde_json::json!({"alg": "HS256", "kid": "k1", "crit": ["b64"], "b64": false}));
        let e = keys.verify(&t, now).unwrap_err();
        assert_eq!(e, Refusal::Critical("[\"b64\"]".into()));
        assert_eq!(
            e.to_string(),
            "token header marks extensions critical ([\"b64\"]); none is understood here"
        );
        // Whatever it lists, even nothing.
        let t = signed(serde_json::json!({"alg": "HS256", "kid": "k1", "crit": []}));
        assert!(matches!(keys.verify(&t, now), Err(Refusal::Critical(_))));
    }

    #[test]
    fn unreadable_tokens_and_keys_are_refused_in_words_not_the_library_s() {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let dir = tempfile::tempdir().unwrap();
        let k1 = hmac_file(dir.path(), "k1", &"a".repeat(40));
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = dir.path().join("ec.pem");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        let public = dir.path().join("ec.pub.pem");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let keys = KeySet::load(&[
            TokenKey::from_str(&format!("k1={}", k1.display())).unwrap(),
            TokenKey::from_str(&format!("ec={}", public.display())).unwrap(),
        ])
        .unwrap();
        let now = unix_now();
        let good = mint(&k1, "k1", &claims(Grant::Listen, "/", now + 60, 0)).unwrap();
        let (_, rest) = good.split_once('.').unwrap();
        // An ES256 token whose last character changed: bits past the signature's end (the
        // base64 crate's "Invalid last symbol 116").
        let mangled = {
            let t = mint(&private, "ec", &claims(Grant::Listen, "/", now + 60, 0)).unwrap();
            let last = if t.ends_with('t') { 'v' } else { 't' };
            format!("{}{last}", &t[..t.len() - 1])
        };
        let none_alg = format!("{}.{rest}", b64(r#"{"alg":"none","kid":"k1"}"#));
        let hs512 = format!("{}.{rest}", b64(r#"{"alg":"HS512","kid":"k1"}"#));
        let no_role = {
            let body = b64(&format!(r#"{{"path":"/","exp":{}}}"#, now + 60));
            let head = good.split('.').next().unwrap();
            let msg = format!("{head}.{body}");
            let key = EncodingKey::from_secret("a".repeat(40).as_bytes());
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{msg}.{sig}")
        };
        for (token, says) in [
            ("garbage", "not a JWT"),
            ("a.b", "not a JWT"),
            // Its last character changed: bits past the signature's end (the base64
            // crate's "Invalid last symbol 116").
            (&mangled as &str, "not base64url"),
            (
                &format!("{}.x.y", b64(r#"{"alg":"ES256","kid":"ec"}"#)) as &str,
                "not base64url",
            ),
            ("x.y.z", "header is not a JSON object"),
            (
                &none_alg,
                "signed with \"none\"; quicast takes HS256 or ES256",
            ),
            (
                &hs512,
                "signed with \"HS512\"; quicast takes HS256 or ES256",
            ),
            (&no_role, "no `role` claim"),
        ] {
            let e = keys.verify(token, now).unwrap_err();
            assert!(matches!(e, Refusal::Malformed(_)), "{token}: {e}");
            let e = e.to_string();
            assert!(
                e.starts_with("malformed token: ") && e.contains(says),
                "{token}: {e}"
            );
            for leak in ["Base64", "Json", "symbol", "expected one of", "variant"] {
                assert!(!e.contains(leak), "{token}: {e}");
            }
        }
        // A public key file that is not one, a private key that cannot sign.
        let bad_pub = dir.path().join("bad.pub");
        std::fs::write(
            &bad_pub,
            "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let e = KeySet::load(&[TokenKey::from_str(&format!("k={}", bad_pub.display())).unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("token-key: ") && e.contains("not a usable ECDSA P-256 public key"),
            "{e}"
        );
        let bad_priv = dir.path().join("bad.pem");
        std::fs::write(&bad_priv, "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgt\n-----END PRIVATE KEY-----\n").unwrap();
        let e = mint(&bad_priv, "k", &claims(Grant::Listen, "/", now + 60, 0)).unwrap_err();
        assert!(e.contains("not a usable ECDSA P-256 private key"), "{e}");
        let e = mint(
            &dir.path().join("absent"),
            "k",
            &claims(Grant::Listen, "/", now + 60, 0),
        )
        .unwrap_err();
        assert!(e.ends_with("cannot read it (no such file)"), "{e}");
        assert!(!e.contains("os error"), "{e}");
    }

    #[test]
    fn token_times_parse_as_rfc3339_or_a_duration_from_now() {
        let now = 1_000_000;
        assert_eq!(parse_when("+1h", now), Ok(1_003_600));
        assert_eq!(parse_when("-30m", now), Ok(998_200));
        assert_eq!(parse_when("90s", now), Ok(1_000_090));
        assert_eq!(parse_when("2d", now), Ok(1_172_800));
        assert_eq!(parse_when("1970-01-01T00:00:00Z", now), Ok(0));
        // `date -u -d 2026-12-24T18:00:00Z +%s`
        assert_eq!(parse_when("2026-12-24T18:00:00Z", now), Ok(1_798_135_200));
        assert_eq!(
            parse_when("2026-12-24T19:00:00.250+01:00", now),
            Ok(1_798_135_200)
        );
        assert_eq!(
            parse_when("2024-02-29T00:00:00-02:30", now),
            Ok(1_709_173_800)
        );
        for bad in [
            "",
            "1h30m",
            "3600",
            "+1w",
            "tomorrow",
            "2026-02-30T00:00:00Z",
            "2026-12-24T18:00:00",
            "2026-12-24T18:00:00+1",
            "2026-13-01T00:00:00Z",
            "+99999999999d",
        ] {
            let e = parse_when(bad, now).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn unusable_key_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = hmac_file(dir.path(), "short", "tooshort");
        let spec = |p: &Path| vec![TokenKey::from_str(&format!("k={}", p.display())).unwrap()];
        let e = KeySet::load(&spec(&short)).unwrap_err().to_string();
        assert!(
            e.starts_with("token-key:") && e.contains("too short"),
            "{e}"
        );
        let e = KeySet::load(&spec(&dir.path().join("absent")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("token-key:"), "{e}");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = dir.path().join("ec.pem");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        let e = KeySet::load(&spec(&private)).unwrap_err().to_string();
        assert!(e.contains("private key"), "{e}");
        assert!(TokenKey::from_str("no-file").is_err());
        assert!(TokenKey::from_str("bad kid=/x").is_err());
        assert!(mint(&short, "k", &claims(Grant::Listen, "/", 1, 0)).is_err());
    }
}
