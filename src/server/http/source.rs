//! Icecast sources over HTTP: `PUT /STREAM` (ffmpeg's `icecast://` output: a raw body after
//! `100 Continue`, or chunked) and the legacy `SOURCE /STREAM` (a raw body after `200`).
//! Who may send is the ingress's rule; a guesser of the password is slowed here.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info_span, Instrument};

use super::body::{Chunked, Conn, Sized, ToEnd};
use super::head::{Method, RequestHead};
use super::{status_for, Door, Reply};
use crate::error::{Error, Kind, Result};
use crate::ingress::icecast;
use crate::node::{inc, Node};

/// Wrong source passwords one address may try in `GUESS_WINDOW`; past that it is told to
/// wait (429) without its password being checked, so guessing costs a stranger a minute per
/// few tries and the node nothing.
const MAX_GUESSES: u32 = 5;
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// Wrong passwords by address, each address forgotten a window after its first.
pub(super) struct Guesses(moka::sync::Cache<IpAddr, Arc<AtomicU32>>);

impl Guesses {
    pub(super) fn new() -> Guesses {
        Guesses(
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(GUESS_WINDOW)
                .build(),
        )
    }

    fn spent(&self, addr: IpAddr) -> bool {
        self.0
            .get(&addr)
            .is_some_and(|n| n.load(Ordering::Relaxed) >= MAX_GUESSES)
    }

