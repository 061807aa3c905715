//! A progressive listener's place in its stream, apart from its socket and cursor: the
//! pages it still has to take (with the ICY metadata blocks and titles among them for a
//! listener that asked), its skips when it falls behind, its retries, and its totals.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::media::icy::IcyWriter;
use crate::media::ogg_page;
use crate::model::{Batch, Cursor, Step};
use crate::node::{inc, Node};

/// How long a listener is given to take the rest of its stream once the broadcast ended.
const LAST_WORDS: Duration = Duration::from_secs(5);
/// A socket that took part of a write is tried again this soon (a join's burst bigger than
/// its send buffer, a short stall); one that took nothing, twice as late each time, up to
/// the herd's write interval.
const RETRY_FIRST: Duration = Duration::from_millis(20);

/// A listener's place in its stream, apart from its socket and cursor: the pages it still
/// has to take, and its totals. The sans-IO core of the herd: `serve` is given the cursor,
/// the socket (any `Write`, non-blocking) and the time.
pub(super) struct Place {
    /// What is still to be written, and how much of its first buffer already was.
    pub(super) pending: VecDeque<Bytes>,
    written: usize,
    /// The last pages given to the socket (its end-of-stream page follows their numbers);
    /// none yet: its header pages go before the first.
    tail: Option<Bytes>,
    /// Write failures tried again from this time, waiting twice as long each time.
    pub(super) retry_at: Option<Instant>,
    backoff: Duration,
    /// The broadcast ended at this time: its end page is queued.
    ended: Option<Instant>,
    /// Totals, said when the listener ends; `unsent` not yet added to the node's.
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) skips: u64,
    pub(super) unsent: (u64, u64),
    /// When the listener began to join, until its first audio.
    pub(super) joining: Option<std::time::Instant>,
    /// ICY metadata blocks among the audio, for a listener that asked (`Icy-MetaData: 1`).
    /// Audio goes through the writer only as the socket takes it (into `ready`), so what a
    /// skip drops from `pending` was never counted: blocks stay every `metaint` bytes of
    /// what the listener got.
    icy: Option<IcyWriter>,
    /// What the ICY writer made of the audio last taken from `pending`, being written.
    pub(super) ready: VecDeque<Bytes>,
    /// Titles in order with the audio: each holds from the audio byte (counted as queued in
    /// `pending`) its segment begins at, and is given to the ICY writer only when the audio
    /// before it has gone through, so its block comes after its segment's first byte.
    titles: VecDeque<(u64, Option<Bytes>)>,
    /// Audio bytes queued in `pending`, and passed to the ICY writer (or dropped by a
    /// skip), since the listener began.
    queued: u64,
    through: u64,
}

/// What one serving left the listener.
#[derive(Debug, PartialEq)]
pub(super) enum Served {
    Open,
    /// It is done with: the reason, for its last log line.
    Gone(String),
}

impl Place {
    pub(super) fn new(joining: std::time::Instant, icy: Option<usize>) -> Place {
        Place {
            icy: icy.map(IcyWriter::new),
            ready: VecDeque::new(),
            titles: VecDeque::new(),
            queued: 0,
            through: 0,
            pending: VecDeque::new(),
            written: 0,
            tail: None,
            retry_at: None,
            backoff: Duration::ZERO,
            ended: None,
            frames: 0,
            bytes: 0,
            skips: 0,
            unsent: (0, 0),
            joining: Some(joining),
        }
    }

