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
//! date of segment SEQ's first frame, `X-TITLE` the title (see `title_runs`). Packed MP3
//! also carries it as timed ID3 (`TIT2`) in each segment and each segment's first part.
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
use crate::media::{fragment, init_segment, packed_audio, part_samples, timestamp_90k};
use crate::model::{Batch, Broadcast, Egress, Segment, WireFrame};
use crate::node::{Node, Peer};
use crate::proto::{self, Codec, Start, CODEC_MP3};

/// A title in an `EXT-X-DATERANGE` is cut to this many bytes (on a character boundary).
const MAX_DATERANGE_TITLE: usize = 512;
/// Requests held at once by a node (blocking playlist reloads and part requests) before
/// newcomers are told 503.
const MAX_BLOCKED: usize = 20_000;
/// Segments whose parts are listed, besides the open one.
const PARTS_OF_SEALED: usize = 2;
/// How long a segment request waits for a relay to fetch the stream.
const MEDIA_WAIT: Duration = Duration::from_secs(3);

/// How a stream's segments and parts are made, by its codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// fMP4 (CMAF) fragments after an init segment: Opus and AAC. `.m4s`
    Fmp4,
    /// Packed audio, the frames after an ID3 timestamp: MP3. `.mp3`
    Packed,
}

impl Form {
    pub fn of(codec: &Codec) -> Form {
        if codec.kind == CODEC_MP3 {
            Form::Packed
        } else {
            Form::Fmp4
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Form::Fmp4 => "m4s",
            Form::Packed => "mp3",
        }
    }

    /// Whether the playlist lists parts (LL-HLS) or whole segments only. Packed MP3 is
    /// listed whole: hls.js (1.7.4) appends only the first part of each segment of it to
    /// MSE where it belongs (its buffer-controller re-bases `timestampOffset` of an
    /// `audio/mpeg` SourceBuffer at a segment's first chunk only, and puts later chunks
    /// at the fMP4 offset, `-initPTS`: minutes away), so a player taking parts hears a
    /// fifth of the audio with holes between. Blocking reloads (`_HLS_msn`) still hold the
    /// playlist until the next segment is whole; the parts are served all the same.
    pub fn has_parts(self) -> bool {
        self == Form::Fmp4
    }

    fn content_type(self) -> &'static str {
        match self {
            Form::Fmp4 => "audio/mp4",
            Form::Packed => "audio/mpeg",
        }
    }
}

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

fn frames_of(seg: &Segment) -> Vec<WireFrame> {
    let mut batch = Batch::Frames(Vec::new());
    seg.read_from(0, &mut batch);
    match batch {
        Batch::Frames(f) => f,
        Batch::Wire(_) | Batch::Http(..) => Vec::new(),
    }
}

/// Part `k` of a segment: the frames that start in [k, k+1) parts of `part` samples after
/// its first.
fn part_range(frames: &[WireFrame], part: u64, k: u64) -> (usize, usize) {
    let Some(first) = frames.first().map(|f| f.frame.pts) else {
        return (0, 0);
    };
    let at = |f: &WireFrame| (f.frame.pts.saturating_sub(first)) / part;
    let from = frames.partition_point(|f| at(f) < k);
    let to = frames.partition_point(|f| at(f) <= k);
    (from, to)
}

/// Parts of a segment that are complete: every one before the part of its last frame, and
/// that one too once the segment is sealed.
fn complete_parts(seg: &Segment, frames: &[WireFrame], part: u64) -> u64 {
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
        complete_parts(&s, &frames, part_samples(&b.codec)) > k
            || (b.span().ended && !frames.is_empty())
    })
}

