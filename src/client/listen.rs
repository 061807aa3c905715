//! `quicast listen`: subscribe at the live edge and hand each event to the caller. The CLI
//! writes Ogg Opus; tests and the load generator look at the frames themselves.
//!
//! `listen_any` listens through any of several nodes: on a lost, silent or draining node it
//! moves to the next (round robin, with backoff) and resumes from the next frame it needs,
//! so that what the caller is handed stays one contiguous run of the broadcast.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Client, Event, Session};
use crate::error::{Error, Result};
use crate::model::SegmentRead;
use crate::proto::{Codec, ErrorCode, Frame, QuicUrl, Role, Start, SUBSCRIBE_LOW_LATENCY};

pub enum ListenEvent<'a> {
    /// The codec, before any audio (once per subscription: again after a move).
    Header {
        instance: u64,
        codec: &'a Codec,
    },
    /// A segment starts.
    Segment(u64),
    /// The stream's now-playing title changed (None: it has none now), from the segment
    /// that just started.
    Title(Option<&'a str>),
    Frames(&'a [Frame]),
    /// The node moved us past the rest of segment `seq` (we were too slow).
    Skipped(u64),
    /// The node moved us past `count` whole segments from `first` on, before they began:
    /// they never reached us (we were too slow).
    Missed {
        first: u64,
        count: u64,
    },
    /// We moved to another node (`to`), after hearing nothing for `stall`.
    Moved {
        to: String,
        stall: Duration,
    },
}

/// Segments that never arrived: the node skips a slow listener past segments it had not
/// begun yet without any stream (so no reset) to show for it, only a jump in sequence.
#[derive(Debug, Default)]
struct SegmentOrder {
    last: Option<u64>,
}

impl SegmentOrder {
    /// Segments passed over before `seq`, which arrives next. Segments come in order, so
    /// a step back (only a broken node sends one) passes over nothing.
    fn missed(&mut self, seq: u64) -> u64 {
        let missed = self
            .last
            .map_or(0, |last| seq.saturating_sub(last).saturating_sub(1));
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
        missed
    }
}

#[derive(Debug, Default, Clone)]
pub struct ListenReport {
    pub frames: u64,
    pub segments: u64,
    pub skipped: u64,
    /// Whole segments the node moved us past before they began.
    pub missed: u64,
    /// The broadcast ended (rather than the deadline passing).
    pub ended: bool,
    /// Moves to another node.
    pub moves: u64,
}

/// Where a listener is in the broadcast, across moves from node to node.
#[derive(Default)]
struct Position {
    report: ListenReport,
    order: SegmentOrder,
    /// The segment last begun, and the end of the last frame handed out.
    seq: Option<u64>,
    next_pts: Option<u64>,
    last_frame_at: Option<Instant>,
    /// The last title handed out.
    title: Option<bytes::Bytes>,
}

/// How one subscription ended.
enum Outcome {
    Ended,
    Deadline,
    /// The node said it is going away (with alternatives).
    GoingAway(Vec<String>),
    /// Nothing came for the silence limit, while audio was flowing.
    Silent,
    Lost(Error),
}

/// Options of `listen_any`.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub path: String,
    pub deadline: Option<Instant>,
    /// Once audio flows, a node that sends nothing for this long is taken for lost.
    pub silence: Duration,
    /// The token presented to each node (empty: none).
    pub token: String,
    /// Ask for every frame at once (the shortest delivery interval, at more cost).
    pub low_latency: bool,
}

