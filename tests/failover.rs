//! Any one node can crash (SIGKILL, no goodbye) or be drained (SIGTERM), and no listener
//! loses a frame: separate processes, real binaries, ffmpeg checking the audio. Each test
//! asserts that the listener's output decodes cleanly and that its packets are one
//! contiguous run of the source (framecrc) over the whole listening time.

use std::process::Command;
use std::time::Duration;

mod common;

use common::media::{assert_decodes_cleanly, make_opus, make_radio, packet_crcs, Radio};
use common::procs::*;

/// Lets the stream flow for a while before and after a failure: positions the failure
/// mid-stream (what is asserted does not depend on it).
fn flow(secs: f64) {
    std::thread::sleep(Duration::from_secs_f64(secs));
}

/// origin -> mid-a, mid-b -> edge with both as parents -> `quicast listen` on the edge; the
/// mid the stream comes from is killed (SIGKILL) mid-stream.
fn kill_a_mid(hedge: &str) {
    let work = tempfile::tempdir().unwrap();
    kill_a_mid_of(hedge, &make_opus(work.path(), 3), "opus", 6 * 50);
}

/// `kill_a_mid` with `src` published (looped), the listener's output in `ext`, at least
/// `min` packets of it one contiguous run of the source.
fn kill_a_mid_of(hedge: &str, src: &std::path::Path, ext: &str, min: usize) {
    let work = tempfile::tempdir().unwrap();
    let src_crcs = packet_crcs(src);
    let c = certs();
    let o = origin_node(&c, &[]);
    let mut mids = [relay_node(&c, &[&o], &[]), relay_node(&c, &[&o], &[])];
    let mut edge = relay_node(&c, &[&mids[0], &mids[1]], &["--hedge", hedge]);
    let _pub = publish(&c, &[&o], "talk", src);
    let out = work.path().join(format!("heard.{ext}"));
    let mut l = listen(&c, &[&edge], "talk", &out, 7);
    let from = parents_of(&mut edge);
    assert_eq!(from.len(), if hedge == "on" { 2 } else { 1 }, "{from:?}");
    flow(3.0);
    let victim = mids.iter().position(|m| m.addr == from[0]).unwrap();
    mids[victim].kill9();
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    edge.p.wait_line("parent lost");
    assert_one_run(&out, &src_crcs, min);
}

#[test]
fn a_mid_killed_under_an_edge_with_two_parents_costs_no_frame_hedged() {
    kill_a_mid("on");
}

#[test]
fn a_mid_killed_under_an_edge_with_two_parents_costs_no_frame_unhedged() {
    kill_a_mid("off");
}

/// The same for an MP3 stream (128 kbit/s from libmp3lame, 26 ms frames, segments of 35
/// frames), unhedged: the edge resumes from the other mid by position, whatever the codec;
/// the listener's MP3 is the source's frames, byte for byte, with none missing.
#[test]
fn a_mid_killed_under_an_edge_with_two_parents_costs_no_mp3_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_radio(work.path(), Radio::Mp3, 3);
    // 6 of the 7 seconds heard, in frames of 1152 samples at 44.1 kHz.
    kill_a_mid_of("off", &src, "mp3", 6 * 44_100 / 1152);
}

#[test]
fn an_origin_killed_of_two_fed_by_one_publisher_costs_no_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let mut origins = [origin_node(&c, &[]), origin_node(&c, &[])];
    // An edge whose parents are the two origins, without hedging: it fails over between
    // them by position, which needs them to hold the same segments.
    let mut edge = relay_node(&c, &[&origins[0], &origins[1]], &["--hedge", "off"]);
    let _pub = publish(&c, &[&origins[0], &origins[1]], "talk", &src);
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&edge], "talk", &out, 7);
    let from = parents_of(&mut edge);
    flow(3.0);
    let victim = origins.iter().position(|o| o.addr == from[0]).unwrap();
    origins[victim].kill9();
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_one_run(&out, &src_crcs, 6 * 50);
}

