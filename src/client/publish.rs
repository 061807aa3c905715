//! `quicast publish`: read Ogg Opus (a file, stdin, or bytes in memory), send the OpusHead and
//! every packet with its timestamp. A file is paced in real time by its timestamps; stdin is
//! sent as packets arrive.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tracing::{debug, info};

use super::Session;
use crate::error::{Error, Result};
use crate::media::{OggEvent, OggOpusDemuxer, OpusHead, Timeline, OPUS_RATE};
use crate::proto::Frame;

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

pub async fn publish(session: &Arc<Session>, opts: &PublishOptions) -> Result<PublishReport> {
    let mut reader = OggReader::open(&opts.input).await?;
    let head = reader.head().await?;
    info!(
        channels = head.channels,
        pre_skip = head.pre_skip,
        input_rate = head.input_rate,
        "input is Ogg Opus"
    );
    let mut publication = session.publish(&opts.path, head.codec()).await?;
    info!(instance = publication.instance, path = %opts.path, "publishing");
    let looping = opts.looping && !matches!(opts.input, Input::Stdin);
    let mut report = PublishReport::default();
    let mut timeline = Timeline::default();
    let start = Instant::now();
    loop {
        match reader.next().await? {
            Some(OggEvent::Packet(payload, duration, granule)) => {
                let pts = timeline.pts(duration, granule);
                if opts.realtime {
                    let due = start + Duration::from_micros(pts * 1_000_000 / OPUS_RATE as u64);
                    tokio::time::sleep_until(due).await;
                }
                publication
                    .send(&[Frame {
                        pts,
                        duration,
                        wall_us: 0,
                        payload,
                    }])
                    .await?;
                report.frames += 1;
            }
            Some(OggEvent::Head(_)) => {
                return Err(Error::media("a second OpusHead in one logical stream"))
            }
            Some(OggEvent::End) | None => {
                if !looping {
                    break;
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
    report.duration_samples = timeline.next;
    publication.finish().await?;
    info!(
        frames = report.frames,
        seconds = timeline.next as f64 / OPUS_RATE as f64,
        "input finished: broadcast ended"
    );
    Ok(report)
}
