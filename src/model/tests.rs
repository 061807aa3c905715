use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::proto::{ErrorCode, Frame, Start};
use futures_util::FutureExt;

fn cfg(window: u64, max_lag: u64) -> StoreConfig {
    StoreConfig {
        cache_bytes: 64 << 20,
        cache_ttl: Duration::from_secs(60),
        window,
        max_lag,
        max_streams: 100,
        max_waiting: 100,
        pacing: Pacing::new(PaceMode::Fixed(Duration::ZERO), 1452, vec![]),
    }
}

fn frame(n: u64) -> WireFrame {
    WireFrame::new(Frame {
        pts: n * 960,
        duration: 960,
        wall_us: n,
        payload: Bytes::from(vec![0xf8, n as u8]),
    })
}

fn bcast(window: u64, max_lag: u64) -> Arc<Broadcast> {
    let c = cfg(window, max_lag);
    let cache = SegmentCache::new(&c);
    let codec = crate::media::OpusHead::synthetic(2).codec();
    Broadcast::new("t", 1, codec, Provenance::here(), &cache, &c)
}

/// Steps that are ready now (no waiting).
fn drain(c: &mut Cursor) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(s) = c.next().now_or_never() {
        out.push(match s {
            Step::Begin(q) => format!("B{q}"),
            Step::Frames(Batch::Frames(f)) => format!(
                "F{}",
                f.iter()
                    .map(|x| x.frame.wall_us.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Step::Frames(Batch::Wire(w)) => format!("W{}", w.len()),
            Step::Frames(Batch::Http(p, n)) => format!("O{}:{n}", p.len()),
            Step::Sealed(q) => format!("E{q}"),
            Step::Skip { from, to } => format!("S{from}>{to}"),
            Step::Finished => {
                out.push("done".into());
                break;
            }
        });
    }
    out
}

#[test]
fn live_cursor_starts_at_the_open_segment_start_and_follows() {
    let b = bcast(8, 3);
    let s0 = b.begin(0).unwrap();
    b.append(&s0, frame(0)).unwrap();
    let s1 = b.begin(1).unwrap();
    b.append(&s1, frame(1)).unwrap();
    b.append(&s1, frame(2)).unwrap();
    let mut c = b.cursor(Start::Live);
    // Joins at the start of the segment being produced, with what it has so far (the burst).
    assert_eq!(drain(&mut c), ["B1", "F1,2"]);
    b.append(&s1, frame(3)).unwrap();
    assert_eq!(drain(&mut c), ["F3"]);
    let s2 = b.begin(2).unwrap();
    b.append(&s2, frame(4)).unwrap();
    assert_eq!(drain(&mut c), ["E1", "B2", "F4"]);
    b.finish();
    assert_eq!(drain(&mut c), ["E2", "done"]);
}

#[test]
fn waiting_cursor_gets_the_first_segment() {
    let b = bcast(8, 3);
    let mut c = b.cursor(Start::Live);
    assert!(drain(&mut c).is_empty(), "nothing yet: the cursor waits");
    let s = b.begin(0).unwrap();
    b.append(&s, frame(0)).unwrap();
    assert_eq!(drain(&mut c), ["B0", "F0"]);
}

#[test]
fn a_waiting_cursor_hears_from_the_first_segment_even_if_several_were_cut() {
    let b = bcast(8, 3);
    let mut waited = b.cursor_from_first();
    let mut live = b.cursor(Start::Live);
    for q in 0..3 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    assert_eq!(
        drain(&mut waited),
        ["B0", "F0", "E0", "B1", "F1", "E1", "B2", "F2"]
    );
    assert_eq!(drain(&mut live), ["B2", "F2"]);
}

#[test]
fn a_cursor_can_start_further_back_than_the_live_edge() {
    let b = bcast(8, 3);
    for q in 0..3 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    let mut c = b.cursor(Start::Live);
    c.back(1);
    assert_eq!(drain(&mut c), ["B1", "F1", "E1", "B2", "F2"]);
    let mut c = b.cursor(Start::Live);
    c.back(10);
    assert_eq!(drain(&mut c)[0], "B0", "never before the first segment");
}

#[test]
fn cursor_from_a_sequence_number_replays_the_window() {
    let b = bcast(8, 10);
    for q in 0..4 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    let mut c = b.cursor(Start::Seq(1));
    assert_eq!(
        drain(&mut c),
        ["B1", "F1", "E1", "B2", "F2", "E2", "B3", "F3"]
    );
}

#[test]
fn evicted_start_moves_to_the_oldest_held_and_counts_a_skip() {
    let b = bcast(2, 10);
    for q in 0..6 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    let mut c = b.cursor(Start::Seq(0));
    let steps = drain(&mut c);
    assert_eq!(steps[0], "S0>3", "{steps:?}");
    assert_eq!(&steps[1..3], ["B3", "F3"]);
    assert_eq!(c.skipped, 1);
}

#[test]
fn a_blocked_cursor_too_far_behind_is_moved_to_the_newest_segment() {
    let b = bcast(8, 2);
    let s0 = b.begin(0).unwrap();
    b.append(&s0, frame(0)).unwrap();
    let mut c = b.cursor(Start::Live);
    assert_eq!(drain(&mut c), ["B0", "F0"]);
    b.append(&s0, frame(1)).unwrap();
    let s1 = b.begin(1).unwrap();
    b.append(&s1, frame(2)).unwrap();
    assert!(c.lagging().now_or_never().is_none(), "1 behind is fine");
    // The subscriber's writes block while two more segments are made.
    for q in 2..4 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q + 1)).unwrap();
    }
    assert!(
        c.lagging().now_or_never().is_some(),
        "3 behind with max_lag 2 is lagging"
    );
    assert!(matches!(c.skip_to_live(), Step::Skip { from: 0, to: 3 }));
    assert_eq!(drain(&mut c), ["B3", "F4"]);
    assert_eq!(c.skipped, 1);
    assert!(c.lagging().now_or_never().is_none());
}

