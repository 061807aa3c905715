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

use crate::client::Session;
use crate::error::{Error, Result};
use crate::media::{OggEvent, OggOpusDemuxer, OpusHead, OPUS_RATE};
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
                    .map_err(|e| Error::Media(format!("cannot open {}: {e}", p.display())))?,
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
                    return Err(Error::Media(
                        "input ends in the middle of an Ogg page".into(),
                    ));
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
            Some(_) => Err(Error::Media(
                "Ogg Opus stream does not begin with OpusHead".into(),
            )),
            None => Err(Error::Media("input is empty".into())),
        }
    }
}

/// Turns a file's granule positions into the broadcast's timestamps: continuous across loops,
/// never going back, and pacing through a gap in the file (up to `MAX_GAP`).
#[derive(Debug, Default)]
pub struct Timeline {
    /// End of the last packet, in samples from the broadcast's start.
    pub next: u64,
    /// Granule position (at a packet's start) that maps to timestamp 0 in this pass.
    base: Option<i128>,
}

/// The longest silence in a file that publishing waits through.
pub const MAX_GAP: u64 = 5 * OPUS_RATE as u64;

impl Timeline {
    /// The timestamp of a packet of `dur` samples whose end is at `end_granule` (if known).
    pub fn pts(&mut self, dur: u32, end_granule: Option<u64>) -> u64 {
        let natural = self.next;
        let pts = match end_granule {
            None => natural,
            Some(end) => {
                let start = end as i128 - dur as i128;
                let base = *self.base.get_or_insert(start - natural as i128);
                let p = start - base;
                if p < natural as i128 || p > (natural + MAX_GAP) as i128 {
                    if p > (natural + MAX_GAP) as i128 {
                        tracing::warn!(
                            gap_s = (p - natural as i128) as f64 / OPUS_RATE as f64,
                            "granule position jumps ahead; pacing through at most 5 s"
                        );
                    }
                    let p = if p < natural as i128 {
                        natural
                    } else {
                        natural + MAX_GAP
                    };
                    self.base = Some(start - p as i128);
                    p
                } else {
                    p as u64
                }
            }
        };
        self.next = pts + dur as u64;
        pts
    }

    /// The input starts over (`--loop`): its granules begin again, our timestamps go on.
    pub fn restart(&mut self) {
        self.base = None;
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
                return Err(Error::Media(
                    "a second OpusHead in one logical stream".into(),
                ))
            }
            Some(OggEvent::End) | None => {
                if !looping {
                    break;
                }
                if report.frames == 0 {
                    return Err(Error::Media("input has no audio packets to loop".into()));
                }
                debug!(pts = timeline.next, "looping input");
                timeline.restart();
                reader = OggReader::open(&opts.input).await?;
                let again = reader.head().await?;
                if again.raw != head.raw {
                    return Err(Error::Media(
                        "input changed its OpusHead between loops".into(),
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_granule_positions() {
        let mut t = Timeline::default();
        // A file whose first page's granule includes a pre-skip of 312.
        assert_eq!(t.pts(960, Some(312 + 960)), 0);
        assert_eq!(t.pts(960, Some(312 + 1920)), 960);
        // One second missing from the file: publishing waits through it.
        assert_eq!(t.pts(960, Some(312 + 1920 + 48_000 + 960)), 1920 + 48_000);
        // Unknown granule: straight on.
        assert_eq!(t.pts(960, None), 1920 + 48_000 + 960);
    }

    #[test]
    fn loops_continue_and_broken_granules_are_clamped() {
        let mut t = Timeline::default();
        t.pts(960, Some(960));
        t.pts(960, Some(1920));
        t.restart();
        assert_eq!(
            t.pts(960, Some(960)),
            1920,
            "the second pass continues where the first ended"
        );
        // A granule that goes back is clamped to continuity.
        assert_eq!(t.pts(960, Some(10)), 2880);
        // An hour's jump is paced through for at most MAX_GAP.
        assert_eq!(t.pts(960, Some(10 + 48_000 * 3600)), 3840 + MAX_GAP);
        assert_eq!(
            t.pts(960, Some(10 + 48_000 * 3600 + 960)),
            3840 + MAX_GAP + 960
        );
    }
}
