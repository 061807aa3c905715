//! Control-stream messages: `type, length, payload`, each bounded.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::access::StreamInfo;
use super::catalog::{CatalogEntry, MAX_CATALOG_ENTRIES};
use super::varint::{self, get_varint, put_varint};
use super::{
    DecodeError, MAX_ALTERNATIVES, MAX_CODEC_HEADER, MAX_MESSAGE, MAX_NAME, MAX_PATH, MAX_REASON,
    MAX_TOKEN, MAX_URL,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Listener = 1,
    Relay = 2,
    Publisher = 3,
}

impl Role {
    fn from_u64(v: u64) -> Result<Role, DecodeError> {
        match v {
            1 => Ok(Role::Listener),
            2 => Ok(Role::Relay),
            3 => Ok(Role::Publisher),
            _ => Err(DecodeError::BadValue {
                what: "role",
                value: v,
            }),
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The start of the segment now being produced.
    Live,
    /// A given segment sequence number (or the oldest one still held, if it is gone).
    Seq(u64),
}

/// What a listener needs before any audio: the codec and its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// Codec id: 1 = Opus. The only one v1 defines.
    pub kind: u64,
    pub sample_rate: u32,
    pub channels: u8,
    /// The codec's own header: for Opus, the OpusHead packet (RFC 7845 §5.1).
    pub header: Bytes,
}

pub const CODEC_OPUS: u64 = 1;
pub const CODEC_MP3: u64 = 2;
pub const CODEC_AAC: u64 = 3;

/// `SUBSCRIBE` flag: send this subscriber every frame at once (the shortest delivery
/// interval), while the node has headroom.
pub const SUBSCRIBE_LOW_LATENCY: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first message on the control stream.
    Hello {
        version: u64,
        role: Role,
        token: Bytes,
    },
    /// Server → client: accepted.
    HelloOk {
        version: u64,
        node: String,
    },
    Subscribe {
        id: u64,
        path: String,
        start: Start,
        /// `SUBSCRIBE_LOW_LATENCY` and future bits; optional, trailing (0 is not written).
        flags: u64,
    },
    /// The stream exists (sent when it starts, for a subscription in the waiting room).
    /// `info` (version 2, trailing): the broadcast's start at its origin and who may listen;
    /// a node sends it to every peer that said version 2, and a relay needs it.
    Subscribed {
        id: u64,
        instance: u64,
        codec: Codec,
        info: Option<StreamInfo>,
    },
    SubscribeError {
        id: u64,
        code: u64,
        reason: String,
    },
    Unsubscribe {
        id: u64,
    },
    /// Publisher → origin: announce a stream; frames follow on one uni stream. `broadcast`
    /// names the broadcast (the publisher picks it; every origin it publishes to uses it as
    /// the instance, so redundant origins agree); optional, trailing.
    Publish {
        path: String,
        codec: Codec,
        broadcast: Option<u64>,
    },
    PublishOk {
        instance: u64,
    },
    /// No segment after `last_seq` will come for this subscription: the broadcast ended.
    StreamEnd {
        id: u64,
        last_seq: u64,
    },
    /// Connection-level error, sent before closing.
    Error {
        code: u64,
        reason: String,
    },
    /// Client (a relay) → server: the live streams of the tree, by path after `after`
    /// (empty: from the first).
    CatalogRequest {
        after: String,
    },
    /// Server → client: a page of the catalog after `after` (the request's, said again so
    /// that an answer is never taken for another request's), in path order; `more`: ask
    /// again after the last one.
    Catalog {
        after: String,
        entries: Vec<CatalogEntry>,
        more: bool,
    },
    /// Server → client: this node is draining; move elsewhere (to one of `alternatives`,
    /// `quic://` URLs, if any are named) before it closes the connection.
    GoAway {
        alternatives: Vec<String>,
    },
}