#[test]
fn a_cursor_that_keeps_stepping_is_never_skipped() {
    // A relay catching up after failover: the edge runs ahead in a burst, and a subscriber
    // reading as fast as it comes must still get every segment.
    let b = bcast(16, 1);
    let mut c = b.cursor(Start::Seq(0));
    for q in 0..6 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    b.finish();
    let steps = drain(&mut c);
    assert!(steps.iter().all(|s| !s.starts_with('S')), "{steps:?}");
    assert_eq!(steps.iter().filter(|s| s.starts_with('F')).count(), 6);
}

#[test]
fn segments_only_grow_and_are_bounded() {
    let b = bcast(8, 3);
    let s = b.begin(5).unwrap();
    assert!(b.begin(5).is_err());
    assert!(b.begin(4).is_err());
    for n in 0..crate::proto::MAX_FRAMES_PER_SEGMENT as u64 {
        b.append(&s, frame(n)).unwrap();
    }
    assert!(
        b.append(&s, frame(0)).is_err(),
        "frame count per segment is bounded"
    );
    b.seal(&s);
    assert!(
        b.append(&s, frame(0)).is_err(),
        "a sealed segment takes no frames"
    );
}

#[test]
fn store_holds_a_window_per_stream() {
    let b = bcast(3, 3);
    for q in 0..20 {
        let s = b.begin(q).unwrap();
        b.append(&s, frame(q)).unwrap();
    }
    let held: Vec<u64> = (0..20).filter(|q| b.segment(*q).is_some()).collect();
    assert_eq!(held, [16, 17, 18, 19]);
}

#[test]
fn cache_is_bounded_by_bytes() {
    let c = StoreConfig {
        cache_bytes: 64 * 1024,
        cache_ttl: Duration::from_secs(60),
        window: 1000,
        max_lag: 3,
        max_streams: 100,
        max_waiting: 100,
        pacing: Pacing::new(PaceMode::Fixed(Duration::ZERO), 1452, vec![]),
    };
    let cache = SegmentCache::new(&c);
    let b = Broadcast::new(
        "t",
        1,
        crate::media::OpusHead::synthetic(1).codec(),
        crate::model::Provenance::here(),
        &cache,
        &c,
    );
    for q in 0..200 {
        let s = b.begin(q).unwrap();
        b.append(
            &s,
            WireFrame::new(Frame {
                pts: q,
                duration: 960,
                wall_us: 0,
                payload: Bytes::from(vec![0xf8; 4000]),
            }),
        )
        .unwrap();
        b.seal(&s);
    }
    assert!(
        cache.weighted_bytes() <= 64 * 1024,
        "{}",
        cache.weighted_bytes()
    );
}

