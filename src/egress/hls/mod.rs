//! Low-Latency HLS (rfc8216bis, with Apple's LL-HLS rules) from the segments a node holds:
//! `GET /STREAM.m3u8` is a live media playlist. One HLS media segment per quicast segment,
//! parts of about `media::PART_MS` (a whole number of frames for AAC and MP3; a segment is
//! a whole number of parts, see `model::Segmenter`), every duration in the codec's own
//! samples. Two forms, by codec (`Form`):
//! - Opus and AAC: fMP4 (CMAF), an init segment (`EXT-X-MAP`) and fragments:
//!   `STREAM.hls/INSTANCE/init.mp4`, `STREAM.hls/INSTANCE/SEQ.m4s`,
//!   `STREAM.hls/INSTANCE/SEQ.PART.m4s`.
//! - MP3: packed audio (RFC 8216 §3.4, `media::packed_audio`): the frames as they are
//!   after an ID3 tag with their timestamp, no init segment: `STREAM.hls/INSTANCE/SEQ.mp3`,
//!   `STREAM.hls/INSTANCE/SEQ.PART.mp3`. Chromium's MSE takes no MP3 in fMP4 (see
//!   `media::hls_codecs`); hls.js demuxes packed MP3 and hands it to MSE as `audio/mpeg`.
//!
//! Everything is named by the broadcast's instance and position, which are the same on
//! every node (and on redundant origins). Those never change, so any HTTP cache may keep
//! them; only the playlist moves.
//!
//! Now-playing titles (each segment carries the one current at its start) are
//! `EXT-X-DATERANGE`s: one where a title begins, `ID="title-SEQ"` and `START-DATE` the
//! date of segment SEQ's first frame, `X-TITLE` the title (see `titles::title_runs`). Packed MP3
//! also carries it as timed ID3 (`TIT2`) in each segment and each segment's first part.
//!
//! An HLS request is one more subscriber of the node's store: it subscribes to the stream
//! (which, on a relay, starts or keeps the one upstream fetch) for as long as it is served,
//! and reads the segments every other subscriber reads. Blocking requests (a playlist with
//! `_HLS_msn`, a part not complete yet) wait on the broadcast's changes, bounded in time
//! (three target durations) and in number per node.

mod playlist;
mod segments;
mod titles;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::error::{Error, Kind, Result};
use crate::media::{init_segment, part_samples};
use crate::model::{Broadcast, Egress};
use crate::node::{Node, Peer};
use crate::proto::{self, Start};

use playlist::{listed, playlist_of, target_duration};
pub use segments::Form;
use segments::{frames_of, media_of, part_complete, part_missing, part_range};

/// Requests held at once by a node (blocking playlist reloads and part requests) before
/// newcomers are told 503.
const MAX_BLOCKED: usize = 20_000;
/// How long a segment request waits for a relay to fetch the stream.
const MEDIA_WAIT: Duration = Duration::from_secs(3);

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// The media playlist; with `_HLS_msn` (and `_HLS_part`), held until it holds that.
    Playlist {
        name: String,
        block: Option<(u64, Option<u64>)>,
    },
    Init {
        name: String,
        instance: u64,
    },
    Segment {
        name: String,
        instance: u64,
        seq: u64,
        form: Form,
    },
    Part {
        name: String,
        instance: u64,
        seq: u64,
        part: u64,
        form: Form,
    },
}

impl Resource {
    /// The stream it is of.
    pub fn name(&self) -> &str {
        match self {
            Resource::Playlist { name, .. }
            | Resource::Init { name, .. }
            | Resource::Segment { name, .. }
            | Resource::Part { name, .. } => name,
        }
    }
}

/// What to answer.
pub struct Reply {
    pub content_type: &'static str,
    pub cache_control: &'static str,
    pub body: Bytes,
    /// The stream needs a token (by this node's policy or the rule it came with): the
    /// answer is for its holder only, no shared cache may keep it.
    pub private: bool,
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn bad(reason: impl Into<String>) -> Error {
    Error::new(Kind::Protocol, reason.into())
}

fn number(v: &str, what: &str) -> Result<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{what} must be a decimal number, got {v:?}")));
    }
    v.parse().map_err(|_| bad(format!("{what} out of range")))
}

