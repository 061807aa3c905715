//! Icecast sources (`PUT /STREAM` as ffmpeg's `icecast://` sends it, and the legacy
//! `SOURCE`): who may send, and their body (Ogg Opus, MP3, or AAC in ADTS, as its
//! `Content-Type` or first bytes say) cut into frames for the node's ingest, with the same
//! timestamp rule as every source (`media::Timeline`). The HTTP framing around them is the
//! server's (`server::http`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Kind, Result};
use crate::media::{at_48k, SourceDemuxer, SourceEvent, SourceKind, Timeline, OPUS_RATE};
use crate::node::{credential, secret_eq, Node, Pace, Publishing};
use crate::proto::{self, Codec, Frame};

/// `Authorization: Basic base64(source:PASSWORD)` against the configured password.
pub(crate) fn authorize(node: &Node, auth: Option<&[u8]>) -> Result<()> {
    let Some(expected) = &node.cfg.source_password else {
        return Err(Error::new(
            Kind::NotAllowed,
            "HTTP source ingest is disabled on this node (no source password set)",
        ));
    };
    let creds = auth
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    let Some(creds) = creds else {
        return Err(Error::new(
            Kind::Unauthorized,
            "source password required (basic auth)",
        ));
    };
    let (user, pass) = match creds.iter().position(|c| *c == b':') {
        Some(i) => (&creds[..i], &creds[i + 1..]),
        None => return Err(Error::new(Kind::Unauthorized, "wrong source credentials")),
    };
    if user == b"source" && secret_eq(pass, expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Error::new(Kind::Unauthorized, "wrong source credentials"))
    }
}

/// What must hold before a source may send its body: its credentials, a valid stream
/// name, and a stream it may take.
pub(crate) fn precheck(node: &Node, name: &str, auth: Option<&[u8]>) -> Result<()> {
    authorize(node, auth)?;
    proto::check_path(name)
        .map_err(|e| Error::new(Kind::Protocol, format!("bad stream name: {e}")))?;
    if node
        .registry
        .get(name)
        .is_some_and(|s| !s.may_claim(source_credential(node)))
    {
        return Err(Error::new(
            Kind::Conflict,
            format!("stream {name} already has a source"),
        ));
    }
    Ok(())
}

/// What an authorized source proved: the source password (see `PublisherClaim`).
pub(crate) fn source_credential(node: &Node) -> Option<[u8; 32]> {
    node.cfg
        .source_password
        .as_ref()
        .map(|p| credential(p.expose().as_bytes()))
}