#[test]
fn frames_are_shared_not_copied() {
    let b = bcast(8, 3);
    let s = b.begin(0).unwrap();
    b.append(&s, frame(7)).unwrap();
    let mut c1 = b.cursor(Start::Live);
    let mut c2 = b.cursor(Start::Live);
    let get = |c: &mut Cursor| loop {
        if let Some(Step::Frames(Batch::Frames(f))) = c.next().now_or_never() {
            return f;
        }
    };
    let (f1, f2) = (get(&mut c1), get(&mut c2));
    assert_eq!(
        f1[0].record.as_ptr(),
        f2[0].record.as_ptr(),
        "one copy per node"
    );
}

#[tokio::test]
async fn registry_counts_subscribers_and_removes_only_idle_slots() {
    let r = Registry::new(cfg(8, 3));
    let (g1, created) = r.subscribe("a", Create::Waiting).unwrap();
    assert!(created);
    let (g2, created) = r.subscribe("a", Create::Waiting).unwrap();
    assert!(!created);
    assert_eq!(r.subscribers("a"), 2);
    assert!(!r.remove_if_idle(&g1.slot));
    let slot = g1.slot.clone();
    drop(g1);
    drop(g2);
    r.wait_until(|r| r.subscribers("a") == 0).await;
    let claim = slot.claim_publisher(None).unwrap();
    assert!(
        slot.claim_publisher(None).is_none(),
        "one publisher per stream"
    );
    assert!(!r.remove_if_idle(&slot), "a published stream stays");
    slot.release_publisher(claim.id);
    assert!(r.remove_if_idle(&slot));
    assert!(r.get("a").is_none());
}

#[test]
fn a_publisher_with_the_same_credential_takes_over_and_others_are_refused() {
    let r = Registry::new(cfg(8, 3));
    let (slot, _) = r.slot("a").unwrap();
    let key = Some([7u8; 32]);
    let first = slot.claim_publisher(key).unwrap();
    assert!(!first.took_over);
    assert!(
        slot.claim_publisher(None).is_none(),
        "no credential: refused"
    );
    assert!(
        slot.claim_publisher(Some([8u8; 32])).is_none(),
        "another credential: refused"
    );
    let second = slot.claim_publisher(key).unwrap();
    assert!(second.took_over);
    // The first is told to go, and giving up the role it no longer holds changes nothing.
    assert!(first.displaced.notified().now_or_never().is_some());
    slot.release_publisher(first.id);
    assert!(slot.is_publisher(second.id));
    // An open node's publishers (no credential) cannot take over from each other.
    let (open, _) = r.slot("b").unwrap();
    open.claim_publisher(None).unwrap();
    assert!(open.claim_publisher(None).is_none());
}

