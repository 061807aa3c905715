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

mod place;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, info_span, Instrument};

use crate::error::{Error, Result};
use crate::media::ogg_page;
use crate::model::{since_epoch, Broadcast, Egress};
use crate::node::{HttpAdmission, Node, Peer, Subscriber};
use crate::proto::Start;

use place::{Place, Served};

/// Listeners served between two turns given back to the runtime (a herd of tens of
/// thousands must not hold the thread that accepts newcomers for a whole pass).
const SLICE: usize = 512;

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
