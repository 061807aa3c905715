//! QUIC's clocks on the node's side, each tested as it happens: a listener whose link is cut
//! is let go at the idle timeout (its subscription with it), a quiet one is kept alive, and
//! one on a lossy link hears every frame (loss recovery), all through a small UDP proxy on
//! loopback that can drop packets or stop forwarding.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quicast::client::Client;
use quicast::proto::{QuicUrl, Role};
use tokio::net::UdpSocket;

/// A UDP proxy to `target`: loses `loss_ppm` of packets each way (a fixed-seed generator),
/// and forwards nothing once `cut` is set.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: SocketAddr, loss_ppm: u64) -> Proxy {
        let down = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = down.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let dice = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
        let lost = move |dice: &AtomicU64| {
            let mut x = dice.load(Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            dice.store(x, Ordering::Relaxed);
            x % 1_000_000 < loss_ppm
        };
        let c = cut.clone();
        tokio::spawn(async move {
            let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = down.recv_from(&mut buf).await {
                let up = match ups.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        ups.insert(from, u.clone());
                        let (u2, down2, c2, dice2) =
                            (u.clone(), down.clone(), c.clone(), dice.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                if !c2.load(Ordering::Relaxed) && !lost(&dice2) {
                                    let _ = down2.send_to(&buf[..n], from).await;
                                }
                            }
                        });
                        u
                    }
                };
                if !c.load(Ordering::Relaxed) && !lost(&dice) {
                    let _ = up.send_to(&buf[..n], target).await;
                }
            }
        });
        Proxy { addr, cut }
    }
}

/// A listener's client and URL for `path` on `s`, through `p`.
fn via(p: &Proxy, s: &Server, path: &str) -> (Client, QuicUrl) {
    (
        Client::for_target(&p.addr, &trust(s)).unwrap(),
        QuicUrl::parse(&format!("quic://{}/{path}", p.addr)).unwrap(),
    )
}

/// The node's QUIC connections now.
fn connections(s: &Server) -> u64 {
    s.node.stats.connections.load(Ordering::Relaxed)
}

/// A listener whose link goes dead (no close, no ICMP: packets simply stop) is let go when
/// its connection's idle timer fires: the connection and its subscription are gone, and the
/// listener beside it keeps hearing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_link_is_cut_is_let_go_at_the_idle_timeout() {
    let o = origin().await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher = publish_until(&o, "s", Duration::from_millis(20), 40, 50, stop);
    let p = Proxy::start(o.addr, 0).await;
    let (c, u) = via(&p, &o, "s");
    let cut_off = c.connect(&u, Role::Listener, "").await.unwrap();
    let (tx, mut heard) = tokio::sync::watch::channel(0usize);
    let _cut_listener = tokio::spawn(hear(cut_off, "s", Some(tx)));
    let (tx, mut other) = tokio::sync::watch::channel(0usize);
    let stays = tokio::spawn(hear(
        session(&o, Role::Listener, "").await.unwrap(),
        "s",
        Some(tx),
    ));
    heard.wait_for(|n| *n >= 20).await.unwrap();
    assert_eq!(o.node.subscriptions_for("s"), 2);
    assert_eq!(connections(&o), 3, "publisher and two listeners");
    p.cut.store(true, Ordering::Relaxed);
    // The node's idle timeout (20 s) lets the silent one go; a minute is the test's guard.
    tokio::time::timeout(
        Duration::from_secs(60),
        o.node.registry.wait_until(|r| r.subscribers("s") == 1),
    )
    .await
    .expect("the cut listener's subscription ended");
    tokio::time::timeout(Duration::from_secs(10), async {
        while connections(&o) != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the cut listener's connection ended");
    // The other listener heard all along.
    let before = *other.borrow();
    other.wait_for(|n| *n >= before + 20).await.unwrap();
    stop_tx.send_replace(true);
    let sent = publisher.await.unwrap().unwrap();
    let h = stays.await.unwrap().unwrap();
    let first = frame_number(&h.frames[0]);
    assert_frames(&h.frames, first, sent, 40);
}

/// A listener waiting for a stream that starts after longer than the idle timeout is kept
/// connected by keep-alives, and hears it from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_waiting_longer_than_the_idle_timeout_is_kept_alive() {
    let o = origin_with(quicast::NodeConfig {
        announce: vec!["later".parse().unwrap()],
        ..test_config()
    })
    .await;
    let p = Proxy::start(o.addr, 0).await;
    let (c, u) = via(&p, &o, "later");
    let s = c.connect(&u, Role::Listener, "").await.unwrap();
    let listener = tokio::spawn(hear(s.clone(), "later", None));
    tokio::time::timeout(
        Duration::from_secs(10),
        o.node.registry.wait_until(|r| r.subscribers("later") == 1),
    )
    .await
    .expect("the listener waits in the stream's waiting room");
    // Nothing to hear for longer than the idle timeout (20 s): only keep-alives flow.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(!s.is_closed(), "the quiet connection is alive");
    publish(&o, "later", 60, Duration::from_millis(5), 40)
        .await
        .unwrap()
        .unwrap();
    let h = listener.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, 60, 40);
    assert_eq!(
        o.node.stats.connections_total.load(Ordering::Relaxed),
        2,
        "the listener never had to connect again"
    );
}

/// A listener on a link that loses 5 % of packets each way hears every frame, in order:
/// QUIC's loss detection and probe timers recover them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_a_lossy_link_hears_every_frame_in_order() {
    let o = origin().await;
    let p = Proxy::start(o.addr, 50_000).await;
    let (c, u) = via(&p, &o, "lossy");
    let s = c.connect(&u, Role::Listener, "").await.unwrap();
    let listener = tokio::spawn(hear(s, "lossy", None));
    tokio::time::timeout(
        Duration::from_secs(10),
        o.node.registry.wait_until(|r| r.subscribers("lossy") == 1),
    )
    .await
    .expect("the listener subscribed through the lossy link");
    const N: u64 = 300;
    publish(&o, "lossy", N, Duration::from_millis(10), 200)
        .await
        .unwrap()
        .unwrap();
    let h = listener.await.unwrap().unwrap();
    assert_frames(&h.frames, 0, N, 200);
    assert_eq!((h.report.skipped, h.report.missed), (0, 0));
}