#[test]
fn waiting_rooms_are_bounded_apart_from_live_streams() {
    let c = StoreConfig {
        max_streams: 2,
        max_waiting: 3,
        ..cfg(8, 3)
    };
    let r = Registry::with_announced(c, Announced::new(vec!["events/".into(), "keynote".into()]));
    let mut held = Vec::new();
    for name in ["x1", "x2", "x3"] {
        held.push(r.subscribe(name, Create::Waiting).unwrap().0);
    }
    let e = r.subscribe("x4", Create::Waiting).err().unwrap();
    assert_eq!(e.code(), ErrorCode::Overloaded);
    assert!(e.to_string().contains("waiting rooms"), "{e}");
    assert_eq!(r.waiting(), 3);
    // Full of waiting rooms, the node still takes publishers, and announced names wait.
    let (live, _) = r.slot("live").unwrap();
    held.push(r.subscribe("events/day-1", Create::Waiting).unwrap().0);
    assert!(
        r.slot("third").is_err(),
        "live streams have their own bound"
    );
    assert!(r.is_announced("keynote") && !r.is_announced("keynote2"));
    assert!(!r.is_announced("events") && !r.is_announced("eventsx/a"));
    // A waiting room that goes live is no longer counted; a removed one neither.
    held[0].slot.set_broadcast(Some(bcast(8, 3)));
    assert_eq!(r.waiting(), 2);
    let gone = held.remove(1).slot.clone();
    r.remove(&gone);
    assert_eq!(r.waiting(), 1);
    r.subscribe("x5", Create::Waiting).unwrap();
    drop(live);
    // A relay's asking slot is not counted until its parent has had its chance.
    let (asking, _) = r.subscribe("x6", Create::Asking).unwrap();
    assert_eq!(r.waiting(), 2);
    r.count_waiting(&asking.slot).unwrap();
    assert_eq!(r.waiting(), 3);
    let (more, _) = r.subscribe("x7", Create::Asking).unwrap();
    assert!(r.count_waiting(&more.slot).is_err(), "over the bound");
}

/// A broadcast that wakes its subscribers at most once per 100 ms.
fn coalescing() -> Arc<Broadcast> {
    let c = StoreConfig {
        pacing: Pacing::new(PaceMode::Fixed(Duration::from_millis(100)), 1452, vec![]),
        ..cfg(8, 3)
    };
    let cache = SegmentCache::new(&c);
    Broadcast::new(
        "t",
        1,
        crate::media::OpusHead::synthetic(2).codec(),
        crate::model::Provenance::here(),
        &cache,
        &c,
    )
}

#[tokio::test(start_paused = true)]
async fn coalesced_wake_ups_come_once_per_interval_and_are_never_lost() {
    let b = coalescing();
    let s = b.begin(0).unwrap();
    b.append(&s, frame(0)).unwrap();
    let mut cur = b.cursor(Start::Live);
    assert_eq!(drain(&mut cur), ["B0", "F0"]);
    let t0 = tokio::time::Instant::now();
    let waiter = tokio::spawn(async move {
        let step = cur.next().await;
        (tokio::time::Instant::now(), step)
    });
    tokio::task::yield_now().await;
    // Two frames within the interval: the waiting subscriber is not woken for either ...
    tokio::time::advance(Duration::from_millis(20)).await;
    b.append(&s, frame(1)).unwrap();
    tokio::time::advance(Duration::from_millis(20)).await;
    b.append(&s, frame(2)).unwrap();
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "woken before the interval");
    // ... until the interval is up, and then it gets both in one step.
    let (at, step) = waiter.await.unwrap();
    assert_eq!(at - t0, Duration::from_millis(100));
    match step {
        Step::Frames(Batch::Frames(f)) => assert_eq!(
            f.iter().map(|x| x.frame.wall_us).collect::<Vec<_>>(),
            [1, 2]
        ),
        other => panic!("expected frames, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_segment_boundary_waits_for_the_interval_like_frames() {
    let b = coalescing();
    let s0 = b.begin(0).unwrap();
    b.append(&s0, frame(0)).unwrap();
    let mut cur = b.cursor(Start::Live);
    assert_eq!(drain(&mut cur), ["B0", "F0"]);
    let t0 = tokio::time::Instant::now();
    let waiter = tokio::spawn(async move {
        let step = cur.next().await;
        (tokio::time::Instant::now(), step, cur)
    });
    tokio::task::yield_now().await;
    // Segment 0 ends and 1 begins within the interval: no wake-up of its own (it would cost
    // every subscriber a packet) ...
    tokio::time::advance(Duration::from_millis(20)).await;
    b.seal(&s0);
    let s1 = b.begin(1).unwrap();
    b.append(&s1, frame(1)).unwrap();
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "woken by the segment boundary");
    // ... the subscriber gets the end, the beginning and the frame together, at the interval.
    let (at, step, mut cur) = waiter.await.unwrap();
    assert_eq!(at - t0, Duration::from_millis(100));
    assert!(matches!(step, Step::Sealed(0)), "{step:?}");
    assert_eq!(drain(&mut cur), ["B1", "F1"]);
}

