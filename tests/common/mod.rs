//! Helpers for the in-process tests: nodes on loopback, a synthetic publisher, a listener
//! that records every frame.
#![allow(dead_code)]

pub mod browser;
pub mod http;
pub mod media;
pub mod netns;
pub mod procs;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicast::client::{listen, Client, ListenEvent, ListenReport, Session};
use quicast::node::config::{Count, Millis, Secs};
use quicast::proto::{Codec, Frame, QuicUrl, Role, Start};
use quicast::{Identity, NodeConfig, QuicServer, Trust};

pub type Server = QuicServer;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Test settings: short segments (5 frames of 20 ms), a generous lag allowance so that a
/// loaded CI machine never skips a listener that is keeping up.
pub fn test_config() -> NodeConfig {
    NodeConfig {
        segment_ms: Millis::new(100),
        window_segments: Count::new(64),
        max_lag_segments: Count::new(50),
        linger_secs: Secs::new(1),
        probe_ms: Millis::new(200),
        connect_timeout_ms: Millis::new(2000),
        ..NodeConfig::default()
    }
}

pub async fn origin_with(cfg: NodeConfig) -> Server {
    init_logs();
    let node = quicast::new_node(NodeConfig {
        name: Some("origin".parse().unwrap()),
        ..cfg
    })
    .unwrap();
    Server::start(
        node,
        "127.0.0.1:0".parse().unwrap(),
        &Identity::self_signed(&[]).unwrap(),
    )
    .await
    .unwrap()
}

pub async fn origin() -> Server {
    origin_with(test_config()).await
}

