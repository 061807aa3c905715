//! The load generator's listeners on the engine: one thread drives thousands of QUIC
//! connections, each saying hello, subscribing to the live edge and reading its segments,
//! with no task, waker or lock per listener. With `--webtransport` each speaks the same
//! inside a WebTransport session, as a browser does (the envelope: `loadgen_wt`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{Connection, Dir, Event, StreamEvent, StreamId};

use quicast::engine::{read_stream, App, Engine, Read};
use quicast::proto::{Frame, Message, Role, Start, UniHeader};
use quicast::Result;

use super::loadgen::{Ear, Stats};
use super::loadgen_wt::{self, Uni, WtClient};

/// One thread's share of a run.
pub(crate) struct Plan {
    pub remote: SocketAddr,
    pub server_name: String,
    pub path: String,
    pub cfg: quinn::ClientConfig,
    /// When each of its listeners joins, from the run's start (in order).
    pub starts: Vec<Duration>,
    /// How long the run lasts, from its start.
    pub duration: Duration,
    /// Listeners speak WebTransport, asking for a session at this URL (`cfg` offers `h3`).
    pub webtransport: Option<url::Url>,
}

/// A listener: its account, its control stream, its segments in flight.
struct Listener<'a> {
    ear: Option<Ear<'a>>,
    ctl: Option<StreamId>,
    ctl_buf: BytesMut,
    /// Segment streams being read: what has come of each, and whether its header has.
    segs: BTreeMap<u64, Seg>,
    last_seq: Option<u64>,
    frames: Vec<Frame>,
    failed: Option<String>,
    /// The node ended the broadcast, or we closed at the end of the run.
    done: bool,
    /// The handshake completed.
    connected: bool,
    /// Why the connection was lost, as QUIC said.
    lost: Option<quinn_proto::ConnectionError>,
    /// Its WebTransport session, once the handshake is done (with `--webtransport`).
    wt: Option<WtClient>,
}

impl<'a> Listener<'a> {
    fn new(ear: Ear<'a>) -> Listener<'a> {
        Listener {
            ear: Some(ear),
            ctl: None,
            ctl_buf: BytesMut::new(),
            segs: BTreeMap::new(),
            last_seq: None,
            frames: Vec::new(),
            failed: None,
            done: false,
            connected: false,
            lost: None,
            wt: None,
        }
    }
}

struct Listeners<'a> {
    stats: &'a Stats,
    path: String,
    /// The WebTransport session's URL, when listeners speak it.
    webtransport: Option<url::Url>,
    /// Listeners refused or unanswered before their handshake, to try again when due
    /// (jittered: a refused crowd does not come back in one instant).
    again: Vec<(Instant, Ear<'a>)>,
}

/// A join that failed before its handshake completed: to be tried again, after how long.
fn try_again(lost: &quinn_proto::ConnectionError, stats: &Stats) -> Option<Duration> {
    use quinn_proto::ConnectionError as C;
    match lost {
        C::ConnectionClosed(c)
            if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
        {
            stats.totals.refused.fetch_add(1, Ordering::Relaxed);
            let r = quicast::proto::Refusal::parse(&c.reason);
            Some(r.retry_after.unwrap_or(Duration::from_secs(1)))
        }
        C::TimedOut => {
            stats.totals.timed_out.fetch_add(1, Ordering::Relaxed);
            Some(Duration::from_secs(1))
        }
        _ => None,
    }
}

impl<'a> App for Listeners<'a> {
    type Conn = Listener<'a>;