/// The broadcast an Icecast source carries, named by what every origin it is sent to sees
/// alike (an encoder pushing to two origins, ffmpeg's tee muxer, sends the same stream to
/// both): the stream's path, its codec, its first audio frame and that frame's granule.
fn broadcast_id(path: &str, codec: &Codec, first: &[u8], granule: Option<u64>) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Opus streams hash as they did before other codecs came (the OpusHead alone).
    if codec.kind != proto::CODEC_OPUS {
        ctx.update(&codec.kind.to_le_bytes());
        ctx.update(&codec.sample_rate.to_le_bytes());
        ctx.update(&[codec.channels]);
    }
    for part in [path.as_bytes(), &codec.header[..], first] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.update(&granule.unwrap_or(u64::MAX).to_le_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

/// Where a source's body comes from, chunk by chunk (None at its end).
pub(crate) trait ChunkSource {
    async fn chunk(&mut self) -> Result<Option<Bytes>>;
}

/// What a chained Ogg stream costs a source's pace, as if it were this much audio, paid
/// before the chain's first audio goes in. A chain brings headers to parse (OpusTags up to
/// 256 KiB) and, with another OpusHead, a new broadcast: paid for in time, so that chains
/// cost no more than audio does. Real sources chain at track changes, minutes apart.
/// (Chains without audio pay nothing and are not paced: like any bytes without audio, they
/// end at `source-timeout`.)
const CHAIN_COST: Duration = Duration::from_secs(1);

/// Demuxes a source's Ogg Opus body into the ingest. A source that sends no audio for
/// `source-timeout` is lost (bytes that carry no audio do not count), as is one whose body
/// stops without the Ogg end-of-stream page (its encoder crashed: it may come back within
/// the grace period and continue). One that ends its Ogg stream ends the broadcast.
///
/// Its audio is taken no faster than real time plus `source-burst-ms` (`Pace`): ahead of
/// that, the body is not read until due. A chained Ogg stream (a new logical stream after
/// the end of one) with the same OpusHead continues the broadcast; with another OpusHead it
/// ends it, and starts a new one on the same stream.
pub(crate) async fn ingest(
    node: &Arc<Node>,
    name: &str,
    kind: Option<SourceKind>,
    body: &mut impl ChunkSource,
) -> Result<()> {
    let mut src = Source::new(node, name, kind);
    let outcome = src.run(body).await;
    match (outcome, src.publishing) {
        (Ok(()), Some(p)) => {
            p.finish();
            Ok(())
        }
        (Ok(()), None) if src.published => Ok(()),
        (Ok(()), None) => Err(Error::media("source ended before any audio")),
        (Err(e), None) if e.kind() == Kind::Closed && !src.published => {
            Err(Error::media("source ended before any audio frame"))
        }
        (Err(e), Some(p)) if e.kind() == Kind::Closed => {
            warn!(
                side = "downstream",
                "source stopped without ending its Ogg stream: lost"
            );
            p.lost();
            Ok(())
        }
        (Err(e), Some(p)) => {
            p.lost();
            Err(e)
        }
        // It stopped in a later chain before its audio: the broadcast before was ended.
        (Err(e), None) if e.kind() == Kind::Closed => Ok(()),
        (Err(e), None) => Err(e),
    }
}

/// An Icecast source being taken in: its demuxer, the broadcast it feeds, its clocks.
struct Source<'a> {
    node: &'a Arc<Node>,
    name: &'a str,
    demux: SourceDemuxer,
    /// The codec of the current chain.
    head: Option<Codec>,
    publishing: Option<Publishing>,
    /// Whether any broadcast was fed (a later chain may have ended it).
    published: bool,
    timeline: Timeline,
    /// The current chain had its end-of-stream page.
    ended: bool,
    pace: Pace,
    /// A chain began since the last audio: the next audio pays `CHAIN_COST` first.
    chained: bool,
    silence: Duration,
    /// When the source is lost unless it sends audio.
    deadline: Instant,
    displaced: Option<Arc<tokio::sync::Notify>>,
    /// Frames demuxed, not yet pushed into the broadcast.
    frames: Vec<Frame>,
    /// The title the source's own stream gave last (Ogg comments), given to the broadcast
    /// it claims.
    title: Option<String>,
}

