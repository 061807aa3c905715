//! A relay carries many streams, and strangers cost only themselves: made-up stream names,
//! waiting rooms, stuffed streams, silent publishers and trickling sources.

mod common;

use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use quicast::client::Event;
use quicast::node::config::{Count, Millis, Secs};
use quicast::proto::ErrorCode;
use quicast::proto::{Message, Role, Start, VERSION};
use quicast::HttpServer;
use quicast::NodeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MS20: Duration = Duration::from_millis(20);

async fn http(s: &Server) -> HttpServer {
    HttpServer::start(s.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Waits until `node` has `n` subscribers on `path`.
async fn subscribers(node: &Server, path: &str, n: usize) {
    node.node
        .registry
        .wait_until(|r| r.subscribers(path) >= n)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_streams_flow_through_two_relays_to_a_listener_on_each() {
    // Every stream crosses each relay's one connection to its parent: far more streams
    // than the 16 a listener connection may subscribe to, and than the segment streams a
    // listener grants its node.
    const STREAMS: usize = 50;
    // Five seconds of audio: the mid-broadcast check below must come before the end (once
    // a broadcast ends, a relay subscribes again, waiting for the next one), even on a
    // loaded machine where listeners take a while to hear their first frames.
    const FRAMES: u64 = 250;
    let o = origin().await;
    let a = relay(&[&o]).await;
    let b = relay(&[&a]).await;
    let mut listeners = Vec::new();
    let mut progress = Vec::new();
    for i in 0..STREAMS {
        for node in [&a, &b] {
            let s = session(node, Role::Listener, "").await.unwrap();
            let name = format!("s{i}");
            let (tx, rx) = tokio::sync::watch::channel(0usize);
            progress.push(rx);
            listeners.push(tokio::spawn(async move { hear(s, &name, Some(tx)).await }));
        }
    }
    for i in 0..STREAMS {
        subscribers(&o, &format!("s{i}"), 1).await;
        subscribers(&a, &format!("s{i}"), 2).await;
    }
    let publishers: Vec<_> = (0..STREAMS)
        .map(|i| publish(&o, &format!("s{i}"), FRAMES, MS20, 100))
        .collect();
    // Mid-broadcast, every listener hearing audio: one subscription per stream upstream.
    for p in &mut progress {
        p.wait_for(|n| *n >= 10).await.unwrap();
    }
    for i in 0..STREAMS {
        assert_eq!(o.node.subscriptions_for(&format!("s{i}")), 1);
        assert_eq!(a.node.subscriptions_for(&format!("s{i}")), 2);
    }
    for p in publishers {
        p.await.unwrap().unwrap();
    }
    for l in listeners {
        let h = l.await.unwrap().unwrap();
        assert!(h.report.ended);
        assert_frames(&h.frames, 0, FRAMES, 100);
    }
}

/// Strangers' connections subscribed to names that do not exist. Dropping it unsubscribes.
struct Strangers {
    _sessions: Vec<std::sync::Arc<quicast::client::Session>>,
    subscriptions: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Strangers {
    fn drop(&mut self) {
        for t in &self.subscriptions {
            t.abort();
        }
    }
}

/// Subscribes each list of `names` on a new connection of its own to `node`, all at once,
/// and waits for the refusals of all but `keep` of them (each must be `overloaded`); the
/// others wait in waiting rooms, for streams that never start.
async fn made_up(node: &Server, names: Vec<Vec<String>>, keep: usize) -> Strangers {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sessions = Vec::new();
    let mut subscriptions = Vec::new();
    let mut total = 0;
    for names in names {
        let s = session(node, Role::Listener, "").await.unwrap();
        for n in &names {
            let mut sub = s.subscribe(n, Start::Live).await.unwrap();
            let tx = tx.clone();
            subscriptions.push(tokio::spawn(async move {
                let code = match sub.next().await {
                    Some(Event::Error { code, .. }) => Some(code),
                    _ => None,
                };
                let _ = tx.send(code);
                // Stay subscribed (a refused subscription is over anyway).
                std::future::pending::<()>().await;
                drop(sub);
            }));
        }
        total += names.len();
        sessions.push(s);
    }
    for _ in keep..total {
        assert_eq!(rx.recv().await.unwrap(), Some(ErrorCode::Overloaded as u64));
    }
    assert!(rx.try_recv().is_err(), "more than {total} - {keep} refused");
    Strangers {
        _sessions: sessions,
        subscriptions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_from_one_client_and_from_many_cost_a_real_listener_nothing() {
    let o = origin().await;
    let r = relay_with(
        &[&o],
        NodeConfig {
            http_wait_secs: Secs::new(1),
            ..test_config()
        },
    )
    .await;
    let r_http = http(&r).await;
    // A real listener over QUIC and one over HTTP, on the relay, hearing a live stream.
    let (tx, mut heard) = tokio::sync::watch::channel(0usize);
    let quic = tokio::spawn(hear(
        session(&r, Role::Listener, "").await.unwrap(),
        "live",
        Some(tx),
    ));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("live.ogg");
    let mut curl = tokio::process::Command::new("curl")
        .args(["-s", "-o", out.to_str().unwrap()])
        .arg(format!("http://{}/live.ogg", r_http.addr))
        .spawn()
        .unwrap();
    subscribers(&r, "live", 2).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = publish_until(&o, "live", MS20, 100, 50, stopped.clone());
    // A second stream, that nobody asks this relay for until the attack is on.
    let publisher2 = publish_until(&o, "live2", MS20, 100, 50, stopped);
    heard.wait_for(|n| *n >= 10).await.unwrap();

    // 16 HTTP listeners of made-up names at once: each waits (1 s here), then 404.
    let gets = futures_util::future::join_all((0..16).map(|i| {
        tokio::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{}/made-up-{i}.ogg", r_http.addr))
            .output()
    }))
    .await;
    for g in gets {
        assert_eq!(String::from_utf8_lossy(&g.unwrap().stdout), "404");
    }
    // One QUIC client, 16 made-up names, then another with 1,000: 4 wait, the rest are
    // refused at once.
    let names = |tag: &str, n: usize| (0..n).map(|i| format!("{tag}-{i}")).collect::<Vec<_>>();
    let sixteen = made_up(&r, vec![names("nobody", 16)], 4).await;
    let thousand = made_up(&r, vec![names("no-one", 1000)], 4).await;
    // Many clients from one address: 100 connections of 10 names. At most 64 wait from one
    // address, 8 of them already taken by the two above.
    let many = made_up(
        &r,
        (0..100).map(|c| names(&format!("many-{c}"), 10)).collect(),
        64 - 8,
    )
    .await;
    // With all that waiting, newcomers to a stream the relay does not carry yet get in, over
    // QUIC and over HTTP (the relay asks its parent over the one connection it has).
    let (tx, mut heard2) = tokio::sync::watch::channel(0usize);
    let late = tokio::spawn(hear(
        session(&r, Role::Listener, "").await.unwrap(),
        "live2",
        Some(tx),
    ));
    let out2 = work.path().join("live2.ogg");
    let mut curl2 = tokio::process::Command::new("curl")
        .args(["-s", "-o", out2.to_str().unwrap()])
        .arg(format!("http://{}/live2.ogg", r_http.addr))
        .spawn()
        .unwrap();
    if heard2.wait_for(|n| *n >= 10).await.is_err() {
        panic!("the late listener stopped: {:?}", late.await);
    }
    subscribers(&r, "live2", 2).await;
    drop((sixteen, thousand, many));

    // Throughout, the real listeners heard every frame.
    let _ = stop.send(true);
    let n = publisher.await.unwrap().unwrap();
    let n2 = publisher2.await.unwrap().unwrap();
    let h = quic.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, n, 100);
    assert!(curl.wait().await.unwrap().success());
    assert_payloads(&ogg_packets(&std::fs::read(&out).unwrap()), 0, n, 100);
    let h2 = late.await.unwrap().unwrap();
    let first = frame_number(&h2.frames[0]);
    assert_frames(&h2.frames, first, n2, 100);
    assert!(curl2.wait().await.unwrap().success());
    let p2 = ogg_packets(&std::fs::read(&out2).unwrap());
    let first = u64::from_le_bytes(p2[0][1..9].try_into().unwrap());
    assert_payloads(&p2, first, n2, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_rooms_filled_by_strangers_never_stop_a_publisher() {
    let o = origin_with(NodeConfig {
        announce: vec!["events/".parse().unwrap()],
        max_waiting_per_conn: Count::new(1000),
        max_waiting_per_addr: Count::new(1000),
        max_waiting: Count::new(20),
        ..test_config()
    })
    .await;
    // (Two connections: a listener connection holds 16 subscriptions at most.)
    let _junk = made_up(
        &o,
        vec![
            (0..15).map(|i| format!("junk-{i}")).collect(),
            (15..30).map(|i| format!("junk-{i}")).collect(),
        ],
        20,
    )
    .await;
    assert_eq!(o.node.registry.waiting(), 20);
    // Full of strangers' waiting rooms, an announced name still takes its audience early ...
    let early = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "events/keynote",
        None,
    ));
    subscribers(&o, "events/keynote", 1).await;
    // ... and publishers start: the announced stream and a new one.
    let keynote = publish(&o, "events/keynote", 50, MS20, 80);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let show = publish_until(&o, "show", MS20, 80, 30, stopped);
    wait_live(&o, "show").await;
    let listener = hear(session(&o, Role::Listener, "").await.unwrap(), "show", None);
    let _ = stop.send(true);
    let (h, n) = tokio::join!(listener, show);
    let h = h.unwrap();
    let first = h.frames.first().map(frame_number).unwrap();
    assert_frames(&h.frames, first, n.unwrap().unwrap(), 80);
    keynote.await.unwrap().unwrap();
    assert_frames(&early.await.unwrap().unwrap().frames, 0, 50, 80);
}

/// A raw connection to `node` that has said hello as `role`.
async fn hello(
    node: &Server,
    role: Role,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = client(node).connect_raw(&url(node, "x")).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut b = bytes::BytesMut::new();
    Message::Hello {
        version: VERSION,
        role,
        token: Default::default(),
    }
    .encode(&mut b);
    send.write_all(&b).await.unwrap();
    // HELLO_OK: read it whole, so that what the node granted after the hello has arrived.
    let mut got = bytes::BytesMut::new();
    loop {
        if let Some(m) = Message::decode(&mut got).unwrap() {
            assert!(matches!(m, Message::HelloOk { .. }), "{m:?}");
            break;
        }
        let c = recv.read_chunk(1024, true).await.unwrap().unwrap();
        got.extend_from_slice(&c.bytes);
    }
    (conn, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_can_make_the_node_hold_little_whatever_it_writes() {
    let o = origin().await;
    // A listener has no stream of its own to open: the few granted before anyone is known
    // (HTTP/3 needs them, for browsers on the same port) are stopped unread, whatever is
    // written to them. (Its control stream is kept open: a finished one is the peer saying
    // goodbye, and the node closes the connection.)
    let (conn, _send, _recv) = hello(&o, Role::Listener).await;
    for _ in 0..3 {
        let mut uni = conn.open_uni().await.unwrap();
        let _ = uni.write(&[0u8; 4096]).await;
        assert_eq!(
            uni.stopped().await.unwrap(),
            Some(quinn::VarInt::from_u32(1)),
            "a listener's stream is stopped (protocol_violation)"
        );
    }
    // And none is granted again once they are gone (waited for as long as a round trip
    // here takes many times over).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), conn.open_uni())
            .await
            .is_err(),
        "a listener was granted a fourth stream"
    );
    // A publisher gets its one frame stream, whose window is small: write 256 KiB that the
    // node never reads (no PUBLISH), and see how much it lets in.
    let (conn, _send, _recv) = hello(&o, Role::Publisher).await;
    let mut uni = conn.open_uni().await.unwrap();
    let chunk = vec![0u8; 4096];
    let mut accepted = 0;
    while accepted < 256 * 1024 {
        match uni.write(&chunk).now_or_never() {
            Some(Ok(n)) => accepted += n,
            _ => break,
        }
    }
    assert!(
        accepted <= 64 * 1024,
        "the node let a stream it never reads buffer {accepted} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_dropped_and_its_broadcast_ends_after_the_grace() {
    let o = origin_with(NodeConfig {
        source_timeout_ms: Millis::new(300),
        publisher_grace_secs: Secs::new(0),
        ..test_config()
    })
    .await;
    let listener = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "quiet",
        None,
    ));
    subscribers(&o, "quiet", 1).await;
    // Ten frames, then nothing, the connection kept open.
    let s = session(&o, Role::Publisher, "").await.unwrap();
    let mut p = s.publish("quiet", codec(), None).await.unwrap();
    for i in 0..10 {
        p.send(&[test_frame(i, 50)]).await.unwrap();
    }
    match s.closed().await {
        e if e.remote_code().is_some() => {
            let (code, reason) = (e.code(), e.reason().to_string());
            assert_eq!(code, ErrorCode::Timeout);
            assert!(reason.contains("no audio"), "{reason}");
        }
        e => panic!("expected a timeout, got {e}"),
    }
    let h = listener.await.unwrap().unwrap();
    assert!(h.report.ended, "the broadcast ended after the grace period");
    assert_frames(&h.frames, 0, 10, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_trickles_bytes_but_no_audio_is_dropped() {
    let o = origin_with(NodeConfig {
        source_password: Some("pw".parse().unwrap()),
        source_timeout_ms: Millis::new(300),
        ..test_config()
    })
    .await;
    let h = http(&o).await;
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // An Icecast source: the headers of an Ogg Opus stream, then a byte at a time of a page
    // that never completes.
    let mut w = quicast::media::OggOpusWriter::new(1);
    let headers = w.headers(&codec().header);
    tcp.write_all(b"SOURCE /drip HTTP/1.0\r\nAuthorization: Basic c291cmNlOnB3\r\nContent-Type: audio/ogg\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&headers).await.unwrap();
    // The node answers 200 at once (legacy SOURCE).
    let ok = b"HTTP/1.0 200 OK\r\n\r\n";
    let mut got = vec![0u8; ok.len()];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(got, ok);
    let (mut rd, mut wr) = tcp.into_split();
    let drip = tokio::spawn(async move {
        for b in b"OggS\0\0".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The node closes the connection once the source has sent no audio for 300 ms; the stream
    // is not held (a source takes it with its first audio packet, which never came).
    let mut rest = Vec::new();
    let _ = rd.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    drip.abort();
    assert!(o
        .node
        .registry
        .get("drip")
        .is_none_or(|s| !s.has_publisher()));
}

/// Under a handshake flood (here: any rate, `retry-above-per-sec 0`) every newcomer proves
/// its address with a QUIC Retry before the node spends a handshake on it; real clients do
/// so on their own and hear every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_handshake_flood_newcomers_prove_their_address_and_still_get_in() {
    let o = origin_with(NodeConfig {
        retry_above_per_sec: Count::new(0),
        ..test_config()
    })
    .await;
    let publisher = publish(&o, "flood", 100, Duration::from_millis(10), 50);
    wait_live(&o, "flood").await;
    let listener = session(&o, Role::Listener, "").await.unwrap();
    let heard = hear(listener, "flood", None).await.unwrap();
    publisher.await.unwrap().unwrap();
    assert!(!heard.frames.is_empty());
    let first = common::frame_number(&heard.frames[0]);
    assert_frames(&heard.frames, first, 100, 50);
    let retries = o
        .node
        .stats
        .retries_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        retries, 2,
        "the publisher and the listener each proved their address"
    );
}

/// A stranger speaking HTTP/3 (ALPN `h3`, as browsers do) badly to a node's QUIC port: a
/// second HTTP/3 control stream ends its connection (`H3_STREAM_CREATION_ERROR`), a
/// request that is not a WebTransport CONNECT is answered 400, and a stream that says
/// nothing readable in 16 KiB ends the connection (`H3_MESSAGE_ERROR`); a listener beside
/// them hears every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_speaking_http3_badly_is_closed_and_costs_nobody_else() {
    let o = origin().await;
    let listener = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "talk",
        None,
    ));
    subscribers(&o, "talk", 1).await;
    let hash = o.node.web.get().unwrap().hashes()[0].clone();
    let trust = quicast::Trust::pinned(&[hash.parse().unwrap()]);
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quicast::client::fresh_webtransport_config(&trust).unwrap());
    let connect = || async { ep.connect(o.addr, "localhost").unwrap().await.unwrap() };
    let closed_with = |e: quinn::ConnectionError| match e {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("closed by {other:?}"),
    };
    // Two HTTP/3 control streams (type 0, an empty SETTINGS frame each).
    let conn = connect().await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut u = conn.open_uni().await.unwrap();
        u.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
        streams.push(u);
    }
    assert_eq!(closed_with(conn.closed().await), 0x103);
    // A request that is not a WebTransport CONNECT: a HEADERS frame of one field line
    // (`:method GET`, QPACK static index 17), answered 400 and finished.
    let conn = connect().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x01, 0x03, 0x00, 0x00, 0xd1])
        .await
        .unwrap();
    let answer = recv.read_to_end(4096).await.unwrap();
    let mut a = &answer[..];
    match web_transport_proto::ConnectResponse::decode(&mut a) {
        Err(web_transport_proto::ConnectError::WrongStatus(Some(s))) => assert_eq!(s, 400),
        other => panic!("answered {other:?}"),
    }
    // A HEADERS frame that never ends within 16 KiB.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&[0x01, 0x7f, 0xff]).await;
    let _ = send.write_all(&[0u8; 16 * 1024]).await;
    assert_eq!(closed_with(conn.closed().await), 0x10e);
    // The listener beside them heard the whole stream.
    publish(&o, "talk", 30, MS20, 80).await.unwrap().unwrap();
    let h = listener.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, 30, 80);
}
