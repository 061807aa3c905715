//! Low-Latency HLS (rfc8216bis, with Apple's LL-HLS rules) from the segments a node holds:
//! `GET /STREAM.m3u8` is a live media playlist; its init segment, segments and parts are
//! fMP4 (CMAF) with Opus. One HLS media segment per quicast segment, parts of `PART_MS`.
//!
//! Everything is named by the broadcast's instance and position, which are the same on
//! every node (and on redundant origins): `STREAM.hls/INSTANCE/init.mp4`,
//! `STREAM.hls/INSTANCE/SEQ.m4s`, `STREAM.hls/INSTANCE/SEQ.PART.m4s`. Those never change,
//! so any HTTP cache may keep them; only the playlist moves.
//!
//! An HLS request is one more subscriber of the node's store: it subscribes to the stream
//! (which, on a relay, starts or keeps the one upstream fetch) for as long as it is served,
//! and reads the segments every other subscriber reads. Blocking requests (a playlist with
//! `_HLS_msn`, a part not complete yet) wait on the broadcast's changes, bounded in time
//! (three target durations) and in number per node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::error::{Error, Kind, Result};
use crate::media::{fragment, init_segment, OPUS_RATE};
use crate::model::{Batch, Broadcast, Egress, Segment, WireFrame};
use crate::node::{Node, Peer};
use crate::proto::{self, Start};

