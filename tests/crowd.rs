//! The crowd at the door: a burst of newcomers larger than a node's queue all get in (the
//! rest of the crowd is deferred, not refused), and a node really overloaded refuses with a
//! reason a client acts on (when to come back, where else to go), counted.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::procs::{certs, origin_node, publish as publish_proc, BIN};
use common::*;
use quicast::client::{listen_any, ListenEvent, ListenOptions};
use quicast::node::config::Millis;
use quicast::proto::Role;
use quicast::NodeConfig;

/// `/metrics` of the node at `admin`: the sum of `name`'s series whose labels contain
/// `label` ("" for all).
fn metric(admin: &str, name: &str, label: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(label))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_crowd_larger_than_the_queue_all_get_in_and_nobody_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let src = common::media::make_opus(work.path(), 4);
    let c = certs();
    // One QUIC thread whose queue holds what it takes up in 50 ms: a few dozen newcomers.
    let mut o = origin_node(
        &c,
        &[
            "--admin",
            "127.0.0.1:0",
            "--quic-threads",
            "1",
            "--join-queue-ms",
            "50",
        ],
    );
    let admin = o.logged_addr("admin");
    let _publisher = publish_proc(&c, &[&o], "live", &src);
    // 600 listeners starting at the same instant: far more than the queue.
    let out = Command::new(BIN)
        .args([
            "loadgen",
            &o.url("live"),
            "--listeners",
            "600",
            "--ramp",
            "0",
            "--duration",
            "30",
            "--endpoints",
            "2",
            "--fingerprint",
            &c.fp,
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    // Everyone got in and heard the stream; nobody was refused.
    assert_eq!(v["connected"], 600, "{stdout}");
    assert_eq!(v["failed"], 0, "{stdout}");
    assert_eq!(v["refused"], 0, "{stdout}");
    assert_eq!(v["gaps"], 0, "{stdout}");
    assert!(v["frames"].as_u64().unwrap() >= 600 * 50, "{stdout}");
    // The node deferred part of the crowd (their clients sent their Initials again) and
    // says so; it refused nobody for any reason.
    let deferred = metric(&admin, "quicast_newcomers_total", "deferred");
    let queued = metric(&admin, "quicast_newcomers_total", "queued");
    assert!(deferred > 0.0, "deferred {deferred}, queued {queued}");
    assert!(queued > 0.0, "deferred {deferred}, queued {queued}");
    assert_eq!(metric(&admin, "quicast_refusals_total", ""), 0.0);
    assert_eq!(metric(&admin, "quicast_join_queue", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_node_refuses_saying_when_and_where_else_and_counts_it() {
    let alternate = "quic://edge-b.example:4433/";
    let o = origin_with(NodeConfig {
        // The load watch off: the test says when the node is overloaded.
        overload_lag_ms: Millis::new(0),
        alternates: vec![alternate.parse().unwrap()],
        ..test_config()
    })
    .await;
    o.node.set_overloaded(true);
    // A newcomer is refused before any handshake, told why, when to come back and where
    // else to go; the refusal is counted by reason.
    let e = match client(&o)
        .connect(&url(&o, "live"), Role::Listener, "")
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("an overloaded node took a newcomer"),
    };
    let r = e.refusal().unwrap_or_else(|| panic!("not a refusal: {e}"));
    assert_eq!(r.why, "overloaded");
    assert_eq!(r.retry_after, Some(Duration::from_secs(5)));
    assert_eq!(r.alternates, vec![alternate.to_string()]);
    assert_eq!(o.node.stats.shed_total.load(Ordering::Relaxed), 1);
    o.node.set_overloaded(false);
    assert!(client(&o)
        .connect(&url(&o, "live"), Role::Listener, "")
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_listener_comes_back_when_told_and_hears_the_stream() {
    let o = origin_with(NodeConfig {
        overload_lag_ms: Millis::new(0),
        ..test_config()
    })
    .await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher = publish_until(&o, "live", Duration::from_millis(20), 40, 50, stop);
    wait_live(&o, "live").await;
    o.node.set_overloaded(true);
    // A listener refused now comes back (jittered, about the retry-after) and hears the
    // stream once the node takes newcomers again.
    let nodes = vec![(client(&o), url(&o, "live"))];
    let (heard_tx, mut heard) = tokio::sync::watch::channel(0usize);
    let listener = tokio::spawn(async move {
        let mut frames = Vec::new();
        let opts = ListenOptions {
            path: "live".into(),
            deadline: Some(tokio::time::Instant::now() + Duration::from_secs(60)),
            silence: Duration::from_secs(5),
            token: String::new(),
            low_latency: false,
        };
        let _ = listen_any(&nodes, &opts, |ev| {
            if let ListenEvent::Frames(f) = ev {
                frames.extend_from_slice(f);
                heard_tx.send_replace(frames.len());
                if frames.len() >= 60 {
                    return Err(quicast::Error::local("heard enough"));
                }
            }
            Ok(())
        })
        .await;
        frames
    });
    let shed = || o.node.stats.shed_total.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(30);
    while shed() < 1 {
        assert!(Instant::now() < until, "the listener never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_at = Instant::now();
    o.node.set_overloaded(false);
    heard.wait_for(|n| *n >= 60).await.unwrap();
    // It waited as told (retry-after 5 s, jittered by half either way), not at once.
    assert!(refused_at.elapsed() >= Duration::from_millis(2400));
    assert_eq!(shed(), 1, "it came back once, not in a loop");
    let frames = listener.await.unwrap();
    let first = frame_number(&frames[0]);
    assert_frames(&frames, first, first + frames.len() as u64, 40);
    stop_tx.send_replace(true);
    publisher.await.unwrap().unwrap();
}