#[test]
fn an_origin_killed_of_two_fed_by_ffmpeg_tee_over_icecast_costs_no_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 12);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let http_origin = |c: &Certs| {
        let mut o = origin_node(c, &["--http", "127.0.0.1:0", "--source-password", "pw"]);
        let l = o.p.wait_line("listening (HTTP)");
        let http = l
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        (o, http)
    };
    let (a, a_http) = http_origin(&c);
    let (b, b_http) = http_origin(&c);
    let mut origins = [a, b];
    let mut edge = relay_node(&c, &[&origins[0], &origins[1]], &["--hedge", "off"]);
    let out = work.path().join("heard.opus");
    // The listener waits at the edge before the source starts.
    let mut l = listen(&c, &[&edge], "live", &out, 11);
    // The edge picks its parent when the listener asks, before any audio exists.
    edge.p.wait_lines(&["stream has not started"]);
    let from = parents_of(&mut edge);
    let tee = format!(
        "[f=ogg:onfail=ignore]icecast://source:pw@{a_http}/live|[f=ogg:onfail=ignore]icecast://source:pw@{b_http}/live"
    );
    let _ff = Killed(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-v", "error", "-re", "-i"])
            .arg(&src)
            .args(["-c", "copy", "-map", "0", "-f", "tee", &tee])
            .spawn()
            .unwrap(),
    );
    edge.p.wait_line("subscribed");
    flow(3.0);
    let victim = origins.iter().position(|o| o.addr == from[0]).unwrap();
    origins[victim].kill9();
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_decodes_cleanly(&out);
    let got = packet_crcs(&out);
    let start = assert_contiguous_run(&got, &src_crcs, 7 * 50);
    assert_eq!(
        start, 0,
        "the listener waited: it hears the source from its first packet"
    );
}

/// The only origin is killed and restarted on its address: the publisher reconnects and
/// sends again what the new origin missed, which cuts it into the same segments (by the
/// media's timestamps), so the relay below resumes by position and its listener hears the
/// broadcast go on with no frame lost.
#[test]
fn the_only_origin_killed_and_restarted_costs_no_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let mut o = origin_node(&c, &[]);
    let mut edge = relay_node(&c, &[&o], &[]);
    let mut publisher = publish(&c, &[&o], "talk", &src);
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&edge], "talk", &out, 8);
    edge.p.wait_line("subscribed");
    flow(3.0);
    o.kill9();
    edge.p.wait_line("parent lost");
    publisher.wait_line("origin lost");
    let _o2 = Node::spawn_on(&c, &o.addr, &["origin", "--segment-ms", "500"]);
    publisher.wait_line("publishing");
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_one_run(&out, &src_crcs, 7 * 50);
}

#[test]
fn an_edge_killed_under_a_listener_of_two_edges_costs_no_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let o = origin_node(&c, &[]);
    let mid = relay_node(&c, &[&o], &[]);
    let mut e1 = relay_node(&c, &[&mid], &[]);
    let e2 = relay_node(&c, &[&mid], &[]);
    let _pub = publish(&c, &[&o], "talk", &src);
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&e1, &e2], "talk", &out, 7);
    e1.p.wait_line("subscribed");
    flow(3.0);
    e1.kill9();
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert!(
        l.log.iter().any(|x| x.contains("moved to another node")),
        "{}",
        l.log.join("\n")
    );
    assert_one_run(&out, &src_crcs, 6 * 50);
}

#[test]
fn a_mid_drained_with_sigterm_costs_no_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let o = origin_node(&c, &[]);
    let mut mids = [relay_node(&c, &[&o], &[]), relay_node(&c, &[&o], &[])];
    // Without hedging: the edge moves the stream from the draining mid to the other,
    // taking it from the other before it leaves the first.
    let mut edge = relay_node(&c, &[&mids[0], &mids[1]], &["--hedge", "off"]);
    let _pub = publish(&c, &[&o], "talk", &src);
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&edge], "talk", &out, 7);
    let from = parents_of(&mut edge);
    flow(3.0);
    let victim = mids.iter().position(|m| m.addr == from[0]).unwrap();
    mids[victim].sigterm();
    edge.p.wait_line("parent is draining");
    // The mid exits by itself, once the edge has left it: well before its drain time.
    assert!(mids[victim].p.wait_exit().success());
    assert!(mids[victim]
        .p
        .log
        .iter()
        .any(|x| x.contains("every peer has moved")));
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_one_run(&out, &src_crcs, 6 * 50);
}

#[test]
fn an_edge_drained_with_sigterm_moves_its_listener_with_no_frame_lost() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let c = certs();
    let o = origin_node(&c, &[]);
    let mid = relay_node(&c, &[&o], &[]);
    let mut e1 = relay_node(&c, &[&mid], &[]);
    let e2 = relay_node(&c, &[&mid], &[]);
    let _pub = publish(&c, &[&o], "talk", &src);
    let out = work.path().join("heard.opus");
    let mut l = listen(&c, &[&e1, &e2], "talk", &out, 7);
    e1.p.wait_line("subscribed");
    flow(3.0);
    e1.sigterm();
    assert!(e1.p.wait_exit().success());
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert!(
        l.log.iter().any(|x| x.contains("going away")),
        "{}",
        l.log.join("\n")
    );
    assert_one_run(&out, &src_crcs, 6 * 50);
}