/// A part that will never be: its segment sealed with fewer parts.
fn part_missing(b: &Broadcast, seq: u64, k: u64) -> bool {
    b.segment(seq).is_some_and(|s| {
        s.is_sealed() && {
            let frames = frames_of(&s);
            complete_parts(&s, &frames, part_samples(&b.codec)) <= k
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

/// Segment `seg` (`part` None) or its part `part` of `frames`, in the stream's form: an
/// fMP4 fragment, or packed audio (the segment's title in the ID3 tag of the segment and
/// of its first part).
fn media_of(
    codec: &Codec,
    seg: &Segment,
    part: Option<u64>,
    frames: &[WireFrame],
) -> Result<Bytes> {
    let base = frames.first().map_or(0, |f| f.frame.pts);
    match Form::of(codec) {
        Form::Fmp4 => {
            // Fragment numbers only need to grow within what a player fetches.
            let number = (seg.seq as u32)
                .wrapping_mul(1024)
                .wrapping_add(part.map_or(0, |k| k as u32 + 1));
            fragment(
                codec,
                number,
                base,
                frames
                    .iter()
                    .map(|f| (f.frame.duration, &f.frame.payload[..])),
            )
        }
        Form::Packed => {
            let title = seg.title.as_deref().filter(|_| part.unwrap_or(0) == 0);
            Ok(packed_audio(
                timestamp_90k(base, codec.sample_rate),
                title,
                frames.iter().map(|f| &f.frame.payload[..]),
            ))
        }
    }
}

/// `samples` at `rate` in seconds.
fn seconds(samples: u64, rate: u32) -> f64 {
    samples as f64 / f64::from(rate.max(1))
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
    Duration::from_secs(seconds(longest, b.codec.sample_rate).round().max(1.0) as u64)
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
    let rate = b.codec.sample_rate;
    let form = Form::of(&b.codec);
    let ext = form.ext();
    let target = target_duration(b).as_secs();
    let part_len = part_samples(&b.codec);
    // Rounded up to the millisecond: no part is longer than the target it says.
    let part_target = (part_len * 1000).div_ceil(u64::from(rate.max(1))) as f64 / 1000.0;
    let base = format!("{}.hls/{}", leaf(&b.path), b.instance);
    let runs = title_runs(b, &segs, &frames);
    // Packed MP3 is listed as whole segments only (see `Form::has_parts`).
    let has_parts = form.has_parts();
    let mut o = String::with_capacity(2048);
    o.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(o, "#EXT-X-TARGETDURATION:{target}");
    if has_parts {
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
            part_target * 3.0
        );
        let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    } else {
        o.push_str("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n");
    }
    let _ = writeln!(
        o,
        "#EXT-X-MEDIA-SEQUENCE:{}",
        segs.first().map_or(0, |s| s.seq)
    );
    if form == Form::Fmp4 {
        let _ = writeln!(o, "#EXT-X-MAP:URI=\"{base}/init.mp4\"");
    }
    let ended = b.span().ended;
    let with_parts = segs.len().saturating_sub(PARTS_OF_SEALED + 1);
    let mut first_listed = true;
    for (i, (seg, fr)) in segs.iter().zip(&frames).enumerate() {
        let sealed = seg.is_sealed() || ended;
        if fr.is_empty() {
            // Only a segment just begun: its first part is to come.
            if !sealed && has_parts {
                let _ = writeln!(
                    o,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.{ext}\"",
                    seg.seq
                );
            }
            continue;
        }
        // The titles that begin here (the first listed segment: the one it plays under,
        // which may have begun before it).
        let here: Vec<&TitleRun> = runs
            .iter()
            .filter(|r| r.seq == seg.seq || (first_listed && r.seq < seg.seq))
            .collect();
        for r in &here {
            let _ = writeln!(
                o,
                "#EXT-X-DATERANGE:ID=\"title-{}\",CLASS=\"{TITLE_CLASS}\",START-DATE=\"{}\",END-ON-NEXT=YES,X-TITLE=\"{}\"",
                r.seq,
                date_time(r.wall_us),
                quoted(r.title.as_deref().unwrap_or_default())
            );
        }
        if i == 0 || i == with_parts || !here.is_empty() {
            let _ = writeln!(
                o,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                date_time(fr[0].frame.wall_us)
            );
        }
        first_listed = false;
        if i >= with_parts && !ended && has_parts {
            for k in 0..complete_parts(seg, fr, part_len).max(u64::from(sealed)) {
                let (from, to) = part_range(fr, part_len, k);
                if from == to {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "#EXT-X-PART:DURATION={:.3},URI=\"{base}/{}.{k}.{ext}\",INDEPENDENT=YES",
                    seconds(duration_of(&fr[from..to]), rate),
                    seg.seq
                );
            }
        }
        if sealed {
            let _ = writeln!(o, "#EXTINF:{:.3},", seconds(duration_of(fr), rate));
            let _ = writeln!(o, "{base}/{}.{ext}", seg.seq);
        } else if has_parts {
            let next = complete_parts(seg, fr, part_len);
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.{next}.{ext}\"",
                seg.seq
            );
        }
    }
    match segs.last() {
        _ if ended => o.push_str("#EXT-X-ENDLIST\n"),
        // A relay seals a segment when its parent's stream of it ends, before the next
        // begins: the next one's first part is the one to come.
        Some(last) if last.is_sealed() && has_parts => {
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.{ext}\"",
                last.seq + 1
            );
        }
        _ => {}
    }
    o
}

/// The `CLASS` of the title `EXT-X-DATERANGE`s (`END-ON-NEXT=YES` needs one): each ends
/// where the next begins.
pub const TITLE_CLASS: &str = "quicast.title";

/// A title begun at segment `seq`, whose first frame was at `wall_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TitleRun {
    seq: u64,
    wall_us: u64,
    title: Option<Bytes>,
}