    /// Serves the listener what is due: first what its socket did not take last time, then
    /// (once that is written) every step its cursor has now, in one write. `heads`: the
    /// stream's header pages; `serial`: its Ogg serial number.
    pub(super) fn serve(
        &mut self,
        cursor: &mut Cursor,
        out: &mut impl Write,
        heads: &Bytes,
        serial: u32,
        node: &Node,
        now: Instant,
    ) -> Served {
        if !self.idle() {
            if let Err(why) = self.flush(out, now) {
                return Served::Gone(why);
            }
            if !self.idle() {
                if let Some(at) = self.ended {
                    return if now.duration_since(at) >= LAST_WORDS {
                        Served::Gone("the broadcast ended (its last pages not taken)".into())
                    } else {
                        Served::Open
                    };
                }
                if !cursor.is_lagging() {
                    return Served::Open;
                }
                let (from, to) = match cursor.skip_to_live() {
                    Step::Skip { from, to } => (from, to),
                    _ => (0, 0),
                };
                self.skip();
                inc(&node.stats.skips_total);
                crate::bounded_info!(
                    node.logs.skips,
                    from,
                    to,
                    skipped = cursor.skipped,
                    "subscriber fell behind: moved forward to the newest segment"
                );
            }
        }
        if self.ended.is_some() {
            return Served::Gone("the broadcast ended".into());
        }
        while let Some(step) = cursor.try_next() {
            match step {
                Step::Frames(batch) => {
                    if let Batch::Http(pages, n) = &batch {
                        self.take(pages, *n, heads);
                    }
                    cursor.recycle(batch);
                }
                Step::Begin(_) => {
                    // A segment carries the title from its start: ICY listeners have it
                    // in the first block after the segment's first byte.
                    if self.icy.is_some() {
                        self.titles.push_back((self.queued, cursor.title()));
                    }
                }
                Step::Skip { .. } => {
                    // The store moved on under it (its segment gone): the pages go on from
                    // the newer one, a gap in their numbers saying so.
                    self.skips += 1;
                    inc(&node.stats.skips_total);
                }
                Step::Sealed(_) => {}
                Step::Finished => {
                    // Ogg ends with its end-of-stream page (MP3 and AAC just stop).
                    if let Some((seq, granule)) = self
                        .tail
                        .as_ref()
                        .filter(|_| !heads.is_empty())
                        .and_then(|t| ogg_page::last_page_numbers(t))
                    {
                        self.pending.push_back(ogg_page::eos_page(
                            serial,
                            seq.wrapping_add(1),
                            granule,
                        ));
                    }
                    self.ended = Some(now);
                    break;
                }
            }
        }
        if let Err(why) = self.flush(out, now) {
            return Served::Gone(why);
        }
        if self.ended.is_some() && self.idle() {
            return Served::Gone("the broadcast ended".into());
        }
        Served::Open
    }

    /// A delivery's pages, shared with every other listener of the stream.
    fn take(&mut self, pages: &[Bytes], n: usize, heads: &Bytes) {
        let Some(last) = pages.last() else {
            return;
        };
        if self.tail.is_none() && !heads.is_empty() {
            self.pending.push_back(heads.clone());
            self.queued += heads.len() as u64;
        }
        self.pending.extend(pages.iter().cloned());
        self.tail = Some(last.clone());
        let len: u64 = pages.iter().map(|b| b.len() as u64).sum();
        self.queued += len;
        self.frames += n as u64;
        self.bytes += len;
        self.unsent.0 += n as u64;
        self.unsent.1 += len;
    }

    /// Nothing left to write.
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.ready.is_empty()
    }

    /// Writes what is pending until the socket takes no more. Err: the listener is gone.
    fn flush(&mut self, out: &mut impl Write, now: Instant) -> std::result::Result<(), String> {
        let queue = match self.icy.as_mut() {
            Some(icy) => {
                if self.ready.is_empty() && !self.pending.is_empty() {
                    let mut out = Vec::with_capacity(self.pending.len() + 2);
                    for audio in self.pending.drain(..) {
                        // The titles of the segments that begin here, in order.
                        while let Some((_, t)) =
                            self.titles.front().filter(|(at, _)| *at <= self.through)
                        {
                            icy.set_title(t.as_deref().and_then(|t| std::str::from_utf8(t).ok()));
                            self.titles.pop_front();
                        }
                        self.through += audio.len() as u64;
                        icy.write(audio, &mut out);
                    }
                    self.ready.extend(out);
                }
                &mut self.ready
            }
            None => &mut self.pending,
        };
        let progress = write_queue(queue, &mut self.written, out)?;
        if self.idle() {
            self.retry_at = None;
            self.backoff = Duration::ZERO;
        } else {
            self.backoff = if progress || self.backoff.is_zero() {
                RETRY_FIRST
            } else {
                self.backoff * 2
            };
            self.retry_at = Some(now + self.backoff);
        }
        Ok(())
    }

    /// Moved forward: what was not begun is dropped (a page begun is finished at the next
    /// write); the pages go on from the newer segment, a gap in their sequence numbers
    /// saying what was skipped (as a lagging Icecast listener sees): players hear a short
    /// jump, never a broken file. (An ICY listener keeps what its writer counted, `ready`:
    /// its blocks stay in place.)
    fn skip(&mut self) {
        self.skips += 1;
        if self.icy.is_some() {
            // Dropped unsent: the titles of the segments dropped still come, in order,
            // before what follows.
            self.pending.clear();
            self.through = self.queued;
            return;
        }
        let begun = (self.written > 0)
            .then(|| self.pending.pop_front())
            .flatten();
        self.pending.clear();
        self.pending.extend(begun);
    }
}