mod ty {
    pub const HELLO: u64 = 0x01;
    pub const HELLO_OK: u64 = 0x02;
    pub const SUBSCRIBE: u64 = 0x03;
    pub const SUBSCRIBED: u64 = 0x04;
    pub const SUBSCRIBE_ERROR: u64 = 0x05;
    pub const UNSUBSCRIBE: u64 = 0x06;
    pub const PUBLISH: u64 = 0x07;
    pub const PUBLISH_OK: u64 = 0x08;
    pub const STREAM_END: u64 = 0x09;
    pub const ERROR: u64 = 0x0a;
    pub const GO_AWAY: u64 = 0x0b;
    pub const CATALOG_REQUEST: u64 = 0x0c;
    pub const CATALOG: u64 = 0x0d;
}

pub(super) fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.put_slice(b);
}

fn get_bytes(buf: &mut Bytes, what: &'static str, max: usize) -> Result<Bytes, DecodeError> {
    let len = get_varint(buf)?;
    if len > max as u64 {
        return Err(DecodeError::TooLarge { what, len, max });
    }
    if (buf.remaining() as u64) < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len as usize))
}

pub(super) fn get_string(
    buf: &mut Bytes,
    what: &'static str,
    max: usize,
) -> Result<String, DecodeError> {
    let b = get_bytes(buf, what, max)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadUtf8(what))
}

fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

/// Whether `rule` names stream `path`: the same name, or a prefix of it ending in `/` (`/`
/// or nothing: every stream). A leading `/` on either is not part of the name. One rule for
/// every list of names an operator or a token gives (announced names, token paths, listen
/// policy, low-latency streams).
pub fn path_covers(rule: &str, path: &str) -> bool {
    let rule = rule.strip_prefix('/').unwrap_or(rule);
    let path = path.strip_prefix('/').unwrap_or(path);
    rule.is_empty() || rule == path || (rule.ends_with('/') && path.starts_with(rule))
}

/// A stream path: 1..=255 bytes of `[A-Za-z0-9._~-]` in `/`-separated non-empty parts, none `.` or `..`.
pub fn check_path(p: &str) -> Result<(), DecodeError> {
    if p.is_empty() {
        return Err(DecodeError::BadPath("empty"));
    }
    if p.len() > MAX_PATH {
        return Err(DecodeError::BadPath("longer than 255 bytes"));
    }
    for part in p.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(DecodeError::BadPath("empty, '.' or '..' part"));
        }
        if !part
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._~-".contains(&c))
        {
            return Err(DecodeError::BadPath("characters outside [A-Za-z0-9._~-/]"));
        }
    }
    Ok(())
}

pub(super) fn get_path(buf: &mut Bytes) -> Result<String, DecodeError> {
    let p = get_string(buf, "path", MAX_PATH)?;
    check_path(&p)?;
    Ok(p)
}

fn put_codec(buf: &mut BytesMut, c: &Codec) {
    put_varint(buf, c.kind);
    put_varint(buf, c.sample_rate as u64);
    buf.put_u8(c.channels);
    put_bytes(buf, &c.header);
}

fn get_codec(buf: &mut Bytes) -> Result<Codec, DecodeError> {
    let kind = get_varint(buf)?;
    if kind != CODEC_OPUS {
        return Err(DecodeError::BadValue {
            what: "codec",
            value: kind,
        });
    }
    let sample_rate = get_varint(buf)?;
    if sample_rate == 0 || sample_rate > 384_000 {
        return Err(DecodeError::BadValue {
            what: "sample rate",
            value: sample_rate,
        });
    }
    let channels = get_u8(buf)?;
    if channels == 0 {
        return Err(DecodeError::BadValue {
            what: "channel count",
            value: 0,
        });
    }
    let header = get_bytes(buf, "codec header", MAX_CODEC_HEADER)?;
    Ok(Codec {
        kind,
        sample_rate: sample_rate as u32,
        channels,
        header,
    })
}

