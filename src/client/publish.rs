//! `quicast publish`: read Ogg Opus, MP3 or AAC in ADTS (a file, stdin, or bytes in memory),
//! send the codec and every frame with its timestamp, to one origin or several at once. A
//! file is paced in real time by its timestamps; stdin is sent as frames arrive.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use super::Client;
use crate::error::{Error, Kind, Result};
use crate::media::{SourceDemuxer, SourceEvent, Timeline};
use crate::proto::{Codec, Frame, QuicUrl, Role};

#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Stdin,
    Memory(Bytes),
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub path: String,
    pub input: Input,
    /// Repeat the input forever with continuous timestamps (files and memory only).
    pub looping: bool,
    /// Pace by timestamps. Default: yes for files and memory, no for stdin.
    pub realtime: bool,
    /// The now-playing title to give the stream from its start (origins that speak
    /// protocol version 3 carry it down the tree).
    pub title: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    pub frames: u64,
    pub duration_samples: u64,
}

/// Reads frames (Ogg Opus, MP3 or AAC in ADTS, as its first bytes show) from any byte source.
pub struct SourceReader {
    src: Box<dyn AsyncRead + Unpin + Send>,
    demux: SourceDemuxer,
    buf: Vec<u8>,
    eof: bool,
}

impl SourceReader {
    pub async fn open(input: &Input) -> Result<SourceReader> {
        let src: Box<dyn AsyncRead + Unpin + Send> = match input {
            Input::File(p) => Box::new(
                tokio::fs::File::open(p)
                    .await
                    .map_err(|e| Error::local(format!("cannot open {}: {e}", p.display())))?,
            ),
            Input::Stdin => Box::new(tokio::io::stdin()),
            Input::Memory(b) => Box::new(std::io::Cursor::new(b.clone())),
        };
        Ok(SourceReader {
            src,
            demux: SourceDemuxer::new(None),
            buf: vec![0; 16 * 1024],
            eof: false,
        })
    }

    /// The next event; None at the end of the input.
    pub async fn next(&mut self) -> Result<Option<SourceEvent>> {
        loop {
            if let Some(ev) = self.demux.next_event()? {
                return Ok(Some(ev));
            }
            if self.eof {
                if self.demux.buffered() > 0 {
                    return Err(Error::media("input ends in the middle of a page or frame"));
                }
                return Ok(None);
            }
            let n = self.src.read(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
            } else {
                self.demux.push(&self.buf[..n]);
            }
        }
    }

    /// Reads up to the codec header.
    pub async fn head(&mut self) -> Result<Codec> {
        match self.next().await? {
            Some(SourceEvent::Head(h)) => Ok(h),
            Some(_) => Err(Error::media(
                "the input does not begin with its codec header",
            )),
            None => Err(Error::media("input is empty")),
        }
    }
}

/// An origin to publish to: where, through which client, with which token.
#[derive(Clone)]
pub struct Origin {
    pub client: Client,
    pub url: QuicUrl,
    pub token: String,
}

/// How much of the broadcast a sender keeps to send again to an origin it reconnects to
/// (the origin skips what it has): the longest outage that costs that origin nothing.
const REPLAY: Duration = Duration::from_secs(10);

/// What every sender reads: the broadcast's frames, the last `REPLAY` of them, by number.
#[derive(Default)]
struct Replay {
    frames: VecDeque<(u64, Frame)>,
    /// The last title record: sent first on every connection (an origin that restarted,
    /// or one joining late, gets the title the broadcast has, however long ago it came).
    title: Option<Frame>,
    next: u64,
    done: bool,
}

