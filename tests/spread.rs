//! The tree spreads: with `parent-choice = "hash"` every relay sends a stream to the same
//! parent, different streams to different parents, and a parent's loss or arrival moves
//! only the streams it takes or gives. Separate processes (one origin, four or five mids,
//! three edges); the test process publishes a hundred streams to the origin and listens
//! to every stream at every edge, checking each listener heard one unbroken run of frames.
//!
//! Hedging is off here so that each stream has exactly one parent per relay; with hedging
//! the standby is the second parent of the same order (see `failover.rs`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::{codec, frame_number, hear, test_frame, Heard};
use quicast::client::{Client, Session};
use quicast::proto::{QuicUrl, Role};
use quicast::Trust;
use tokio::sync::watch;

const STREAMS: usize = 100;

/// A listener's (edge, stream, frame numbers heard, frames its publisher sent).
type Heard4 = (String, String, Vec<u64>, u64);

/// The tests share the machine's two cores: one tree of ten processes at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn name(i: usize) -> String {
    format!("s{i:03}")
}

/// The test process's side: publishers into the origin, listeners at the edges.
struct Traffic {
    rt: tokio::runtime::Runtime,
    trust: Trust,
    stop: watch::Sender<bool>,
    publishers: Vec<tokio::task::JoinHandle<quicast::Result<u64>>>,
    /// (edge QUIC address, stream) → what its listener heard; progress in frames.
    listeners: Vec<(
        String,
        String,
        tokio::task::JoinHandle<quicast::Result<Heard>>,
    )>,
    progress: Vec<watch::Receiver<usize>>,
}

impl Traffic {
    fn new(c: &Certs) -> Traffic {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Traffic {
            rt,
            trust: Trust::pinned(&[c.fp.parse().unwrap()]),
            stop: watch::channel(false).0,
            publishers: Vec::new(),
            listeners: Vec::new(),
            progress: Vec::new(),
        }
    }

    async fn connect(trust: &Trust, addr: &str, role: Role) -> Arc<Session> {
        let c = Client::for_target(&addr.parse().unwrap(), trust).unwrap();
        let u = QuicUrl::parse(&format!("quic://{addr}/x")).unwrap();
        c.connect(&u, role, "").await.unwrap()
    }

    /// Publishes every stream to the origin (a connection each): frames of 20 ms, five at a
    /// time every 100 ms, until told to stop. Returns once every stream is being published.
    fn publish_all(&mut self, origin: &str) {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..STREAMS {
            let (trust, origin, tx) = (self.trust.clone(), origin.to_string(), tx.clone());
            let stop = self.stop.subscribe();
            self.publishers.push(self.rt.spawn(async move {
                let s = Traffic::connect(&trust, &origin, Role::Publisher).await;
                let mut p = s.publish(&name(i), codec(), None).await?;
                let _ = tx.send(());
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut n = 0;
                while !*stop.borrow() {
                    tick.tick().await;
                    let frames: Vec<_> = (n..n + 5).map(|k| test_frame(k, 80)).collect();
                    p.send(&frames).await?;
                    n += 5;
                }
                p.finish().await?;
                Ok(n)
            }));
        }
        for _ in 0..STREAMS {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("a publisher was refused");
        }
    }

    /// Listens to every stream at `edge`, ten streams per connection.
    fn listen_all(&mut self, edge: &str) {
        for chunk in (0..STREAMS).collect::<Vec<_>>().chunks(10) {
            let s = self
                .rt
                .block_on(Traffic::connect(&self.trust, edge, Role::Listener));
            for &i in chunk {
                let (tx, rx) = watch::channel(0usize);
                self.progress.push(rx);
                let s = s.clone();
                let h = self
                    .rt
                    .spawn(async move { hear(s, &name(i), Some(tx)).await });
                self.listeners.push((edge.to_string(), name(i), h));
            }
        }
    }

