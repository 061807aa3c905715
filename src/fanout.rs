//! Fan-out: one subscriber walking the store and writing to its sink. Every kind of
//! subscriber (QUIC listener, child relay, HTTP listener) runs this same loop; a sink only
//! says how a segment, its frames and a skip look on its transport.

use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, info};

use crate::error::Result;
use crate::server::Node;
use crate::store::{Cursor, Step, Stored};

/// What became of a write.
pub enum Delivery {
    Done,
    /// The subscriber does not want the rest of this segment (it stopped the stream).
    Stopped,
}

pub trait Sink: Send {
    /// A segment starts. May wait (flow control); given up if the subscriber lags.
    fn begin(&mut self, seq: u64) -> impl Future<Output = Result<()>> + Send;
    /// Frames of the current segment, in order, and their wire records in as few `Bytes`
    /// as the store holds them. May wait; given up if the subscriber lags.
    fn frames(
        &mut self,
        frames: &[Stored],
        wire: &[Bytes],
    ) -> impl Future<Output = Result<Delivery>> + Send;
    /// The current segment is complete.
    fn end(&mut self, seq: u64);
    /// The current segment is abandoned: the subscriber moves to a newer one.
    fn skip(&mut self);
}

/// Something that waits on a slow subscriber, given up if it falls too far behind.
/// Biased: a write that can complete now always does; only a blocked one is given up.
async fn unless_lagging<T>(cursor: &Cursor, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = cursor.lagging() => None,
    }
}

/// Runs one subscriber until the broadcast ends (returning the last segment delivered) or
/// the sink fails (the subscriber went away).
pub async fn fan_out<S: Sink>(
    node: &Node,
    cursor: &mut Cursor,
    sink: &mut S,
) -> Result<Option<u64>> {
    let mut last = None;
    loop {
        let mut step = cursor.next().await;
        match &step {
            Step::Begin(seq) => {
                if unless_lagging(cursor, sink.begin(*seq))
                    .await
                    .transpose()?
                    .is_none()
                {
                    step = cursor.skip_to_live();
                }
            }
            Step::Frames(frames) => {
                match unless_lagging(cursor, sink.frames(frames, cursor.wire()))
                    .await
                    .transpose()?
                {
                    Some(Delivery::Done) => {}
                    Some(Delivery::Stopped) => {
                        debug!("segment stopped by subscriber");
                        cursor.abandon_segment();
                    }
                    None => step = cursor.skip_to_live(),
                }
            }
            Step::End(seq) => {
                sink.end(*seq);
                last = Some(*seq);
            }
            Step::Skip { .. } | Step::Finished => {}
        }
        match step {
            Step::Skip { from, to } => {
                sink.skip();
                node.stats.skips_total.fetch_add(1, Ordering::Relaxed);
                info!(
                    from,
                    to,
                    skipped = cursor.skipped,
                    "subscriber fell behind: moved forward to the newest segment"
                );
            }
            Step::Finished => return Ok(last),
            Step::Frames(frames) => cursor.recycle(frames),
            _ => {}
        }
    }
}
