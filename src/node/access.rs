//! Who may do what on a node: its token keys, the listen policy per path prefix, and the
//! shared publish token of older set-ups. Built from the configuration at start and again
//! on SIGHUP (a reload swaps it whole; connections keep what they were let in with).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::auth::secret_eq;
use super::config::{invalid, ConfigError, NodeConfig, Secret};
use super::token::{check_times, unix_now, Claims, Grant, KeySet, Refusal};
use crate::proto::StreamAccess;

/// Whether listening to a path needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Public,
    Token,
}

/// `listen-policy`: `PREFIX=public` or `PREFIX=token` (the longest prefix that matches a
/// stream's path decides; `/` is every stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRule {
    pub prefix: String,
    pub need: Need,
}

impl FromStr for ListenRule {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenRule, String> {
        let (prefix, need) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected PREFIX=public or PREFIX=token"))?;
        let need = match need {
            "public" => Need::Public,
            "token" => Need::Token,
            other => return Err(format!("{s:?}: {other:?} is neither public nor token")),
        };
        let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            let name = prefix.strip_suffix('/').unwrap_or(prefix);
            crate::proto::check_path(name).map_err(|e| format!("{s:?}: {e}"))?;
        }
        Ok(ListenRule {
            prefix: prefix.to_string(),
            need,
        })
    }
}