    fn failed(&self, addr: IpAddr) {
        self.0
            .get_with(addr, Default::default)
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// What must hold before a source may send its body (a relay takes none).
fn precheck(node: &Node, name: &str, auth: Option<&[u8]>) -> Result<()> {
    if node.is_relay() {
        return Err(Error::new(
            Kind::NotAllowed,
            "a relay takes no sources; send to the origin",
        ));
    }
    icecast::precheck(node, name, auth)
}

/// A source's refusal, said to it (unless it is a legacy source, told 200 already) and, a
/// bounded number of times a second, to the log.
fn refusal(node: &Node, status: u16, why: &str) -> Reply {
    crate::bounded_warn!(
        node.logs.refusals,
        side = "downstream",
        status,
        "source refused: {why}"
    );
    let mut r = Reply::text(status, why);
    if status == 401 {
        r.set("WWW-Authenticate", "Basic realm=\"quicast\"");
    }
    r
}

/// `GET /admin/metadata?mode=updinfo&mount=/NAME&song=TITLE` (Icecast's, with the source's
/// credentials): the stream's now-playing title, from the next segment on, down the tree.
/// Guessing the password here costs what it does on `PUT`.
pub(super) fn metadata(door: &Door, head: &RequestHead, remote: SocketAddr, query: &str) -> Reply {
    let node = &door.node;
    if door.guesses.spent(remote.ip()) {
        inc(&node.stats.auth_refused_total);
        return refusal(
            node,
            429,
            "too many wrong source passwords from this address: try again later",
        )
        .with("Retry-After", GUESS_WINDOW.as_secs().to_string());
    }
    if node.is_relay() {
        return refusal(
            node,
            403,
            "a relay takes no titles; send them to the origin",
        );
    }
    if let Err(e) = icecast::authorize(node, head.authorization.as_deref()) {
        if e.kind() == Kind::Unauthorized {
            inc(&node.stats.auth_refused_total);
            door.guesses.failed(remote.ip());
        }
        return refusal(node, status_for(&e), e.reason());
    }
    let update = match crate::media::metadata::updinfo_query(query) {
        Ok(u) => u,
        Err(e) => return refusal(node, status_for(&e), e.reason()),
    };
    if let Err(e) = crate::proto::check_path(&update.mount) {
        return refusal(node, 400, &format!("bad mount: {e}"));
    }
    let slot = match node.registry.slot(&update.mount) {
        Ok((slot, _)) => slot,
        Err(e) => return refusal(node, status_for(&e), e.reason()),
    };
    // Only for a stream the source password may take (not one a publisher holds with
    // other credentials).
    if !slot.may_claim(icecast::source_credential(node)) {
        return refusal(
            node,
            403,
            &format!(
                "stream {} is held by a publisher with other credentials",
                update.mount
            ),
        );
    }
    tracing::info!(
        path = %update.mount,
        title = update.title.as_deref().unwrap_or(""),
        "now playing (source's update)"
    );
    let title = update.title.map(bytes::Bytes::from);
    let live = slot.broadcast().filter(|b| !b.is_finished());
    if let Some(b) = &live {
        b.set_title(title.clone());
    }
    if live.is_none() || !slot.has_publisher() {
        // Sent as the encoder connects, before its first frame: the broadcast it begins
        // starts with it.
        slot.set_pending_title(title);
    }
    // Icecast's answer, which source clients read.
    Reply::new(
        200,
        "text/xml",
        bytes::Bytes::from_static(
            b"<?xml version=\"1.0\"?>\n<iceresponse><message>Metadata update successful</message><return>1</return></iceresponse>\n",
        ),
    )
}

/// Takes a source on `conn` until its body ends (or it fails), then answers with how it
/// ended (a PUT) or just closes (a legacy SOURCE, told 200 at its start).
pub(super) async fn serve(
    door: &Door,
    mut conn: Conn,
    head: &RequestHead,
    remote: SocketAddr,
    name: String,
) {
    let node = &door.node;
    let legacy = head.method == Method::Source;
    let span = info_span!("source", path = %name, method = if legacy { "SOURCE" } else { "PUT" });
    let name = name.split('?').next().unwrap_or("").to_string();
    if door.guesses.spent(remote.ip()) {
        inc(&node.stats.auth_refused_total);
        let r = refusal(
            node,
            429,
            "too many wrong source passwords from this address: try again later",
        )
        .with("Retry-After", GUESS_WINDOW.as_secs().to_string());
        let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
        return;
    }
    if let Err(e) = precheck(node, &name, head.authorization.as_deref()) {
        if e.kind() == Kind::Unauthorized {
            inc(&node.stats.auth_refused_total);
            door.guesses.failed(remote.ip());
        }
        let r = span.in_scope(|| refusal(node, status_for(&e), e.reason()));
        let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
        return;
    }
    // The format the source says it sends (its first bytes have the last word); one that
    // says a format the node does not take is refused before its body.
    let said = match head.content_type.as_deref() {
        None => None,
        Some(ct) => match crate::media::SourceKind::from_content_type(ct) {
            Some(k) => Some(k),
            None if ct.starts_with("application/octet-stream") => None,
            None => {
                let why = format!(
                    "content type {ct:?} is not taken: send Ogg Opus (audio/ogg), MP3 \
                     (audio/mpeg) or AAC in ADTS (audio/aac, audio/aacp)"
                );
                let r = span.in_scope(|| refusal(node, 415, &why));
                let _ = r.send(&mut conn.tcp, false, false, head.http10).await;
                return;
            }
        },
    };
    // A PUT that asked gets 100 Continue and its final status at the end; a legacy source is
    // told 200 at once, as Icecast does.
    let go: &[u8] = if head.expect_continue {
        b"HTTP/1.1 100 Continue\r\n\r\n"
    } else if legacy {
        b"HTTP/1.0 200 OK\r\n\r\n"
    } else {
        b""
    };
    if conn.tcp.write_all(go).await.is_err() {
        return;
    }
    let result = async {
        if head.chunked {
            icecast::ingest(node, &name, said, &mut Chunked::new(&mut conn)).await
        } else if let Some(left) = head.content_length {
            icecast::ingest(
                node,
                &name,
                said,
                &mut Sized {
                    conn: &mut conn,
                    left,
                },
            )
            .await
        } else {
            icecast::ingest(node, &name, said, &mut ToEnd(&mut conn)).await
        }
    }
    .instrument(span.clone())
    .await;
    let reply = match &result {
        Ok(()) => Reply::text(200, "source ended"),
        Err(e) => span.in_scope(|| refusal(node, status_for(e), e.reason())),
    };
    if !legacy {
        let _ = reply.send(&mut conn.tcp, false, false, head.http10).await;
    }
}