/// What a node remembers of a broadcast's titles between renderings of its playlist: where
/// each began, so that the title the oldest listed segment plays under keeps its `ID` (and
/// so its `START-DATE`) as the window moves past the segment it began with.
#[derive(Default)]
struct TitleMemo {
    runs: Vec<TitleRun>,
    /// The newest segment seen (with a frame) by a rendering.
    seen_through: Option<u64>,
}

/// The titles of the listed segments `segs` (with their `frames`), as runs in order: the
/// one the first segment with a frame plays under (it may have begun before it, if this node
/// saw that), then one at each segment whose title is not the one before's. An untitled
/// first run is left out. A run's `ID` is its first segment's, and its `START-DATE` that
/// segment's first frame's: the same attributes for an `ID` on every node and in every
/// rendering (players merge ranges by `ID` and refuse one whose attributes change).
fn title_runs(b: &Broadcast, segs: &[Arc<Segment>], frames: &[Vec<WireFrame>]) -> Vec<TitleRun> {
    type Memos = moka::sync::Cache<u64, Arc<std::sync::Mutex<TitleMemo>>>;
    static MEMOS: OnceLock<Memos> = OnceLock::new();
    let memos = MEMOS.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(120))
            .build()
    });
    let with_audio: Vec<TitleRun> = segs
        .iter()
        .zip(frames)
        .filter_map(|(s, f)| {
            Some(TitleRun {
                seq: s.seq,
                wall_us: f.first()?.frame.wall_us,
                title: s.title.clone(),
            })
        })
        .collect();
    let Some(first) = with_audio.first() else {
        return Vec::new();
    };
    let memo = memos.get_with(b.local_id(), Default::default);
    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
    // Segments this node's renderings never saw between the last and this one: what it
    // remembers may have changed since.
    if m.seen_through.is_none_or(|s| first.seq > s + 1) {
        m.runs.clear();
    }
    // Only the run the first segment plays under, and later ones, are of use.
    if let Some(k) = m.runs.iter().rposition(|r| r.seq <= first.seq) {
        m.runs.drain(..k);
    }
    match m.runs.first() {
        Some(r) if r.seq <= first.seq && r.title == first.title => {}
        _ => {
            m.runs.retain(|r| r.seq > first.seq);
            m.runs.insert(0, first.clone());
        }
    }
    for w in with_audio.windows(2) {
        if w[1].title != w[0].title && !m.runs.iter().any(|r| r.seq == w[1].seq) {
            let at = m.runs.partition_point(|r| r.seq < w[1].seq);
            m.runs.insert(at, w[1].clone());
        }
    }
    let last = with_audio.last().map_or(first.seq, |r| r.seq);
    m.seen_through = Some(m.seen_through.map_or(last, |s| s.max(last)));
    let mut runs: Vec<TitleRun> = m.runs.iter().filter(|r| r.seq <= last).cloned().collect();
    if runs.first().is_some_and(|r| r.title.is_none()) {
        runs.remove(0);
    }
    runs
}