/// Part target, ms: ten 20 ms Opus frames, two delivery intervals.
pub const PART_MS: u64 = 200;
/// Requests held at once by a node (blocking playlist reloads and part requests) before
/// newcomers are told 503.
const MAX_BLOCKED: usize = 20_000;
/// Segments whose parts are listed, besides the open one.
const PARTS_OF_SEALED: usize = 2;
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
    },
    Part {
        name: String,
        instance: u64,
        seq: u64,
        part: u64,
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
    let stem = file
        .strip_suffix(".m4s")
        .ok_or_else(|| bad("expected init.mp4, SEQ.m4s or SEQ.PART.m4s"))?;
    Ok(match stem.split_once('.') {
        None => Resource::Segment {
            name,
            instance,
            seq: number(stem, "segment")?,
        },
        Some((seq, part)) => Resource::Part {
            name,
            instance,
            seq: number(seq, "segment")?,
            part: number(part, "part")?,
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
            Ok(Reply {
                content_type: "audio/mp4",
                cache_control: IMMUTABLE,
                body: init_segment(&b.codec)?,
                private,
            })
        }
        Resource::Segment { instance, seq, .. } => {
            same(&b, instance)?;
            let seg = b
                .segment(seq)
                .filter(|s| s.is_sealed() || b.span().ended)
                .ok_or_else(|| not_held(seq))?;
            let frames = frames_of(&seg);
            let body = fragment_of(&b.codec, seq, 0, &frames)?;
            Ok(media_reply(node, frames.len(), body, private))
        }
        Resource::Part {
            instance,
            seq,
            part,
            ..
        } => {
            same(&b, instance)?;
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
            let (from, to) = part_range(&frames, part);
            if from == to {
                return Err(not_held(seq));
            }
            let body = fragment_of(&b.codec, seq, part + 1, &frames[from..to])?;
            Ok(media_reply(node, to - from, body, private))
        }
    }
}

/// A segment or part of `frames` frames: counted as sent.
fn media_reply(node: &Node, frames: usize, body: Bytes, private: bool) -> Reply {
    node.stats.sent(frames as u64, body.len() as u64);
    Reply {
        content_type: "audio/mp4",
        cache_control: IMMUTABLE,
        body,
        private,
    }
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

fn frames_of(seg: &Segment) -> Vec<WireFrame> {
    let mut batch = Batch::Frames(Vec::new());
    seg.read_from(0, &mut batch);
    match batch {
        Batch::Frames(f) => f,
        Batch::Wire(_) | Batch::Http(..) => Vec::new(),
    }
}

/// Part `k` of a segment: the frames that start in [k, k+1) part targets after its first.
fn part_range(frames: &[WireFrame], k: u64) -> (usize, usize) {
    let Some(first) = frames.first().map(|f| f.frame.pts) else {
        return (0, 0);
    };
    let part = PART_MS * OPUS_RATE as u64 / 1000;
    let at = |f: &WireFrame| (f.frame.pts.saturating_sub(first)) / part;
    let from = frames.partition_point(|f| at(f) < k);
    let to = frames.partition_point(|f| at(f) <= k);
    (from, to)
}

/// Parts of a segment that are complete: every one before the part of its last frame, and
/// that one too once the segment is sealed.
fn complete_parts(seg: &Segment, frames: &[WireFrame]) -> u64 {
    let part = PART_MS * OPUS_RATE as u64 / 1000;
    match (frames.first(), frames.last()) {
        (Some(a), Some(z)) => {
            let last = (z.frame.pts - a.frame.pts) / part;
            if seg.is_sealed() {
                last + 1
            } else {
                last
            }
        }
        _ => 0,
    }
}

fn part_complete(b: &Broadcast, seq: u64, k: u64) -> bool {
    b.segment(seq).is_some_and(|s| {
        let frames = frames_of(&s);
        complete_parts(&s, &frames) > k || (b.span().ended && !frames.is_empty())
    })
}

/// A part that will never be: its segment sealed with fewer parts.
fn part_missing(b: &Broadcast, seq: u64, k: u64) -> bool {
    b.segment(seq).is_some_and(|s| {
        s.is_sealed() && {
            let frames = frames_of(&s);
            complete_parts(&s, &frames) <= k
        }
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

fn fragment_of(codec: &proto::Codec, seq: u64, part: u64, frames: &[WireFrame]) -> Result<Bytes> {
    // Fragment numbers only need to grow within what a player fetches.
    let number = (seq as u32).wrapping_mul(1024).wrapping_add(part as u32);
    let base = frames.first().map_or(0, |f| f.frame.pts);
    fragment(
        codec,
        number,
        base,
        frames
            .iter()
            .map(|f| (f.frame.duration, &f.frame.payload[..])),
    )
}

fn seconds(samples: u64) -> f64 {
    samples as f64 / OPUS_RATE as f64
}

fn duration_of(frames: &[WireFrame]) -> u64 {
    match (frames.first(), frames.last()) {
        (Some(a), Some(z)) => z.frame.pts + z.frame.duration as u64 - a.frame.pts,
        _ => 0,
    }
}

/// The segments the playlist lists: the unbroken run of held segments that ends with the
/// latest (media sequence numbers must follow one another).
fn listed(b: &Broadcast) -> Vec<Arc<Segment>> {
    let span = b.span();
    let Some(latest) = span.latest else {
        return Vec::new();
    };
    let mut segs = Vec::new();
    let mut seq = latest;
    while let Some(s) = b.segment(seq) {
        segs.push(s);
        if seq == 0 || Some(seq) == span.first {
            break;
        }
        seq -= 1;
    }
    segs.reverse();
    segs
}

/// EXT-X-TARGETDURATION: whole seconds, at least every segment's duration rounded. A
/// segment's length is the origin's `segment-ms` (1 s by default); at least 1 s.
fn target_duration(b: &Broadcast) -> Duration {
    let longest = listed(b)
        .iter()
        .filter(|s| s.is_sealed())
        .map(|s| duration_of(&frames_of(s)))
        .max()
        .unwrap_or(0);
    Duration::from_secs(seconds(longest).round().max(1.0) as u64)
}

/// RFC 3339 UTC with milliseconds, from microseconds since the Unix epoch.
fn date_time(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000 / 1000
    )
}

/// The playlist as the broadcast is now, rendered once per state of its newest segment: a
/// crowd of blocking reloads woken by the same part is answered from one rendering.
fn playlist_of(b: &Broadcast) -> Bytes {
    type Key = (u64, u64, usize, bool, bool);
    static RENDERED: OnceLock<moka::sync::Cache<Key, Bytes>> = OnceLock::new();
    let cache = RENDERED.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(10))
            .build()
    });
    // What the playlist depends on: older segments never change, and the window moves
    // only when a segment begins.
    let span = b.span();
    let latest = span.latest.unwrap_or(0);
    let (len, sealed) = b
        .segment(latest)
        .map_or((0, false), |s| (s.len(), s.is_sealed()));
    let key = (b.local_id(), latest, len, sealed, span.ended);
    cache.get_with(key, || Bytes::from(render(b)))
}

/// The media playlist of the broadcast as held now.
pub fn render(b: &Broadcast) -> String {
    use std::fmt::Write;
    let segs = listed(b);
    let frames: Vec<Vec<WireFrame>> = segs.iter().map(|s| frames_of(s)).collect();
    let target = target_duration(b).as_secs();
    let part_target = PART_MS as f64 / 1000.0;
    let base = format!("{}.hls/{}", leaf(&b.path), b.instance);
    let mut o = String::with_capacity(2048);
    o.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(o, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        o,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
        part_target * 3.0
    );
    let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    let _ = writeln!(
        o,
        "#EXT-X-MEDIA-SEQUENCE:{}",
        segs.first().map_or(0, |s| s.seq)
    );
    let _ = writeln!(o, "#EXT-X-MAP:URI=\"{base}/init.mp4\"");
    let ended = b.span().ended;
    let with_parts = segs.len().saturating_sub(PARTS_OF_SEALED + 1);
    for (i, (seg, fr)) in segs.iter().zip(&frames).enumerate() {
        let sealed = seg.is_sealed() || ended;
        if fr.is_empty() {
            // Only a segment just begun: its first part is to come.
            if !sealed {
                let _ = writeln!(
                    o,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.m4s\"",
                    seg.seq
                );
            }
            continue;
        }
        if i == 0 || i == with_parts {
            let _ = writeln!(
                o,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                date_time(fr[0].frame.wall_us)
            );
        }
        if i >= with_parts && !ended {
            for k in 0..complete_parts(seg, fr).max(u64::from(sealed)) {
                let (from, to) = part_range(fr, k);
                if from == to {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "#EXT-X-PART:DURATION={:.3},URI=\"{base}/{}.{k}.m4s\",INDEPENDENT=YES",
                    seconds(duration_of(&fr[from..to])),
                    seg.seq
                );
            }
        }
        if sealed {
            let _ = writeln!(o, "#EXTINF:{:.3},", seconds(duration_of(fr)));
            let _ = writeln!(o, "{base}/{}.m4s", seg.seq);
        } else {
            let next = complete_parts(seg, fr);
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.{next}.m4s\"",
                seg.seq
            );
        }
    }
    match segs.last() {
        _ if ended => o.push_str("#EXT-X-ENDLIST\n"),
        // A relay seals a segment when its parent's stream of it ends, before the next
        // begins: the next one's first part is the one to come.
        Some(last) if last.is_sealed() => {
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.m4s\"",
                last.seq + 1
            );
        }
        _ => {}
    }
    o
}

/// The last component of a stream path: playlist URIs are relative to the playlist's.
fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                part: 3
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
            ("/x.hls/nope", None),
        ] {
            assert_eq!(p(path, q), Some(Err(Kind::Protocol)), "{path} {q:?}");
        }
        assert_eq!(p("/x.ogg", None), None);
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(date_time(1_796_000_000_123_456), "2026-11-30T00:53:20.123Z");
        assert_eq!(date_time(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
