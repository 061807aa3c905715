//! `quicast listen`: subscribe at the live edge and hand each event to the caller. The CLI
//! writes Ogg Opus; tests and the load generator look at the frames themselves.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Event, Session};
use crate::error::{Error, Result};
use crate::node::SegmentRead;
use crate::proto::{Codec, ErrorCode, Frame, Start};

pub enum ListenEvent<'a> {
    /// The codec, before any audio (once per subscription).
    Header {
        instance: u64,
        codec: &'a Codec,
    },
    /// A segment starts.
    Segment(u64),
    Frames(&'a [Frame]),
    /// The node moved us past the rest of segment `seq` (we were too slow).
    Skipped(u64),
    /// The node moved us past `count` whole segments from `first` on, before they began:
    /// they never reached us (we were too slow).
    Missed {
        first: u64,
        count: u64,
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
}

/// Listens on `path` until the broadcast ends or `deadline` passes.
pub async fn listen(
    session: &Arc<Session>,
    path: &str,
    start: Start,
    deadline: Option<Instant>,
    mut on: impl FnMut(ListenEvent<'_>) -> Result<()>,
) -> Result<ListenReport> {
    let mut sub = session.subscribe(path, start).await?;
    let mut report = ListenReport::default();
    let mut subscribed = false;
    let mut order = SegmentOrder::default();
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline = deadline.unwrap_or(far);
    let mut batch = Vec::new();
    let mut frames_buf: Vec<Frame> = Vec::new();
    // One timer for the whole listen, not one made and dropped for every packet read.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let outcome: Result<()> = async {
        loop {
            let ev = tokio::select! {
                ev = sub.next() => ev,
                _ = &mut timer => return Ok(()),
            };
            match ev {
                None => return Err(session.closed().await),
                Some(Event::Subscribed { instance, codec }) => {
                    subscribed = true;
                    on(ListenEvent::Header {
                        instance,
                        codec: &codec,
                    })?;
                }
                Some(Event::Segment { seq, mut frames }) => {
                    if !subscribed {
                        return Err(Error::protocol("audio before the codec header"));
                    }
                    report.segments += 1;
                    let missed = order.missed(seq);
                    if missed > 0 {
                        report.missed += missed;
                        on(ListenEvent::Missed {
                            first: seq - missed,
                            count: missed,
                        })?;
                    }
                    on(ListenEvent::Segment(seq))?;
                    loop {
                        batch.clear();
                        let r = tokio::select! {
                            r = frames.frames(&mut batch) => r,
                            _ = &mut timer => return Ok(()),
                        };
                        match r {
                            SegmentRead::Finished => break,
                            SegmentRead::Frames => {
                                frames_buf.clear();
                                frames_buf.extend(batch.drain(..).map(|f| f.frame));
                                report.frames += frames_buf.len() as u64;
                                on(ListenEvent::Frames(&frames_buf))?;
                            }
                            SegmentRead::Reset(_) => {
                                report.skipped += 1;
                                on(ListenEvent::Skipped(seq))?;
                                break;
                            }
                            SegmentRead::Failed(e) => return Err(e),
                        }
                    }
                }
                Some(Event::End { .. }) => {
                    report.ended = true;
                    return Ok(());
                }
                Some(Event::Error { code, reason }) => {
                    return Err(Error::remote(ErrorCode::from_wire(code), reason))
                }
                Some(Event::PublishOk { .. }) => {}
            }
        }
    }
    .await;
    outcome.map(|()| report)
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