pub async fn relay_with(parents: &[&Server], cfg: NodeConfig) -> Server {
    init_logs();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let cfg = NodeConfig {
        name: Some(
            format!(
                "relay-{}",
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
            .parse()
            .unwrap(),
        ),
        upstream: parents
            .iter()
            .map(|p| QuicUrl::parse(&format!("quic://{}", p.addr)).unwrap())
            .collect(),
        fingerprint: parents
            .iter()
            .map(|p| p.fingerprint.parse().unwrap())
            .collect(),
        ..cfg
    };
    Server::start(
        quicast::new_node(cfg).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &Identity::self_signed(&[]).unwrap(),
    )
    .await
    .unwrap()
}

pub async fn relay(parents: &[&Server]) -> Server {
    relay_with(parents, test_config()).await
}

/// Waits until `path` is live on `s`: the registry says when the name appears, its slot
/// when it goes live (the registry is not told of that). Fails after a minute.
pub async fn wait_live(s: &Server, path: &str) {
    let live = async {
        s.node.registry.wait_until(|r| r.get(path).is_some()).await;
        let slot = s.node.registry.get(path).expect("the slot just appeared");
        slot.wait_broadcast().await.expect("the stream goes live");
    };
    tokio::time::timeout(Duration::from_secs(60), live)
        .await
        .unwrap_or_else(|_| panic!("{path} did not go live"));
}

pub fn url(s: &Server, path: &str) -> QuicUrl {
    QuicUrl::parse(&format!("quic://{}/{path}", s.addr)).unwrap()
}

pub fn trust(s: &Server) -> Trust {
    Trust::pinned(&[s.fingerprint.parse().unwrap()])
}

pub fn client(s: &Server) -> Client {
    Client::for_target(&s.addr, &trust(s)).unwrap()
}

pub async fn session(s: &Server, role: Role, token: &str) -> quicast::Result<Arc<Session>> {
    client(s).connect(&url(s, "x"), role, token).await
}

/// A raw listener on `conn`: says hello, subscribes to `path` (id 1), and then never reads
/// a byte of audio (hold on to the streams returned to keep it so).
pub async fn subscribe_and_never_read(
    conn: &quinn::Connection,
    path: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    use quicast::proto::{Message, VERSION};
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut b = bytes::BytesMut::new();
    Message::Hello {
        version: VERSION,
        role: Role::Listener,
        token: Default::default(),
    }
    .encode(&mut b);
    Message::Subscribe {
        id: 1,
        path: path.into(),
        start: Start::Live,
        flags: 0,
    }
    .encode(&mut b);
    send.write_all(&b).await.unwrap();
    (send, recv)
}

/// As `subscribe_and_never_read`, with `n` subscriptions (ids 1..=n) to `path`.
pub async fn subscribe_many_and_never_read(
    conn: &quinn::Connection,
    path: &str,
    n: u64,
) -> (quinn::SendStream, quinn::RecvStream) {
    use quicast::proto::{Message, VERSION};
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut b = bytes::BytesMut::new();
    Message::Hello {
        version: VERSION,
        role: Role::Listener,
        token: Default::default(),
    }
    .encode(&mut b);
    for id in 1..=n {
        Message::Subscribe {
            id,
            path: path.into(),
            start: Start::Live,
            flags: 0,
        }
        .encode(&mut b);
    }
    send.write_all(&b).await.unwrap();
    (send, recv)
}

pub fn codec() -> Codec {
    quicast::media::OpusHead::synthetic(2).codec()
}

/// Frame `n`: a 20 ms Opus packet (TOC 0xf8) whose bytes say its number, padded to `size`.
pub fn test_frame(n: u64, size: usize) -> Frame {
    let mut p = vec![0xf8];
    p.extend_from_slice(&n.to_le_bytes());
    p.resize(size.max(9), (n % 251) as u8);
    Frame {
        pts: n * 960,
        duration: 960,
        wall_us: 0,
        payload: Bytes::from(p),
    }
}

pub fn frame_number(f: &Frame) -> u64 {
    u64::from_le_bytes(f.payload[1..9].try_into().unwrap())
}

/// Publishes frames `0..n` to `path`, one every `every`, then ends the broadcast.
pub fn publish(
    origin: &Server,
    path: &str,
    n: u64,
    every: Duration,
    size: usize,
) -> tokio::task::JoinHandle<quicast::Result<()>> {
    let c = client(origin);
    let u = url(origin, path);
    let path = path.to_string();
    tokio::spawn(async move {
        let s = c.connect(&u, Role::Publisher, "").await?;
        let mut p = s.publish(&path, codec(), None).await?;
        let mut tick = tokio::time::interval(every);
        for i in 0..n {
            tick.tick().await;
            p.send(&[test_frame(i, size)]).await?;
        }
        p.finish().await
    })
}

#[derive(Debug, Default, Clone)]
pub struct Heard {
    pub header_first: bool,
    pub codec: Option<Codec>,
    pub frames: Vec<Frame>,
    /// (segment seq, index into `frames` where it starts)
    pub segments: Vec<(u64, usize)>,
    /// Title changes: (index into `frames` where the title began, the title).
    pub titles: Vec<(usize, Option<String>)>,
    pub report: ListenReport,
}

/// Listens until the broadcast ends. `progress` gets the count of frames heard so far.
pub async fn hear(
    s: Arc<Session>,
    path: &str,
    progress: Option<tokio::sync::watch::Sender<usize>>,
) -> quicast::Result<Heard> {
    let mut h = Heard::default();
    let mut saw_header = false;
    let mut order_ok = true;
    let report = listen(&s, path, Start::Live, None, |ev| {
        match ev {
            ListenEvent::Header { codec, .. } => {
                saw_header = true;
                h.codec = Some(codec.clone());
            }
            ListenEvent::Segment(seq) => {
                order_ok &= saw_header;
                h.segments.push((seq, h.frames.len()));
            }
            ListenEvent::Frames(f) => {
                order_ok &= saw_header;
                h.frames.extend_from_slice(f);
                if let Some(p) = &progress {
                    p.send_replace(h.frames.len());
                }
            }
            ListenEvent::Title(t) => h.titles.push((h.frames.len(), t.map(str::to_string))),
            ListenEvent::Skipped(_) | ListenEvent::Missed { .. } | ListenEvent::Moved { .. } => {}
        }
        Ok(())
    })
    .await?;
    h.header_first = saw_header && order_ok;
    h.report = report;
    Ok(h)
}

/// Asserts `frames` are exactly frames `from..to` as published, byte for byte, in order.
pub fn assert_frames(frames: &[Frame], from: u64, to: u64, size: usize) {
    let nums: Vec<u64> = frames.iter().map(frame_number).collect();
    let want: Vec<u64> = (from..to).collect();
    assert_eq!(nums, want, "frame numbers");
    for f in frames {
        let n = frame_number(f);
        let e = test_frame(n, size);
        assert_eq!(f.payload, e.payload, "payload of frame {n}");
        assert_eq!(
            (f.pts, f.duration),
            (e.pts, e.duration),
            "timing of frame {n}"
        );
        assert!(f.wall_us > 0, "origin stamps its wall clock");
    }
}

/// Publishes frames `0, 1, ...` to `path`, one every `every`, until `stop` says so (and at
/// least `min` were sent), then ends the broadcast. Returns how many it sent.
pub fn publish_until(
    origin: &Server,
    path: &str,
    every: Duration,
    size: usize,
    min: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<quicast::Result<u64>> {
    let c = client(origin);
    let u = url(origin, path);
    let path = path.to_string();
    tokio::spawn(async move {
        let s = c.connect(&u, Role::Publisher, "").await?;
        let mut p = s.publish(&path, codec(), None).await?;
        let mut tick = tokio::time::interval(every);
        let mut n = 0;
        while n < min || !*stop.borrow() {
            tick.tick().await;
            p.send(&[test_frame(n, size)]).await?;
            n += 1;
        }
        p.finish().await?;
        Ok(n)
    })
}

/// The audio packets of an Ogg Opus stream (as an HTTP listener received it).
pub fn ogg_packets(ogg: &[u8]) -> Vec<Bytes> {
    let mut d = quicast::media::OggOpusDemuxer::new();
    d.push(ogg);
    let mut out = Vec::new();
    while let Ok(Some(ev)) = d.next_event() {
        if let quicast::media::OggEvent::Packet(p, ..) = ev {
            out.push(p);
        }
    }
    out
}

/// Asserts `packets` are the payloads of frames `from..to`, in order.
pub fn assert_payloads(packets: &[Bytes], from: u64, to: u64, size: usize) {
    let nums: Vec<u64> = packets
        .iter()
        .map(|p| u64::from_le_bytes(p[1..9].try_into().unwrap()))
        .collect();
    assert_eq!(nums, (from..to).collect::<Vec<_>>(), "packets heard");
    for (p, n) in packets.iter().zip(from..) {
        assert_eq!(p, &test_frame(n, size).payload, "payload of frame {n}");
    }
}
