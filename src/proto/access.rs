//! Who may listen to a stream, as the wire says it with the stream (`SUBSCRIBED`, version 2):
//! the rule travels down the tree with the broadcast, so every node enforces the policy of
//! the node that owns it, whatever its own configuration says.

use bytes::{Bytes, BytesMut};

use super::message::{get_string, put_bytes};
use super::varint::{get_varint, put_varint};
use super::DecodeError;

/// Key ids a rule may name, and the length of each (a token key id: 1 to 64 bytes).
pub const MAX_KEY_IDS: usize = 16;
pub const MAX_KEY_ID: usize = 64;

/// A key id no key can have (`~` is not in a key id's characters): a token rule naming only
/// it lets no token in.
pub const NO_KEY: &str = "~none";

/// Whether listening needs a token, and signed with which keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StreamAccess {
    /// Anyone may listen.
    #[default]
    Public,
    /// A listen token is needed, signed with one of these key ids (none named: any key the
    /// checking node holds).
    Token { kids: Vec<String> },
}

impl StreamAccess {
    pub fn is_public(&self) -> bool {
        matches!(self, StreamAccess::Public)
    }

    /// Whether a token signed with key `kid` may let a listener in.
    pub fn allows_key(&self, kid: &str) -> bool {
        match self {
            StreamAccess::Public => true,
            StreamAccess::Token { kids } => kids.is_empty() || kids.iter().any(|k| k == kid),
        }
    }

    /// The stricter of this rule and `other` (two parents of one broadcast may say
    /// different things: both hold). Two token rules keep the key ids both allow; none in
    /// common: no key may sign (named by an id no key can have).
    pub fn stricter(&self, other: &StreamAccess) -> StreamAccess {
        match (self, other) {
            (StreamAccess::Public, o) | (o, StreamAccess::Public) => o.clone(),
            (StreamAccess::Token { kids: a }, StreamAccess::Token { kids: b }) => {
                if a.is_empty() {
                    return other.clone();
                }
                if b.is_empty() {
                    return self.clone();
                }
                let mut both: Vec<String> = a.iter().filter(|k| b.contains(k)).cloned().collect();
                if both.is_empty() {
                    both.push(NO_KEY.to_string());
                }
                StreamAccess::Token { kids: both }
            }
        }
    }

    pub(super) fn put(&self, buf: &mut BytesMut) {
        match self {
            StreamAccess::Public => put_varint(buf, 0),
            StreamAccess::Token { kids } => {
                put_varint(buf, 1);
                // Key ids are checked where they are made (`node::check_kid`, at most 64
                // bytes, at most 16 told); any beyond would be refused by the peer.
                debug_assert!(
                    kids.len() <= MAX_KEY_IDS && kids.iter().all(|k| k.len() <= MAX_KEY_ID)
                );
                put_varint(buf, kids.len() as u64);
                for k in kids {
                    put_bytes(buf, k.as_bytes());
                }
            }
        }
    }

    pub(super) fn get(buf: &mut Bytes) -> Result<StreamAccess, DecodeError> {
        match get_varint(buf)? {
            0 => Ok(StreamAccess::Public),
            1 => {
                let n = get_varint(buf)?;
                if n > MAX_KEY_IDS as u64 {
                    return Err(DecodeError::TooLarge {
                        what: "key ids",
                        len: n,
                        max: MAX_KEY_IDS,
                    });
                }
                let mut kids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let k = get_string(buf, "key id", MAX_KEY_ID)?;
                    if k.is_empty() {
                        return Err(DecodeError::BadValue {
                            what: "key id length",
                            value: 0,
                        });
                    }
                    kids.push(k);
                }
                Ok(StreamAccess::Token { kids })
            }
            v => Err(DecodeError::BadValue {
                what: "access kind",
                value: v,
            }),
        }
    }
}

impl std::fmt::Display for StreamAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamAccess::Public => f.write_str("public"),
            StreamAccess::Token { kids } if kids.is_empty() => f.write_str("token"),
            StreamAccess::Token { kids } => write!(f, "token ({})", kids.join(", ")),
        }
    }
}

/// What a node says of a broadcast with `SUBSCRIBED` (version 2): its start at the origin
/// and who may listen. The same on every node of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// When the broadcast began at its origin: milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub access: StreamAccess,
}

impl StreamInfo {
    pub(super) fn put(&self, buf: &mut BytesMut) {
        put_varint(buf, self.started_ms);
        self.access.put(buf);
    }

    pub(super) fn get(buf: &mut Bytes) -> Result<StreamInfo, DecodeError> {
        Ok(StreamInfo {
            started_ms: get_varint(buf)?,
            access: StreamAccess::get(buf)?,
        })
    }
}
