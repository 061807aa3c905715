//! Listeners' tokens over HTTP: where a request carries one (`Authorization: Bearer`, or
//! `?token=`), the node's verdict as a response (401 or 403, counted), and a playlist that
//! passes a query token on to the URIs it lists.

use bytes::Bytes;

use crate::node::{Node, Presented, MAX_TOKEN};

use super::head::RequestHead;
use super::{status_for, Reply};

/// A listener's token, and where it came from.
pub(super) enum ListenToken {
    None,
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// `?token=TOKEN`.
    Query(String),
}

impl ListenToken {
    pub(super) fn of(head: &RequestHead) -> ListenToken {
        if let Some(t) = bearer(head) {
            return ListenToken::Bearer(t);
        }
        match query_token(head.query.as_deref()) {
            Some(t) => ListenToken::Query(t),
            None => ListenToken::None,
        }
    }

    pub(super) fn value(&self) -> Option<&str> {
        match self {
            ListenToken::None => None,
            ListenToken::Bearer(t) | ListenToken::Query(t) => Some(t),
        }
    }

    /// The token, if it came in the query (to be passed on in a playlist's URIs).
    pub(super) fn in_query(&self) -> Option<&str> {
        match self {
            ListenToken::Query(t) => Some(t),
            _ => None,
        }
    }
}

fn bearer(head: &RequestHead) -> Option<String> {
    let v = std::str::from_utf8(head.authorization.as_deref()?).ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(|t| t.trim().to_string())
}

/// `?token=`, if it looks like a token (base64url segments, at most `MAX_TOKEN` bytes): it
/// may be copied into playlists, so nothing else is taken from a query.
fn query_token(query: Option<&str>) -> Option<String> {
    let t = query?.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let ok = (1..=MAX_TOKEN).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| t.to_string())
}

/// Whether a listener with `token` may have stream `name` by this node's own policy and
/// the rule the catalog knows for it: `Ok(what it presented)` (checked again with the rule
/// the stream brings once it is here: `Node::may_have`), or the refusal to send (401 or 403, counted and logged).
pub(super) fn may_listen(node: &Node, name: &str, token: Option<&str>) -> Result<Presented, Reply> {
    let access = node.access();
    let presented = access.present(token.unwrap_or("").as_bytes());
    match access.may_listen_to(&presented, name, false, &node.known_rule(name)) {
        Ok(()) => Ok(presented),
        Err(why) => {
            node.refused_auth(&format!("an HTTP listener of {name}"), &why);
            Err(refusal_reply(&why.into_error()))
        }
    }
}

/// The answer to a listener refused: its status, with the challenge a 401 carries.
pub(super) fn refusal_reply(e: &crate::error::Error) -> Reply {
    let status = status_for(e);
    let mut r = Reply::text(status, e.reason());
    if status == 401 {
        r.set("WWW-Authenticate", "Bearer realm=\"quicast\"");
    }
    r
}

/// Adds `?token=` (or `&token=`) to every URI of a playlist.
pub(super) fn playlist_with_token(body: &[u8], token: &str) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let add = |uri: &str| {
        let sep = if uri.contains('?') { '&' } else { '?' };
        format!("{uri}{sep}token={token}")
    };
    let mut out = String::with_capacity(text.len() + 64 * token.len());
    for line in text.lines() {
        if line.is_empty() {
        } else if !line.starts_with('#') {
            out.push_str(&add(line));
        } else if let Some(i) = line.find("URI=\"") {
            let start = i + 5;
            let end = line[start..].find('"').map_or(line.len(), |e| start + e);
            out.push_str(&line[..start]);
            out.push_str(&add(&line[start..end]));
            out.push_str(&line[end..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Bytes::from(out)
}