/// Publishes the input to every origin at once, as one broadcast (one id, one timeline):
/// redundant origins hold the same segments. A sender that loses its origin reconnects (with
/// backoff) and sends again what the origin may have missed; the broadcast goes on while at
/// least one origin takes it. An origin that refuses it for good (a wrong token, a conflict,
/// bad media) is given up; when every one has, publishing fails.
pub async fn publish(origins: Vec<Origin>, opts: &PublishOptions) -> Result<PublishReport> {
    if origins.is_empty() {
        return Err(Error::local("no origin to publish to"));
    }
    let mut reader = SourceReader::open(&opts.input).await?;
    let head = reader.head().await?;
    let rate = u64::from(head.sample_rate.max(1));
    info!(
        codec = head.name(),
        channels = head.channels,
        rate,
        "input read"
    );
    let broadcast = rand::random::<u64>() & crate::proto::varint::MAX;
    let replay = Arc::new(Mutex::new(Replay::default()));
    let (more, _) = watch::channel(0u64);
    let more = Arc::new(more);
    let mut senders = Vec::new();
    for o in origins {
        let span = info_span!("origin", origin = %o.url.authority());
        senders.push(tokio::spawn(
            send_to(
                o,
                opts.path.clone(),
                head.clone(),
                broadcast,
                replay.clone(),
                more.subscribe(),
            )
            .instrument(span),
        ));
    }
    let looping = opts.looping && !matches!(opts.input, Input::Stdin);
    let mut report = PublishReport::default();
    let mut timeline = Timeline::default();
    let start = Instant::now();
    let remember = |frame: Frame| {
        let mut r = replay.lock().unwrap_or_else(|e| e.into_inner());
        if frame.duration == 0 {
            r.title = Some(frame.clone());
        }
        let n = r.next;
        let pts = frame.pts;
        r.frames.push_back((n, frame));
        r.next += 1;
        let keep = REPLAY.as_micros() as u64 * rate / 1_000_000;
        while r.frames.front().is_some_and(|(_, f)| f.pts + keep < pts) {
            r.frames.pop_front();
        }
    };
    if let Some(t) = &opts.title {
        // Kept as the last title, which every connection sends first; not among the frames
        // too, or the first connection would send it twice.
        replay.lock().unwrap_or_else(|e| e.into_inner()).title = Some(title_record(0, t));
    }
    let outcome: Result<()> = async {
        loop {
            if senders.iter().all(|s| s.is_finished()) {
                // Every origin refused it for good: their reasons say why, below.
                return Ok(());
            }
            let ev = reader.next().await?;
            if let Some(t) = reader.demux.take_title() {
                // The input's own comments name what plays, unless told a title.
                if opts.title.is_none() {
                    remember(title_record(timeline.next, t.as_deref().unwrap_or("")));
                }
            }
            match ev {
                Some(SourceEvent::Packet {
                    payload,
                    duration,
                    granule,
                }) => {
                    let pts = timeline.pts(duration, granule);
                    if opts.realtime {
                        let due = start + Duration::from_micros(pts * 1_000_000 / rate);
                        tokio::time::sleep_until(due).await;
                    }
                    remember(Frame {
                        pts,
                        duration,
                        wall_us: 0,
                        payload,
                    });
                    more.send_modify(|v| *v += 1);
                    report.frames += 1;
                }
                Some(SourceEvent::Head(_)) => {
                    return Err(Error::media("a second codec header in one stream"))
                }
                // An Ogg chain comes only after an End, which ends (or loops) the input
                // first; raw frames that change their rate or channels come here.
                Some(SourceEvent::Chain(_)) => {
                    return Err(Error::media(
                        "the input changes its codec (a chained Ogg stream, or frames of \
                         another rate or channel count): publish each part on its own",
                    ))
                }
                Some(SourceEvent::End) | None => {
                    if !looping {
                        return Ok(());
                    }
                    if report.frames == 0 {
                        return Err(Error::media("input has no audio packets to loop"));
                    }
                    debug!(pts = timeline.next, "looping input");
                    timeline.restart();
                    reader = SourceReader::open(&opts.input).await?;
                    let again = reader.head().await?;
                    if again != head {
                        return Err(Error::media("input changed its codec between loops"));
                    }
                }
            }
        }
    }
    .await;
    replay.lock().unwrap_or_else(|e| e.into_inner()).done = true;
    more.send_modify(|v| *v += 1);
    let mut refusals = Vec::new();
    let mut finished = 0;
    for s in senders {
        match s.await {
            Ok(Ok(())) => finished += 1,
            Ok(Err(e)) => refusals.push(e),
            Err(_) => {}
        }
    }
    if finished == 0 {
        return Err(refusals
            .into_iter()
            .next()
            .unwrap_or_else(|| Error::local("no origin took the broadcast")));
    }
    outcome?;
    report.duration_samples = timeline.next;
    info!(
        frames = report.frames,
        seconds = timeline.next as f64 / rate as f64,
        "input finished: broadcast ended"
    );
    Ok(report)
}

