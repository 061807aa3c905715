//! Icecast sources (`PUT /STREAM` as ffmpeg's `icecast://` sends it, and the legacy
//! `SOURCE`): who may send, and their Ogg Opus body demuxed into the node's ingest, with the
//! same timestamp rule as every Ogg source (`media::Timeline`). The HTTP framing around them
//! is the server's (`server::http`).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use tracing::warn;

use crate::error::{Error, Kind, Result};
use crate::media::{OggEvent, OggOpusDemuxer, OpusHead, Timeline};
use crate::node::{credential, secret_eq, Node, Publishing};
use crate::proto::{self, Frame};

/// `Authorization: Basic base64(source:PASSWORD)` against the configured password.
fn authorize(node: &Node, auth: Option<&[u8]>) -> Result<()> {
    let Some(expected) = &node.cfg.source_password else {
        return Err(Error::new(
            Kind::NotAllowed,
            "HTTP source ingest is disabled on this node (no source password set)",
        ));
    };
    let creds = auth
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    let Some(creds) = creds else {
        return Err(Error::new(
            Kind::Unauthorized,
            "source password required (basic auth)",
        ));
    };
    let (user, pass) = match creds.iter().position(|c| *c == b':') {
        Some(i) => (&creds[..i], &creds[i + 1..]),
        None => return Err(Error::new(Kind::Unauthorized, "wrong source credentials")),
    };
    if user == b"source" && secret_eq(pass, expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Error::new(Kind::Unauthorized, "wrong source credentials"))
    }
}

/// What must hold before a source may send its body: its credentials, a valid stream
/// name, and a stream it may take.
pub(crate) fn precheck(node: &Node, name: &str, auth: Option<&[u8]>) -> Result<()> {
    authorize(node, auth)?;
    proto::check_path(name)
        .map_err(|e| Error::new(Kind::Protocol, format!("bad stream name: {e}")))?;
    if node
        .registry
        .get(name)
        .is_some_and(|s| !s.may_claim(source_credential(node)))
    {
        return Err(Error::new(
            Kind::Conflict,
            format!("stream {name} already has a source"),
        ));
    }
    Ok(())
}

/// What an authorized source proved: the source password (see `PublisherClaim`).
fn source_credential(node: &Node) -> Option<[u8; 32]> {
    node.cfg
        .source_password
        .as_ref()
        .map(|p| credential(p.expose().as_bytes()))
}

/// The broadcast an Icecast source carries, named by what every origin it is sent to sees
/// alike (an encoder pushing to two origins, ffmpeg's tee muxer, sends the same Ogg stream to
/// both): the stream's path, its OpusHead, its first audio packet and that packet's granule.
fn broadcast_id(path: &str, head: &[u8], first: &[u8], granule: Option<u64>) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [path.as_bytes(), head, first] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.update(&granule.unwrap_or(u64::MAX).to_le_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

/// Where a source's body comes from, chunk by chunk (None at its end).
pub(crate) trait ChunkSource {
    async fn chunk(&mut self) -> Result<Option<Bytes>>;
}

/// Demuxes a source's Ogg Opus body into the ingest. A source that sends no audio for
/// `source-timeout` is lost (bytes that carry no audio do not count), as is one whose body
/// stops without the Ogg end-of-stream page (its encoder crashed: it may come back within
/// the grace period and continue). One that ends its Ogg stream ends the broadcast.
pub(crate) async fn ingest(
    node: &Arc<Node>,
    name: &str,
    body: &mut impl ChunkSource,
) -> Result<()> {
    let mut demux = OggOpusDemuxer::new();
    let mut head: Option<OpusHead> = None;
    let mut publishing: Option<Publishing> = None;
    let mut timeline = Timeline::default();
    let mut ended = false;
    let silence = node.cfg.source_timeout_ms.get();
    let mut deadline = tokio::time::Instant::now() + silence;
    let mut displaced: Option<Arc<tokio::sync::Notify>> = None;
    let outcome: Result<()> = async {
        loop {
            let taken_over = async {
                match &displaced {
                    Some(d) => d.notified().await,
                    None => std::future::pending().await,
                }
            };
            let chunk = tokio::select! {
                r = tokio::time::timeout_at(deadline, body.chunk()) => match r {
                    Ok(r) => r?,
                    Err(_) => return Err(Error::timeout("source sent no audio")),
                },
                _ = taken_over => return Err(Error::new(
                    Kind::Conflict,
                    "a newer source with the same credentials took this stream over",
                )),
            };
            let Some(chunk) = chunk else {
                if ended {
                    return Ok(());
                }
                return Err(Error::closed("the source stopped"));
            };
            demux.push(&chunk);
            let mut frames = Vec::new();
            while let Some(ev) = demux.next_event()? {
                match ev {
                    OggEvent::Head(h) => {
                        if head.is_some() {
                            return Err(Error::media("a second OpusHead in one source"));
                        }
                        head = Some(h);
                    }
                    OggEvent::Packet(payload, duration, granule) => {
                        if publishing.is_none() {
                            // Claimed at the first audio packet, which names the broadcast.
                            let Some(h) = &head else {
                                return Err(Error::media("audio before the OpusHead"));
                            };
                            let id = broadcast_id(name, &h.raw, &payload, granule);
                            let p = Publishing::claim(
                                node,
                                name,
                                h.codec(),
                                source_credential(node),
                                Some(id),
                            )?;
                            displaced = Some(p.displaced());
                            publishing = Some(p);
                        }
                        frames.push(Frame {
                            pts: timeline.pts(duration, granule),
                            duration,
                            wall_us: 0,
                            payload,
                        });
                    }
                    OggEvent::End => ended = true,
                    OggEvent::Chain(_) => {
                        return Err(Error::media(
                            "a chained Ogg stream (a new logical stream after the end of one)",
                        ))
                    }
                }
            }
            if !frames.is_empty() {
                deadline = tokio::time::Instant::now() + silence;
            }
            if let Some(p) = publishing.as_mut() {
                let bytes = frames.iter().map(|f| f.payload.len() as u64).sum();
                node.stats.received(frames.len() as u64, bytes);
                p.push(frames)?;
            }
        }
    }
    .await;
    match (outcome, publishing) {
        (Ok(()), Some(p)) => {
            p.finish();
            Ok(())
        }
        (Ok(()), None) => Err(Error::media("source ended before any Ogg Opus audio")),
        (Err(e), None) if e.kind() == Kind::Closed => {
            Err(Error::media("source ended before any Ogg Opus header"))
        }
        (Err(e), Some(p)) if e.kind() == Kind::Closed => {
            warn!(
                side = "downstream",
                "source stopped without ending its Ogg stream: lost"
            );
            p.lost();
            Ok(())
        }
        (Err(e), Some(p)) => {
            p.lost();
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}