/// The HLS resource `path` (with `query`) names, if it names one. `Err`: it is HLS, but
/// malformed (400).
pub fn parse(path: &str, query: Option<&str>) -> Option<Result<Resource>> {
    let path = path.strip_prefix('/')?;
    if let Some(name) = path.strip_suffix(".m3u8") {
        return Some(playlist(name, query));
    }
    let (name, rest) = path.rsplit_once(".hls/")?;
    Some(media(name, rest))
}

fn check(name: &str) -> Result<String> {
    proto::check_path(name).map_err(|e| bad(format!("bad stream name: {e}")))?;
    Ok(name.to_string())
}

fn playlist(name: &str, query: Option<&str>) -> Result<Resource> {
    let name = check(name)?;
    let (mut msn, mut part) = (None, None);
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_HLS_msn" => msn = Some(number(v, "_HLS_msn")?),
            "_HLS_part" => part = Some(number(v, "_HLS_part")?),
            // Other directives (_HLS_skip) and cache busters: ignored.
            _ => {}
        }
    }
    if part.is_some() && msn.is_none() {
        return Err(bad("_HLS_part without _HLS_msn"));
    }
    if part.is_some_and(|p| p >= 1000) {
        return Err(bad("_HLS_part out of range"));
    }
    Ok(Resource::Playlist {
        name,
        block: msn.map(|m| (m, part)),
    })
}

fn media(name: &str, rest: &str) -> Result<Resource> {
    let name = check(name)?;
    let (instance, file) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected INSTANCE/FILE"))?;
    let instance = number(instance, "instance")?;
    if file == "init.mp4" {
        return Ok(Resource::Init { name, instance });
    }
    let (stem, form) = match (file.strip_suffix(".m4s"), file.strip_suffix(".mp3")) {
        (Some(stem), _) => (stem, Form::Fmp4),
        (_, Some(stem)) => (stem, Form::Packed),
        _ => {
            return Err(bad(
                "expected init.mp4, SEQ.m4s, SEQ.PART.m4s, SEQ.mp3 or SEQ.PART.mp3",
            ))
        }
    };
    Ok(match stem.split_once('.') {
        None => Resource::Segment {
            name,
            instance,
            seq: number(stem, "segment")?,
            form,
        },
        Some((seq, part)) => Resource::Part {
            name,
            instance,
            seq: number(seq, "segment")?,
            part: number(part, "part")?,
            form,
        },
    })
}

/// Requests held at once on this node (all nodes of a process share it: tests run several).
static BLOCKED: AtomicUsize = AtomicUsize::new(0);

struct Held;