#[test]
fn a_node_holds_at_most_max_streams_names() {
    let r = Registry::new(StoreConfig {
        max_streams: 3,
        ..cfg(8, 3)
    });
    let slots: Vec<_> = ["a", "b", "c"].iter().map(|p| r.slot(p).unwrap()).collect();
    let e = r.slot("d").err().expect("a fourth name is refused");
    assert_eq!(e.code(), ErrorCode::Overloaded);
    // Names it holds still take subscribers.
    r.subscribe("a", Create::Waiting).unwrap();
    drop(slots);
}

/// The next `Step::Frames` of `c` (skipping Begin), in the form `form`.
fn step(c: &mut Cursor, form: Form) -> Batch {
    c.set_form(form);
    loop {
        match c.next().now_or_never() {
            Some(Step::Frames(b)) => return b,
            Some(Step::Begin(_)) => {}
            other => panic!("expected frames, got {other:?}"),
        }
    }
}

fn wire(c: &mut Cursor) -> Vec<Bytes> {
    match step(c, Form::Wire) {
        Batch::Wire(w) => w,
        other => panic!("asked for wire records, got {other:?}"),
    }
}

fn frames(c: &mut Cursor) -> Vec<WireFrame> {
    match step(c, Form::Frames) {
        Batch::Frames(f) => f,
        other => panic!("asked for frames, got {other:?}"),
    }
}

fn records(f: &[WireFrame]) -> Vec<u8> {
    f.iter().flat_map(|s| s.record.iter().copied()).collect()
}

fn joined(w: &[Bytes]) -> Vec<u8> {
    w.iter().flat_map(|b| b.iter().copied()).collect()
}

#[test]
fn subscribers_at_the_edge_share_one_run_of_wire_records_per_batch() {
    let b = bcast(8, 3);
    let s = b.begin(0).unwrap();
    // Two subscribers that forward records, one that re-packages frames.
    let (mut c1, mut c2) = (b.cursor(Start::Live), b.cursor(Start::Live));
    let mut cf = b.cursor(Start::Live);
    for n in 0..5 {
        b.append_quiet(&s, frame(n)).unwrap();
    }
    b.flush();
    let (w1, w2) = (wire(&mut c1), wire(&mut c2));
    let f1 = frames(&mut cf);
    assert_eq!(f1.len(), 5);
    assert_eq!((w1.len(), w2.len()), (1, 1), "one chunk for the batch");
    assert_eq!(
        w1[0].as_ptr(),
        w2[0].as_ptr(),
        "the same bytes, not a copy each"
    );
    assert_eq!(
        joined(&w1),
        records(&f1),
        "the run is the records, in order"
    );
    for (n, f) in f1.iter().enumerate() {
        assert_eq!(f.frame.payload.as_ref(), [0xf8, n as u8]);
        let mut rec = bytes::BytesMut::from(&f.record[..]);
        let (decoded, _) = Frame::decode(&mut rec).unwrap().unwrap();
        assert_eq!(decoded.payload, f.frame.payload);
        assert!(rec.is_empty(), "a record is exactly one frame");
    }
    // The next batch is a run of its own; a lone frame is its own record.
    b.append_quiet(&s, frame(5)).unwrap();
    b.append_quiet(&s, frame(6)).unwrap();
    b.flush();
    let (w, f) = (wire(&mut c1), frames(&mut cf));
    assert_eq!((f.len(), w.len()), (2, 1));
    assert_eq!(joined(&w), records(&f));
    let mut later = f;
    b.append(&s, frame(7)).unwrap();
    let (w, f) = (wire(&mut c1), frames(&mut cf));
    assert_eq!((f.len(), w.len()), (1, 1));
    assert_eq!(w[0].as_ptr(), f[0].record.as_ptr());
    later.extend(f);
    // The second subscriber, behind, gets the runs as they were cut.
    let w = wire(&mut c2);
    assert_eq!(w.len(), 2);
    assert_eq!(joined(&w), records(&later));
}