    /// Waits until every listener has heard at least `frames` more frames than now.
    fn flow(&mut self, frames: usize) {
        let progress = self.progress.clone();
        // Every target is taken now, before waiting on any, or each would wait its own turn.
        let wants: Vec<_> = progress
            .into_iter()
            .map(|p| {
                let want = *p.borrow() + frames;
                (want, p)
            })
            .collect();
        self.rt.block_on(async move {
            for (want, mut p) in wants {
                p.wait_for(|n| *n >= want).await.unwrap();
            }
        });
    }

    /// Ends every broadcast; returns each listener's (edge, stream, frame numbers heard,
    /// frames published).
    fn finish(self) -> Vec<Heard4> {
        self.stop.send_replace(true);
        self.rt.block_on(async move {
            let mut published = Vec::new();
            for p in self.publishers {
                published.push(p.await.unwrap().unwrap());
            }
            let mut heard = Vec::new();
            for (edge, stream, h) in self.listeners {
                let h = h.await.unwrap().unwrap();
                assert!(
                    h.report.ended,
                    "{stream} at {edge}: the broadcast's end reached it"
                );
                let i: usize = stream[1..].parse().unwrap();
                let frames = h.frames.iter().map(frame_number).collect();
                heard.push((edge, stream, frames, published[i]));
            }
            heard
        })
    }
}

/// Every listener heard one unbroken run of frames (none missing, none twice), ending with
/// the last frame published.
fn assert_unbroken(heard: &[Heard4]) {
    for (edge, stream, frames, published) in heard {
        // Every test lets at least 25 frames flow to every listener before it ends.
        assert!(
            frames.len() >= 25,
            "{stream} at {edge}: {} frames",
            frames.len()
        );
        assert_eq!(
            frames.last(),
            Some(&(published - 1)),
            "{stream} at {edge}: the last frame"
        );
        let first = frames[0];
        let want: Vec<u64> = (first..first + frames.len() as u64).collect();
        assert!(
            *frames == want,
            "{stream} at {edge}: frames are not one unbroken run: {frames:?}"
        );
    }
}

/// Waits until `relay` has said where each of the streams comes from, and returns its
/// latest choice for each (stream → parent).
fn choices(relay: &mut Node, streams: usize) -> BTreeMap<String, String> {
    loop {
        let mut latest: BTreeMap<String, Vec<String>> =
            parent_choices(&relay.p.log).into_iter().collect();
        // A stream whose parent is lost has none for a moment: wait for its next one.
        latest.retain(|_, p| !p.is_empty());
        let latest: BTreeMap<String, String> = latest
            .into_iter()
            .map(|(s, p)| {
                assert_eq!(p.len(), 1, "{s}: hedging is off, one parent a stream");
                (s, p[0].clone())
            })
            .collect();
        if latest.len() >= streams {
            return latest;
        }
        relay.p.wait_line("stream comes from");
    }
}

/// The stream → parent map every edge agrees on.
fn agreed(edges: &mut [Node]) -> BTreeMap<String, String> {
    let maps: Vec<_> = edges.iter_mut().map(|e| choices(e, STREAMS)).collect();
    for m in &maps[1..] {
        assert_eq!(*m, maps[0], "every edge sends a stream to the same mid");
    }
    maps.into_iter().next().unwrap()
}

/// What `quicast` would compute for `parents` (in the order the edges list them).
fn predicted(parents: &[&Node]) -> BTreeMap<String, String> {
    let named: Vec<(&str, u32)> = parents.iter().map(|p| (p.addr.as_str(), 1)).collect();
    (0..STREAMS)
        .map(|i| {
            let first = quicast::node::hash_order(&named, &name(i))[0];
            (name(i), parents[first].addr.clone())
        })
        .collect()
}

/// `/streams` of a node, the streams it carries (it lists the tree's): stream →
/// (listeners, parents).
fn streams_json(http: &str) -> BTreeMap<String, (u64, Vec<String>)> {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{http}/streams")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["carried"] == true)
        .map(|s| {
            let parents = s["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            (
                s["name"].as_str().unwrap().to_string(),
                (s["listeners"].as_u64().unwrap(), parents),
            )
        })
        .collect()
}

fn count_by_parent(map: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for p in map.values() {
        *n.entry(p.clone()).or_insert(0) += 1;
    }
    n
}

