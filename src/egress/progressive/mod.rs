//! HTTP progressive listeners (`GET /STREAM.ogg`, `.mp3`, `.aac` or bare `/STREAM`): the
//! stream in its codec's own format (Ogg Opus, MP3, AAC in ADTS), with ICY metadata for a
//! listener that asks; one more kind of subscriber of the shared fan-out, for ordinary
//! players and browsers. (Their egress label in the metrics, `Egress::HttpOgg`, is still
//! `http_ogg`, which operators' dashboards use, and so is their herds' log span.)
//!
//! A listener costs what Icecast's do: no task of its own. Its connection, once answered,
//! joins its stream's *herd* (one task per stream and delivery kind on the node), which at
//! each of the broadcast's wake-ups (at most once per `http-write-ms`) walks every listener in
//! one pass: steps its cursor over what the store has for it (`Cursor::try_next`, as the QUIC
//! engine does) and hands the socket the stream's shared Ogg pages (made once per node: see
//! `model::segment::OggNumbering`) in one non-blocking vectored write. A socket that does
//! not take them keeps the rest and is tried again (soon, then less often while it takes
//! nothing); its cursor waits meanwhile, and once it is more than the store's lag bound
//! behind it moves to the newest segment like any slow subscriber: what was not begun is
//! dropped, a page begun is finished first, so the stream stays valid Ogg.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, info_span, Instrument};

use crate::error::{Error, Result};
use crate::media::icy::IcyWriter;
use crate::media::ogg_page;
use crate::model::{since_epoch, Batch, Broadcast, Cursor, Egress, Step};
use crate::node::{inc, HttpAdmission, Node, Peer, Subscriber};
use crate::proto::Start;

/// How long a listener is given to take the rest of its stream once the broadcast ended.
const LAST_WORDS: Duration = Duration::from_secs(5);
/// A socket that took part of a write is tried again this soon (a join's burst bigger than
/// its send buffer, a short stall); one that took nothing, twice as late each time, up to
/// the herd's write interval.
const RETRY_FIRST: Duration = Duration::from_millis(20);
/// Listeners served between two turns given back to the runtime (a herd of tens of
/// thousands must not hold the thread that accepts newcomers for a whole pass).
const SLICE: usize = 512;

