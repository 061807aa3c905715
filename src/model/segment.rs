//! A segment: a run of frames, the unit of caching and of joining.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{Batch, WireFrame};
use crate::error::{Error, Kind, Result};
use crate::proto::{ErrorCode, MAX_FRAMES_PER_SEGMENT, MAX_SEGMENT_BYTES};

/// How reading a segment from a parent went (a step of whatever carries it: QUIC, a test's
/// in-memory reader).
pub enum SegmentRead {
    /// Frames were appended.
    Frames,
    /// The segment is complete.
    Finished,
    /// The parent gave the segment up (it moved us forward, `skipped`).
    Reset(ErrorCode),
    /// The connection failed.
    Failed(Error),
}

/// A run of frames starting with an independently decodable one. Open while it grows,
/// sealed when the next one begins. Append-only.
pub struct Segment {
    pub seq: u64,
    /// The stream's now-playing title from this segment's start (UTF-8, ≤ `MAX_TITLE`).
    pub title: Option<Bytes>,
    inner: RwLock<SegInner>,
    /// The form HTTP listeners take the broadcast in: each run is also made into it, once.
    http: HttpForm,
}

/// What a broadcast's HTTP listeners are sent, made once per run and shared by all of them.
#[derive(Clone)]
pub enum HttpForm {
    /// Opus: Ogg pages, numbered for the broadcast.
    Ogg(Arc<OggNumbering>),
    /// MP3, AAC in ADTS: the frames as they came, one after another (their own format).
    Raw,
}

/// A broadcast's Ogg stream, shared by all its HTTP listeners: one serial number, page
/// sequence numbers given out in stream order (each run's pages are made when the run is,
/// and a segment's last run when it is sealed, before the next segment has a frame), and
/// granule positions counted from the broadcast's start (RFC 7845: pre-skip plus the end of
/// each page's last packet). A listener joining mid-stream gets its own two header pages
/// (numbered 0 and 1, as libogg expects), then the shared pages with their own numbers:
/// what Icecast does with a mount's stored headers.
pub struct OggNumbering {
    pub serial: u32,
    pub pre_skip: u64,
    next: std::sync::Mutex<u32>,
}

impl OggNumbering {
    pub fn new(serial: u32, pre_skip: u64) -> OggNumbering {
        OggNumbering {
            serial,
            pre_skip,
            // Room for a listener's two header pages before the first audio page.
            next: std::sync::Mutex::new(2),
        }
    }
}

#[derive(Default)]
struct SegInner {
    frames: Vec<WireFrame>,
    bytes: usize,
    sealed: bool,
    /// Runs of consecutive wire records, each one `Bytes`, partitioning `frames[..covered]`:
    /// (end index, bytes). One copy per node, however many read it: the first subscriber to
    /// read a delivery interval's frames joins their records into one run, and every other
    /// subscriber at that place is handed the same run (one chunk to write, not one per
    /// frame). The records of a run are slices of it, so frames are held once.
    runs: Vec<(usize, Bytes)>,
    /// Each run's Ogg pages and the first one's sequence number (index-aligned with `runs`).
    pages: Vec<(Bytes, u32)>,
}

impl SegInner {
    fn covered(&self) -> usize {
        self.runs.last().map_or(0, |r| r.0)
    }

    /// Makes the frames not yet in a run into one: built once, by the first subscriber to
    /// read them, and shared by every other subscriber that reads from the same place (all
    /// of them, at the live edge). One copy of a delivery interval's frames per node.
    fn close_run(&mut self, http: &HttpForm) {
        let (from, to) = (self.covered(), self.frames.len());
        if let (HttpForm::Raw, true) = (http, to > from) {
            self.pages.push((raw_frames(&self.frames[from..to]), 0));
        }
        if let (HttpForm::Ogg(ogg), true) = (http, to > from) {
            let mut next = ogg.next.lock().unwrap_or_else(|e| e.into_inner());
            let (pages, n) = crate::media::ogg_page::audio_pages(
                ogg.serial,
                *next,
                self.frames[from..to].iter().map(|f| {
                    let end = f.frame.pts.saturating_add(f.frame.duration as u64);
                    (&f.frame.payload[..], ogg.pre_skip.saturating_add(end))
                }),
            );
            self.pages.push((pages, *next));
            *next = next.wrapping_add(n);
        }
        let run = match to - from {
            0 => return,
            1 => self.frames[from].record.clone(),
            _ => {
                let fresh = &mut self.frames[from..];
                let len = fresh.iter().map(|f| f.record.len()).sum();
                let mut buf = bytes::BytesMut::with_capacity(len);
                for f in fresh.iter() {
                    buf.extend_from_slice(&f.record);
                }
                let run = buf.freeze();
                // Point each frame into the run, so its old allocation is freed.
                let mut at = 0;
                for f in fresh.iter_mut() {
                    let (n, p) = (f.record.len(), f.frame.payload.len());
                    f.record = run.slice(at..at + n);
                    f.frame.payload = run.slice(at + n - p..at + n);
                    at += n;
                }
                run
            }
        };
        self.runs.push((to, run));
    }

