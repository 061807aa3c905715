//! Fan-out: one subscriber walking the store and writing to its sink. Every kind of
//! subscriber (QUIC listener, child relay, HTTP listener) runs this same loop; a sink only
//! says how a segment, its frames and a skip look on its transport.

use std::future::Future;
use std::sync::atomic::Ordering;

use tracing::debug;

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
                // From the first wake-up it could have taken: the first after it was last
                // free (wake-ups come an interval apart; the last one was at `at`).
                let i = (b.interval().as_micros() as u64).max(1);
                let from = if done_at >= at {
                    done_at
                } else {
                    at - ((at - done_at - 1) / i).min(missed - 1) * i
                };
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
                crate::bounded_info!(
                    node.logs.skips,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::model::{Broadcast, PaceMode, Pacing, SegmentCache, StoreConfig, WireFrame};
    use crate::node::config::Millis;
    use crate::node::NodeConfig;
    use crate::proto::{Frame, Start};

    /// A sink whose first write takes a whole second (a peer that stops reading for a
    /// while), then keeps up.
    struct Stuck(bool);

    impl Sink for Stuck {
        const FORM: Form = Form::Frames;
        async fn begin(&mut self, _: u64) -> Result<()> {
            Ok(())
        }
        async fn frames(&mut self, _: &Batch) -> Result<Delivery> {
            if !std::mem::replace(&mut self.0, true) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(Delivery::Done)
        }
        fn sealed(&mut self, _: u64) {}
        fn skip(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_stuck_in_its_own_write_is_not_the_node_running_late() {
        let node = Node::new(
            NodeConfig {
                overload_lag_ms: Millis::new(0),
                ..NodeConfig::default()
            },
            None,
        )
        .unwrap();
        let cfg = StoreConfig {
            pacing: Pacing::new(PaceMode::Fixed(Duration::from_millis(100)), 1452, vec![]),
            ..StoreConfig::default()
        };
        let b = Broadcast::new(
            "s",
            1,
            crate::media::OpusHead::synthetic(2).codec(),
            &SegmentCache::new(&cfg),
            &cfg,
        );
        let seg = b.begin(0).unwrap();
        let mut cursor = b.cursor(Start::Live);
        let n = node.clone();
        let sub = tokio::spawn(async move { fan_out(&n, &mut cursor, &mut Stuck(false)).await });
        for k in 0..150u64 {
            b.append(
                &seg,
                WireFrame::new(Frame {
                    pts: k * 960,
                    duration: 960,
                    wall_us: k,
                    payload: Bytes::from_static(&[0xf8, 0]),
                }),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.seal(&seg);
        b.finish();
        sub.await.unwrap().unwrap();
        // It missed ten wake-ups while it wrote, yet the node served it on time each time
        // it was free to be served.
        let late = node.stats.fanout_late_us.load(Ordering::Relaxed);
        assert!(late < 100_000, "counted {late} µs late");
    }
}