fn ogg(c: &mut Cursor) -> (Vec<Bytes>, usize) {
    match step(c, Form::Http) {
        Batch::Http(p, n) => (p, n),
        other => panic!("asked for Ogg pages, got {other:?}"),
    }
}

#[test]
fn http_listeners_share_one_copy_of_each_runs_ogg_pages_numbered_in_stream_order() {
    use crate::media::ogg_page::{last_page_numbers, page_numbers};
    let b = bcast(8, 3);
    let serial = b.ogg.as_ref().unwrap().serial;
    let s0 = b.begin(0).unwrap();
    let (mut c1, mut c2) = (b.cursor(Start::Live), b.cursor(Start::Live));
    for n in 0..5 {
        b.append_quiet(&s0, frame(n)).unwrap();
    }
    b.flush();
    let ((p1, n1), (p2, n2)) = (ogg(&mut c1), ogg(&mut c2));
    assert_eq!((n1, n2, p1.len(), p2.len()), (5, 5, 1, 1));
    // Two listeners' bytes after their headers are the same buffer, not a copy each.
    assert_eq!(p1[0].as_ptr(), p2[0].as_ptr());
    assert_eq!(&p1[0][14..18], &serial.to_le_bytes());
    // The first audio page follows the two header pages' numbers; its granule is the end
    // of its last packet (pre-skip 0 here).
    assert_eq!(page_numbers(&p1[0]), Some((2, 5 * 960)));
    // The segment's last run is paged when it is sealed, before the next segment's: the
    // numbering follows the stream whoever reads first.
    b.append_quiet(&s0, frame(5)).unwrap();
    b.seal(&s0);
    let s1 = b.begin(1).unwrap();
    b.append_quiet(&s1, frame(6)).unwrap();
    b.flush();
    // Everything ready now, in Ogg pages.
    let pages = |c: &mut Cursor| {
        let mut out = Vec::new();
        while let Some(step) = c.next().now_or_never() {
            match step {
                Step::Frames(Batch::Http(p, _)) => out.extend(p),
                Step::Finished => break,
                _ => {}
            }
        }
        out
    };
    let mut seen = vec![page_numbers(&p1[0]).unwrap()];
    seen.extend(pages(&mut c1).iter().filter_map(|p| last_page_numbers(p)));
    assert_eq!(seen, [(2, 5 * 960), (3, 6 * 960), (4, 7 * 960)]);
    // The pages carry the frames' payloads, checked by a demuxer (CRCs included).
    let p2b = pages(&mut c2);
    let mut stream = crate::media::ogg_page::opus_header_pages(
        serial,
        &crate::media::OpusHead::synthetic(2).raw,
    )
    .to_vec();
    for p in p2.iter().chain(p2b.iter()) {
        stream.extend_from_slice(p);
    }
    let mut d = crate::media::OggOpusDemuxer::new();
    d.push(&stream);
    let mut payloads = Vec::new();
    while let Ok(Some(ev)) = d.next_event() {
        if let crate::media::OggEvent::Packet(p, ..) = ev {
            payloads.push(p.to_vec());
        }
    }
    assert_eq!(
        payloads,
        (0..7u8).map(|n| vec![0xf8, n]).collect::<Vec<_>>()
    );
}

#[test]
fn a_subscriber_joining_inside_a_run_gets_the_rest_frame_by_frame() {
    let b = bcast(8, 3);
    let s = b.begin(0).unwrap();
    for n in 0..4 {
        b.append_quiet(&s, frame(n)).unwrap();
    }
    b.flush();
    let mut c = b.cursor(Start::Live);
    assert_eq!(wire(&mut c).len(), 1);
    let mut store_side = Batch::Frames(Vec::new());
    let mut on_wire = Batch::Wire(Vec::new());
    assert_eq!(s.read_from(1, &mut store_side).0, 3);
    assert_eq!(s.read_from(1, &mut on_wire).0, 3);
    let (Batch::Frames(store_side), Batch::Wire(on_wire)) = (store_side, on_wire) else {
        unreachable!()
    };
    assert_eq!(on_wire.len(), 3, "inside a run: one record each");
    assert_eq!(joined(&on_wire), records(&store_side));
}

