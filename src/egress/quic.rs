//! QUIC listeners and child relays: each subscription's segments, each on its own
//! unidirectional stream, written straight into quinn-proto's streams (on the engine's
//! thread, see `server::quic`) from the shared store: the records as they are, the same
//! `Bytes` for every subscriber.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{Connection, Dir, StreamId, VarInt};
use tracing::debug;

use crate::model::{Batch, Form, Step};
use crate::node::{inc, Node, Subscriber};
use crate::proto::{ErrorCode, SegmentHeader};
use crate::transport::varint;

/// What begins each segment stream a subscription opens, and the code its streams are
/// reset with when the subscriber is moved forward: nothing and `skipped` on a native
/// connection; WebTransport's stream type and the session, and `skipped` mapped, in a
/// browser's session.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) prefix: Bytes,
    pub(crate) skipped: VarInt,
    /// Segment headers carry the stream's title (the peer said version 3).
    pub(crate) titles: bool,
}

impl Envelope {
    pub(crate) fn native() -> Envelope {
        Envelope {
            prefix: Bytes::new(),
            skipped: varint(ErrorCode::Skipped),
            titles: false,
        }
    }

    pub(crate) fn titled(self, titles: bool) -> Envelope {
        Envelope { titles, ..self }
    }
}

/// One subscription: its cursor, and where its segment stands on the wire.
pub(crate) struct Sub {
    pub(crate) s: Subscriber,
    pub(crate) out: Option<StreamId>,
    pub(crate) header: Option<Bytes>,
    /// How its segment streams begin and are given up (a native or a browser's connection).
    envelope: Envelope,
    /// The segment that ended, its FIN not yet sent (it goes with the next one's frames).
    ended: Option<StreamId>,
    /// What the stream has not taken yet (flow control): the subscriber waits.
    pub(crate) backlog: Vec<Bytes>,
    /// The last segment it was sent whole.
    last: Option<u64>,
    /// A segment waiting for stream credit to begin.
    pub(crate) waiting: Option<u64>,
    /// Woken and waiting to be served (see `server::quic`).
    pub(crate) queued: bool,
    joining: Option<Instant>,
    frames: u64,
    bytes: u64,
}

impl Sub {
    /// Starts delivering subscription `id` (`low_latency`: each frame as it comes, rather
    /// than a delivery interval's at a time).
    pub(crate) fn start(mut s: Subscriber, id: u64, low_latency: bool, envelope: Envelope) -> Sub {
        if low_latency {
            s.cursor.eager();
        }
        s.cursor.set_form(Form::Wire);
        let instance = s.cursor.broadcast().instance;
        debug!(id, instance, low_latency, "subscribed");
        Sub {
            joining: Some(s.joining),
            s,
            out: None,
            header: None,
            envelope,
            ended: None,
            backlog: Vec::new(),
            last: None,
            waiting: None,
            queued: false,
            frames: 0,
            bytes: 0,
        }
    }

    /// The subscriber unsubscribed: the segment being sent is reset and a held FIN sent. A
    /// stream left neither finished nor reset holds one of the peer's stream credits for as
    /// long as the connection lasts: a listener that churns subscriptions would run out and
    /// hear nothing more.
    pub(crate) fn close(&mut self, conn: &mut Connection, node: &Node) {
        if let Some(out) = self.out.take() {
            let _ = conn.send_stream(out).reset(self.envelope.skipped);
        }
        finish_ended(conn, self);
        self.flush(node);
    }

    /// The peer stopped stream `id` (reset by the caller): if it was this subscriber's
    /// segment, the next one starts afresh; if it was the ended one, its FIN is not sent.
    pub(crate) fn stopped(&mut self, id: StreamId) {
        if self.out == Some(id) {
            self.out = None;
            self.backlog.clear();
            self.header = None;
            self.s.cursor.abandon_segment();
        }
        if self.ended == Some(id) {
            self.ended = None;
        }
    }

    pub(crate) fn flush(&mut self, node: &Node) {
        node.stats.sent(
            std::mem::take(&mut self.frames),
            std::mem::take(&mut self.bytes),
        );
    }
}

