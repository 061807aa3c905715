//! `quicast publish`: read Ogg Opus (a file, stdin, or bytes in memory), send the OpusHead and
//! every packet with its timestamp, to one origin or several at once. A file is paced in real
//! time by its timestamps; stdin is sent as packets arrive.

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
use crate::media::{OggEvent, OggOpusDemuxer, OpusHead, Timeline, OPUS_RATE};
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
}

#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    pub frames: u64,
    pub duration_samples: u64,
}

/// Reads Ogg Opus packets from any byte source.
pub struct OggReader {
    src: Box<dyn AsyncRead + Unpin + Send>,
    demux: OggOpusDemuxer,
    buf: Vec<u8>,
    eof: bool,
}

impl OggReader {
    pub async fn open(input: &Input) -> Result<OggReader> {
        let src: Box<dyn AsyncRead + Unpin + Send> = match input {
            Input::File(p) => Box::new(
                tokio::fs::File::open(p)
                    .await
                    .map_err(|e| Error::local(format!("cannot open {}: {e}", p.display())))?,
            ),
            Input::Stdin => Box::new(tokio::io::stdin()),
            Input::Memory(b) => Box::new(std::io::Cursor::new(b.clone())),
        };
        Ok(OggReader {
            src,
            demux: OggOpusDemuxer::new(),
            buf: vec![0; 16 * 1024],
            eof: false,
        })
    }

    /// The next event; None at the end of the input.
    pub async fn next(&mut self) -> Result<Option<OggEvent>> {
        loop {
            if let Some(ev) = self.demux.next_event()? {
                return Ok(Some(ev));
            }
            if self.eof {
                if self.demux.buffered() > 0 {
                    return Err(Error::media("input ends in the middle of an Ogg page"));
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

    /// Reads up to the OpusHead.
    pub async fn head(&mut self) -> Result<OpusHead> {
        match self.next().await? {
            Some(OggEvent::Head(h)) => Ok(h),
            Some(_) => Err(Error::media("Ogg Opus stream does not begin with OpusHead")),
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
    let mut reader = OggReader::open(&opts.input).await?;
    let head = reader.head().await?;
    info!(
        channels = head.channels,
        pre_skip = head.pre_skip,
        input_rate = head.input_rate,
        "input is Ogg Opus"
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
                head.codec(),
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
    let outcome: Result<()> = async {
        loop {
            if senders.iter().all(|s| s.is_finished()) {
                // Every origin refused it for good: their reasons say why, below.
                return Ok(());
            }
            match reader.next().await? {
                Some(OggEvent::Packet(payload, duration, granule)) => {
                    let pts = timeline.pts(duration, granule);
                    if opts.realtime {
                        let due = start + Duration::from_micros(pts * 1_000_000 / OPUS_RATE as u64);
                        tokio::time::sleep_until(due).await;
                    }
                    let frame = Frame {
                        pts,
                        duration,
                        wall_us: 0,
                        payload,
                    };
                    {
                        let mut r = replay.lock().unwrap_or_else(|e| e.into_inner());
                        let n = r.next;
                        r.frames.push_back((n, frame));
                        r.next += 1;
                        let keep = REPLAY.as_micros() as u64 * OPUS_RATE as u64 / 1_000_000;
                        while r.frames.front().is_some_and(|(_, f)| f.pts + keep < pts) {
                            r.frames.pop_front();
                        }
                    }
                    more.send_modify(|v| *v += 1);
                    report.frames += 1;
                }
                Some(OggEvent::Head(_)) => {
                    return Err(Error::media("a second OpusHead in one logical stream"))
                }
                // A chain comes only after an End, which ends (or loops) the input first.
                Some(OggEvent::Chain(_)) => {
                    return Err(Error::media(
                        "the input chains a second Ogg stream after the end of the first",
                    ))
                }
                Some(OggEvent::End) | None => {
                    if !looping {
                        return Ok(());
                    }
                    if report.frames == 0 {
                        return Err(Error::media("input has no audio packets to loop"));
                    }
                    debug!(pts = timeline.next, "looping input");
                    timeline.restart();
                    reader = OggReader::open(&opts.input).await?;
                    let again = reader.head().await?;
                    if again.raw != head.raw {
                        return Err(Error::media("input changed its OpusHead between loops"));
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
        seconds = timeline.next as f64 / OPUS_RATE as f64,
        "input finished: broadcast ended"
    );
    Ok(report)
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
                    r.done
                };
                if !batch.is_empty() {
                    publication.send(&batch).await?;
                    next += batch.len() as u64;
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