#[tokio::test(start_paused = true)]
async fn a_floor_raised_and_lowered_under_load_stretches_wake_ups_and_loses_no_frame() {
    let b = coalescing();
    let ms = Duration::from_millis;
    let s0 = b.begin(0).unwrap();
    b.append(&s0, frame(0)).unwrap();
    let mut cur = b.cursor(Start::Live);
    assert_eq!(drain(&mut cur), ["B0", "F0"]);
    let t0 = tokio::time::Instant::now();
    // The subscriber: when it was woken, and the frames it got, in order.
    let reader = tokio::spawn(async move {
        let mut wakes: Vec<(Duration, Vec<u64>)> = Vec::new();
        loop {
            let step = cur.next().await;
            let at = tokio::time::Instant::now() - t0;
            match step {
                // One wake-up may hand over the end of a segment and the start of the
                // next: one entry.
                Step::Frames(Batch::Frames(f)) => match wakes.last_mut() {
                    Some(w) if w.0 == at => w.1.extend(f.iter().map(|x| x.frame.wall_us)),
                    _ => wakes.push((at, f.iter().map(|x| x.frame.wall_us).collect())),
                },
                Step::Begin(_) | Step::Sealed(_) => {}
                Step::Finished => return wakes,
                other => panic!("{other:?}"),
            }
        }
    });
    // The publisher: a frame every 20 ms for 6 s, a segment a second; the load watch puts a
    // 300 ms floor under the interval from 2 s to 4 s.
    let mut seg = s0;
    for n in 1..=300u64 {
        tokio::time::sleep(ms(20)).await;
        if n % 50 == 0 {
            b.seal(&seg);
            seg = b.begin(n / 50).unwrap();
        }
        b.append(&seg, frame(n)).unwrap();
        if n == 100 {
            b.pacing_for_tests().set_floor(ms(300));
        }
        if n == 200 {
            b.pacing_for_tests().set_floor(Duration::ZERO);
        }
    }
    tokio::time::sleep(ms(500)).await;
    b.seal(&seg);
    b.finish();
    let wakes = reader.await.unwrap();
    let got: Vec<u64> = wakes.iter().flat_map(|w| w.1.clone()).collect();
    assert_eq!(got, (1..=300).collect::<Vec<_>>(), "every frame, in order");
    let gaps = |from: u64, to: u64| -> Vec<u64> {
        wakes
            .windows(2)
            .filter(|w| w[0].0 >= ms(from) && w[1].0 <= ms(to))
            .map(|w| (w[1].0 - w[0].0).as_millis() as u64)
            .collect()
    };
    assert!(
        gaps(0, 2000).iter().all(|g| *g == 100),
        "{:?}",
        gaps(0, 2000)
    );
    let stretched = gaps(2400, 4000);
    assert!(
        !stretched.is_empty() && stretched.iter().all(|g| *g == 300),
        "{stretched:?}"
    );
    assert!(
        gaps(4400, 6000).iter().all(|g| *g == 100),
        "{:?}",
        gaps(4400, 6000)
    );
}