/// Delivers what subscription `id` has due: steps its cursor while it can take more, and
/// writes each step into its segment's stream. A subscriber whose stream is full (flow
/// control) waits, and is moved to the newest segment once it falls too far behind.
/// Returns the last segment sent whole once the broadcast is over (the subscription is
/// then done: its stream finished, its counts added).
pub(crate) fn step(node: &Node, conn: &mut Connection, sub: &mut Sub, id: u64) -> Option<u64> {
    // First what the stream did not take last time.
    if !sub.backlog.is_empty() {
        match sub.out.map(|out| write_all(conn, out, &mut sub.backlog)) {
            Some(Wrote::All) | Some(Wrote::Blocked) => {}
            Some(Wrote::Stopped) => {
                sub.out = None;
                sub.s.cursor.abandon_segment();
            }
            Some(Wrote::Gone) | None => {
                sub.backlog.clear();
                sub.out = None;
            }
        }
        if !sub.backlog.is_empty() {
            if !sub.s.cursor.is_lagging() {
                return None;
            }
            let to = sub.s.cursor.skip_to_live();
            skipped(node, conn, sub, to);
        }
    }
    if let Some(seq) = sub.waiting {
        if begin(conn, sub, id, seq) {
            sub.waiting = None;
        } else if sub.s.cursor.is_lagging() {
            // Still no stream credit, and too far behind: on to the newest segment.
            let to = sub.s.cursor.skip_to_live();
            skipped(node, conn, sub, to);
        } else {
            return None;
        }
    }
    while let Some(step) = sub.s.cursor.try_next() {
        match step {
            Step::Begin(seq) => {
                if !begin(conn, sub, id, seq) {
                    // No stream credit: it comes back with `Available`.
                    sub.waiting = Some(seq);
                    return None;
                }
            }
            Step::Frames(batch) => {
                if let Batch::Wire(wire) = &batch {
                    finish_ended(conn, sub);
                    if let Some(out) = sub.out {
                        sub.backlog.extend(sub.header.take());
                        sub.backlog.extend_from_slice(wire);
                        let bytes: u64 = sub.backlog.iter().map(|b| b.len() as u64).sum();
                        match write_all(conn, out, &mut sub.backlog) {
                            Wrote::All | Wrote::Blocked => {}
                            Wrote::Stopped => {
                                sub.out = None;
                                sub.s.cursor.abandon_segment();
                            }
                            Wrote::Gone => sub.out = None,
                        }
                        if let Some(since) = sub.joining.take() {
                            node.stats.joined(since);
                        }
                        sub.frames += records(wire);
                        sub.bytes += bytes;
                    }
                }
                sub.s.cursor.recycle(batch);
                if !sub.backlog.is_empty() {
                    return None;
                }
            }
            Step::Sealed(seq) => {
                sub.flush(node);
                sub.last = Some(seq);
                if let Some(out) = sub.out.take() {
                    // A segment without frames still shows its header. A fresh stream has
                    // credit for a few bytes; if not, the segment is reset instead.
                    let sent = sub.header.take().is_none_or(
                        |h| matches!(conn.send_stream(out).write(&h), Ok(n) if n == h.len()),
                    );
                    finish_ended(conn, sub);
                    if sent {
                        sub.ended = Some(out);
                    } else {
                        let _ = conn.send_stream(out).reset(sub.envelope.skipped);
                    }
                }
            }
            to @ Step::Skip { .. } => skipped(node, conn, sub, to),
            Step::Finished => {
                finish_ended(conn, sub);
                if let Some(out) = sub.out.take() {
                    let _ = conn.send_stream(out).finish();
                }
                sub.flush(node);
                return Some(sub.last.unwrap_or(0));
            }
        }
    }
    None
}

/// The subscriber fell behind and was moved (`to`, a `Step::Skip`): counted, said, and its
/// segment's stream reset.
fn skipped(node: &Node, conn: &mut Connection, sub: &mut Sub, to: Step) {
    skip(conn, sub);
    inc(&node.stats.skips_total);
    if let Step::Skip { from, to } = to {
        crate::bounded_info!(
            node.logs.skips,
            from,
            to,
            skipped = sub.s.cursor.skipped,
            "subscriber fell behind: moved forward to the newest segment"
        );
    }
}