/// Writes `queue` (its front `written` bytes in) until the socket takes no more; whether it
/// took anything. Err: the listener is gone.
fn write_queue(
    queue: &mut VecDeque<Bytes>,
    written: &mut usize,
    out: &mut impl Write,
) -> std::result::Result<bool, String> {
    const MAX: usize = 64;
    let mut progress = false;
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX];
        let mut k = 0;
        for (j, b) in queue.iter().take(MAX).enumerate() {
            slices[j] = IoSlice::new(if j == 0 { &b[*written..] } else { b });
            k = j + 1;
        }
        let mut n = match out.write_vectored(&slices[..k]) {
            Ok(0) => return Err("the HTTP listener left".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err("the HTTP listener left".into()),
        };
        progress = true;
        while let Some(front) = queue.front() {
            let left = front.len() - *written;
            if n < left {
                *written += n;
                break;
            }
            n -= left;
            *written = 0;
            queue.pop_front();
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::media::{OggEvent, OggOpusDemuxer, OpusHead};
    use crate::model::Broadcast;
    use crate::model::{Form, PaceMode, Pacing, SegmentCache, StoreConfig, WireFrame};
    use crate::node::NodeConfig;
    use crate::proto::{Frame, Start};

    /// A socket as the herd sees it: takes `room` more bytes, then would block; or is gone.
    struct Pipe {
        got: Vec<u8>,
        room: usize,
        gone: bool,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            if self.gone {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            if self.room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.room);
                self.got.extend_from_slice(&b[..k]);
                self.room -= k;
                n += k;
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pipe(room: usize) -> Pipe {
        Pipe {
            got: Vec::new(),
            room,
            gone: false,
        }
    }

    /// The packets (numbered in their second to fifth bytes, or by a frame's `n`) of a
    /// listener's stream, every page checked (CRC, order) by a demuxer; and whether the
    /// stream ended with its end page.
    fn packets(stream: &[u8]) -> (Vec<u32>, bool) {
        let mut d = OggOpusDemuxer::new();
        d.push(stream);
        let mut out = Vec::new();
        loop {
            match d.next_event() {
                Ok(Some(OggEvent::Packet(p, ..))) => out.push(if p.len() >= 5 {
                    u32::from_le_bytes(p[1..5].try_into().unwrap())
                } else {
                    p[1] as u32
                }),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("not a valid Ogg Opus stream: {e}"),
            }
        }
        let eos = stream.len() >= 27 && {
            // The last page's header flags.
            let mut at = 0;
            let mut last_flags = 0;
            while at + 27 <= stream.len() {
                last_flags = stream[at + 5];
                let n = stream[at + 26] as usize;
                let body: usize = stream[at + 27..at + 27 + n]
                    .iter()
                    .map(|&l| l as usize)
                    .sum();
                at += 27 + n + body;
            }
            last_flags & 4 != 0
        };
        (out, eos)
    }

    /// Runs of 100 packets of 200 bytes each as pages from `seq`: (pages, next seq).
    fn run(first_packet: u32, seq: u32) -> (Bytes, u32) {
        let packets: Vec<Vec<u8>> = (first_packet..first_packet + 100)
            .map(|i| {
                let mut p = vec![0xf8; 200];
                p[1..5].copy_from_slice(&i.to_le_bytes());
                p
            })
            .collect();
        let (pages, n) = ogg_page::audio_pages(
            9,
            seq,
            packets
                .iter()
                .enumerate()
                .map(|(k, p)| (&p[..], 960 * (first_packet as u64 + k as u64 + 1))),
        );
        (pages, seq + n)
    }

    #[test]
    fn a_listener_skipped_mid_page_gets_that_page_finished_and_a_valid_stream() {
        let heads = ogg_page::opus_header_pages(9, &OpusHead::synthetic(2).raw);
        let mut place = Place::new(std::time::Instant::now(), None);
        let mut out = pipe(20_000);
        let (mut pages, mut seq) = (Vec::new(), 2);
        for k in 0..40 {
            let (p, next) = run(k * 100, seq);
            pages.push(p);
            seq = next;
        }
        place.take(&pages, 4000, &heads);
        let now = Instant::now();
        place.flush(&mut out, now).unwrap();
        // The socket took part of it, and stopped inside a page.
        assert!(place.written > 0, "the write did not end inside a page");
        assert_eq!(place.retry_at, Some(now + RETRY_FIRST));
        place.skip();
        assert_eq!(place.pending.len(), 1, "only the page begun is kept");
        let (later, _) = run(100_000, seq + 1000);
        place.take(&[later], 100, &heads);
        out.room = usize::MAX;
        place.flush(&mut out, now).unwrap();
        assert!(place.pending.is_empty() && place.retry_at.is_none());
        let (got, _) = packets(&out.got);
        assert_eq!(got[0], 0, "from the first run");
        assert_eq!(got.len() % 100, 0, "whole runs only: {}", got.len());
        assert!(got.len() >= 200, "some of the first and all of the later");
        assert_eq!(
            &got[got.len() - 100..],
            &(100_000..100_100).collect::<Vec<_>>()[..]
        );
        // A socket that then takes nothing is tried again later and later.
        out.room = 0;
        place.take(&[run(200_000, seq + 2000).0], 100, &heads);
        place.flush(&mut out, now).unwrap();
        place.flush(&mut out, now).unwrap();
        assert_eq!(place.retry_at, Some(now + RETRY_FIRST * 2));
        out.gone = true;
        assert!(
            place.flush(&mut out, now).is_err(),
            "a listener gone is said so"
        );
    }

    fn frame(n: u64) -> WireFrame {
        WireFrame::new(Frame {
            pts: n * 960,
            duration: 960,
            wall_us: n,
            payload: Bytes::from(vec![0xf8, n as u8]),
        })
    }

    /// Through the store, as the herd serves it: a listener whose socket stops taking
    /// anything keeps its cursor where it was until it is more than the lag bound behind,
    /// then goes on from the newest segment; its stream stays valid Ogg, in runs contiguous
    /// with the source, and ends with the end page when the broadcast does.
    #[tokio::test]
    async fn a_stalled_listener_moves_on_by_whole_segments_and_its_stream_ends_with_eos() {
        let node = Node::new(NodeConfig::default(), None).unwrap();
        let cfg = StoreConfig {
            window: 8,
            max_lag: 2,
            pacing: Pacing::new(PaceMode::Fixed(Duration::ZERO), 1452, vec![]),
            ..StoreConfig::default()
        };
        let b = Broadcast::new(
            "t",
            1,
            OpusHead::synthetic(2).codec(),
            crate::model::Provenance::here(),
            &SegmentCache::new(&cfg),
            &cfg,
        );
        let serial = b.ogg.as_ref().unwrap().serial;
        let heads = ogg_page::opus_header_pages(serial, &b.codec.header);
        // Ten frames a segment.
        let mut n = 0u64;
        let mut segment = |b: &Arc<Broadcast>, seq: u64, frames: u64| {
            let s = b.begin(seq).unwrap();
            for _ in 0..frames {
                b.append(&s, frame(n)).unwrap();
                n += 1;
            }
            s
        };
        let s0 = segment(&b, 0, 10);
        b.seal(&s0);
        let s1 = segment(&b, 1, 5);
        let mut cursor = b.cursor(Start::Live);
        cursor.back(1);
        cursor.set_form(Form::Http);
        let mut place = Place::new(std::time::Instant::now(), None);
        let mut out = pipe(usize::MAX);
        let now = Instant::now();
        let serve = |place: &mut Place, cursor: &mut Cursor, out: &mut Pipe| {
            place.serve(cursor, out, &heads, serial, &node, now)
        };
        assert_eq!(serve(&mut place, &mut cursor, &mut out), Served::Open);
        assert_eq!(
            packets(&out.got).0,
            (0..15).collect::<Vec<_>>(),
            "the burst: a segment back"
        );
        // The socket stops taking anything.
        out.room = 0;
        b.seal(&s1);
        let s2 = segment(&b, 2, 10);
        b.seal(&s2);
        assert_eq!(serve(&mut place, &mut cursor, &mut out), Served::Open);
        assert!(!place.pending.is_empty());
        // Its cursor is to begin segment 3 (what it holds is not written yet): behind by up
        // to two, it is waited for.
        for seq in 3..6 {
            let s = segment(&b, seq, 10);
            b.seal(&s);
            assert_eq!(serve(&mut place, &mut cursor, &mut out), Served::Open);
            assert_eq!(place.skips, 0);
        }
        // Three: moved to the newest (segment 6, its frames 55..).
        let s6 = segment(&b, 6, 4);
        assert_eq!(serve(&mut place, &mut cursor, &mut out), Served::Open);
        assert_eq!(place.skips, 1);
        out.room = usize::MAX;
        assert_eq!(serve(&mut place, &mut cursor, &mut out), Served::Open);
        b.seal(&s6);
        b.finish();
        assert_eq!(
            serve(&mut place, &mut cursor, &mut out),
            Served::Gone("the broadcast ended".into())
        );
        let (got, eos) = packets(&out.got);
        let mut want: Vec<u32> = (0..15).collect();
        want.extend(55..59);
        assert_eq!(got, want);
        assert!(eos, "the stream ends with its end page");
        assert_eq!(
            node.stats
                .skips_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
