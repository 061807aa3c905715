//! Icecast sources that push hard: chained Ogg streams (a new logical stream at each track
//! change, as liquidsoap sends them) and sources faster than real time. The test is the
//! source here: it writes the Ogg bytes itself, as fast as the socket takes them.

mod common;

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use quicast::client::{listen, ListenEvent};
use quicast::media::{OggOpusWriter, OpusHead, OPUS_RATE};
use quicast::node::config::Millis;
use quicast::proto::{Frame, Role, Start};
use quicast::{HttpServer, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "hackme";
const SIZE: usize = 50;

/// A short burst: the test's sources are taken in about real time, so a broadcast lasts
/// about as long as its audio (a listener waiting for a stream to start would miss one that
/// began and ended before it woke).
fn origin_config() -> NodeConfig {
    NodeConfig {
        source_password: Some(PASSWORD.parse().unwrap()),
        source_burst_ms: Millis::new(500),
        ..test_config()
    }
}

async fn http(s: &Server) -> HttpServer {
    HttpServer::start(s.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A logical Ogg stream of serial `serial`: `head`, then the test frames `frames` (20 ms
/// each, one page each; granules counted from 0 as every new chain's are), ended.
fn chain(serial: u32, head: &OpusHead, frames: Range<u64>) -> Vec<u8> {
    let mut w = OggOpusWriter::new(serial);
    let mut out = w.headers(&head.raw).to_vec();
    for n in frames {
        out.extend_from_slice(&w.frames(&[test_frame(n, SIZE)]));
    }
    out.extend_from_slice(&w.finish());
    out
}

/// An Icecast source as ffmpeg's `icecast://` is one: `PUT` with `Expect: 100-continue`, a
/// body with no length, its final status once the body ends.
struct Source(TcpStream);

impl Source {
    async fn start(h: &HttpServer, path: &str) -> Source {
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("source:{PASSWORD}"));
        let head = format!(
            "PUT /{path} HTTP/1.1\r\nHost: origin\r\nAuthorization: Basic {auth}\r\nContent-Type: audio/ogg\r\nExpect: 100-continue\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let go = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut got = vec![0u8; go.len()];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, go, "{}", String::from_utf8_lossy(&got));
        Source(tcp)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// Ends the body; the node's answer.
    async fn end(mut self) -> String {
        self.0.shutdown().await.unwrap();
        let mut answer = Vec::new();
        self.0.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// A listener on `path` from before it starts, until its broadcast ends.
async fn listener(o: &Server, path: &str) -> tokio::task::JoinHandle<Heard> {
    let before = o.node.registry.subscribers(path);
    let (s, p) = (
        session(o, Role::Listener, "").await.unwrap(),
        path.to_string(),
    );
    let h = tokio::spawn(async move { hear(s, &p, None).await.unwrap() });
    o.node
        .registry
        .wait_until(|r| r.subscribers(path) > before)
        .await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_with_the_same_head_are_one_broadcast_heard_through() {
    let o = origin_with(origin_config()).await;
    let h = http(&o).await;
    let heard = listener(&o, "radio").await;
    let head = OpusHead::synthetic(2);
    let mut source = Source::start(&h, "radio").await;
    // Three tracks, each its own logical stream with granules from 0 again.
    source.send(&chain(0x11, &head, 0..40)).await;
    source.send(&chain(0x22, &head, 40..80)).await;
    source.send(&chain(0x33, &head, 80..120)).await;
    let answer = source.end().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let heard = heard.await.unwrap();
    // One broadcast, every frame of every chain, the timestamps going on without a jump.
    assert!(heard.header_first && heard.report.ended);
    assert_frames(&heard.frames, 0, 120, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_another_head_ends_the_broadcast_and_starts_the_next() {
    let o = origin_with(origin_config()).await;
    let h = http(&o).await;
    let first = listener(&o, "radio").await;
    let (stereo, mono) = (OpusHead::synthetic(2), OpusHead::synthetic(1));
    let mut source = Source::start(&h, "radio").await;
    source.send(&chain(0x11, &stereo, 0..50)).await;
    // The next track is mono: its headers end the stereo broadcast.
    let next = chain(0x22, &mono, 50..100);
    let headers = OggOpusWriter::new(0x22).headers(&mono.raw).len();
    source.send(&next[..headers]).await;
    let a = first.await.unwrap();
    assert!(
        a.header_first && a.report.ended,
        "the first broadcast ended"
    );
    assert_eq!(a.codec.unwrap().header, stereo.raw);
    assert_frames(&a.frames, 0, 50, SIZE);
    // A listener arriving now waits for the next broadcast, and hears all of it.
    o.node
        .registry
        .wait_until(|r| r.subscribers("radio") == 0)
        .await;
    let second = listener(&o, "radio").await;
    source.send(&next[headers..]).await;
    let answer = source.end().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let b = second.await.unwrap();
    assert!(b.header_first && b.report.ended);
    assert_eq!(b.codec.unwrap().header, mono.raw);
    // A broadcast of its own: its timestamps start at 0.
    let got: Vec<(u64, u64)> = b.frames.iter().map(|f| (frame_number(f), f.pts)).collect();
    let want: Vec<(u64, u64)> = (50..100).map(|n| (n, (n - 50) * 960)).collect();
    assert_eq!(got, want);
    for f in &b.frames {
        assert_eq!(f.payload, test_frame(frame_number(f), SIZE).payload);
    }
}

/// A listener from before the start of `path`: every frame it hears, and how far the media
/// it has heard ran ahead of the wall clock since `started` (set when the source begins).
async fn ahead_listener(
    o: &Server,
    path: &'static str,
) -> (
    Arc<OnceLock<Instant>>,
    tokio::task::JoinHandle<(Vec<Frame>, Duration)>,
) {
    let started: Arc<OnceLock<Instant>> = Arc::default();
    let s = session(o, Role::Listener, "").await.unwrap();
    let t0 = started.clone();
    let heard = tokio::spawn(async move {
        let mut frames: Vec<Frame> = Vec::new();
        let mut ahead = Duration::ZERO;
        listen(&s, path, Start::Live, None, |ev| {
            if let ListenEvent::Frames(f) = ev {
                let wall = t0
                    .get()
                    .expect("audio only once the source began")
                    .elapsed();
                for f in f {
                    let media = Duration::from_micros(
                        (f.pts + f.duration as u64) * 1_000_000 / OPUS_RATE as u64,
                    );
                    ahead = ahead.max(media.saturating_sub(wall));
                }
                frames.extend_from_slice(f);
            }
            Ok(())
        })
        .await
        .unwrap();
        (frames, ahead)
    });
    o.node
        .registry
        .wait_until(|r| r.subscribers(path) >= 1)
        .await;
    (started, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_pushing_faster_than_real_time_is_taken_in_real_time() {
    let o = origin_with(origin_config()).await;
    let burst = o.node.cfg.source_burst_ms.get();
    let h = http(&o).await;
    let (started, heard) = ahead_listener(&o, "fast").await;
    // Three seconds of audio, written as fast as the socket takes it (it all fits in the
    // socket buffers: the write is done at once, whatever the node reads).
    started.set(Instant::now()).unwrap();
    let mut source = Source::start(&h, "fast").await;
    source
        .send(&chain(7, &OpusHead::synthetic(2), 0..150))
        .await;
    let answer = source.end().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (frames, ahead) = heard.await.unwrap();
    assert_frames(&frames, 0, 150, SIZE);
    // Taken in real time after the burst: never more than the burst (and a frame) ahead of
    // the clock. Unpaced, all three seconds went in at once.
    assert!(
        ahead <= burst + Duration::from_secs(1),
        "the listener heard media {ahead:?} ahead of the wall clock (burst {burst:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_publisher_faster_than_real_time_is_taken_in_real_time() {
    let o = origin_with(origin_config()).await;
    let burst = o.node.cfg.source_burst_ms.get();
    let (started, heard) = ahead_listener(&o, "fastq").await;
    // Three seconds of audio sent as fast as QUIC takes it: the node stops reading once the
    // publisher is a burst ahead, so flow control holds it back.
    started.set(Instant::now()).unwrap();
    let s = session(&o, Role::Publisher, "").await.unwrap();
    let mut p = s.publish("fastq", codec(), None).await.unwrap();
    let frames: Vec<Frame> = (0..150).map(|i| test_frame(i, SIZE)).collect();
    for f in frames.chunks(10) {
        p.send(f).await.unwrap();
    }
    p.finish().await.unwrap();
    let (frames, ahead) = heard.await.unwrap();
    assert_frames(&frames, 0, 150, SIZE);
    assert!(
        ahead <= burst + Duration::from_secs(1),
        "the listener heard media {ahead:?} ahead of the wall clock (burst {burst:?})"
    );
}
