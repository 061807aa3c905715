//! Icecast ingest on a paused clock: what pacing and chains cost a source, in media time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use tokio::time::Instant;

use super::icecast::{ingest, ChunkSource};
use crate::error::{Kind, Result};
use crate::media::{OggOpusWriter, OpusHead};
use crate::node::config::Millis;
use crate::node::{Node, NodeConfig};

/// A source body given whole, handed out chunk by chunk.
struct Body(VecDeque<Bytes>);

impl ChunkSource for Body {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        Ok(self.0.pop_front())
    }
}

fn node(burst_ms: u64) -> Arc<Node> {
    node_with(NodeConfig {
        source_burst_ms: Millis::new(burst_ms),
        ..NodeConfig::default()
    })
}

fn node_with(cfg: NodeConfig) -> Arc<Node> {
    Node::new(cfg, None).unwrap()
}

/// A logical stream of serial `serial`: `head`, then `frames` 20 ms packets, ended.
fn chain(serial: u32, head: &OpusHead, frames: u16) -> Vec<u8> {
    if frames == 0 {
        // Headers alone, the second page ending the stream.
        let mut w = PacketWriter::new(Vec::new());
        w.write_packet(head.raw.to_vec(), serial, PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        w.write_packet(
            b"OpusTags\0\0\0\0\0\0\0\0".to_vec(),
            serial,
            PacketWriteEndInfo::EndStream,
            0,
        )
        .unwrap();
        return w.into_inner();
    }
    let mut w = OggOpusWriter::new(serial);
    let mut out = w.headers(&head.raw).to_vec();
    for i in 0..frames {
        let p = Bytes::from(vec![0xf8, (i >> 8) as u8, i as u8]);
        out.extend_from_slice(&w.packets([(&p, 960)]));
    }
    out.extend_from_slice(&w.finish());
    out
}

fn frames_taken(node: &Node) -> u64 {
    node.stats.frames_received_total.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn a_source_pushed_at_once_is_taken_in_real_time_after_its_burst() {
    let node = node(1000);
    // Five seconds of audio, all of it there at once.
    let mut body = Body(VecDeque::from([Bytes::from(chain(
        1,
        &OpusHead::synthetic(2),
        250,
    ))]));
    let t0 = Instant::now();
    ingest(&node, "fast", None, &mut body).await.unwrap();
    assert_eq!(frames_taken(&node), 250, "every frame went in");
    // The first second at once, the rest when due: the body's end is read once all five
    // seconds are due, at 4 s.
    let took = t0.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_millis(4010)).contains(&took),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn chains_cost_a_source_time_so_it_cannot_spin_broadcasts() {
    let node = node(0);
    // Six chains of one 20 ms frame each, their heads alternating: each a new broadcast.
    let mut whole = Vec::new();
    for i in 0..6u32 {
        whole.extend(chain(i + 1, &OpusHead::synthetic(1 + (i % 2) as u8), 1));
    }
    let mut body = Body(VecDeque::from([Bytes::from(whole)]));
    let t0 = Instant::now();
    ingest(&node, "spin", None, &mut body).await.unwrap();
    assert_eq!(frames_taken(&node), 6);
    // Five chains after the first, each taken as a second of audio.
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(5), "{took:?}");
}

/// A source that sends a chain of headers alone every 10 ms, forever.
struct EmptyChains(u32);

impl ChunkSource for EmptyChains {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.0 += 1;
        Ok(Some(Bytes::from(chain(self.0, &OpusHead::synthetic(2), 0))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_of_chains_without_audio_is_lost_for_its_silence() {
    let node = node(0);
    let e = ingest(&node, "empty", None, &mut EmptyChains(0))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Timeout, "{e}");
    assert!(e.to_string().contains("no audio"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_fast_source_pays_for_a_chain_in_time_not_in_silence() {
    let node = node_with(NodeConfig {
        source_burst_ms: Millis::new(0),
        source_timeout_ms: Millis::new(300),
        ..NodeConfig::default()
    });
    let head = OpusHead::synthetic(2);
    // A track, then the next one's headers alone (the read ends there), then its audio.
    let next = chain(2, &head, 10);
    let headers = OggOpusWriter::new(2).headers(&head.raw).len();
    let mut body = Body(VecDeque::from([
        Bytes::from(chain(1, &head, 10)),
        Bytes::copy_from_slice(&next[..headers]),
        Bytes::copy_from_slice(&next[headers..]),
    ]));
    let t0 = Instant::now();
    ingest(&node, "tracks", None, &mut body).await.unwrap();
    assert_eq!(frames_taken(&node), 20);
    // 400 ms of audio, and the chain's second.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

/// `n` MPEG-1 layer III frames (128 kbit/s, 44.1 kHz, stereo: 417 bytes each), each unlike
/// the others.
fn mp3_frames(n: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut f = vec![0xff, 0xfb, 0x90, 0x04];
        f.resize(417, (i % 251) as u8);
        out.extend(f);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn an_mp3_source_ends_with_its_body_past_an_id3v1_tag_and_starts_with_a_title_sent_first() {
    let node = node(5000);
    // The encoder's first title update came before its first frame.
    let (slot, _) = node.registry.slot("radio").unwrap();
    slot.set_pending_title(Some(Bytes::from_static(b"Before the first frame")));
    let mut body = mp3_frames(40);
    body.extend(b"TAG");
    body.extend([b' '; 125]);
    let mut body = Body(VecDeque::from([Bytes::from(body)]));
    ingest(
        &node,
        "radio",
        Some(crate::media::SourceKind::Mp3),
        &mut body,
    )
    .await
    .unwrap();
    assert_eq!(frames_taken(&node), 40);
    // Ended with its body (raw frames have no end mark), not lost for a grace period.
    let b = slot.last_ended().expect("the broadcast ended");
    assert_eq!(b.codec.kind, crate::proto::CODEC_MP3);
    assert_eq!(b.title().as_deref(), Some(&b"Before the first frame"[..]));
    let first = b.segment(0).expect("its first segment");
    assert_eq!(first.title.as_deref(), Some(&b"Before the first frame"[..]));
}