/// Listens on `path` until the broadcast ends or `deadline` passes.
pub async fn listen(
    session: &Arc<Session>,
    path: &str,
    start: Start,
    deadline: Option<Instant>,
    mut on: impl FnMut(ListenEvent<'_>) -> Result<()>,
) -> Result<ListenReport> {
    let mut pos = Position::default();
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let timer = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(timer);
    match run(
        session,
        (path, 0),
        start,
        None,
        &mut pos,
        &mut timer,
        &mut on,
    )
    .await?
    {
        Outcome::Ended => pos.report.ended = true,
        Outcome::Deadline | Outcome::GoingAway(_) | Outcome::Silent => {}
        Outcome::Lost(e) => return Err(e),
    }
    Ok(pos.report)
}

/// Listens on `path` through any of `nodes` (tried in turn), moving on a lost, silent or
/// draining node and resuming where it was, until the broadcast ends or `deadline` passes.
/// A node that refuses the stream (not found, unauthorized) ends the listen.
pub async fn listen_any(
    nodes: &[(Client, QuicUrl)],
    opts: &ListenOptions,
    mut on: impl FnMut(ListenEvent<'_>) -> Result<()>,
) -> Result<ListenReport> {
    if nodes.is_empty() {
        return Err(Error::local("no node to listen to"));
    }
    let mut pos = Position::default();
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let timer = tokio::time::sleep_until(opts.deadline.unwrap_or(far));
    tokio::pin!(timer);
    let mut k = 0;
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0;
    // The longest a node that refused us in this round said to wait.
    let mut come_back: Option<Duration> = None;
    let mut moved = false;
    // A node named by one that went away: tried next, once.
    let mut alternative: Option<(Client, QuicUrl)> = None;
    loop {
        let named = alternative.take();
        let (client, url) = match &named {
            Some(n) => (&n.0, &n.1),
            None => (&nodes[k % nodes.len()].0, &nodes[k % nodes.len()].1),
        };
        let connect = client.connect(url, Role::Listener, &opts.token);
        let session = tokio::select! {
            s = connect => s,
            _ = &mut timer => return Ok(pos.report),
        };
        let outcome = match session {
            Ok(session) => {
                if moved {
                    let stall = pos.last_frame_at.map_or(Duration::ZERO, |t| t.elapsed());
                    info!(to = %url.authority(), ?stall, "moved to another node");
                    pos.report.moves += 1;
                    on(ListenEvent::Moved {
                        to: url.authority(),
                        stall,
                    })?;
                }
                let start = pos.seq.map_or(Start::Live, Start::Seq);
                let flags = if opts.low_latency {
                    SUBSCRIBE_LOW_LATENCY
                } else {
                    0
                };
                let o = run(
                    &session,
                    (&opts.path, flags),
                    start,
                    Some(opts.silence),
                    &mut pos,
                    &mut timer,
                    &mut on,
                )
                .await;
                match o {
                    // A refusal from a node stands (another node would say the same).
                    Err(e) => return Err(e),
                    Ok(o) => o,
                }
            }
            // An untrusted certificate, a refusal: another try would get the same.
            Err(e) if stands(&e) && named.is_none() => return Err(e),
            Err(e) => Outcome::Lost(e),
        };
        match outcome {
            Outcome::Ended => {
                pos.report.ended = true;
                return Ok(pos.report);
            }
            Outcome::Deadline => return Ok(pos.report),
            Outcome::GoingAway(alternatives) => {
                warn!(node = %url.authority(), ?alternatives, "node is going away: moving");
                backoff = Duration::from_millis(100);
                failures = 0;
                alternative = alternatives
                    .iter()
                    .filter_map(|a| QuicUrl::parse(a).ok())
                    .map(|mut u| {
                        u.path = opts.path.clone();
                        (client.clone(), u)
                    })
                    .next();
                if alternative.is_some() {
                    moved = true;
                    continue;
                }
            }
            Outcome::Silent => {
                warn!(node = %url.authority(), silence = ?opts.silence, "node went silent: moving");
            }
            Outcome::Lost(e) => {
                failures += 1;
                let refusal = e.refusal();
                warn!(node = %url.authority(), "node lost: {e}; moving");
                // A node that refused us may name others: tried next (not those an
                // alternate names in turn, so two cannot send us round in a circle).
                if let (Some(r), None) = (&refusal, &named) {
                    alternative = r
                        .alternates
                        .iter()
                        .filter_map(|a| QuicUrl::parse(a).ok())
                        .map(|mut u| {
                            u.path = opts.path.clone();
                            (client.clone(), u)
                        })
                        .next();
                    if alternative.is_some() {
                        moved = true;
                        continue;
                    }
                }
                if let Some(after) = refusal.and_then(|r| r.retry_after) {
                    come_back = Some(come_back.map_or(after, |c: Duration| c.max(after)));
                }
                if failures >= nodes.len() {
                    // Every node failed in a row: wait before the next round, as long as
                    // a refusal said or the backoff has grown, jittered so that a crowd
                    // refused together does not come back together.
                    let wait = come_back.take().unwrap_or(backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(super::jittered(wait)) => {}
                        _ = &mut timer => return Ok(pos.report),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    failures = 0;
                }
            }
        }
        k += 1;
        moved = true;
    }
}

/// Whether a node's refusal to connect stands (trying again, or another node, would get the
/// same): a certificate not trusted, a protocol or version mismatch, a refusal with a code
/// other than going away or overloaded.
fn stands(e: &Error) -> bool {
    use crate::error::Kind;
    match e.remote_code() {
        Some(ErrorCode::GoingAway | ErrorCode::Overloaded) => false,
        Some(_) => !e.is_gone(),
        None => matches!(e.kind(), Kind::Protocol | Kind::Local | Kind::Version),
    }
}

/// One subscription on one node, from `start`, handing the caller what it has not had yet.
async fn run(
    session: &Arc<Session>,
    (path, flags): (&str, u64),
    start: Start,
    silence: Option<Duration>,
    pos: &mut Position,
    timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    on: &mut impl FnMut(ListenEvent<'_>) -> Result<()>,
) -> Result<Outcome> {
    let mut sub = match session.subscribe_with(path, start, flags).await {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::Lost(e)),
    };
    let mut subscribed = false;
    let mut batch = Vec::new();
    let mut frames_buf: Vec<Frame> = Vec::new();
    let far = Duration::from_secs(100 * 365 * 86_400);
    // Silence counts once audio flows: a waiting room says nothing for a long time.
    let quiet = |pos: &Position| match (silence, pos.last_frame_at) {
        (Some(s), Some(_)) => s,
        _ => far,
    };
    let mut last_heard = Instant::now();
    loop {
        let ev = tokio::select! {
            ev = sub.next() => ev,
            _ = &mut *timer => return Ok(Outcome::Deadline),
            a = session.going_away() => return Ok(Outcome::GoingAway(a)),
            _ = tokio::time::sleep_until(last_heard + quiet(pos)) => return Ok(Outcome::Silent),
        };
        last_heard = Instant::now();
        match ev {
            None => return Ok(Outcome::Lost(session.closed().await)),
            Some(Event::Subscribed {
                instance, codec, ..
            }) => {
                subscribed = true;
                on(ListenEvent::Header {
                    instance,
                    codec: &codec,
                })?;
            }
            Some(Event::Segment {
                seq,
                title,
                mut frames,
            }) => {
                if !subscribed {
                    return Err(Error::protocol("audio before the codec header"));
                }
                // After a move, a segment begun again is not a new one.
                if pos.seq != Some(seq) {
                    pos.report.segments += 1;
                    let missed = pos.order.missed(seq);
                    if missed > 0 {
                        pos.report.missed += missed;
                        on(ListenEvent::Missed {
                            first: seq - missed,
                            count: missed,
                        })?;
                    }
                    pos.seq = Some(seq);
                    on(ListenEvent::Segment(seq))?;
                }
                if title != pos.title {
                    // The node checked it is UTF-8 (the wire's rule); a title that is not
                    // reads as none.
                    on(ListenEvent::Title(
                        title.as_deref().and_then(|t| std::str::from_utf8(t).ok()),
                    ))?;
                    pos.title = title;
                }
                loop {
                    batch.clear();
                    let r = tokio::select! {
                        r = frames.frames(&mut batch) => r,
                        _ = &mut *timer => return Ok(Outcome::Deadline),
                        a = session.going_away() => return Ok(Outcome::GoingAway(a)),
                        _ = tokio::time::sleep_until(last_heard + quiet(pos)) => return Ok(Outcome::Silent),
                    };
                    last_heard = Instant::now();
                    match r {
                        SegmentRead::Finished => break,
                        SegmentRead::Frames => {
                            frames_buf.clear();
                            let next = pos.next_pts;
                            // Frames heard before a move come again from the new node.
                            frames_buf.extend(
                                batch
                                    .drain(..)
                                    .map(|f| f.frame)
                                    .filter(|f| next.is_none_or(|n| f.pts >= n)),
                            );
                            if let Some(last) = frames_buf.last() {
                                pos.next_pts = Some(last.pts + last.duration as u64);
                                pos.last_frame_at = Some(Instant::now());
                                pos.report.frames += frames_buf.len() as u64;
                                on(ListenEvent::Frames(&frames_buf))?;
                            }
                        }
                        SegmentRead::Reset(_) => {
                            pos.report.skipped += 1;
                            on(ListenEvent::Skipped(seq))?;
                            break;
                        }
                        SegmentRead::Failed(e) => return Ok(Outcome::Lost(e)),
                    }
                }
            }
            Some(Event::End { .. }) => return Ok(Outcome::Ended),
            Some(Event::Error { code, reason }) => {
                return Err(Error::remote(ErrorCode::from_wire(code), reason))
            }
            Some(Event::PublishOk { .. } | Event::Catalog { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SegmentOrder;

    #[test]
    fn a_jump_in_segment_sequence_counts_the_segments_passed_over() {
        let mut o = SegmentOrder::default();
        assert_eq!(o.missed(7), 0, "the first segment follows nothing");
        assert_eq!(o.missed(8), 0);
        assert_eq!(o.missed(11), 2, "9 and 10 never came");
        assert_eq!(o.missed(12), 0);
        // A broken node stepping back or repeating: nothing passed over, and the next
        // segment is still measured from the furthest seen.
        assert_eq!(o.missed(5), 0);
        assert_eq!(o.missed(12), 0);
        assert_eq!(o.missed(14), 1);
        assert_eq!(o.missed(u64::MAX), u64::MAX - 15);
    }
}
