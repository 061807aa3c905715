//! The relay tree, in one process on loopback: what listeners hear, what parents see.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use quicast::node::config::{Count, Millis};
use quicast::proto::ErrorCode;
use quicast::proto::{Role, Start};

const MS5: Duration = Duration::from_millis(5);

/// Waits until `node` has `n` subscribers on `path`.
async fn subscribers(node: &quicast::QuicServer, path: &str, n: usize) {
    node.node
        .registry
        .wait_until(|r| r.subscribers(path) >= n)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_two_relays_down_hears_every_frame_in_order() {
    let o = origin().await;
    let a = relay(&[&o]).await;
    let b = relay(&[&a]).await;
    // Listeners arrive before the stream exists: the waiting room.
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::spawn(hear(
            session(&b, Role::Listener, "").await.unwrap(),
            "town-hall",
            None,
        )));
    }
    listeners.push(tokio::spawn(hear(
        session(&a, Role::Listener, "").await.unwrap(),
        "town-hall",
        None,
    )));
    subscribers(&b, "town-hall", 3).await;
    subscribers(&o, "town-hall", 1).await;
    publish(&o, "town-hall", 200, MS5, 100)
        .await
        .unwrap()
        .unwrap();
    for l in listeners {
        let h = l.await.unwrap().unwrap();
        assert!(h.header_first, "codec header before any audio");
        assert_eq!(h.codec.unwrap(), codec());
        assert!(h.report.ended);
        assert_frames(&h.frames, 0, 200, 100);
        // 100 ms segments of 20 ms frames: each segment starts on a multiple of 5.
        assert!(h
            .segments
            .iter()
            .all(|(_, i)| frame_number(&h.frames[*i]).is_multiple_of(5)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_sees_one_subscription_however_many_subscribe_below() {
    let o = origin().await;
    let r = relay(&[&o]).await;
    let child = relay(&[&r]).await;
    let mut progress = Vec::new();
    let mut listeners = Vec::new();
    for node in [&r, &r, &child] {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        progress.push(rx);
        listeners.push(tokio::spawn(hear(
            session(node, Role::Listener, "").await.unwrap(),
            "s",
            Some(tx),
        )));
    }
    subscribers(&r, "s", 3).await; // two listeners and the child relay
    let publisher = publish(&o, "s", 100, MS5, 40);
    for rx in &mut progress {
        rx.wait_for(|n| *n >= 25).await.unwrap();
    }
    // Mid-broadcast, with every listener hearing audio:
    assert_eq!(
        o.node.subscriptions_for("s"),
        1,
        "the origin saw one subscription"
    );
    assert_eq!(
        r.node
            .stats
            .upstream_subscriptions_total
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(r.node.subscriptions_for("s"), 3);
    publisher.await.unwrap().unwrap();
    for l in listeners {
        assert_frames(&l.await.unwrap().unwrap().frames, 0, 100, 40);
    }
    // After the end the relay waits for the next broadcast: still one subscription at a time.
    assert!(o.node.registry.subscribers("s") <= 1);
    // Everyone has left: after its linger the relay closes its upstream subscription.
    o.node
        .registry
        .wait_until(|r| r.subscribers("s") == 0)
        .await;
    // ... and forgets the stream (it does so just after unsubscribing: await that too).
    r.node
        .registry
        .wait_until(|reg| reg.get("s").is_none())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_joining_mid_stream_starts_at_a_segment_start_with_the_header_first() {
    let o = origin().await;
    let r = relay(&[&o]).await;
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let early = tokio::spawn(hear(
        session(&r, Role::Listener, "").await.unwrap(),
        "m",
        Some(tx),
    ));
    subscribers(&o, "m", 1).await;
    let publisher = publish(&o, "m", 300, MS5, 50);
    // Join once the early listener has heard 62 frames: mid-segment (segments are 5 frames).
    rx.wait_for(|n| *n >= 62).await.unwrap();
    let late = hear(session(&r, Role::Listener, "").await.unwrap(), "m", None)
        .await
        .unwrap();
    publisher.await.unwrap().unwrap();
    let early = early.await.unwrap().unwrap();
    assert_frames(&early.frames, 0, 300, 50);
    assert!(late.header_first);
    let first = frame_number(&late.frames[0]);
    assert!(
        first > 0 && first.is_multiple_of(5),
        "late listener starts at a segment start, got frame {first}"
    );
    assert_frames(&late.frames, first, 300, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_reads_delays_nobody_and_is_skipped_not_buffered() {
    let cfg = || {
        let mut c = test_config();
        c.max_lag_segments = Count::new(2);
        c
    };
    let o = origin_with(cfg()).await;
    let r = relay_with(&[&o], cfg()).await;
    // A raw client that subscribes and then never reads a byte of audio.
    let conn = client(&r).connect_raw(&url(&r, "slow")).await.unwrap();
    let _streams = subscribe_and_never_read(&conn, "slow").await;
    let good = tokio::spawn(hear(
        session(&r, Role::Listener, "").await.unwrap(),
        "slow",
        None,
    ));
    subscribers(&r, "slow", 2).await;
    // 400 frames of 8 KB: 3.2 MB in all, far more than a connection's flow-control window.
    const N: u64 = 400;
    const SIZE: usize = 8000;
    publish(&o, "slow", N, MS5, SIZE).await.unwrap().unwrap();
    let h = good.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, N, SIZE);
    assert_eq!(
        (h.report.skipped, h.report.missed),
        (0, 0),
        "the reading listener was never skipped"
    );
    assert!(
        r.node.stats.skips_total.load(Ordering::Relaxed) >= 1,
        "the stuck listener was moved forward"
    );
    let got = conn.stats().udp_rx.bytes;
    assert!(
        got < N * SIZE as u64 / 2,
        "the relay sent the stuck listener {got} bytes: it should stop at its window"
    );
    let cached = r.node.registry.cache.weighted_bytes();
    assert!(
        cached <= 70 * 5 * (SIZE as u64 + 64),
        "relay cache holds {cached} bytes: bounded by its window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_parent_continues_from_the_next_with_no_gap() {
    let o = origin().await;
    let p1 = relay(&[&o]).await;
    let p2 = relay(&[&o]).await;
    let r = relay(&[&p1, &p2]).await;
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let l = tokio::spawn(hear(
        session(&r, Role::Listener, "").await.unwrap(),
        "f",
        Some(tx),
    ));
    subscribers(&o, "f", 1).await;
    let publisher = publish(&o, "f", 300, MS5, 60);
    rx.wait_for(|n| *n >= 52).await.unwrap();
    // Mid-segment, the first parent goes away.
    p1.close();
    let h = l.await.unwrap().unwrap();
    publisher.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, 300, 60);
    assert_eq!((h.report.skipped, h.report.missed), (0, 0));
    assert!(
        p2.node.subscriptions_for("f") >= 1,
        "the second parent took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_token_is_checked() {
    let o = origin_with(quicast::NodeConfig {
        publish_token: Some("s3cret".parse().unwrap()),
        ..test_config()
    })
    .await;
    for bad in ["", "wrong"] {
        match session(&o, Role::Publisher, bad).await {
            Err(e) if e.remote_code().is_some() => {
                assert_eq!(e.remote_code(), Some(ErrorCode::Unauthorized));
                assert!(e.reason().contains("token"), "{e}");
            }
            Err(e) => panic!("expected unauthorized, got {e}"),
            Ok(_) => panic!("publisher with token {bad:?} was accepted"),
        }
    }
    assert!(o.node.registry.list().is_empty(), "nothing was published");
    let s = session(&o, Role::Publisher, "s3cret").await.unwrap();
    s.publish("ok", codec(), None).await.unwrap();
    // Listeners need no token.
    session(&o, Role::Listener, "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_publishers_and_a_second_publisher_is_refused() {
    let o = origin().await;
    let r = relay(&[&o]).await;
    match session(&r, Role::Publisher, "").await {
        Err(e) => assert_eq!(e.remote_code(), Some(ErrorCode::NotAllowed)),
        _ => panic!("relay accepted a publisher"),
    }
    let s1 = session(&o, Role::Publisher, "").await.unwrap();
    let _p1 = s1.publish("one", codec(), None).await.unwrap();
    let s2 = session(&o, Role::Publisher, "").await.unwrap();
    match s2.publish("one", codec(), None).await {
        Err(e) if e.remote_code().is_some() => {
            assert_eq!(e.remote_code(), Some(ErrorCode::Conflict))
        }
        Err(e) => panic!("expected conflict, got {e}"),
        Ok(_) => panic!("second publisher accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_lose_only_their_own_connection() {
    let o = origin().await;
    let good = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "h",
        None,
    ));
    subscribers(&o, "h", 1).await;

    // Garbage on the control stream: a message claiming to be 1 GB long.
    let conn = client(&o).connect_raw(&url(&o, "h")).await.unwrap();
    let (mut send, _r) = conn.open_bi().await.unwrap();
    send.write_all(&[0x01, 0xbf, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), ErrorCode::TooLarge as u64)
        }
        e => panic!("expected an application close, got {e}"),
    }

    // A publisher whose frame lies about its duration.
    let s = session(&o, Role::Publisher, "").await.unwrap();
    let mut p = s.publish("liar", codec(), None).await.unwrap();
    let mut f = test_frame(0, 20);
    f.duration = 480;
    let _ = p.send(&[f]).await;
    match s.closed().await {
        e if e.remote_code().is_some() => {
            let (code, reason) = (e.code(), e.reason().to_string());
            assert_eq!(code, ErrorCode::BadMedia);
            assert!(reason.contains("lasts"), "{reason}");
        }
        e => panic!("expected bad media, got {e}"),
    }

    // A publish with a codec header that is not OpusHead.
    let s = session(&o, Role::Publisher, "").await.unwrap();
    let mut bad = codec();
    bad.header = bytes::Bytes::from_static(b"\x01vorbis-not-opus-at-all");
    assert!(s.publish("vorbis", bad, None).await.is_err());

    // Meanwhile the good listener is served as if nothing happened.
    publish(&o, "h", 40, MS5, 30).await.unwrap().unwrap();
    assert_frames(&good.await.unwrap().unwrap().frames, 0, 40, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_server_is_trusted_by_ca_and_a_wrong_pin_is_refused() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k, cap) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&c, leaf.pem()).unwrap();
    std::fs::write(&k, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&cap, ca.pem()).unwrap();
    let id = quicast::Identity::from_pem_files(&c, &k).unwrap();
    init_logs();
    let node = quicast::new_node(test_config()).unwrap();
    let o = quicast::QuicServer::start(node, "127.0.0.1:0".parse().unwrap(), &id)
        .await
        .unwrap();

    let by_ca = quicast::Trust::from_ca_file(&cap).unwrap();
    let u =
        quicast::proto::QuicUrl::parse(&format!("quic://localhost:{}/x", o.addr.port())).unwrap();
    let cl = quicast::client::Client::for_target(&o.addr, &by_ca).unwrap();
    cl.connect(&u, Role::Listener, "")
        .await
        .expect("CA-signed certificate is trusted");

    let wrong = quicast::Trust::pinned(&["ab".repeat(32).parse().unwrap()]);
    let cl = quicast::client::Client::for_target(&o.addr, &wrong).unwrap();
    assert!(
        cl.connect(&u, Role::Listener, "").await.is_err(),
        "a wrong pin is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_stream_names_cannot_grow_a_relay_without_bound() {
    let o = origin().await;
    let mut cfg = test_config();
    cfg.max_waiting = Count::new(3);
    let r = relay_with(&[&o], cfg).await;
    let s = session(&r, Role::Listener, "").await.unwrap();
    let mut subs = Vec::new();
    for name in ["a", "b", "c"] {
        subs.push(s.subscribe(name, Start::Live).await.unwrap());
    }
    r.node.registry.wait_until(|reg| reg.waiting() == 3).await;
    // A relay cannot tell a made-up name from a live one before its parent answers: it asks,
    // and once the parent has not said "live", the name would be a fourth waiting room.
    let mut fourth = s.subscribe("d", Start::Live).await.unwrap();
    match fourth.next().await {
        Some(quicast::client::Event::Error { code, reason }) => {
            assert_eq!(code, ErrorCode::Overloaded as u64);
            assert!(reason.contains("maximum of 3 waiting rooms"), "{reason}");
        }
        _ => panic!("expected overloaded"),
    }
    assert!(
        r.node.registry.get("d").is_none(),
        "the relay holds nothing for it"
    );
    // ... nor asks its parent for it any more.
    o.node
        .registry
        .wait_until(|reg| reg.subscribers("d") == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_subscriptions_leave_the_control_stream_intact() {
    let o = origin().await;
    let publisher = publish(&o, "churn", 400, MS5, 50);
    let s = session(&o, Role::Listener, "").await.unwrap();
    // Subscribe and drop (unsubscribe) at once, many times, while audio flows: each abort
    // races the node's writes of Subscribed and segment streams for that subscription.
    for _ in 0..200 {
        let sub = s.subscribe("churn", Start::Live).await.unwrap();
        tokio::task::yield_now().await;
        drop(sub);
    }
    // The same connection still speaks the protocol: a last subscription hears audio.
    let mut sub = s.subscribe("churn", Start::Live).await.unwrap();
    let mut got_audio = false;
    while let Some(ev) = sub.next().await {
        match ev {
            quicast::client::Event::Segment { .. } => {
                got_audio = true;
                break;
            }
            quicast::client::Event::Error { code, reason } => panic!("refused ({code}): {reason}"),
            _ => {}
        }
    }
    assert!(
        got_audio,
        "the connection survived: {:?}",
        s.conn.close_reason()
    );
    publisher.await.unwrap().unwrap();
}

/// Listens to 64 kbit/s-like audio (150 frames of 160 bytes, one every 20 ms: three seconds
/// of delivery intervals of a packet each) on an origin with the given ACK delay; returns
/// the listener's connection stats.
async fn listen_and_count(ack_delay: Duration) -> quinn::ConnectionStats {
    let o = origin_with(quicast::NodeConfig {
        ack_delay_ms: Millis::new(ack_delay.as_millis() as u64),
        ..test_config()
    })
    .await;
    let s = session(&o, Role::Listener, "").await.unwrap();
    let heard = tokio::spawn(hear(s.clone(), "a", None));
    subscribers(&o, "a", 1).await;
    // Three seconds of audio: enough packets that the handshake's own ACKs (a few, at
    // any setting) do not decide the count.
    publish(&o, "a", 150, Duration::from_millis(20), 160)
        .await
        .unwrap()
        .unwrap();
    assert_frames(&heard.await.unwrap().unwrap().frames, 0, 150, 160);
    s.conn.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_asked_to_ack_every_tenth_packet_not_every_one() {
    let thinned = listen_and_count(Duration::from_secs(1)).await;
    assert_eq!(thinned.frame_rx.ack_frequency, 1, "asked once");
    // Each side's handshake needs a few ACKs of its own; the audio packets share a few more.
    assert!(
        thinned.frame_tx.acks * 2 < thinned.udp_rx.datagrams,
        "{} ACKs for {} packets received",
        thinned.frame_tx.acks,
        thinned.udp_rx.datagrams
    );
    // The control: not asked, the listener ACKs about every packet.
    let every = listen_and_count(Duration::ZERO).await;
    assert_eq!(every.frame_rx.ack_frequency, 0);
    assert!(
        every.frame_tx.acks * 2 >= every.udp_rx.datagrams,
        "{} ACKs for {} packets received",
        every.frame_tx.acks,
        every.udp_rx.datagrams
    );
}

/// A low-latency subscriber (SUBSCRIBE_LOW_LATENCY) is sent each frame as it comes, where
/// the one beside it gets a delivery interval's frames at a time: many more packets, the
/// same frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_latency_subscriber_is_sent_each_frame_and_the_paced_one_each_interval() {
    // The load watch off: a node short of CPU paces low-latency subscribers like everyone
    // (by design), and a loaded test machine would make it so.
    let o = origin_with(quicast::NodeConfig {
        deliver_ms: Some(Millis::new(500)),
        overload_lag_ms: Millis::new(0),
        ..test_config()
    })
    .await;
    async fn count(s: std::sync::Arc<quicast::client::Session>, flags: u64) -> (u64, u64) {
        let mut sub = s.subscribe_with("a", Start::Live, flags).await.unwrap();
        let mut frames = 0u64;
        while let Some(ev) = sub.next().await {
            match ev {
                quicast::client::Event::Segment { frames: mut r, .. } => {
                    let mut got = Vec::new();
                    while let quicast::model::SegmentRead::Frames = r.frames(&mut got).await {
                        frames += got.len() as u64;
                        got.clear();
                    }
                }
                quicast::client::Event::End { .. } => break,
                quicast::client::Event::Error { reason, .. } => panic!("{reason}"),
                _ => {}
            }
        }
        (frames, s.conn.stats().udp_rx.datagrams)
    }
    let eager = tokio::spawn(count(
        session(&o, Role::Listener, "").await.unwrap(),
        quicast::proto::SUBSCRIBE_LOW_LATENCY,
    ));
    let paced = tokio::spawn(count(session(&o, Role::Listener, "").await.unwrap(), 0));
    subscribers(&o, "a", 2).await;
    publish(&o, "a", 100, Duration::from_millis(20), 40)
        .await
        .unwrap()
        .unwrap();
    let (eager, paced) = (eager.await.unwrap(), paced.await.unwrap());
    assert_eq!((eager.0, paced.0), (100, 100), "every frame, both");
    assert!(
        eager.1 > 2 * paced.1,
        "low-latency: {} packets, paced: {} packets",
        eager.1,
        paced.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_node_refuses_newcomers_and_keeps_its_listeners() {
    let o = origin().await;
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let inside = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "a",
        Some(tx),
    ));
    subscribers(&o, "a", 1).await;
    let publisher = publish(&o, "a", 200, MS5, 100);
    rx.wait_for(|n| *n >= 50).await.unwrap();
    // What watch_load does when the node's tasks run late.
    o.node.set_overloaded(true);
    let refused = session(&o, Role::Listener, "").await;
    let Err(e) = refused else {
        panic!("an overloaded node took a new connection")
    };
    assert!(e.to_string().contains("refused"), "{e}");
    assert_eq!(o.node.stats.shed_total.load(Ordering::Relaxed), 1);
    // The listener already in hears everything.
    publisher.await.unwrap().unwrap();
    assert_frames(&inside.await.unwrap().unwrap().frames, 0, 200, 100);
    // Load back to normal: newcomers are welcome again.
    o.node.set_overloaded(false);
    session(&o, Role::Listener, "").await.unwrap();
}

/// A reload that drops a key ends what its tokens let in next: a listener connected with a
/// token of the dropped key keeps what it has, and is refused its next stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_key_a_reload_dropped_opens_no_new_stream() {
    use quicast::client::Event;
    use quicast::node::{mint, unix_now, Access, Claims, Grant, TokenKey};
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, name.repeat(20)).unwrap();
        p
    };
    let (k1, k2) = (key("k1"), key("k2"));
    let keys = |kid: &str, f: &std::path::Path| -> Vec<TokenKey> {
        vec![format!("{kid}={}", f.display()).parse().unwrap()]
    };
    let cfg = quicast::NodeConfig {
        token_key: keys("k1", &k1),
        listen_policy: vec!["/=token".parse().unwrap()],
        ..test_config()
    };
    let o = origin_with(cfg.clone()).await;
    let token = |role| {
        let claims = Claims {
            role,
            path: "/".into(),
            exp: unix_now() + 600,
            nbf: 0,
            kid: String::new(),
        };
        mint(&k1, "k1", &claims).unwrap()
    };
    let p = session(&o, Role::Publisher, &token(Grant::Publish))
        .await
        .unwrap();
    let mut publishing = p.publish("a", codec(), None).await.unwrap();
    publishing.send(&[test_frame(0, 10)]).await.unwrap();
    wait_live(&o, "a").await;
    let l = session(&o, Role::Listener, &token(Grant::Listen))
        .await
        .unwrap();
    let mut first = l.subscribe("a", Start::Live).await.unwrap();
    assert!(matches!(first.next().await, Some(Event::Subscribed { .. })));
    // The reload: k2 in, k1 out.
    let reloaded = quicast::NodeConfig {
        token_key: keys("k2", &k2),
        ..cfg
    };
    o.node.set_access(Access::from_config(&reloaded).unwrap());
    let mut second = l.subscribe("a", Start::Live).await.unwrap();
    match second.next().await {
        Some(Event::Error { code, reason }) => {
            assert_eq!(code, ErrorCode::Unauthorized.as_u64());
            assert!(reason.contains("unknown token key id"), "{reason}");
        }
        Some(_) => panic!("a second stream with a dropped key's token was served"),
        None => panic!("the subscription ended without a word"),
    }
}

/// A relay that let a stream go (nobody listened for its linger) and is asked for it again
/// while its parent still holds what followed resumes the broadcast it had, from the
/// segment it was receiving: the same broadcast, and in its store every segment from before
/// the pause through after it, each frame following the last (no hole a polling HLS client
/// or cache would fall into).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_asked_again_soon_resumes_the_stream_it_let_go_with_no_hole() {
    let o = origin().await;
    let r = relay(&[&o]).await;
    let publisher = publish(&o, "s", 3000, Duration::from_millis(10), 40);
    let listen_a_while = || async {
        let (tx, mut rx) = tokio::sync::watch::channel(0usize);
        let s = session(&r, Role::Listener, "").await.unwrap();
        let h = tokio::spawn(hear(s, "s", Some(tx)));
        rx.wait_for(|n| *n >= 20).await.unwrap();
        h.abort();
        let _ = h.await;
    };
    listen_a_while().await;
    let before = r.node.registry.get("s").unwrap().broadcast().unwrap();
    // Nobody listens: after its linger the relay lets the stream go.
    r.node
        .registry
        .wait_until(|reg| reg.get("s").is_none())
        .await;
    let held = before.span().latest.unwrap();
    // The origin goes on for five segments meanwhile.
    let ob = o.node.registry.get("s").unwrap().broadcast().unwrap();
    let mut w = ob.watch();
    w.wait_for(|_| ob.span().latest.is_some_and(|l| l >= held + 5))
        .await
        .unwrap();
    listen_a_while().await;
    let after = r.node.registry.get("s").unwrap().broadcast().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&before, &after),
        "the relay resumed the broadcast it had"
    );
    // It fetches what followed (its parent still holds it): the segments the pause missed
    // come, whenever the listener's 20 frames came from.
    let mut aw = after.watch();
    aw.wait_for(|_| after.span().latest.is_some_and(|l| l >= held + 5))
        .await
        .unwrap();
    let latest = after.span().latest.unwrap();
    let mut next_pts = None;
    for seq in held - 5..latest {
        let seg = after.segment(seq).unwrap_or_else(|| {
            panic!("segment {seq} missing ({held} was the last before the pause)")
        });
        assert!(!seg.is_empty(), "segment {seq} is empty");
        let first = seg.pts_at(0).unwrap();
        if let Some(p) = next_pts {
            assert_eq!(first, p, "segment {seq} does not follow the one before it");
        }
        next_pts = Some(seg.pts_at(seg.len() - 1).unwrap() + 960);
    }
    publisher.abort();
}
