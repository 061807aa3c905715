//! Listeners on the engine's port (`engine-listen`): the same protocol and store as the
//! main QUIC port, served by one thread driving quinn-proto directly.

mod common;

use std::time::Duration;

use common::*;
use quicast::client::Client;
use quicast::proto::{QuicUrl, Role};
use quicast::{Identity, ListenerEngine, Trust};

async fn engine_port(s: &Server) -> (ListenerEngine, Client, QuicUrl, Identity) {
    let id = Identity::self_signed(&[]).unwrap();
    let e = ListenerEngine::start(s.node.clone(), "127.0.0.1:0".parse().unwrap(), &id)
        .await
        .unwrap();
    let c =
        Client::for_target(&e.addr, &Trust::pinned(&[id.fingerprint.parse().unwrap()])).unwrap();
    let u = QuicUrl::parse(&format!("quic://{}/s", e.addr)).unwrap();
    (e, c, u, id)
}

/// Listeners on the engine hear every frame in order, segment by segment, as those on the
/// main port do; the stream's end reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_on_the_engine_hear_every_frame_in_order() {
    let o = origin().await;
    let (_e, c, u, _) = engine_port(&o).await;
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let s = c.connect(&u, Role::Listener, "").await.unwrap();
        listeners.push(tokio::spawn(hear(s, "s", None)));
    }
    let main = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "s",
        None,
    ));
    o.node
        .registry
        .wait_until(|r| r.subscribers("s") == 4)
        .await;
    const N: u64 = 300;
    publish(&o, "s", N, Duration::from_millis(5), 300)
        .await
        .unwrap()
        .unwrap();
    for l in listeners {
        let h = l.await.unwrap().unwrap();
        assert!(h.header_first);
        assert_frames(&h.frames, 0, N, 300);
        assert_eq!((h.report.skipped, h.report.missed), (0, 0));
    }
    assert_frames(&main.await.unwrap().unwrap().frames, 0, N, 300);
}

/// A publisher is sent to the main port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_port_takes_listeners_only() {
    let o = origin().await;
    let (_e, c, u, _) = engine_port(&o).await;
    let e = c
        .connect(&u, Role::Publisher, "")
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("listeners only"), "{e}");
    assert_eq!(o.node.registry.subscribers("s"), 0);
}

/// A listener that never reads delays nobody on the engine either: the one beside it hears
/// every frame, the stuck one is moved forward, and the node holds only its window for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_reads_delays_nobody_on_the_engine() {
    use quicast::node::config::Count;
    let mut cfg = test_config();
    cfg.max_lag_segments = Count::new(2);
    let o = origin_with(cfg).await;
    let (_e, c, u, _) = engine_port(&o).await;
    let conn = c.connect_raw(&u).await.unwrap();
    let _streams = subscribe_and_never_read(&conn, "s").await;
    let good = tokio::spawn(hear(
        c.connect(&u, Role::Listener, "").await.unwrap(),
        "s",
        None,
    ));
    o.node
        .registry
        .wait_until(|r| r.subscribers("s") == 2)
        .await;
    // 400 frames of 8 KB: far more than a connection's flow-control window.
    const N: u64 = 400;
    const SIZE: usize = 8000;
    publish(&o, "s", N, Duration::from_millis(5), SIZE)
        .await
        .unwrap()
        .unwrap();
    let h = good.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, N, SIZE);
    assert_eq!((h.report.skipped, h.report.missed), (0, 0));
    assert!(
        o.node
            .stats
            .skips_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the stuck listener was moved forward"
    );
    let got = conn.stats().udp_rx.bytes;
    assert!(
        got < N * SIZE as u64 / 2,
        "the engine sent the stuck listener {got} bytes: it should stop at its window"
    );
}
