//! `quicast listen`: one listener, falling back from node to node, writing the stream in
//! its codec's own format (Ogg Opus, MP3 or AAC in ADTS) to a file or stdout.

use std::time::Duration;

use anyhow::bail;
use quicast::client::{listen_any, Client, ListenEvent, ListenOptions};
use quicast::media::OggOpusWriter;
use tracing::info;

use super::connect::{client_trust, one_stream, resolve, TrustArgs};
use super::output::Output;

pub(crate) async fn run_listen(
    urls: Vec<String>,
    silence_ms: u64,
    output: String,
    duration: Option<f64>,
    token: String,
    low_latency: bool,
    trust: TrustArgs,
) -> anyhow::Result<()> {
    let (urls, path) = one_stream(&urls, "every node is asked for the same stream")?;
    if !(50..=3_600_000).contains(&silence_ms) {
        bail!("--silence-ms must be between 50 and 3600000");
    }
    let url = &urls[0];
    const MAX_DURATION: f64 = 366.0 * 86_400.0;
    let deadline = match duration {
        Some(d) if d.is_finite() && d > 0.0 && d <= MAX_DURATION => {
            Some(tokio::time::Instant::now() + Duration::from_secs_f64(d))
        }
        Some(_) => bail!(
            "--duration must be a number of seconds above 0 and at most {MAX_DURATION} (a year)"
        ),
        None => None,
    };
    // Checked now, created (or truncated) only when audio arrives: a refused listen leaves
    // no empty file, and an existing one as it was.
    let mut out = Output::new(&output)?;
    let trust = client_trust(trust.ca.as_deref(), &trust.fingerprint)?;
    let mut nodes = Vec::new();
    for u in &urls {
        let addr = resolve(u).await?;
        nodes.push((Client::for_target(&addr, &trust)?, u.clone()));
    }
    let opts = ListenOptions {
        path,
        deadline,
        silence: Duration::from_millis(silence_ms),
        token,
        low_latency,
    };
    let mut writer = OggOpusWriter::new(rand::random());
    let mut started = false;
    // MP3 and AAC frames are their own stream format: written as they came.
    let mut raw = false;
    let report = listen_any(&nodes, &opts, |ev| {
        let (bytes, audio) = match ev {
            ListenEvent::Header { codec, .. } if !started => {
                started = true;
                raw = codec.kind != quicast::proto::CODEC_OPUS;
                if raw {
                    return Ok(());
                }
                (writer.headers(&codec.header), false)
            }
            ListenEvent::Frames(frames) if raw => (
                frames
                    .iter()
                    .fold(Vec::new(), |mut v, f| {
                        v.extend_from_slice(&f.payload);
                        v
                    })
                    .into(),
                !frames.is_empty(),
            ),
            ListenEvent::Frames(frames) => (writer.frames(frames), !frames.is_empty()),
            ListenEvent::Title(t) => {
                info!(title = t.unwrap_or(""), "now playing");
                return Ok(());
            }
            ListenEvent::Skipped(seq) => {
                tracing::warn!(seq, "fell behind: the node skipped us forward");
                return Ok(());
            }
            ListenEvent::Missed { first, count } => {
                tracing::warn!(
                    first,
                    count,
                    "fell behind: the node skipped us past whole segments"
                );
                return Ok(());
            }
            _ => return Ok(()),
        };
        out.write(&bytes, audio)?;
        Ok(())
    })
    .await;
    // Leave politely: the node frees the listener's place now, not at its idle timeout.
    for (client, _) in &nodes {
        client.close().await;
    }
    let report = report?;
    out.finish(&if raw {
        bytes::Bytes::new()
    } else {
        writer.finish()
    })?;
    info!(
        frames = report.frames,
        segments = report.segments,
        skipped = report.skipped,
        missed = report.missed,
        ended = report.ended,
        moves = report.moves,
        "done"
    );
    if report.frames == 0 {
        let why = if started {
            "the stream is live but sent no audio"
        } else {
            "the stream has not started"
        };
        bail!("no audio received from {url}: {why}");
    }
    Ok(())
}