struct Tree {
    c: Certs,
    origin: Node,
    origin_http: String,
    mids: Vec<Node>,
    edges: Vec<Node>,
}

fn tree(mids: usize) -> Tree {
    let c = certs();
    let mut origin = origin_node(&c, &["--http", "127.0.0.1:0"]);
    let origin_http = origin.http_addr();
    let mids = (0..mids)
        .map(|_| relay_node(&c, &[&origin], &["--http", "127.0.0.1:0"]))
        .collect();
    Tree {
        c,
        origin,
        origin_http,
        mids,
        edges: Vec::new(),
    }
}

impl Tree {
    /// Three edges listing the mids `which` (all four, or five), hashing, hedging off.
    fn edges(&self, which: &[usize]) -> Vec<Node> {
        let parents: Vec<&Node> = which.iter().map(|&i| &self.mids[i]).collect();
        (0..3)
            .map(|_| {
                relay_node(
                    &self.c,
                    &parents,
                    &[
                        "--parent-choice",
                        "hash",
                        "--hedge",
                        "off",
                        "--http",
                        "127.0.0.1:0",
                    ],
                )
            })
            .collect()
    }
}

#[test]
fn a_hundred_streams_spread_over_four_mids_each_stream_on_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = tree(4);
    t.edges = t.edges(&[0, 1, 2, 3]);
    let mut traffic = Traffic::new(&t.c);
    traffic.publish_all(&t.origin.addr);
    for e in &t.edges {
        traffic.listen_all(&e.addr);
    }
    traffic.flow(50);

    // Every edge sends a stream to the same mid: the one the hash names.
    let map = agreed(&mut t.edges);
    let mids: Vec<&Node> = t.mids.iter().collect();
    assert_eq!(map, predicted(&mids));
    // About a quarter each. The hash of 100 names over 4 parents is binomial(100, 1/4):
    // mean 25, sd 4.3; a mid outside 5..=45 has a probability below 1e-5 per run. Taking
    // parents in order would put all 100 on the first mid and none on the others.
    let counts = count_by_parent(&map);
    assert_eq!(counts.len(), 4, "every mid carries streams: {counts:?}");
    for (mid, n) in &counts {
        assert!((5..=45).contains(n), "{mid} carries {n} of {STREAMS}");
    }
    // Each mid holds state for its streams only, one subscription from each edge; the
    // origin sees one subscription per stream (from the one mid that carries it).
    for m in &mut t.mids {
        let held = streams_json(&m.http_addr());
        let mine: BTreeSet<&String> = map
            .iter()
            .filter(|(_, p)| **p == m.addr)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            held.keys().collect::<BTreeSet<_>>(),
            mine,
            "{} holds its streams only",
            m.addr
        );
        for (s, (listeners, _)) in &held {
            assert_eq!(
                *listeners, 3,
                "{s} at {}: one subscription per edge",
                m.addr
            );
        }
    }
    let at_origin = streams_json(&t.origin_http);
    assert_eq!(at_origin.len(), STREAMS);
    for (s, (listeners, _)) in &at_origin {
        assert_eq!(*listeners, 1, "{s}: the origin serves it to one mid");
    }
    // And the edges say where each stream comes from where operators look.
    for e in &mut t.edges {
        let shown = streams_json(&e.http_addr());
        for (s, (_, parents)) in &shown {
            assert_eq!(parents, &vec![map[s].clone()], "{s} at {}", e.addr);
        }
    }
    assert_unbroken(&traffic.finish());
}