impl<'a> Source<'a> {
    fn new(node: &'a Arc<Node>, name: &'a str, kind: Option<SourceKind>) -> Source<'a> {
        let now = Instant::now();
        let silence = node.cfg.source_timeout_ms.get();
        Source {
            node,
            name,
            demux: SourceDemuxer::new(kind),
            head: None,
            publishing: None,
            published: false,
            timeline: Timeline::default(),
            ended: false,
            pace: Pace::new(node.cfg.source_burst_ms.get(), now.into_std()),
            chained: false,
            silence,
            deadline: now + silence,
            displaced: None,
            frames: Vec::new(),
            title: None,
        }
    }

    /// Reads and takes the body until it ends (Ok if its last chain ended).
    async fn run(&mut self, body: &mut impl ChunkSource) -> Result<()> {
        loop {
            // Ahead of real time: not read until due (at most a frame's time, the frames
            // before having waited their turn). The wait counts as silence.
            if let Some(at) = self.pace.due(Instant::now().into_std()) {
                self.wait(Instant::from_std(at), true).await?;
            }
            let chunk = tokio::select! {
                r = tokio::time::timeout_at(self.deadline, body.chunk()) => match r {
                    Ok(r) => r?,
                    Err(_) => return Err(Error::timeout("source sent no audio")),
                },
                _ = taken_over(&self.displaced) => return Err(displaced()),
            };
            let Some(chunk) = chunk else {
                // Raw MP3 or AAC ends with its body (a whole body: its last chunk, or its
                // length, came); Ogg with its end-of-stream page.
                if self.ended || self.demux.is_raw() {
                    return Ok(());
                }
                return Err(Error::closed("the source stopped"));
            };
            self.demux.push(&chunk);
            while let Some(ev) = self.demux.next_event()? {
                if let Some(t) = self.demux.take_title() {
                    // An Ogg stream's comments name what plays (a chain per track): from
                    // its audio on.
                    self.flush()?;
                    self.title = t;
                    if let Some(p) = &self.publishing {
                        p.set_title(self.title.as_deref());
                    }
                }
                self.event(ev).await?;
            }
            self.flush()?;
        }
    }

    async fn event(&mut self, ev: SourceEvent) -> Result<()> {
        match ev {
            SourceEvent::Head(h) => self.head = Some(h),
            SourceEvent::Chain(h) => self.chain(h)?,
            SourceEvent::Packet {
                payload,
                duration,
                granule,
            } => {
                let Some(codec) = self.head.clone() else {
                    return Err(Error::media("audio before the codec header"));
                };
                let before = self.timeline.next;
                let pts = self.timeline.pts(duration, granule);
                // A gap the timeline paces through counts as media taken before the frame,
                // as does what the chains before it cost.
                self.pace.took(at_48k(&codec, pts - before));
                if std::mem::take(&mut self.chained) {
                    self.pace
                        .took(CHAIN_COST.as_millis() as u64 * OPUS_RATE as u64 / 1000);
                }
                if let Some(at) = self.pace.due(Instant::now().into_std()) {
                    // What is due goes in first; the source is not silent while it waits.
                    self.flush()?;
                    self.wait(Instant::from_std(at), false).await?;
                }
                if self.publishing.is_none() {
                    self.claim(&payload, granule)?;
                }
                self.pace.took(at_48k(&codec, duration as u64));
                self.frames.push(Frame {
                    pts,
                    duration,
                    wall_us: 0,
                    payload,
                });
            }
            SourceEvent::End => self.ended = true,
        }
        Ok(())
    }

    /// Claims the stream at the first audio packet of a broadcast, which names it.
    fn claim(&mut self, first: &[u8], granule: Option<u64>) -> Result<()> {
        let Some(h) = &self.head else {
            return Err(Error::media("audio before the codec header"));
        };
        let id = broadcast_id(self.name, h, first, granule);
        let p = Publishing::claim(
            self.node,
            self.name,
            h.clone(),
            source_credential(self.node),
            Some(id),
        )?;
        self.displaced = Some(p.displaced());
        if self.title.is_some() {
            p.set_title(self.title.as_deref());
        }
        self.publishing = Some(p);
        self.published = true;
        Ok(())
    }

    /// A chained stream begins (an Ogg chain, or raw frames in another rate or channel
    /// count): the same codec continues the broadcast (its granules start over, our
    /// timestamps go on); another ends it, and the next audio starts a new one on the same
    /// stream.
    fn chain(&mut self, h: Codec) -> Result<()> {
        self.chained = true;
        self.ended = false;
        if self.head.as_ref().is_some_and(|cur| *cur == h) {
            debug!("the source chained a new stream with the same codec: the broadcast goes on");
            self.timeline.restart();
            return Ok(());
        }
        self.flush()?;
        if let Some(p) = self.publishing.take() {
            info!(
                channels = h.channels,
                codec = h.name(),
                "the source chained a new stream in another codec: its broadcast ends, a new one starts"
            );
            p.finish();
        }
        self.displaced = None;
        self.timeline = Timeline::default();
        self.head = Some(h);
        Ok(())
    }

    /// Pushes the frames demuxed so far into the broadcast.
    fn flush(&mut self) -> Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        self.deadline = Instant::now() + self.silence;
        let frames = std::mem::take(&mut self.frames);
        match self.publishing.as_mut() {
            Some(p) => {
                let bytes = frames.iter().map(|f| f.payload.len() as u64).sum();
                self.node.stats.received(frames.len() as u64, bytes);
                p.push(frames)
            }
            None => Ok(()),
        }
    }

    /// Waits until `at` (a newer source may take the stream over meanwhile); with
    /// `silent`, the wait ends at the silence deadline too.
    async fn wait(&self, at: Instant, silent: bool) -> Result<()> {
        let deadline = async {
            match silent {
                true => tokio::time::sleep_until(self.deadline).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(at) => Ok(()),
            _ = deadline => Err(Error::timeout("source sent no audio")),
            _ = taken_over(&self.displaced) => Err(displaced()),
        }
    }
}

/// Resolves when a newer source with the same credentials takes the stream over.
async fn taken_over(displaced: &Option<Arc<tokio::sync::Notify>>) {
    match displaced {
        Some(d) => d.notified().await,
        None => std::future::pending().await,
    }
}

fn displaced() -> Error {
    Error::new(
        Kind::Conflict,
        "a newer source with the same credentials took this stream over",
    )
}