impl Held {
    fn take() -> Result<Held> {
        if BLOCKED.fetch_add(1, Ordering::Relaxed) >= MAX_BLOCKED {
            BLOCKED.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::new(
                Kind::Overloaded,
                "too many blocking HLS requests",
            ));
        }
        Ok(Held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        BLOCKED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers an HLS request from `client` (see `node::audience`).
pub async fn serve(node: &Arc<Node>, r: Resource, peer: &Peer, client: u64) -> Result<Reply> {
    let (name, wait) = match &r {
        Resource::Playlist { name, .. } => (name, node.cfg.http_wait_secs.get()),
        Resource::Init { name, .. }
        | Resource::Segment { name, .. }
        | Resource::Part { name, .. } => (name, MEDIA_WAIT.min(node.cfg.http_wait_secs.get())),
    };
    // A broadcast that just ended is still answered for (its playlist says it ended).
    let ended = node
        .registry
        .get(name)
        .filter(|s| s.broadcast().is_none())
        .and_then(|s| s.last_ended());
    // Otherwise a subscriber while served: on a relay, this starts or keeps the upstream
    // fetch.
    let b = match ended {
        Some(b) => {
            node.may_have(peer, name, &b)?;
            b
        }
        None => {
            let peer = &peer.served_as(Egress::Hls);
            let mut sub = node.subscribe(name, Start::Live, wait, peer).await?;
            let b = sub.cursor.broadcast().clone();
            // The client, not the request, is the listener: its audience counts it and
            // holds the stream (this request's subscription, if it has none yet) until it
            // has not been seen for a while.
            sub.uncount();
            let hold = crate::node::audience::hold_for(target_duration(&b));
            node.audiences
                .seen(node, name, client, sub, hold, std::time::Instant::now());
            b
        }
    };
    let private = !node.access().rule_for(name, &b.access()).is_public();
    match r {
        Resource::Playlist { block, .. } => {
            // A broadcast is announced before its first frame, and a relay that just began
            // to fetch it holds only the segment being made: the playlist waits for one
            // whole segment (players that do not read parts need one to start).
            let started = |b: &Broadcast| {
                b.span().ended || listed(b).iter().any(|s| s.is_sealed() && !s.is_empty())
            };
            if !started(&b) {
                wait_for(&b, wait, started)
                    .await
                    .map_err(|_| Error::new(Kind::NotFound, "the stream has no audio yet"))?;
            }
            if let Some((msn, part)) = block {
                let latest = b.span().latest.unwrap_or(0);
                if msn > latest + 2 {
                    return Err(bad(format!(
                        "_HLS_msn {msn} is more than two segments past the last ({latest})"
                    )));
                }
                let _held = Held::take()?;
                let limit = target_duration(&b) * 3;
                wait_for(&b, limit, |b| has(b, msn, part)).await?;
            }
            Ok(Reply {
                content_type: "application/vnd.apple.mpegurl",
                cache_control: if block.is_some() {
                    "public, max-age=6"
                } else {
                    "public, max-age=1"
                },
                body: playlist_of(&b),
                private,
            })
        }
        Resource::Init { instance, .. } => {
            same(&b, instance)?;
            if Form::of(&b.codec) != Form::Fmp4 {
                return Err(Error::new(
                    Kind::NotFound,
                    "packed audio has no init segment",
                ));
            }
            Ok(Reply {
                content_type: "audio/mp4",
                cache_control: IMMUTABLE,
                body: init_segment(&b.codec)?,
                private,
            })
        }
        Resource::Segment {
            instance,
            seq,
            form,
            ..
        } => {
            same(&b, instance)?;
            same_form(&b, form)?;
            let seg = b
                .segment(seq)
                .filter(|s| s.is_sealed() || b.span().ended)
                .ok_or_else(|| not_held(seq))?;
            let frames = frames_of(&seg);
            let body = media_of(&b.codec, &seg, None, &frames)?;
            Ok(media_reply(node, form, frames.len(), body, private))
        }
        Resource::Part {
            instance,
            seq,
            part,
            form,
            ..
        } => {
            same(&b, instance)?;
            same_form(&b, form)?;
            let latest = b.span().latest.unwrap_or(0);
            // Only what may still come is waited for: a part past the next segment, of a
            // segment no longer held (or never held here), or of a segment sealed with fewer
            // parts is answered 404 at once.
            if seq > latest + 1 || part >= 1000 {
                return Err(not_held(seq));
            }
            if (seq <= latest && b.segment(seq).is_none()) || part_missing(&b, seq, part) {
                return Err(not_held(seq));
            }
            if !part_complete(&b, seq, part) {
                // The preload hint's part: held until it is complete.
                let _held = Held::take()?;
                let limit = target_duration(&b) * 3;
                wait_for(&b, limit, |b| {
                    part_complete(b, seq, part) || part_missing(b, seq, part)
                })
                .await?;
            }
            let seg = b.segment(seq).ok_or_else(|| not_held(seq))?;
            let frames = frames_of(&seg);
            let (from, to) = part_range(&frames, part_samples(&b.codec), part);
            if from == to {
                return Err(not_held(seq));
            }
            let body = media_of(&b.codec, &seg, Some(part), &frames[from..to])?;
            Ok(media_reply(node, form, to - from, body, private))
        }
    }
}

/// A segment or part of `frames` frames: counted as sent.
fn media_reply(node: &Node, form: Form, frames: usize, body: Bytes, private: bool) -> Reply {
    node.stats.sent(frames as u64, body.len() as u64);
    Reply {
        content_type: form.content_type(),
        cache_control: IMMUTABLE,
        body,
        private,
    }
}

/// A segment or part named as another form than its stream's (`.m4s` of an MP3 stream):
/// not found, as anything else not held here.
fn same_form(b: &Broadcast, form: Form) -> Result<()> {
    let own = Form::of(&b.codec);
    if own != form {
        return Err(Error::new(
            Kind::NotFound,
            format!("this stream's segments are .{}", own.ext()),
        ));
    }
    Ok(())
}

fn not_held(seq: u64) -> Error {
    Error::new(Kind::NotFound, format!("segment {seq} is not held here"))
}

fn same(b: &Broadcast, instance: u64) -> Result<()> {
    if b.instance != instance {
        return Err(Error::new(
            Kind::NotFound,
            format!("broadcast {instance} is not held here (now {})", b.instance),
        ));
    }
    Ok(())
}

/// Waits until `ready` says so, the broadcast ends, or `limit` passes (503: try again).
async fn wait_for(
    b: &Arc<Broadcast>,
    limit: Duration,
    ready: impl Fn(&Broadcast) -> bool,
) -> Result<()> {
    let mut changes = b.watch();
    let wait = async {
        loop {
            if ready(b) || b.span().ended {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        debug!("blocking HLS request not satisfied in {limit:?}");
        Error::new(Kind::Overloaded, "not in time: try again")
    })
}

/// Whether the playlist holds segment `msn` (complete) or, with `part`, that part of it.
fn has(b: &Broadcast, msn: u64, part: Option<u64>) -> bool {
    let latest = b.span().latest.unwrap_or(0);
    match part {
        _ if latest > msn => true,
        None => b.segment(msn).is_some_and(|s| s.is_sealed()),
        Some(k) => latest == msn && part_complete(b, msn, k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Codec, CODEC_AAC};

    #[test]
    fn paths_and_queries_parse_strictly() {
        let p = |path: &str, q: Option<&str>| parse(path, q).map(|r| r.map_err(|e| e.kind()));
        assert_eq!(
            p("/a/b.m3u8", Some("_HLS_msn=5&_HLS_part=2")),
            Some(Ok(Resource::Playlist {
                name: "a/b".into(),
                block: Some((5, Some(2)))
            }))
        );
        assert_eq!(
            p("/a/b.hls/7/12.3.m4s", None),
            Some(Ok(Resource::Part {
                name: "a/b".into(),
                instance: 7,
                seq: 12,
                part: 3,
                form: Form::Fmp4,
            }))
        );
        assert_eq!(
            p("/a/b.hls/7/12.mp3", None),
            Some(Ok(Resource::Segment {
                name: "a/b".into(),
                instance: 7,
                seq: 12,
                form: Form::Packed,
            }))
        );
        assert_eq!(
            p("/b.hls/7/12.0.mp3", None),
            Some(Ok(Resource::Part {
                name: "b".into(),
                instance: 7,
                seq: 12,
                part: 0,
                form: Form::Packed,
            }))
        );
        assert_eq!(
            p("/x.hls/7/init.mp4", None),
            Some(Ok(Resource::Init {
                name: "x".into(),
                instance: 7
            }))
        );
        for (path, q) in [
            ("/x.m3u8", Some("_HLS_msn=-1")),
            ("/x.m3u8", Some("_HLS_msn=99999999999999999999999")),
            ("/x.m3u8", Some("_HLS_part=1")),
            ("/x.m3u8", Some("_HLS_msn=1&_HLS_part=5000")),
            ("/x.hls/1/a.m4s", None),
            ("/x.hls/1/1.m4s.bak", None),
            ("/x.hls/1/1.aac", None),
            ("/x.hls/1/x.mp3", None),
            ("/x.hls/nope", None),
        ] {
            assert_eq!(p(path, q), Some(Err(Kind::Protocol)), "{path} {q:?}");
        }
        assert_eq!(p("/x.ogg", None), None);
    }

    /// A stereo codec of `kind` at `rate`, for the tests of this module's files.
    pub(super) fn codec(kind: u64, rate: u32) -> Codec {
        Codec {
            kind,
            sample_rate: rate,
            channels: 2,
            header: if kind == CODEC_AAC {
                Bytes::from_static(&[0x12, 0x10])
            } else {
                Bytes::new()
            },
        }
    }
}