/// A title as an attribute's quoted-string (which has no escapes): `"` becomes `'`, line
/// breaks and other control characters are left out, and it is cut to
/// `MAX_DATERANGE_TITLE` bytes on a character boundary.
fn quoted(title: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(title).chars() {
        let c = if c == '"' { '\'' } else { c };
        if c.is_control() {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_DATERANGE_TITLE {
            break;
        }
        out.push(c);
    }
    out
}

/// The last component of a stream path: playlist URIs are relative to the playlist's.
fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::CODEC_AAC;

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

    fn codec(kind: u64, rate: u32) -> Codec {
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

    #[test]
    fn parts_are_whole_frames_no_longer_than_the_target() {
        let opus = crate::media::OpusHead::synthetic(2).codec();
        assert_eq!(part_samples(&opus), 9600);
        assert_eq!(part_samples(&codec(CODEC_AAC, 44100)), 8 * 1024);
        assert_eq!(part_samples(&codec(CODEC_AAC, 48000)), 9 * 1024);
        assert_eq!(part_samples(&codec(CODEC_MP3, 44100)), 7 * 1152);
        assert_eq!(part_samples(&codec(CODEC_MP3, 22050)), 7 * 576);
        // A frame longer than the target: one a part.
        assert_eq!(part_samples(&codec(CODEC_AAC, 8000)), 1024);
    }

    #[test]
    fn titles_are_quoted_strings_bounded() {
        assert_eq!(quoted(b"a \"b\"\r\nc"), "a 'b'c");
        let long = "\u{e9}".repeat(400);
        let q = quoted(long.as_bytes());
        assert_eq!(q.len(), 512);
        assert!(q.chars().all(|c| c == '\u{e9}'));
        assert_eq!(quoted(b"\xff ok"), "\u{fffd} ok");
    }

    /// A 44.1 kHz MP3 broadcast holding `window` sealed segments, built by `feed`.
    fn mp3_broadcast(window: u64) -> Arc<Broadcast> {
        use crate::model::{PaceMode, Pacing, Provenance, SegmentCache, StoreConfig};
        let cfg = StoreConfig {
            cache_bytes: 64 << 20,
            cache_ttl: Duration::from_secs(60),
            window,
            max_lag: 100,
            max_streams: 10,
            max_waiting: 10,
            pacing: Pacing::new(PaceMode::Fixed(Duration::ZERO), 1452, vec![]),
        };
        let cache = SegmentCache::new(&cfg);
        Broadcast::new(
            "radio/mp3",
            42,
            codec(CODEC_MP3, 44100),
            Provenance::here(),
            &cache,
            &cfg,
        )
    }

    /// Segment `seq` of 38 frames of 1152 samples (about a second) titled `title`, its
    /// first frame at `seq` seconds past 2026-01-01.
    fn feed(b: &Broadcast, seq: u64, title: Option<&str>) {
        let seg = b
            .begin_titled(seq, title.map(|t| Bytes::from(t.to_string())))
            .unwrap_or_else(|e| panic!("{e}"));
        for n in 0..38u64 {
            let f = proto::Frame {
                pts: (seq * 38 + n) * 1152,
                duration: 1152,
                wall_us: 1_767_225_600_000_000 + seq * 1_000_000 + n * 26_122,
                payload: Bytes::from_static(&[0xff, 0xfb, 0x90, 0x64]),
            };
            b.append(&seg, WireFrame::new(f))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn dateranges(p: &str) -> Vec<&str> {
        p.lines()
            .filter(|l| l.starts_with("#EXT-X-DATERANGE:"))
            .collect()
    }

    #[tokio::test]
    async fn an_mp3_playlist_is_packed_audio_at_its_own_rate_with_its_titles() {
        let b = mp3_broadcast(4);
        feed(&b, 0, Some("A"));
        feed(&b, 1, Some("A"));
        feed(&b, 2, Some("B \"live\""));
        feed(&b, 3, Some("B \"live\""));
        let p = render(&b);
        assert!(!p.contains("EXT-X-MAP"), "{p}");
        // Whole segments only: no parts, no hints; blocking reloads all the same.
        assert!(
            p.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n"),
            "{p}"
        );
        assert!(!p.contains("PART"), "{p}");
        // 38 frames of 1152 samples at 44.1 kHz.
        assert!(p.contains("#EXTINF:0.993,\nmp3.hls/42/0.mp3\n"), "{p}");
        assert!(p.ends_with("#EXTINF:0.993,\nmp3.hls/42/2.mp3\n"), "{p}");
        // The open segment's parts are still served, 7 frames (183 ms) each.
        let open = b.segment(3).unwrap_or_else(|| panic!("segment 3 held"));
        assert_eq!(
            part_range(&frames_of(&open), part_samples(&b.codec), 4),
            (28, 35)
        );
        assert_eq!(
            dateranges(&p),
            [
                "#EXT-X-DATERANGE:ID=\"title-0\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:00.000Z\",END-ON-NEXT=YES,X-TITLE=\"A\"",
                "#EXT-X-DATERANGE:ID=\"title-2\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:02.000Z\",END-ON-NEXT=YES,X-TITLE=\"B 'live'\"",
            ]
        );
        // The segment a title begins with has its own date-time, right after the range.
        assert!(
            p.contains("X-TITLE=\"B 'live'\"\n#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:02.000Z\n")
        );
        // The window moves past the segments A and B began with: the ranges keep their
        // IDs and dates (title-0 ends where title-2 begins, and is gone).
        for seq in 4..9 {
            feed(&b, seq, Some("B \"live\""));
        }
        let p = render(&b);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{p}");
        assert_eq!(
            dateranges(&p),
            ["#EXT-X-DATERANGE:ID=\"title-2\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:02.000Z\",END-ON-NEXT=YES,X-TITLE=\"B 'live'\""]
        );
        // A title taken away ends the last one with an empty one.
        feed(&b, 9, None);
        let p = render(&b);
        assert!(p.contains("ID=\"title-9\""), "{p}");
        assert!(p.contains("X-TITLE=\"\""), "{p}");
    }

    #[tokio::test]
    async fn a_node_that_saw_nothing_for_a_while_starts_the_title_at_its_first_segment() {
        let b = mp3_broadcast(3);
        feed(&b, 0, Some("A"));
        let _ = render(&b);
        // Nobody asked while the window moved past all it had seen: where A began here is
        // not known, so the oldest listed segment is where it begins.
        for seq in 1..8 {
            feed(&b, seq, Some("A"));
        }
        let p = render(&b);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{p}");
        let ranges = dateranges(&p);
        assert_eq!(ranges.len(), 1, "{p}");
        assert!(ranges[0].contains("ID=\"title-4\""), "{p}");
        assert!(
            ranges[0].contains("START-DATE=\"2026-01-01T00:00:04.000Z\""),
            "{p}"
        );
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(date_time(1_796_000_000_123_456), "2026-11-30T00:53:20.123Z");
        assert_eq!(date_time(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