#[tokio::test(start_paused = true)]
async fn a_low_latency_subscriber_gets_every_frame_while_there_is_headroom() {
    let b = coalescing();
    let ms = Duration::from_millis;
    let s = b.begin(0).unwrap();
    b.append(&s, frame(0)).unwrap();
    let mut eager = b.cursor(Start::Live);
    eager.eager();
    let mut paced = b.cursor(Start::Live);
    assert_eq!(drain(&mut eager), ["B0", "F0"]);
    assert_eq!(drain(&mut paced), ["B0", "F0"]);
    let t0 = tokio::time::Instant::now();
    // Each waits for its next step, as a subscriber's task does: when is it woken?
    let wait = |mut c: Cursor| {
        tokio::spawn(async move {
            let step = c.next().await;
            (tokio::time::Instant::now() - t0, step, c)
        })
    };
    let (e, p) = (wait(eager), wait(paced));
    tokio::task::yield_now().await;
    tokio::time::advance(ms(20)).await;
    b.append(&s, frame(1)).unwrap();
    // The low-latency subscriber has the frame at once; the other waits for the interval.
    let (at, step, eager) = e.await.unwrap();
    assert_eq!(at, ms(20));
    assert!(
        matches!(step, Step::Frames(Batch::Frames(ref f)) if f.len() == 1),
        "{step:?}"
    );
    tokio::time::advance(ms(20)).await;
    b.append(&s, frame(2)).unwrap();
    let (at, step, _) = p.await.unwrap();
    assert_eq!(at, ms(100));
    assert!(
        matches!(step, Step::Frames(Batch::Frames(ref f)) if f.len() == 2),
        "{step:?}"
    );
    // Under load (a floor) it is paced like everyone, and loses nothing.
    b.pacing_for_tests().set_floor(ms(300));
    let mut eager = eager;
    assert_eq!(drain(&mut eager), ["F2"]);
    let t1 = tokio::time::Instant::now();
    let e = tokio::spawn(async move {
        let step = eager.next().await;
        (tokio::time::Instant::now() - t1, step)
    });
    tokio::task::yield_now().await;
    for n in 3..=5u64 {
        tokio::time::advance(ms(20)).await;
        b.append(&s, frame(n)).unwrap();
        tokio::task::yield_now().await;
    }
    let (at, step) = e.await.unwrap();
    assert!(at >= ms(60), "woken at a frame under load, after {at:?}");
    match step {
        Step::Frames(Batch::Frames(f)) => assert_eq!(
            f.iter().map(|x| x.frame.wall_us).collect::<Vec<_>>(),
            [3, 4, 5]
        ),
        other => panic!("{other:?}"),
    }
}

/// `try_next` (the engine's way to walk the store: it steps its subscribers at wake-ups)
/// gives every step the store has for the cursor, in order, the same as `next`, nothing
/// when there is nothing new (however often it is asked), and says when the broadcast is
/// over.
#[tokio::test(start_paused = true)]
async fn try_next_gives_every_step_there_is_and_nothing_more() {
    let b = coalescing();
    let s0 = b.begin(0).unwrap();
    b.append(&s0, frame(0)).unwrap();
    let mut cur = b.cursor(Start::Live);
    let mut seen = Vec::new();
    let take = |cur: &mut Cursor, seen: &mut Vec<String>| {
        while let Some(step) = cur.try_next() {
            match step {
                Step::Begin(q) => seen.push(format!("B{q}")),
                Step::Frames(Batch::Frames(f)) => {
                    seen.extend(f.iter().map(|x| format!("F{}", x.frame.wall_us)))
                }
                Step::Sealed(q) => seen.push(format!("E{q}")),
                Step::Finished => {
                    seen.push("done".into());
                    return;
                }
                other => seen.push(format!("{other:?}")),
            }
        }
    };
    take(&mut cur, &mut seen);
    assert_eq!(seen, ["B0", "F0"]);
    assert!(cur.try_next().is_none(), "nothing new, nothing given");
    tokio::time::advance(Duration::from_millis(20)).await;
    b.append(&s0, frame(1)).unwrap();
    tokio::time::advance(Duration::from_millis(20)).await;
    b.seal(&s0);
    let s1 = b.begin(1).unwrap();
    b.append(&s1, frame(2)).unwrap();
    // The wake-up (at the interval) is the engine's cue; the cursor has it all, in order.
    tokio::time::advance(Duration::from_millis(70)).await;
    tokio::task::yield_now().await;
    take(&mut cur, &mut seen);
    assert_eq!(seen, ["B0", "F0", "F1", "E0", "B1", "F2"]);
    assert!(cur.try_next().is_none());
    for n in 3..6 {
        b.append(&s1, frame(n)).unwrap();
    }
    b.seal(&s1);
    b.finish();
    take(&mut cur, &mut seen);
    assert_eq!(
        seen,
        ["B0", "F0", "F1", "E0", "B1", "F2", "F3", "F4", "F5", "E1", "done"]
    );
}
