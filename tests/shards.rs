//! A QUIC port served by several threads: each connection lives on one, and its packets
//! reach that one whatever address they come from.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use quicast::node::config::Count;
use quicast::proto::Role;

/// A listener whose address changes eight times mid-stream (a phone between networks, a NAT
/// rebinding) keeps its one connection and hears every frame: its packets are steered to
/// the thread that holds its connection by the connection ID, not by the address. With four
/// threads and steering by address, each move would land on the wrong thread three times in
/// four, which answers with a stateless reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_moves_keeps_its_connection_and_every_frame() {
    let o = origin_with(quicast::NodeConfig {
        quic_threads: Some(Count::new(4)),
        ..test_config()
    })
    .await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher = publish_until(&o, "s", Duration::from_millis(5), 40, 50, stop);
    let c = client(&o);
    let s = c.connect(&url(&o, "s"), Role::Listener, "").await.unwrap();
    let (tx, mut heard) = tokio::sync::watch::channel(0usize);
    let listener = tokio::spawn(hear(s.clone(), "s", Some(tx)));
    for k in 1..=8usize {
        // Audio flowing, then a move; the next moves once audio flows again.
        heard.wait_for(|n| *n >= k * 40).await.unwrap();
        c.rebind().unwrap();
    }
    heard.wait_for(|n| *n >= 9 * 40).await.unwrap();
    stop_tx.send_replace(true);
    let sent = publisher.await.unwrap().unwrap();
    let h = listener.await.unwrap().unwrap();
    assert_frames(
        &h.frames,
        h.frames.first().map_or(0, frame_number),
        sent,
        40,
    );
    assert!(h.frames.len() >= 9 * 40);
    // One connection for the listener, one for the publisher: none was made again.
    assert_eq!(o.node.stats.connections_total.load(Ordering::Relaxed), 2);
    assert!(!s.is_closed());
}