/// The current segment is abandoned (the subscriber moves on): its stream is reset.
fn skip(conn: &mut Connection, sub: &mut Sub) {
    finish_ended(conn, sub);
    sub.waiting = None;
    sub.header = None;
    sub.backlog.clear();
    if let Some(out) = sub.out.take() {
        let _ = conn.send_stream(out).reset(sub.envelope.skipped);
    }
}

/// What a write of a backlog came to.
pub(crate) enum Wrote {
    /// All of it.
    All,
    /// Part or none: the stream is full (flow control), and says `Writable` when it is not.
    Blocked,
    /// The peer stopped the stream (it gave the segment up).
    Stopped,
    /// The stream is gone.
    Gone,
}

/// Writes `backlog` into stream `out` until it is all written or the stream is full. A
/// write that takes part of it is tried again: only a write refused as `Blocked` makes
/// quinn-proto say `Writable` later.
pub(crate) fn write_all(conn: &mut Connection, out: StreamId, backlog: &mut Vec<Bytes>) -> Wrote {
    loop {
        backlog.retain(|b| !b.is_empty());
        if backlog.is_empty() {
            return Wrote::All;
        }
        match conn.send_stream(out).write_chunks(backlog) {
            Ok(w) => {
                backlog.drain(..w.chunks);
            }
            Err(quinn_proto::WriteError::Blocked) => return Wrote::Blocked,
            Err(quinn_proto::WriteError::Stopped(_)) => {
                backlog.clear();
                return Wrote::Stopped;
            }
            Err(quinn_proto::WriteError::ClosedStream) => {
                backlog.clear();
                return Wrote::Gone;
            }
        }
    }
}

/// Opens segment `seq`'s stream; false without stream credit (the held FIN is sent first:
/// the peer may be waiting for it to give credit back).
fn begin(conn: &mut Connection, sub: &mut Sub, id: u64, seq: u64) -> bool {
    let s = match conn.streams().open(Dir::Uni) {
        Some(s) => s,
        None => {
            finish_ended(conn, sub);
            match conn.streams().open(Dir::Uni) {
                Some(s) => s,
                None => return false,
            }
        }
    };
    let mut hdr = BytesMut::from(&sub.envelope.prefix[..]);
    let title = match sub.envelope.titles {
        true => sub.s.cursor.title(),
        false => None,
    };
    SegmentHeader {
        sub_id: id,
        seq,
        title,
    }
    .encode(&mut hdr);
    sub.header = Some(hdr.freeze());
    sub.out = Some(s);
    true
}

fn finish_ended(conn: &mut Connection, sub: &mut Sub) {
    if let Some(s) = sub.ended.take() {
        let _ = conn.send_stream(s).finish();
    }
}

/// How many frame records runs of them hold (`len, pts, duration, wall_us, payload`): a few
/// varints read per frame, no copy.
pub(crate) fn records(runs: &[Bytes]) -> u64 {
    use crate::proto::varint::try_get;
    let mut n = 0;
    for run in runs {
        let mut rest: &[u8] = run;
        while let Some(len) = try_get(&mut rest) {
            let fields = (0..3).all(|_| try_get(&mut rest).is_some());
            match usize::try_from(len).ok().and_then(|l| rest.get(l..)) {
                Some(after) if fields => rest = after,
                _ => break,
            }
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Frame;

    #[test]
    fn records_in_runs_are_counted() {
        let f = |n: u64, size: usize| Frame {
            pts: n * 960,
            duration: 960,
            wall_us: 1_700_000_000_000_000 + n,
            payload: Bytes::from(vec![7u8; size]),
        };
        let mut run = BytesMut::new();
        for n in 0..3 {
            f(n, 100 + n as usize * 200).encode(&mut run);
        }
        let one = f(3, 0).to_bytes();
        assert_eq!(records(&[run.freeze(), one.clone()]), 4);
        assert_eq!(records(&[]), 0);
        // A cut record is not counted.
        assert_eq!(records(&[one.slice(..2)]), 0);
    }
}