impl<'de> Deserialize<'de> for ListenRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl ListenRule {
    /// A policy prefix also covers the names under it when written without its `/`.
    fn matches(&self, path: &str) -> bool {
        crate::proto::path_covers(&self.prefix, path)
            || path
                .strip_prefix(&self.prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// A token a peer presented, checked once when it arrives (the hello, an HTTP request).
#[derive(Debug, Clone)]
pub enum Presented {
    /// None given.
    None,
    /// The shared publish token (`publish-token`).
    Secret,
    /// A signed token, and what checking it said.
    Signed(Result<Claims, Refusal>),
}

/// The node's access rules, swapped whole on reload.
#[derive(Clone, Default)]
pub struct Access {
    keys: KeySet,
    listen: Vec<ListenRule>,
    publish_token: Option<Secret>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("keys", &self.keys)
            .field("listen", &self.listen)
            .field("publish_token", &self.publish_token.is_some())
            .finish()
    }
}

impl Access {
    /// The rules `cfg` gives (its key files read now). Refused, naming the key, when a file
    /// cannot be used or the rules need keys there are none of.
    pub fn from_config(cfg: &NodeConfig) -> Result<Access, ConfigError> {
        let keys = KeySet::load(&cfg.token_key)?;
        if keys.is_empty() {
            if let Some(r) = cfg.listen_policy.iter().find(|r| r.need == Need::Token) {
                return Err(invalid(
                    "listen-policy",
                    format!(
                        "/{}=token needs at least one token-key to check tokens with",
                        r.prefix
                    ),
                ));
            }
        }
        let mut listen = cfg.listen_policy.clone();
        // Longest prefix first: the first match decides.
        listen.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Access {
            keys,
            listen,
            publish_token: cfg.publish_token.clone(),
        })
    }

    /// How many keys tokens are checked with.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Whether anyone may publish (no keys, no publish token).
    pub fn open_to_publishers(&self) -> bool {
        self.keys.is_empty() && self.publish_token.is_none()
    }

    /// Checks a token once, as it arrives.
    pub fn present(&self, token: &[u8]) -> Presented {
        if token.is_empty() {
            return Presented::None;
        }
        if let Some(t) = &self.publish_token {
            if secret_eq(t.expose().as_bytes(), token) {
                return Presented::Secret;
            }
        }
        if self.keys.is_empty() {
            // Nothing to check it with: as good as none (listeners of an open node may
            // carry one; a publisher is told the shared token is wrong).
            return match &self.publish_token {
                Some(_) => Presented::Signed(Err(Refusal::WrongSecret)),
                None => Presented::None,
            };
        }
        match std::str::from_utf8(token) {
            Ok(t) => Presented::Signed(self.keys.verify(t, unix_now())),
            Err(_) => Presented::Signed(Err(Refusal::Malformed("not text".into()))),
        }
    }

    /// Whether a publisher that presented `p` may publish (the path is checked again with
    /// `may_publish` once it is named).
    pub fn publisher(&self, p: &Presented) -> Result<(), Refusal> {
        if self.open_to_publishers() {
            return Ok(());
        }
        match p {
            Presented::Secret => Ok(()),
            Presented::None => Err(Refusal::Missing(Grant::Publish)),
            Presented::Signed(r) => self.role(r, Grant::Publish).map(|_| ()),
        }
    }

    /// Whether a publisher that presented `p` may publish to `path`.
    pub fn may_publish(&self, p: &Presented, path: &str) -> Result<(), Refusal> {
        if self.open_to_publishers() {
            return Ok(());
        }
        match p {
            Presented::Secret => Ok(()),
            Presented::None => Err(Refusal::Missing(Grant::Publish)),
            Presented::Signed(r) => covered(self.role(r, Grant::Publish)?, path),
        }
    }

    /// Whether a child relay that presented `p` may connect: with keys, only with a relay
    /// token.
    pub fn relay(&self, p: &Presented) -> Result<(), Refusal> {
        if self.keys.is_empty() {
            return Ok(());
        }
        match p {
            Presented::Signed(r) => self.role(r, Grant::Relay).map(|_| ()),
            _ => Err(Refusal::Missing(Grant::Relay)),
        }
    }

    /// Whether a peer in `as_relay` role (or a listener) that presented `p` may subscribe to
    /// `path` now, by this node's own policy (asked before the stream is fetched: see
    /// `may_listen_to` for the rule the stream brings).
    pub fn may_listen(&self, p: &Presented, path: &str, as_relay: bool) -> Result<(), Refusal> {
        self.may_listen_to(p, path, as_relay, &StreamAccess::Public)
    }

    /// Whether a peer that presented `p` may have stream `path`, which came with rule
    /// `stream`: the stricter of that and this node's own policy decides. A child relay is let
    /// in by its relay token (it enforces the rule below); a listener of a stream that needs
    /// a token must bring one signed with a key the rule names and this node holds. A node
    /// without keys refuses every listener of such a stream: it fails closed.
    pub fn may_listen_to(
        &self,
        p: &Presented,
        path: &str,
        as_relay: bool,
        stream: &StreamAccess,
    ) -> Result<(), Refusal> {
        let protected = self.need(path) == Need::Token || !stream.is_public();
        if as_relay {
            if self.keys.is_empty() {
                // A peer's role is its own word: without a key to check a relay token
                // with, a protected stream goes to no one who says "relay" either.
                return match protected {
                    false => Ok(()),
                    true => Err(Refusal::NoKeyForRelays {
                        path: path.to_string(),
                    }),
                };
            }
            return match p {
                Presented::Signed(r) => covered(self.role(r, Grant::Relay)?, path),
                _ => Err(Refusal::Missing(Grant::Relay)),
            };
        }
        if !protected {
            return Ok(());
        }
        if self.keys.is_empty() {
            return Err(Refusal::CannotCheck {
                path: path.to_string(),
            });
        }
        match p {
            Presented::Signed(r) => {
                let c = self.role(r, Grant::Listen)?;
                if !stream.allows_key(&c.kid) {
                    return Err(Refusal::KeyNotForStream {
                        kid: c.kid.clone(),
                        allowed: stream.to_string(),
                    });
                }
                covered(c, path)
            }
            _ => Err(Refusal::Missing(Grant::Listen)),
        }
    }

    /// The rule this node passes on with stream `path`, which came with `stream`: the
    /// parent's if it needs a token, else this node's own policy (a token signed with any
    /// key this node holds).
    pub fn rule_for(&self, path: &str, stream: &StreamAccess) -> StreamAccess {
        match stream {
            StreamAccess::Token { .. } => stream.clone(),
            StreamAccess::Public if self.need(path) == Need::Token => StreamAccess::Token {
                kids: self.keys.kids(),
            },
            StreamAccess::Public => StreamAccess::Public,
        }
    }

    /// The claims, if they are for `want`, still valid now, and signed with a key still
    /// held (a connection's token is checked at each subscription: one let in before its
    /// token expired, or before a reload dropped its key, takes no new streams after).
    fn role<'a>(&self, r: &'a Result<Claims, Refusal>, want: Grant) -> Result<&'a Claims, Refusal> {
        let c = r.as_ref().map_err(Clone::clone)?;
        if c.role != want {
            return Err(Refusal::WrongRole { want, got: c.role });
        }
        if !self.keys.has(&c.kid) {
            return Err(Refusal::UnknownKey(c.kid.clone()));
        }
        check_times(c, unix_now())?;
        Ok(c)
    }

    /// The shared publish token, if one is configured.
    pub fn publish_secret(&self) -> Option<&Secret> {
        self.publish_token.as_ref()
    }

    /// What listening to `path` needs.
    pub fn need(&self, path: &str) -> Need {
        let path = path.strip_prefix('/').unwrap_or(path);
        self.listen
            .iter()
            .find(|r| r.matches(path))
            .map_or(Need::Public, |r| r.need)
    }
}

fn covered(c: &Claims, path: &str) -> Result<(), Refusal> {
    if c.covers(path) {
        Ok(())
    } else {
        Err(Refusal::WrongPath {
            allowed: c.path.clone(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_decides() {
        let mut a = Access {
            listen: [
                "/=public",
                "/paid/=token",
                "/paid/free/=public",
                "vip=token",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            ..Default::default()
        };
        a.listen.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        assert_eq!(a.need("news"), Need::Public);
        assert_eq!(a.need("paid/show"), Need::Token);
        assert_eq!(a.need("/paid/free/show"), Need::Public);
        assert_eq!(a.need("vip"), Need::Token);
        assert_eq!(a.need("vip/x"), Need::Token);
        assert_eq!(a.need("vipx"), Need::Public);
        assert!("/x=maybe".parse::<ListenRule>().is_err());
        assert!("nothing".parse::<ListenRule>().is_err());
    }
}
