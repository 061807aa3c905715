//! QUIC listeners and child relays: each subscription's segments, each on its own
//! unidirectional stream, written from the shared fan-out (the records as they are).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, SendStream};
use tracing::debug;
use tracing::info;

use crate::error::Result;
use crate::model::{Batch, Form};
use crate::node::{fan_out, Delivery, Node, Peer, Sink, Tally};
use crate::proto::{ErrorCode, Message, SegmentHeader, Start, SUBSCRIBE_LOW_LATENCY};
use crate::transport::{conn_error, varint, ControlWriter};

/// Serves one subscription of a QUIC connection until the broadcast ends or the peer goes.
pub(crate) async fn serve_subscription(
    node: Arc<Node>,
    conn: Connection,
    ctl: ControlWriter,
    peer: Peer,
    (id, path, start, flags): (u64, String, Start, u64),
) {
    let mut sub = match node
        .subscribe(&path, start, node.cfg.waiting_room_secs.get(), &peer)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            info!("{e}");
            let (code, reason) = (e.code().as_u64(), e.reason().to_string());
            let _ = ctl.send(Message::SubscribeError { id, code, reason }).await;
            return;
        }
    };
    if flags & SUBSCRIBE_LOW_LATENCY != 0 {
        sub.cursor.eager();
    }
    let b = sub.cursor.broadcast().clone();
    debug!(
        instance = b.instance,
        low_latency = flags & SUBSCRIBE_LOW_LATENCY != 0,
        "subscribed"
    );
    let subscribed = Message::Subscribed {
        id,
        instance: b.instance,
        codec: b.codec.clone(),
    };
    if ctl.send(subscribed).await.is_err() {
        return;
    }
    let mut sink = QuicSink {
        conn: &conn,
        id,
        out: None,
        header: None,
        ended: None,
        chunks: Vec::new(),
        tally: Tally::new(&node.stats, sub.joining),
    };
    match fan_out(&node, &mut sub.cursor, &mut sink).await {
        Ok(last) => {
            debug!(?last, "broadcast ended");
            sink.finish_ended();
            let _ = ctl
                .send(Message::StreamEnd {
                    id,
                    last_seq: last.unwrap_or(0),
                })
                .await;
        }
        Err(e) => debug!("subscription ended: {e}"),
    }
}

/// A QUIC subscriber: each segment on its own uni stream; a skip resets it.
struct QuicSink<'a> {
    conn: &'a Connection,
    id: u64,
    out: Option<SendStream>,
    /// The segment header, sent with the segment's first frames rather than in a packet of
    /// its own (a segment begins before its first batch of frames is due).
    header: Option<Bytes>,
    /// The segment that ended, its FIN not yet sent: it goes with the next segment's first
    /// frames instead of in a packet of its own. Dropping the sink sends it too.
    ended: Option<SendStream>,
    chunks: Vec<Bytes>,
    tally: Tally<'a>,
}

impl QuicSink<'_> {
    fn finish_ended(&mut self) {
        if let Some(mut s) = self.ended.take() {
            let _ = s.finish();
        }
    }
}

impl Sink for QuicSink<'_> {
    /// Records are forwarded as they are: one shared run per delivery interval.
    const FORM: Form = Form::Wire;

    async fn begin(&mut self, seq: u64) -> Result<()> {
        let s = match futures_util::FutureExt::now_or_never(self.conn.open_uni()) {
            Some(s) => s,
            None => {
                // No stream credit now: the held-back FIN must not wait for it (the peer
                // may be waiting for that FIN to give credit back).
                self.finish_ended();
                self.conn.open_uni().await
            }
        }
        .map_err(conn_error)?;
        let mut hdr = BytesMut::new();
        SegmentHeader {
            sub_id: self.id,
            seq,
        }
        .encode(&mut hdr);
        self.header = Some(hdr.freeze());
        self.out = Some(s);
        Ok(())
    }

    async fn frames(&mut self, batch: &Batch) -> Result<Delivery> {
        let Batch::Wire(wire) = batch else {
            return Ok(Delivery::Done);
        };
        self.finish_ended();
        let Some(s) = self.out.as_mut() else {
            return Ok(Delivery::Done);
        };
        // The same Bytes every subscriber gets (a run of frames, usually one): no copy.
        self.chunks.clear();
        self.chunks.extend(self.header.take());
        self.chunks.extend_from_slice(wire);
        let bytes = self.chunks.iter().map(|c| c.len() as u64).sum();
        match s.write_all_chunks(&mut self.chunks).await {
            Ok(()) => {
                self.tally.wrote(records(wire), bytes);
                Ok(Delivery::Done)
            }
            Err(quinn::WriteError::Stopped(_)) => {
                self.out = None;
                Ok(Delivery::Stopped)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sealed(&mut self, _seq: u64) {
        self.tally.flush();
        if let Some(mut s) = self.out.take() {
            // A segment without frames still shows the subscriber its header. A fresh
            // stream has credit for a few bytes; if not, the segment is reset instead.
            let unsent = self.header.take();
            let sent = unsent.is_none_or(|h| {
                matches!(
                    futures_util::FutureExt::now_or_never(s.write_all(&h)),
                    Some(Ok(()))
                )
            });
            if sent {
                self.finish_ended();
                self.ended = Some(s);
            } else {
                let _ = s.reset(varint(ErrorCode::Skipped));
            }
        }
    }

    fn skip(&mut self) {
        self.tally.flush();
        self.finish_ended();
        self.header = None;
        if let Some(mut s) = self.out.take() {
            let _ = s.reset(varint(ErrorCode::Skipped));
        }
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