/// A listener's place in its stream, apart from its socket and cursor: the pages it still
/// has to take, and its totals. The sans-IO core of the herd: `serve` is given the cursor,
/// the socket (any `Write`, non-blocking) and the time.
struct Place {
    /// What is still to be written, and how much of its first buffer already was.
    pending: VecDeque<Bytes>,
    written: usize,
    /// The last pages given to the socket (its end-of-stream page follows their numbers);
    /// none yet: its header pages go before the first.
    tail: Option<Bytes>,
    /// Write failures tried again from this time, waiting twice as long each time.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The broadcast ended at this time: its end page is queued.
    ended: Option<Instant>,
    /// Totals, said when the listener ends; `unsent` not yet added to the node's.
    frames: u64,
    bytes: u64,
    skips: u64,
    unsent: (u64, u64),
    /// When the listener began to join, until its first audio.
    joining: Option<std::time::Instant>,
    /// ICY metadata blocks among the audio, for a listener that asked (`Icy-MetaData: 1`).
    /// Audio goes through the writer only as the socket takes it (into `ready`), so what a
    /// skip drops from `pending` was never counted: blocks stay every `metaint` bytes of
    /// what the listener got.
    icy: Option<IcyWriter>,
    /// What the ICY writer made of the audio last taken from `pending`, being written.
    ready: VecDeque<Bytes>,
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
enum Served {
    Open,
    /// It is done with: the reason, for its last log line.
    Gone(String),
}

impl Place {
    fn new(joining: std::time::Instant, icy: Option<usize>) -> Place {
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
    fn serve(
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

/// An HTTP listener in its herd.
struct Member {
    tcp: std::net::TcpStream,
    sub: Subscriber,
    place: Place,
    remote: SocketAddr,
    started: std::time::Instant,
    _admission: HttpAdmission,
}

/// The node's herds, by broadcast and delivery kind (low-latency listeners are woken at
/// every frame, the others once per delivery interval).
#[derive(Clone, Default)]
pub(crate) struct Herds(Arc<Mutex<HashMap<HerdKey, mpsc::UnboundedSender<Member>>>>);

/// A herd's broadcast (its local id) and whether its listeners are low-latency ones.
type HerdKey = (u64, bool);

impl Herds {
    /// Hands an answered listener (its response head written) to its stream's herd, which
    /// serves it from now on; starts the herd if there is none.
    pub(crate) fn join(
        &self,
        listener: Listener,
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        admission: HttpAdmission,
    ) {
        // Off the runtime's reactor: the herd writes without waiting (still non-blocking).
        let Ok(tcp) = tcp.into_std() else {
            return;
        };
        let Listener {
            node,
            sub,
            eager,
            write_every,
            serial,
            opus_head,
            icy,
            content_type: _,
        } = listener;
        let b = sub.cursor.broadcast().clone();
        let key = (b.local_id(), eager);
        let mut member = Member {
            tcp,
            place: Place::new(sub.joining, icy),
            sub,
            remote,
            started: std::time::Instant::now(),
            _admission: admission,
        };
        let mut herds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = herds.get(&key) {
            match tx.send(member) {
                Ok(()) => return,
                Err(back) => member = back.0,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(member);
        herds.insert(key, tx);
        let herd = Herd {
            node: node.clone(),
            herds: self.clone(),
            key,
            // Ogg's two header pages; MP3 and AAC need none.
            heads: match b.ogg {
                Some(_) => ogg_page::opus_header_pages(serial, &opus_head),
                None => Bytes::new(),
            },
            serial,
            write_every,
            members: Vec::new(),
        };
        let span = info_span!("http_ogg", path = %b.path, eager);
        tokio::spawn(herd.run(b, rx).instrument(span));
    }
}

/// One stream's HTTP Ogg listeners on this node, served in one pass per wake-up.
struct Herd {
    node: Arc<Node>,
    herds: Herds,
    key: HerdKey,
    heads: Bytes,
    serial: u32,
    write_every: Duration,
    members: Vec<Member>,
}

impl Herd {
    async fn run(mut self, b: Arc<Broadcast>, mut joins: mpsc::UnboundedReceiver<Member>) {
        let mut wakes = if self.key.1 {
            b.eager_watch()
        } else {
            b.watch()
        };
        let mut watching = true;
        // A pass over everyone is due at this time (a wake-up, held back to `write_every`
        // after the last pass), and when: µs of `since_epoch`, to say how late it ran.
        let mut full_at: Option<(Instant, u64)> = None;
        let mut last_full: Option<Instant> = None;
        // The earliest time a blocked listener is to be tried again.
        let mut retry_at: Option<Instant> = None;
        loop {
            let timer = match (full_at.map(|f| f.0), retry_at) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            };
            tokio::select! {
                biased;
                m = joins.recv() => {
                    let Some(m) = m else { return };
                    retry_at = earliest(retry_at, self.admit(m, Instant::now()));
                }
                changed = wakes.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                    }
                    if full_at.is_none() {
                        let now = Instant::now();
                        let at = last_full.map_or(now, |l| (l + self.write_every).max(now));
                        let due = if at > now { since_epoch(at) } else { b.last_wake().1 };
                        full_at = Some((at, due));
                    }
                }
                _ = sleep_until(timer), if timer.is_some() => {
                    let now = Instant::now();
                    let full = full_at.filter(|f| f.0 <= now);
                    if let Some((_, due)) = full {
                        full_at = None;
                        last_full = Some(now);
                        let late = since_epoch(now).saturating_sub(due);
                        self.node.stats.fanout_late_us.fetch_max(late, std::sync::atomic::Ordering::Relaxed);
                    }
                    retry_at = self.pass(full.is_some()).await;
                }
            }
            if self.members.is_empty() {
                // Gone from the node's herds before the last join is looked for: a listener
                // handed over meanwhile is either here or starts a new herd.
                let mut herds = self.herds.0.lock().unwrap_or_else(|p| p.into_inner());
                match joins.try_recv() {
                    Ok(m) => {
                        drop(herds);
                        retry_at = earliest(retry_at, self.admit(m, Instant::now()));
                    }
                    Err(_) => {
                        herds.remove(&self.key);
                        return;
                    }
                }
            }
        }
    }

    /// Serves every listener (`full`), or those whose socket is to be tried again. Returns
    /// when a blocked one is next to be tried.
    async fn pass(&mut self, full: bool) -> Option<Instant> {
        let mut retry_at = None;
        let mut k = 0;
        let mut served = 0;
        while k < self.members.len() {
            let now = Instant::now();
            let m = &mut self.members[k];
            let due = full || m.place.retry_at.is_some_and(|r| r <= now);
            if due && !self.serve_at(k, now) {
                let m = self.members.swap_remove(k);
                self.ended(m);
                continue;
            }
            retry_at = earliest(retry_at, self.members[k].place.retry_at);
            k += 1;
            if due {
                served += 1;
                if served % SLICE == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        let (mut frames, mut bytes) = (0, 0);
        for m in &mut self.members {
            let (f, b) = std::mem::take(&mut m.place.unsent);
            frames += f;
            bytes += b;
        }
        self.node.stats.sent(frames, bytes);
        retry_at
    }

    fn serve_at(&mut self, k: usize, now: Instant) -> bool {
        let Herd {
            node,
            heads,
            serial,
            members,
            ..
        } = self;
        let m = &mut members[k];
        let served = m
            .place
            .serve(&mut m.sub.cursor, &mut m.tcp, heads, *serial, node, now);
        if m.place.frames > 0 {
            if let Some(since) = m.place.joining.take() {
                node.stats.joined(since);
            }
        }
        match served {
            Served::Open => true,
            Served::Gone(why) => {
                m.place.pending.clear();
                m.place.ready.clear();
                log_end(m, &why);
                false
            }
        }
    }

    /// Takes a newcomer in and serves it its burst at once. Returns when its socket is to be
    /// tried again, if it did not take it all.
    fn admit(&mut self, m: Member, now: Instant) -> Option<Instant> {
        self.members.push(m);
        let k = self.members.len() - 1;
        if self.serve_at(k, now) {
            return self.members[k].place.retry_at;
        }
        if let Some(m) = self.members.pop() {
            self.ended(m);
        }
        None
    }

    fn ended(&self, m: Member) {
        let (f, b) = m.place.unsent;
        self.node.stats.sent(f, b);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One line per HTTP listener when it ends, with its totals.
fn log_end(m: &Member, why: &str) {
    info!(
        remote = %m.remote,
        duration_ms = m.started.elapsed().as_millis() as u64,
        bytes = m.place.bytes,
        frames = m.place.frames,
        skips = m.place.skips,
        why,
        "HTTP listener ended"
    );
}

/// An HTTP listener subscribed, not yet answered.
pub(crate) struct Listener {
    node: Arc<Node>,
    sub: Subscriber,
    eager: bool,
    write_every: Duration,
    /// The Ogg serial of an Opus stream (0 for MP3 and AAC, which have no headers).
    serial: u32,
    opus_head: Bytes,
    /// ICY metadata every this many bytes (the listener asked for it).
    icy: Option<usize>,
    /// The stream's content type.
    pub(crate) content_type: &'static str,
}

impl Listener {
    /// The listener takes ICY metadata blocks (`Icy-MetaData: 1`): one every `metaint`
    /// bytes of audio.
    pub(crate) fn with_icy(mut self, metaint: usize) -> Listener {
        self.icy = Some(metaint);
        self
    }
}

/// Subscribes an HTTP listener to `name` (waiting up to `http-wait-secs` for it to start):
/// once answered, `Herds::join` serves it its headers, a burst, and the live edge.
/// `low_latency`: every frame at once, while the node has headroom.
/// `codec`: the one the listener asked for (by the URL's extension), if any.
pub(crate) async fn listen(
    node: Arc<Node>,
    name: String,
    peer: &Peer,
    low_latency: bool,
    codec: Option<u64>,
) -> Result<Listener> {
    let peer = &peer.served_as(Egress::HttpOgg);
    let mut sub = node
        .subscribe(&name, Start::Live, node.cfg.http_wait_secs.get(), peer)
        .await?;
    let b = sub.cursor.broadcast().clone();
    if codec.is_some_and(|c| c != b.codec.kind) {
        let ext = match b.codec.kind {
            crate::proto::CODEC_MP3 => "mp3",
            crate::proto::CODEC_AAC => "aac",
            _ => "ogg",
        };
        return Err(Error::unsupported(format!(
            "stream {name} is {}: GET /{name}.{ext} (or /{name})",
            b.codec.name()
        )));
    }
    // Players buffer before they start, and a browser plays from the first page it gets:
    // begin `http-burst-ms` of whole segments further back than the live edge (one, for a
    // low-latency listener), so they start at once with audio in hand.
    let segment = node.cfg.segment_ms.get().as_millis().max(1);
    let burst = node.cfg.http_burst_ms.get().as_millis();
    sub.cursor.back(if low_latency {
        1
    } else {
        burst.div_ceil(segment).max(1) as u64
    });
    sub.cursor.set_form(crate::model::Form::Http);
    if low_latency {
        sub.cursor.eager();
    }
    let write_every = if low_latency {
        Duration::ZERO
    } else {
        node.cfg.http_write_ms.get()
    };
    Ok(Listener {
        eager: low_latency,
        write_every,
        serial: b.ogg.as_ref().map_or(0, |o| o.serial),
        opus_head: b.codec.header.clone(),
        icy: None,
        content_type: crate::media::content_type(&b.codec),
        node,
        sub,
    })
}

/// Whether `name` is live here (for HEAD, as GET would answer): a relay that does not
/// hold the stream yet asks its parent, briefly, so a player probing with HEAD is not
/// turned away.
/// Refused (`Err`) as GET would be: the stream's rule is the listener's too.
pub(crate) async fn is_live(node: &Arc<Node>, name: &str, peer: &Peer) -> Result<bool> {
    match node.registry.get(name).and_then(|s| s.broadcast()) {
        Some(b) => node.may_have(peer, name, &b).map(|_| true),
        None if node.is_relay() => {
            let wait = node.cfg.http_wait_secs.get().min(Duration::from_secs(5));
            let peer = &peer.served_as(Egress::HttpOgg);
            match node.subscribe(name, Start::Live, wait, peer).await {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        crate::error::Kind::Unauthorized
                            | crate::error::Kind::NotAllowed
                            | crate::error::Kind::Local
                    ) =>
                {
                    Err(e)
                }
                Err(_) => Ok(false),
            }
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OggEvent, OggOpusDemuxer, OpusHead};
    use crate::model::{Form, PaceMode, Pacing, SegmentCache, StoreConfig, WireFrame};
    use crate::node::NodeConfig;
    use crate::proto::Frame;

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