    fn event(
        &mut self,
        _: usize,
        conn: &mut Connection,
        l: &mut Listener<'a>,
        ev: Event,
        _now: Instant,
    ) {
        match ev {
            Event::Connected => {
                l.connected = true;
                self.stats.totals.connected.fetch_add(1, Ordering::Relaxed);
                match &self.webtransport {
                    // The control stream once the session is up.
                    Some(url) => match WtClient::start(conn, url) {
                        Ok(wt) => l.wt = Some(wt),
                        Err(e) => fail(conn, l, e.to_string()),
                    },
                    None => self.open_control(conn, l, &[]),
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = conn.streams().accept(Dir::Uni) {
                    // Over WebTransport its preamble says first whether it is a segment's.
                    let seg = Seg {
                        enveloped: l.wt.is_none(),
                        ..Seg::default()
                    };
                    l.segs.insert(id.index(), seg);
                    read_segment(conn, l, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if Some(id) == l.ctl {
                    read_control(conn, l);
                } else if let Some(wt) = l.wt.as_mut().filter(|wt| wt.reads(id)) {
                    match wt.readable(conn, id).and_then(|up| match up {
                        true => wt.control_preamble().map(Some),
                        false => Ok(None),
                    }) {
                        Ok(Some(preamble)) => self.open_control(conn, l, &preamble),
                        Ok(None) => {}
                        Err(_) if l.done => {}
                        Err(e) => fail(conn, l, e.to_string()),
                    }
                } else if id.dir() == Dir::Uni && l.segs.contains_key(&id.index()) {
                    read_segment(conn, l, id);
                }
            }
            Event::ConnectionLost { reason } if !l.done && l.failed.is_none() => {
                l.failed = Some(reason.to_string());
                l.lost = Some(reason);
            }
            _ => {}
        }
    }

    fn gone(&mut self, _: &Connection, l: Listener<'a>) {
        if !l.connected && !l.done {
            if let Some(wait) = l.lost.as_ref().and_then(|lost| try_again(lost, self.stats)) {
                if let Some(ear) = l.ear {
                    let at = Instant::now() + quicast::client::jittered(wait);
                    self.again.push((at, ear));
                }
                return;
            }
        }
        if let Some(ear) = l.ear {
            ear.end(match (l.done, l.failed) {
                (true, _) => None,
                (false, Some(why)) => Some(why),
                (false, None) => Some("the connection ended".into()),
            });
        }
    }
}

impl Listeners<'_> {
    /// Opens the listener's control stream, says hello and subscribes to the live edge;
    /// `preamble` first (WebTransport's, saying the session).
    fn open_control(&self, conn: &mut Connection, l: &mut Listener<'_>, preamble: &[u8]) {
        let Some(id) = conn.streams().open(Dir::Bi) else {
            return fail(conn, l, "no control stream credit".into());
        };
        l.ctl = Some(id);
        let mut hello = preamble.to_vec();
        hello.extend_from_slice(
            &Message::Hello {
                version: quicast::proto::VERSION,
                role: Role::Listener,
                token: Default::default(),
            }
            .to_bytes(),
        );
        hello.extend_from_slice(
            &Message::Subscribe {
                id: 0,
                path: self.path.clone(),
                start: Start::Live,
                flags: 0,
            }
            .to_bytes(),
        );
        // A fresh stream takes a few dozen bytes: written whole, or the node is odd.
        if conn.send_stream(id).write(&hello).ok() != Some(hello.len()) {
            fail(conn, l, "could not write hello".into());
        }
    }
}

fn fail(conn: &mut Connection, l: &mut Listener<'_>, why: String) {
    if l.failed.is_none() {
        l.failed = Some(why);
    }
    conn.close(
        Instant::now(),
        0u32.into(),
        bytes::Bytes::from_static(b"load generator gave up"),
    );
}

fn read_control(conn: &mut Connection, l: &mut Listener<'_>) {
    let Some(id) = l.ctl else { return };
    let fin = read_stream(conn, id, &mut l.ctl_buf);
    loop {
        match Message::decode(&mut l.ctl_buf) {
            Ok(Some(Message::StreamEnd { .. })) => {
                l.done = true;
                conn.close(
                    Instant::now(),
                    0u32.into(),
                    bytes::Bytes::from_static(b"bye"),
                );
            }
            Ok(Some(Message::SubscribeError { reason, .. }))
            | Ok(Some(Message::Error { reason, .. })) => {
                return fail(conn, l, reason);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return fail(conn, l, e.to_string()),
        }
    }
    if fin != Read::More && !l.done {
        fail(conn, l, "the node ended the control stream".into());
    }
}

/// A segment stream being read.
#[derive(Default)]
struct Seg {
    buf: BytesMut,
    /// What comes before the segment stream is gone: WebTransport's preamble (none in the
    /// native protocol).
    enveloped: bool,
    headed: bool,
    /// Finished (`Ok`) or reset (`Err`: the node skipped us past the rest).
    end: Option<std::result::Result<(), ()>>,
}

/// Takes what stream `id` has, then hears segments in order: the oldest open one's frames,
/// and the next one's only once it is over (a packet may carry a segment's last frames and
/// the next one's first, their streams' events in either order).
fn read_segment(conn: &mut Connection, l: &mut Listener<'_>, id: StreamId) {
    let Some(seg) = l.segs.get_mut(&id.index()) else {
        return;
    };
    match read_stream(conn, id, &mut seg.buf) {
        Read::More => {}
        Read::Finished => seg.end = Some(Ok(())),
        Read::Reset(_) => seg.end = Some(Err(())),
    }
    if !seg.enveloped {
        if let Some(wt) = l.wt.as_mut() {
            match wt.uni_preamble(conn, id, &mut seg.buf) {
                Ok(Uni::Segment) => seg.enveloped = true,
                Ok(Uni::Pending) => {}
                Ok(Uni::Other) => {
                    l.segs.remove(&id.index());
                }
                Err(e) => return fail(conn, l, e.to_string()),
            }
        }
    }
    while let Some(mut first) = l.segs.first_entry() {
        let seg = first.get_mut();
        if !seg.enveloped {
            // Its WebTransport preamble has not come: what it is, and the streams after
            // it, wait (one that ended without saying is let go, as one without a header).
            if seg.end.is_none() {
                return;
            }
            first.remove();
            continue;
        }
        if !seg.headed {
            match UniHeader::decode(&mut seg.buf) {
                Ok(Some(UniHeader::Segment(h))) => {
                    seg.headed = true;
                    if let (Some(last), Some(ear)) = (l.last_seq, l.ear.as_mut()) {
                        // Whole segments never begun: the node skipped us past them.
                        if h.seq > last + 1 {
                            ear.skipped(h.seq - last - 1);
                        }
                    }
                    l.last_seq = Some(l.last_seq.map_or(h.seq, |s| s.max(h.seq)));
                }
                Ok(Some(other)) => {
                    return fail(conn, l, format!("{other:?} where a segment was due"))
                }
                Ok(None) if seg.end.is_none() => return,
                Ok(None) => {
                    first.remove();
                    continue;
                }
                Err(e) => return fail(conn, l, e.to_string()),
            }
        }
        l.frames.clear();
        loop {
            match Frame::decode(&mut seg.buf) {
                Ok(Some((f, _))) => l.frames.push(f),
                Ok(None) => break,
                Err(e) => return fail(conn, l, e.to_string()),
            }
        }
        if let Some(ear) = l.ear.as_mut() {
            if !l.frames.is_empty() {
                ear.frames(&l.frames);
            }
            if seg.end == Some(Err(())) {
                ear.skipped(1);
            }
        }
        if seg.end.is_none() {
            return;
        }
        first.remove();
    }
}

/// Runs one thread's listeners until the run's end, then closes them.
pub(crate) fn run(plan: Plan, stats: &Stats) -> Result<()> {
    let socket = quicast::client::udp_socket_for(&plan.remote)?;
    let mut engine = Engine::client(
        socket,
        Listeners {
            stats,
            path: plan.path.clone(),
            webtransport: plan.webtransport.clone(),
            again: Vec::new(),
        },
    )?;
    let start = Instant::now();
    let end = start + plan.duration;
    let mut next = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut joining = Vec::new();
        while next < plan.starts.len() && start + plan.starts[next] <= now {
            joining.push(Ear::new(stats));
            next += 1;
        }
        // Those refused or unanswered before, when due: the same listener (its join time
        // counts from its first try).
        let again = &mut engine.app().again;
        let mut k = 0;
        while k < again.len() {
            if again[k].0 <= now {
                joining.push(again.swap_remove(k).1);
                stats.totals.retried.fetch_add(1, Ordering::Relaxed);
            } else {
                k += 1;
            }
        }
        for ear in joining {
            let l = Listener::new(ear);
            if let Err(e) = engine.connect(now, plan.cfg.clone(), plan.remote, &plan.server_name, l)
            {
                Ear::new(stats).end(Some(format!("cannot connect: {e}")));
            }
        }
        let retry_at = engine.app().again.iter().map(|(at, _)| *at).min();
        let until = plan
            .starts
            .get(next)
            .map_or(end, |s| start + *s)
            .min(end)
            .min(retry_at.unwrap_or(end));
        engine.turn(
            until
                .saturating_duration_since(now)
                .max(Duration::from_micros(100)),
        )?;
    }
    // The run is over: everyone leaves (not a failure), and the closes go out.
    // A listener still without its connection at the end failed to join.
    engine.for_each(|_, l| {
        if l.failed.is_some() {
            // Failed already, and still closing: it stays failed.
        } else if l.ctl.is_some() {
            l.done = true;
        } else {
            l.failed = Some("did not connect before the run ended".into());
        }
    });
    // Still waiting to try again at the end: they never got in.
    for (_, ear) in std::mem::take(&mut engine.app().again) {
        ear.end(Some("refused or unanswered until the run ended".into()));
    }
    // A WebTransport connection closes as HTTP/3 says "no error".
    let code = match plan.webtransport {
        Some(_) => loadgen_wt::H3_NO_ERROR,
        None => 0,
    };
    engine.close_all(Instant::now(), code, b"bye");
    let drain = Instant::now() + Duration::from_secs(2);
    while engine.connections() > 0 && Instant::now() < drain {
        engine.turn(Duration::from_millis(10))?;
    }
    engine.abandon();
    Ok(())
}
