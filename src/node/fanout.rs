//! Fan-out: one subscriber walking the store and writing to its sink. Every kind of
//! subscriber (QUIC listener, child relay, HTTP listener) runs this same loop; a sink only
//! says how a segment, its frames and a skip look on its transport.

use std::future::Future;
use std::sync::atomic::Ordering;

use tracing::{debug, info};

use super::{inc, Node};
use crate::error::Result;
use crate::model::{since_epoch, Batch, Cursor, Form, Step};

/// What became of a write.
pub enum Delivery {
    Done,
    /// The subscriber does not want the rest of this segment (it stopped the stream).
    Stopped,
}

/// How a segment, its frames and a skip look on one kind of subscriber's transport.
pub trait Sink: Send {
    /// The form the sink takes frames in: each frame (to re-package the audio), or the wire
    /// records as they are (to forward them).
    const FORM: Form;
    /// A segment starts. May wait (flow control); given up if the subscriber lags.
    fn begin(&mut self, seq: u64) -> impl Future<Output = Result<()>> + Send;
    /// Frames of the current segment, in order, in the sink's form. May wait; given up if
    /// the subscriber lags.
    fn frames(&mut self, batch: &Batch) -> impl Future<Output = Result<Delivery>> + Send;
    /// The current segment is complete.
    fn sealed(&mut self, seq: u64);
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
    cursor.set_form(S::FORM);
    // The wake-up this subscriber last took: when it takes the very next one, how long
    // after it this task ran is how late the node serves its listeners (its load watch
    // stretches intervals on it).
    let mut seen: Option<u64> = None;
    // When this subscriber's last step was done (µs of `since_epoch`): time it spent in its
    // own writes (a slow peer) is not the node's lateness.
    let mut done_at = 0u64;
    loop {
        let mut step = cursor.next().await;
        if matches!(step, Step::Frames(_)) {
            let b = cursor.broadcast();
            let (wake, at) = b.last_wake();
            if let Some(missed) = seen.map(|s| wake.wrapping_sub(s)).filter(|m| *m >= 1) {
                // From the first wake-up it did not take (the last one, less an interval
                // for each before it), or from when it was last free, whichever is later.
                let back = (missed - 1).min(100) * b.interval().as_micros() as u64;
                let from = at.saturating_sub(back).max(done_at);
                let late = since_epoch(tokio::time::Instant::now()).saturating_sub(from);
                node.stats.fanout_late_us.fetch_max(late, Ordering::Relaxed);
            }
            seen = Some(wake);
        }
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
            Step::Frames(batch) => {
                match unless_lagging(cursor, sink.frames(batch))
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
            Step::Sealed(seq) => {
                sink.sealed(*seq);
                last = Some(*seq);
            }
            Step::Skip { .. } | Step::Finished => {}
        }
        match step {
            Step::Skip { from, to } => {
                sink.skip();
                inc(&node.stats.skips_total);
                info!(
                    from,
                    to,
                    skipped = cursor.skipped,
                    "subscriber fell behind: moved forward to the newest segment"
                );
            }
            Step::Finished => return Ok(last),
            Step::Frames(batch) => cursor.recycle(batch),
            _ => {}
        }
        done_at = since_epoch(tokio::time::Instant::now());
    }
}