impl Message {
    /// Appends `type, length, payload` to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        let t = match self {
            Message::Hello {
                version,
                role,
                token,
            } => {
                put_varint(&mut p, *version);
                put_varint(&mut p, *role as u64);
                put_bytes(&mut p, token);
                ty::HELLO
            }
            Message::HelloOk { version, node } => {
                put_varint(&mut p, *version);
                put_bytes(&mut p, node.as_bytes());
                ty::HELLO_OK
            }
            Message::Subscribe {
                id,
                path,
                start,
                flags,
            } => {
                put_varint(&mut p, *id);
                put_bytes(&mut p, path.as_bytes());
                match start {
                    Start::Live => put_varint(&mut p, 0),
                    Start::Seq(s) => {
                        put_varint(&mut p, 1);
                        put_varint(&mut p, *s);
                    }
                }
                if *flags != 0 {
                    put_varint(&mut p, *flags);
                }
                ty::SUBSCRIBE
            }
            Message::Subscribed {
                id,
                instance,
                codec,
                info,
            } => {
                put_varint(&mut p, *id);
                put_varint(&mut p, *instance);
                put_codec(&mut p, codec);
                if let Some(info) = info {
                    info.put(&mut p);
                }
                ty::SUBSCRIBED
            }
            Message::SubscribeError { id, code, reason } => {
                put_varint(&mut p, *id);
                put_varint(&mut p, *code);
                put_bytes(&mut p, reason.as_bytes());
                ty::SUBSCRIBE_ERROR
            }
            Message::Unsubscribe { id } => {
                put_varint(&mut p, *id);
                ty::UNSUBSCRIBE
            }
            Message::CatalogRequest { after } => {
                put_bytes(&mut p, after.as_bytes());
                ty::CATALOG_REQUEST
            }
            Message::Catalog {
                after,
                entries,
                more,
            } => {
                put_bytes(&mut p, after.as_bytes());
                let entries = &entries[..entries.len().min(MAX_CATALOG_ENTRIES)];
                put_varint(&mut p, entries.len() as u64);
                for e in entries {
                    e.put(&mut p);
                }
                put_varint(&mut p, *more as u64);
                ty::CATALOG
            }
            Message::Publish {
                path,
                codec,
                broadcast,
            } => {
                put_bytes(&mut p, path.as_bytes());
                put_codec(&mut p, codec);
                if let Some(b) = broadcast {
                    put_varint(&mut p, *b);
                }
                ty::PUBLISH
            }
            Message::PublishOk { instance } => {
                put_varint(&mut p, *instance);
                ty::PUBLISH_OK
            }
            Message::StreamEnd { id, last_seq } => {
                put_varint(&mut p, *id);
                put_varint(&mut p, *last_seq);
                ty::STREAM_END
            }
            Message::Error { code, reason } => {
                put_varint(&mut p, *code);
                put_bytes(&mut p, reason.as_bytes());
                ty::ERROR
            }
            Message::GoAway { alternatives } => {
                put_varint(&mut p, alternatives.len() as u64);
                for a in alternatives {
                    put_bytes(&mut p, a.as_bytes());
                }
                ty::GO_AWAY
            }
        };
        put_varint(out, t);
        put_varint(out, p.len() as u64);
        out.extend_from_slice(&p);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one message from the front of `buf`. `Ok(None)` means more bytes are needed;
    /// `buf` is then left untouched. A declared length over `MAX_MESSAGE` is an error at once,
    /// before its bytes arrive.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let mut peek = &buf[..];
        let t = match varint::try_get(&mut peek) {
            Some(v) => v,
            None => return Ok(None),
        };
        let len = match varint::try_get(&mut peek) {
            Some(v) => v,
            None => return Ok(None),
        };
        if len > MAX_MESSAGE as u64 {
            return Err(DecodeError::TooLarge {
                what: "message",
                len,
                max: MAX_MESSAGE,
            });
        }
        let head = buf.len() - peek.len();
        if peek.len() < len as usize {
            return Ok(None);
        }
        buf.advance(head);
        let payload = buf.split_to(len as usize).freeze();
        Self::decode_payload(t, payload).map(Some)
    }

    fn decode_payload(t: u64, mut p: Bytes) -> Result<Message, DecodeError> {
        let m = match t {
            ty::HELLO => Message::Hello {
                version: get_varint(&mut p)?,
                role: Role::from_u64(get_varint(&mut p)?)?,
                token: get_bytes(&mut p, "token", MAX_TOKEN)?,
            },
            ty::HELLO_OK => Message::HelloOk {
                version: get_varint(&mut p)?,
                node: get_string(&mut p, "node name", MAX_NAME)?,
            },
            ty::SUBSCRIBE => {
                let id = get_varint(&mut p)?;
                let path = get_path(&mut p)?;
                let start = match get_varint(&mut p)? {
                    0 => Start::Live,
                    1 => Start::Seq(get_varint(&mut p)?),
                    v => {
                        return Err(DecodeError::BadValue {
                            what: "start kind",
                            value: v,
                        })
                    }
                };
                let flags = if p.has_remaining() {
                    get_varint(&mut p)?
                } else {
                    0
                };
                Message::Subscribe {
                    id,
                    path,
                    start,
                    flags,
                }
            }
            ty::SUBSCRIBED => Message::Subscribed {
                id: get_varint(&mut p)?,
                instance: get_varint(&mut p)?,
                codec: get_codec(&mut p)?,
                info: if p.has_remaining() {
                    Some(StreamInfo::get(&mut p)?)
                } else {
                    None
                },
            },
            ty::SUBSCRIBE_ERROR => Message::SubscribeError {
                id: get_varint(&mut p)?,
                code: get_varint(&mut p)?,
                reason: get_string(&mut p, "reason", MAX_REASON)?,
            },
            ty::UNSUBSCRIBE => Message::Unsubscribe {
                id: get_varint(&mut p)?,
            },
            ty::CATALOG_REQUEST => {
                let after = get_string(&mut p, "path", MAX_PATH)?;
                if !after.is_empty() {
                    check_path(&after)?;
                }
                Message::CatalogRequest { after }
            }
            ty::CATALOG => {
                let after = get_string(&mut p, "path", MAX_PATH)?;
                if !after.is_empty() {
                    check_path(&after)?;
                }
                let n = get_varint(&mut p)?;
                if n > MAX_CATALOG_ENTRIES as u64 {
                    return Err(DecodeError::TooLarge {
                        what: "catalog entries",
                        len: n,
                        max: MAX_CATALOG_ENTRIES,
                    });
                }
                let mut entries = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    entries.push(CatalogEntry::get(&mut p)?);
                }
                let more = match get_varint(&mut p)? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(DecodeError::BadValue {
                            what: "catalog more",
                            value: v,
                        })
                    }
                };
                Message::Catalog {
                    after,
                    entries,
                    more,
                }
            }
            ty::PUBLISH => Message::Publish {
                path: get_path(&mut p)?,
                codec: get_codec(&mut p)?,
                broadcast: if p.has_remaining() {
                    Some(get_varint(&mut p)?)
                } else {
                    None
                },
            },
            ty::GO_AWAY => {
                let n = get_varint(&mut p)?;
                if n > MAX_ALTERNATIVES as u64 {
                    return Err(DecodeError::TooLarge {
                        what: "alternatives",
                        len: n,
                        max: MAX_ALTERNATIVES,
                    });
                }
                let mut alternatives = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    alternatives.push(get_string(&mut p, "alternative", MAX_URL)?);
                }
                Message::GoAway { alternatives }
            }
            ty::PUBLISH_OK => Message::PublishOk {
                instance: get_varint(&mut p)?,
            },
            ty::STREAM_END => Message::StreamEnd {
                id: get_varint(&mut p)?,
                last_seq: get_varint(&mut p)?,
            },
            ty::ERROR => Message::Error {
                code: get_varint(&mut p)?,
                reason: get_string(&mut p, "reason", MAX_REASON)?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if p.has_remaining() {
            return Err(DecodeError::Trailing(p.remaining()));
        }
        Ok(m)
    }
}