#[test]
fn a_mid_killed_moves_only_its_streams_spread_over_the_others() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = tree(4);
    t.edges = t.edges(&[0, 1, 2, 3]);
    let mut traffic = Traffic::new(&t.c);
    traffic.publish_all(&t.origin.addr);
    for e in &t.edges {
        traffic.listen_all(&e.addr);
    }
    traffic.flow(50);
    let before = agreed(&mut t.edges);

    let victim = t.mids[1].addr.clone();
    t.mids[1].kill9();
    let moving: BTreeSet<String> = before
        .iter()
        .filter(|(_, p)| **p == victim)
        .map(|(s, _)| s.clone())
        .collect();
    assert!(!moving.is_empty());
    // Each edge says where each of the victim's streams comes from now.
    for e in &mut t.edges {
        loop {
            let moved = parent_choices(&e.p.log)
                .into_iter()
                .filter(|(s, p)| moving.contains(s) && p.first().is_some_and(|p| *p != victim))
                .map(|(s, _)| s)
                .collect::<BTreeSet<_>>();
            if moved.len() == moving.len() {
                break;
            }
            e.p.wait_line("stream comes from");
        }
    }
    let after = agreed(&mut t.edges);
    let survivors: Vec<&Node> = [0, 2, 3].iter().map(|&i| &t.mids[i]).collect();
    let next = predicted(&survivors);
    for (s, p) in &after {
        if moving.contains(s) {
            // The next of its order: the same on every edge, never the victim.
            assert_eq!(*p, next[s], "{s} moved to the next mid of its order");
        } else {
            assert_eq!(*p, before[s], "{s} did not move");
        }
    }
    // The victim's streams spread over the survivors (about a third each; each survivor
    // taking none of ~25 has a probability of (2/3)^25 < 1e-4).
    let moved: BTreeMap<String, String> = after
        .iter()
        .filter(|(s, _)| moving.contains(*s))
        .map(|(s, p)| (s.clone(), p.clone()))
        .collect();
    assert_eq!(
        count_by_parent(&moved).len(),
        3,
        "spread over all three: {moved:?}"
    );
    // A stream that did not move was never touched: its edges said where it comes from
    // once, ever.
    for e in &t.edges {
        for s in before.keys().filter(|s| !moving.contains(*s)) {
            let said = parent_choices(&e.p.log)
                .iter()
                .filter(|(x, _)| x == s)
                .count();
            assert_eq!(said, 1, "{s} at {}", e.addr);
        }
    }
    traffic.flow(50);
    // Every listener, moved or not, heard every frame.
    assert_unbroken(&traffic.finish());
}

#[test]
fn a_fifth_mid_takes_about_a_fifth_of_the_streams_and_no_more() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = tree(5);
    t.edges = t.edges(&[0, 1, 2, 3]);
    let mut traffic = Traffic::new(&t.c);
    traffic.publish_all(&t.origin.addr);
    for e in &t.edges {
        traffic.listen_all(&e.addr);
    }
    traffic.flow(25);
    let four = agreed(&mut t.edges);
    // The edges restarted with the fifth mid added to their lists.
    for e in &mut t.edges {
        e.kill9();
    }
    traffic.progress.clear();
    let mut edges = t.edges(&[0, 1, 2, 3, 4]);
    for e in &edges {
        traffic.listen_all(&e.addr);
    }
    traffic.flow(25);
    let five = agreed(&mut edges);
    let mids: Vec<&Node> = t.mids.iter().collect();
    assert_eq!(five, predicted(&mids));
    let new = &t.mids[4].addr;
    let moved: Vec<&String> = five.keys().filter(|s| five[*s] != four[*s]).collect();
    for s in &moved {
        assert_eq!(&five[*s], new, "{s} moved, and only to the new mid");
    }
    // About a fifth: binomial(100, 1/5), mean 20, sd 4; outside 5..=40 with a probability
    // below 1e-4. Taking parents in order would have moved none to it; hashing the stream
    // over the list size (modulo) would have moved about four fifths.
    assert!(
        (5..=40).contains(&moved.len()),
        "{} of {STREAMS} moved",
        moved.len()
    );
    // The old edges' listeners ended when those edges were killed; the new ones' heard
    // one unbroken run.
    let heard = {
        let mut traffic = traffic;
        let old: BTreeSet<String> = t.edges.iter().map(|e| e.addr.clone()).collect();
        traffic.listeners.retain(|(e, _, _)| !old.contains(e));
        traffic.finish()
    };
    assert_eq!(heard.len(), 3 * STREAMS);
    assert_unbroken(&heard);
}