/// A title record (protocol version 3): a frame of duration 0 whose payload is kind 1 (the
/// now-playing title) and its UTF-8, at `pts` (it holds from the audio after it).
pub fn title_record(pts: u64, title: &str) -> Frame {
    let t = crate::media::metadata::clean_title(title).unwrap_or_default();
    let mut p = Vec::with_capacity(1 + t.len());
    p.push(1);
    p.extend_from_slice(t.as_bytes());
    Frame {
        pts,
        duration: 0,
        wall_us: 0,
        payload: Bytes::from(p),
    }
}

/// Whether an origin's refusal stands (trying again would get the same answer).
fn refusal_stands(e: &Error) -> bool {
    e.remote_code().is_some()
        && matches!(
            e.kind(),
            Kind::Unauthorized | Kind::Conflict | Kind::BadMedia | Kind::NotAllowed | Kind::Version
        )
        // A certificate that is not trusted, a peer that breaks the protocol: the same again.
        || matches!(e.kind(), Kind::Protocol | Kind::Local | Kind::Version)
}

/// Sends the broadcast to one origin, reconnecting when it is lost, until the input ends.
async fn send_to(
    o: Origin,
    path: String,
    codec: Codec,
    broadcast: u64,
    replay: Arc<Mutex<Replay>>,
    mut more: watch::Receiver<u64>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    let mut pos: Option<u64> = None;
    loop {
        let attempt = async {
            let session = o.client.connect(&o.url, Role::Publisher, &o.token).await?;
            let mut publication = session
                .publish(&path, codec.clone(), Some(broadcast))
                .await?;
            info!(instance = publication.instance, %path, "publishing");
            let title = replay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .title
                .clone();
            if let (Some(t), true) = (title, session.version >= 3) {
                publication.send(&[t]).await?;
            }
            // From where the origin may have stopped taking: all that is kept (it skips
            // what it has), or the start.
            let mut next = match pos {
                None => 0,
                Some(_) => replay
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .frames
                    .front()
                    .map_or(0, |(n, _)| *n),
            };
            let mut batch = Vec::new();
            let mut skipped;
            loop {
                let done = {
                    let r = replay.lock().unwrap_or_else(|e| e.into_inner());
                    batch.clear();
                    let oldest = r.frames.front().map_or(r.next, |(n, _)| *n);
                    if next < oldest {
                        warn!(
                            lost = oldest - next,
                            "origin fell behind what is kept: frames skipped"
                        );
                        next = oldest;
                    }
                    batch.extend(
                        r.frames
                            .iter()
                            .skip((next - oldest) as usize)
                            .map(|(_, f)| f.clone()),
                    );
                    skipped = batch.len();
                    // Title records are version 3's: an older origin is not sent them.
                    if session.version < 3 {
                        batch.retain(|f| f.duration > 0);
                    }
                    skipped -= batch.len();
                    r.done
                };
                if !batch.is_empty() || skipped > 0 {
                    publication.send(&batch).await?;
                    next += (batch.len() + skipped) as u64;
                    pos = Some(next);
                    backoff = Duration::from_millis(100);
                } else if done {
                    publication.finish().await?;
                    return Ok(());
                } else if more.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if refusal_stands(&e) => {
                warn!("origin refused the broadcast: {e}");
                return Err(e);
            }
            Err(e) => {
                if replay.lock().unwrap_or_else(|e| e.into_inner()).done && pos.is_none() {
                    return Err(e);
                }
                warn!("origin lost: {e}; reconnecting in {backoff:?}");
                pos = Some(pos.unwrap_or(0));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
