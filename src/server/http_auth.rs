//! Listeners' tokens over HTTP: where a request carries one (`Authorization: Bearer`, or
//! `?token=`), the node's verdict as a response (401 or 403, counted), and a playlist that
//! passes a query token on to the URIs it lists.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::node::{Need, Node, MAX_TOKEN};

use super::http::{status_for, text, Body};

/// A listener's token: `Authorization: Bearer TOKEN`, or `?token=TOKEN`.
pub(super) fn listen_token(req: &Request<Incoming>) -> Option<String> {
    bearer(req).or_else(|| query_token(req.uri().query()))
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
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

/// Whether the token came in the query (there is no Bearer token).
pub(super) fn from_query(req: &Request<Incoming>) -> bool {
    bearer(req).is_none() && query_token(req.uri().query()).is_some()
}

/// Whether a listener with `token` may have stream `name`: `Ok(protected)` (whether the
/// stream needs a token: its answers are then private to the holder), or the refusal to
/// send (401 or 403, counted and logged).
pub(super) fn may_listen(
    node: &Node,
    name: &str,
    token: Option<&str>,
) -> std::result::Result<bool, Box<Response<Body>>> {
    let access = node.access();
    let presented = access.present(token.unwrap_or("").as_bytes());
    match access.may_listen(&presented, name, false) {
        Ok(()) => Ok(access.need(name) == Need::Token),
        Err(why) => {
            node.refused_auth(&format!("an HTTP listener of {name}"), &why);
            let e = why.into_error();
            let status = status_for(&e);
            let mut r = text(status, e.reason());
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"quicast\""),
                );
            }
            Err(Box::new(r))
        }
    }
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