    /// The HTTP form of `frames[from..]` (all in runs): the runs' shared pages or frames, or
    /// its own for the part of a run joined in the middle (Ogg pages numbered as that run's).
    fn http_from(&self, from: usize, http: &HttpForm, out: &mut Vec<Bytes>) {
        let mut i = self.runs.partition_point(|r| r.0 <= from);
        let mut at = from;
        while let (Some((end, _)), Some((pages, first))) = (self.runs.get(i), self.pages.get(i)) {
            let start = if i == 0 { 0 } else { self.runs[i - 1].0 };
            if start == at {
                out.push(pages.clone());
            } else if let HttpForm::Ogg(ogg) = http {
                let (own, _) = crate::media::ogg_page::audio_pages(
                    ogg.serial,
                    *first,
                    self.frames[at..*end].iter().map(|f| {
                        let end = f.frame.pts.saturating_add(f.frame.duration as u64);
                        (&f.frame.payload[..], ogg.pre_skip.saturating_add(end))
                    }),
                );
                out.push(own);
            } else {
                out.push(raw_frames(&self.frames[at..*end]));
            }
            at = *end;
            i += 1;
        }
    }

    /// The wire records of `frames[from..]` as few `Bytes` as the runs allow.
    fn wire_from(&self, from: usize, out: &mut Vec<Bytes>) {
        let mut at = from;
        let mut i = self.runs.partition_point(|r| r.0 <= at);
        while at < self.frames.len() {
            match self.runs.get(i) {
                Some((end, run)) => {
                    let start = if i == 0 { 0 } else { self.runs[i - 1].0 };
                    if start == at {
                        out.push(run.clone());
                    } else {
                        // Joined in the middle of a run (rare): frame by frame to its end.
                        out.extend(self.frames[at..*end].iter().map(|f| f.record.clone()));
                    }
                    at = *end;
                    i += 1;
                }
                None => {
                    out.extend(self.frames[at..].iter().map(|f| f.record.clone()));
                    at = self.frames.len();
                }
            }
        }
    }
}

/// Frames' payloads one after another: MP3 and ADTS frames are their own byte stream.
fn raw_frames(frames: &[WireFrame]) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(frames.iter().map(|f| f.frame.payload.len()).sum());
    for f in frames {
        b.extend_from_slice(&f.frame.payload);
    }
    b.freeze()
}

impl Segment {
    pub(super) fn new(seq: u64, http: HttpForm, title: Option<Bytes>) -> Segment {
        Segment {
            seq,
            title,
            inner: RwLock::new(SegInner::default()),
            http,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SegInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SegInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a frame: refused if the segment is sealed or would pass its bounds.
    pub(super) fn append(&self, f: WireFrame) -> Result<()> {
        let mut g = self.write();
        if g.sealed {
            return Err(Error::protocol(format!("segment {} is sealed", self.seq)));
        }
        if g.frames.len() >= MAX_FRAMES_PER_SEGMENT || g.bytes + f.record.len() > MAX_SEGMENT_BYTES
        {
            return Err(Error::new(
                Kind::TooLarge,
                format!("segment {} is over its limits", self.seq),
            ));
        }
        g.bytes += f.record.len();
        g.frames.push(f);
        Ok(())
    }

    /// No more frames. Its last run is made now (and its Ogg pages: numbered before the next
    /// segment's).
    pub(super) fn seal(&self) {
        let mut g = self.write();
        g.close_run(&self.http);
        g.sealed = true;
    }

    pub fn is_sealed(&self) -> bool {
        self.read().sealed
    }

    /// The timestamp of frame `i`, if the segment has it.
    pub fn pts_at(&self, i: usize) -> Option<u64> {
        self.read().frames.get(i).map(|f| f.frame.pts)
    }

    /// Appends frames `from..` to `out`, in its form: the frames themselves (clones of a few
    /// `Bytes` handles), or their wire records as runs (see `SegInner::runs`). Returns how many
    /// frames that is, and whether the segment is sealed.
    pub fn read_from(&self, from: usize, out: &mut Batch) -> (usize, bool) {
        {
            let g = self.read();
            let n = g.frames.len().saturating_sub(from);
            if n == 0 {
                return (0, g.sealed);
            }
            match out {
                Batch::Frames(f) => {
                    f.extend_from_slice(&g.frames[from..]);
                    return (n, g.sealed);
                }
                Batch::Wire(w) if g.covered() == g.frames.len() => {
                    g.wire_from(from, w);
                    return (n, g.sealed);
                }
                Batch::Http(pages, frames) if g.covered() == g.frames.len() => {
                    g.http_from(from, &self.http, pages);
                    *frames += n;
                    return (n, g.sealed);
                }
                Batch::Wire(_) | Batch::Http(..) => {}
            }
        }
        let mut g = self.write();
        g.close_run(&self.http);
        let n = g.frames.len() - from;
        match out {
            Batch::Wire(w) => g.wire_from(from, w),
            Batch::Http(pages, frames) => {
                g.http_from(from, &self.http, pages);
                *frames += n;
            }
            Batch::Frames(_) => {}
        }
        (n, g.sealed)
    }

    pub fn len(&self) -> usize {
        self.read().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.read().bytes
    }
}
