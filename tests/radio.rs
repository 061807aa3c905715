//! Radio: MP3 and AAC as Icecast encoders and `quicast publish` send them, through relays,
//! to HTTP listeners (their frames as they came, with ICY titles for those that ask) and to
//! `quicast listen`; now-playing titles set with Icecast's `/admin/metadata`; sources the
//! node cannot take; and a peer too old for MP3.
//!
//! The nodes run in this process (their registries say when a listener waits or a stream is
//! live, so nothing here sleeps); ffmpeg, `quicast publish` and `quicast listen` are
//! processes. What listeners got is checked as players would take it: whole frames, in an
//! unbroken run of what the origin sent (frames are byte-identical through the tree), which
//! ffmpeg decodes without a complaint.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{basic_auth, get, request, Head};
use common::media::{
    assert_decodes_cleanly, file_frames, make_radio, probe_codec, tone_with_noise, whole_frames,
    AudioFrame, Radio,
};
use common::procs::{assert_contiguous_run, Proc};
use common::*;
use quicast::media::icy::{IcyReader, IcyTitle, DEFAULT_METAINT};
use quicast::node::config::Millis;
use quicast::proto::{ErrorCode, Message, Role, Start, CODEC_MP3, CODEC_OPUS};
use quicast::{HttpServer, NodeConfig};
use tokio::sync::watch;

const PASSWORD: &str = "hackme";
/// The ICY metadata interval a node offers (Icecast's).
const METAINT: usize = DEFAULT_METAINT;
/// Segments of a second, the nodes' default: a title change is carried from the next one.
const SEGMENT_MS: u64 = 1000;
/// How long to wait for anything that must happen: long enough never to be reached when it
/// does, so a failure is a test that stopped, with what it waited for.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every node: 1 s segments, and no batching on the way (every frame sent on as it comes,
/// each HTTP delivery written at once), so that a listener is only ever the wire's time behind
/// the origin's live edge and a title's way to it is segment plus metadata interval.
fn config() -> NodeConfig {
    NodeConfig {
        segment_ms: Millis::new(SEGMENT_MS),
        deliver_ms: Some(Millis::new(0)),
        max_deliver_ms: Millis::new(0),
        http_write_ms: Millis::new(0),
        ..test_config()
    }
}

fn origin_config() -> NodeConfig {
    NodeConfig {
        source_password: Some(PASSWORD.parse().unwrap()),
        ..config()
    }
}

async fn http(s: &Server) -> HttpServer {
    HttpServer::start(s.node.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// origin → mid → edge, the origin and the edge serving HTTP.
struct Tree {
    origin: Server,
    origin_http: String,
    _mid: Server,
    edge: Server,
    edge_http: String,
    _https: (HttpServer, HttpServer),
}

async fn tree() -> Tree {
    let origin = origin_with(origin_config()).await;
    let mid = relay_with(&[&origin], config()).await;
    let edge = relay_with(&[&mid], config()).await;
    let (oh, eh) = (http(&origin).await, http(&edge).await);
    Tree {
        origin_http: oh.addr.to_string(),
        edge_http: eh.addr.to_string(),
        origin,
        _mid: mid,
        edge,
        _https: (oh, eh),
    }
}

/// Waits until `node` has at least `n` subscribers (listeners, waiting or not) on `name`.
async fn subscribers(node: &Server, name: &str, n: usize) {
    let waited = node.node.registry.wait_until(|r| r.subscribers(name) >= n);
    tokio::time::timeout(PATIENCE, waited)
        .await
        .unwrap_or_else(|_| panic!("no {n} subscribers to {name}"));
}

/// `GET /admin/metadata?mode=updinfo&mount=/NAME&song=SONG` as an Icecast encoder sends it
/// beside its audio: the now-playing title, from the origin's next segment on.
async fn set_title(origin_http: &str, name: &str, song: &str) {
    let song = percent_encoding::utf8_percent_encode(song, percent_encoding::NON_ALPHANUMERIC);
    let (head, body) = get(
        origin_http,
        &format!("/admin/metadata?mode=updinfo&mount=/{name}&song={song}"),
        &[&basic_auth("source", PASSWORD)],
    )
    .await;
    assert_eq!(
        head.status,
        200,
        "updinfo {song}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// ffmpeg as an Icecast source: a tone with noise, encoded live (`-re`) and sent with
/// `PUT /NAME` to an origin, until stopped (killed if the test fails first).
struct Encoder(Option<Child>);

impl Encoder {
    fn start(codec: Radio, origin_http: &str, name: &str) -> Encoder {
        let mut args: Vec<String> = ["-hide_banner", "-v", "error", "-re"]
            .map(String::from)
            .to_vec();
        args.extend(tone_with_noise(None));
        args.extend(codec.encode_args().map(String::from));
        args.extend([
            "-content_type".into(),
            codec.content_type().into(),
            format!("icecast://source:{PASSWORD}@{origin_http}/{name}"),
        ]);
        let child = Command::new("ffmpeg")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg");
        Encoder(Some(child))
    }

    /// Stops it as an operator does (`q`): it ends its stream cleanly. Its exit must be
    /// clean too (the node took everything it sent).
    fn stop(mut self) {
        use std::io::Write as _;
        let mut child = self.0.take().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"q").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the encoder failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What an HTTP listener has got so far: the response head, its audio, and, if it asked
/// with `Icy-MetaData: 1`, the titles of its metadata blocks (read with `IcyReader`, which
/// takes the byte after every `icy-metaint` audio bytes for a block's length: a block
/// anywhere else garbles the audio).
#[derive(Debug, Default, Clone)]
struct Got {
    head: Option<Head>,
    audio: Vec<u8>,
    titles: Vec<IcyTitle>,
    /// The node closed the response (the broadcast ended).
    ended: bool,
}

impl Got {
    fn title(&self, title: &str) -> Option<&IcyTitle> {
        self.titles.iter().find(|t| t.title == title)
    }
}

/// An HTTP listener of `path`, reading everything as it comes until the node ends the
/// response. It may come before the stream starts (the node holds it in the waiting room).
struct Listener {
    heard: watch::Receiver<Got>,
    what: String,
}

impl Listener {
    fn start(addr: &str, path: &str, icy: bool) -> Listener {
        let (tx, heard) = watch::channel(Got::default());
        let (addr, p) = (addr.to_string(), path.to_string());
        tokio::spawn(async move {
            let headers: &[&str] = if icy { &["Icy-MetaData: 1"] } else { &[] };
            let mut r = request(&addr, "GET", &p, headers).await;
            let metaint = match r.head.header("icy-metaint") {
                Some(m) if icy => m.parse().expect("icy-metaint is a number"),
                _ => 0,
            };
            tx.send_modify(|h| h.head = Some(r.head.clone()));
            let mut reader = IcyReader::new(metaint);
            while let Some(piece) = r.next().await {
                tx.send_modify(|h| reader.feed(&piece, &mut h.audio, &mut h.titles));
            }
            tx.send_modify(|h| h.ended = true);
        });
        Listener {
            heard,
            what: format!("the listener of {path}{}", if icy { " (ICY)" } else { "" }),
        }
    }

    /// Waits until what it heard satisfies `cond` (said as `what`); returns that.
    async fn until(&mut self, what: &str, cond: impl Fn(&Got) -> bool) -> Got {
        let waited = tokio::time::timeout(PATIENCE, self.heard.wait_for(|h| cond(h)))
            .await
            .map(|r| r.map(|h| h.clone()));
        match waited {
            Ok(Ok(h)) => h,
            _ => {
                let h = self.heard.borrow();
                panic!(
                    "{}: no {what}; it got {:?}, {} audio bytes, titles {:?}, ended {}",
                    self.what,
                    h.head,
                    h.audio.len(),
                    h.titles,
                    h.ended
                )
            }
        }
    }

    /// The response head, once it came: the status must be 200.
    async fn head(&mut self) -> Head {
        let h = self.until("response head", |h| h.head.is_some()).await;
        let head = h.head.unwrap();
        assert_eq!(head.status, 200, "{}: {head:?}", self.what);
        head
    }

    /// Audio bytes it has read so far.
    fn audio_bytes(&self) -> usize {
        self.heard.borrow().audio.len()
    }

    /// Everything it heard, once the node ended the response.
    async fn end(mut self) -> Got {
        self.until("end of the response", |h| h.ended).await
    }
}

/// Asserts `head` is a stream of `codec`, with ICY metadata every `METAINT` bytes or none.
fn assert_stream_head(head: &Head, codec: Radio, icy: bool) {
    assert_eq!(
        head.header("content-type"),
        Some(codec.content_type()),
        "{head:?}"
    );
    let metaint = METAINT.to_string();
    let want = icy.then_some(metaint.as_str());
    assert_eq!(head.header("icy-metaint"), want, "{head:?}");
}

/// `quicast listen` of `name` at `node`, into `out`, until the broadcast ends.
fn quicast_listen(node: &Server, name: &str, out: &Path) -> Proc {
    Proc::spawn(&[
        "listen",
        &format!("quic://{}/{name}", node.addr),
        "--fingerprint",
        &node.fingerprint,
        "--output",
        out.to_str().unwrap(),
    ])
}

/// Waits for `quicast listen` to log that `title` is playing (off the async workers: the
/// nodes run on them).
fn wait_now_playing(p: &mut Proc, title: &str) -> String {
    tokio::task::block_in_place(|| loop {
        let l = p.wait_line("now playing");
        if l.contains(title) {
            return l;
        }
    })
}

/// The stream `name` in a node's `/streams`.
async fn streams_entry(node_http: &str, name: &str) -> serde_json::Value {
    let (head, body) = get(node_http, "/streams", &[]).await;
    assert_eq!(head.status, 200);
    let all: serde_json::Value = serde_json::from_slice(&body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in /streams: {all}"))
        .clone()
}

/// The sequence number of the segment `node` is making (or last made) of `name`.
fn open_segment(node: &Server, name: &str) -> u64 {
    node.node
        .registry
        .get(name)
        .and_then(|s| s.broadcast())
        .and_then(|b| b.open_segment())
        .unwrap_or_else(|| panic!("{name} has no segment"))
        .seq
}

/// Writes `audio` to `dir/name` for ffmpeg, and asserts it decodes without a complaint.
fn assert_audio_decodes(dir: &Path, name: &str, audio: &[u8]) {
    let f = dir.join(name);
    std::fs::write(&f, audio).unwrap();
    assert_decodes_cleanly(&f);
}

/// Where each frame starts in the stream they were cut from.
fn offsets(frames: &[AudioFrame]) -> Vec<usize> {
    frames
        .iter()
        .scan(0, |at, f| {
            let start = *at;
            *at += f.0.len();
            Some(start)
        })
        .collect()
}

/// The most audio bytes an ICY listener may get between a title change made when it had
/// read `before` bytes and the block that says it: the rest of the segment the origin was
/// making then (at most a segment's duration of frames, counted at the stream's own frame
/// sizes: 16 KB at 128 kbit/s; plus the frame a segment may run over and one frame in flight
/// on the way), then up to one metadata interval to the next block.
fn title_delay_bound(frames: &[AudioFrame], codec: Radio, before: usize) -> usize {
    let starts = offsets(frames);
    let first = starts.partition_point(|&s| s <= before) - 1;
    let h = codec.header()(&frames[first].0).unwrap();
    let per_segment = (SEGMENT_MS * h.rate as u64).div_ceil(1000 * h.samples as u64) as usize;
    let segment_bytes: usize = frames[first..]
        .iter()
        .take(per_segment + 2)
        .map(|f| f.0.len())
        .sum();
    starts[first] + segment_bytes + METAINT - before
}

/// The first metadata block after audio byte `byte` of an ICY stream: where a title that
/// holds from that byte on is to be said (a block at `byte` itself follows the bytes before).
fn first_block_after(byte: usize) -> usize {
    (byte / METAINT + 1) * METAINT
}

/// Where `title` began: the segment that brought it, as a QUIC listener of the same node was
/// told (`quic`), and the audio byte that segment starts at in an ICY listener's audio
/// (`icy_frames`: the same frames, byte for byte).
fn where_title_began(quic: &Heard, icy_frames: &[AudioFrame], title: &str) -> (u64, usize) {
    let (began, _) = quic
        .titles
        .iter()
        .find(|(_, t)| t.as_deref() == Some(title))
        .unwrap_or_else(|| panic!("the QUIC listener was not told {title:?}"));
    let (seq, _) = quic
        .segments
        .iter()
        .find(|(_, at)| at == began)
        .expect("a title begins with a segment");
    let first = AudioFrame(quic.frames[*began].payload.clone());
    let k = icy_frames
        .iter()
        .position(|f| *f == first)
        .unwrap_or_else(|| panic!("the ICY listener did not get segment {seq}, with {title:?}"));
    (*seq, offsets(icy_frames)[k])
}

/// A listener of `name` at `node` in this process, once it hears audio: it sees where each
/// segment begins and which one brought each title.
async fn quic_listener(
    node: &Server,
    name: &str,
) -> tokio::task::JoinHandle<quicast::Result<Heard>> {
    let (progress, mut frames) = watch::channel(0usize);
    let (s, name) = (
        session(node, Role::Listener, "").await.unwrap(),
        name.to_string(),
    );
    let heard = tokio::spawn(async move { hear(s, &name, Some(progress)).await });
    tokio::time::timeout(PATIENCE, frames.wait_for(|n| *n > 0))
        .await
        .expect("the QUIC listener hears audio")
        .unwrap();
    heard
}

/// An MP3 or AAC encoder pushing to an origin over Icecast PUT; origin → mid → edge; at the
/// edge, a plain HTTP listener, an ICY one, and `quicast listen`; two titles set at the
/// origin as the stream plays.
async fn icecast_source_through_two_relays(codec: Radio) {
    let work = tempfile::tempdir().unwrap();
    let t = tree().await;
    let name = "radio";
    let ext = codec.ext();
    // At the origin, an ICY listener from before the source: it hears the broadcast from
    // its first frame, and is what the edge's listeners are checked against.
    let mut at_origin = Listener::start(&t.origin_http, &format!("/{name}.{ext}"), true);
    subscribers(&t.origin, name, 1).await;
    let encoder = Encoder::start(codec, &t.origin_http, name);
    wait_live(&t.origin, name).await;
    set_title(&t.origin_http, name, "First Song").await;
    // Once a block says it at the origin, every segment from the live edge on carries it.
    at_origin
        .until("block saying First Song", |h| {
            h.title("First Song").is_some()
        })
        .await;

    // At the edge: `/radio.mp3` (or .aac); then, the edge carrying the stream (a bare name
    // is only answered for a stream the node knows of, and its catalog of the tree may be
    // seconds behind), `/radio` with ICY metadata; and `quicast listen`.
    let mut plain = Listener::start(&t.edge_http, &format!("/{name}.{ext}"), false);
    assert_stream_head(&plain.head().await, codec, false);
    let mut icy = Listener::start(&t.edge_http, &format!("/{name}"), true);
    let listened = work.path().join(format!("listened.{ext}"));
    let mut listen = quicast_listen(&t.edge, name, &listened);
    assert_stream_head(&icy.head().await, codec, true);
    // And a QUIC one in this process, to tell where segments begin.
    let quic = quic_listener(&t.edge, name).await;
    // Its first block says the title.
    let first = icy.until("first title", |h| !h.titles.is_empty()).await;
    assert_eq!(
        first.titles[0],
        IcyTitle {
            at: METAINT as u64,
            title: "First Song".into()
        }
    );
    wait_now_playing(&mut listen, "First Song");

    // A title change at the origin reaches the edge's ICY listener within a segment and a
    // metadata interval of audio.
    let (before, open_before) = (icy.audio_bytes(), open_segment(&t.origin, name));
    set_title(&t.origin_http, name, "Second Song").await;
    let open_after = open_segment(&t.origin, name);
    let second = icy
        .until("block saying Second Song", |h| {
            h.title("Second Song").is_some()
        })
        .await
        .title("Second Song")
        .unwrap()
        .clone();
    // The edge carries the segment that block came with: its /streams says so already, and
    // `quicast listen` says it is playing.
    let entry = streams_entry(&t.edge_http, name).await;
    assert_eq!(entry["codec"], ext, "{entry}");
    assert_eq!(entry["title"], "Second Song", "{entry}");
    wait_now_playing(&mut listen, "Second Song");

    // The source stops: the broadcast ends, and with it every response and `quicast listen`.
    tokio::task::block_in_place(|| encoder.stop());
    let reference = at_origin.end().await;
    let (plain, icy) = (plain.end().await, icy.end().await);
    let quic = quic.await.unwrap().unwrap();
    assert!(quic.report.ended);
    let status = tokio::task::block_in_place(|| listen.wait_exit());
    assert!(
        status.success(),
        "quicast listen:\n{}",
        listen.log.join("\n")
    );

    tokio::task::block_in_place(|| {
        let dir = work.path();
        // The origin's listener: the reference, every frame unlike the others (so a run of
        // them is found in one place only).
        let origin_frames = whole_frames(&reference.audio, codec, "the origin's ICY listener");
        let distinct: HashSet<&AudioFrame> = origin_frames.iter().collect();
        assert_eq!(distinct.len(), origin_frames.len(), "repeated frames");
        assert_eq!(
            reference.titles[0].at, METAINT as u64,
            "a title in the first block"
        );
        assert_audio_decodes(dir, &format!("origin.{ext}"), &reference.audio);

        // (a) The plain listener at the edge: whole frames, an unbroken run of the origin's,
        // at least as long as the two metadata intervals its ICY neighbour heard through.
        let min = 2 * METAINT / origin_frames[0].0.len().max(1);
        let got = whole_frames(&plain.audio, codec, "the edge's listener");
        assert_contiguous_run(&got, &origin_frames, min);
        assert!(plain.titles.is_empty());
        assert_audio_decodes(dir, &format!("plain.{ext}"), &plain.audio);

        // (c) The ICY listener: its audio, blocks taken out, is as whole, as unbroken and as
        // decodable; its blocks said the two titles, each once, the second within a segment
        // and an interval of the change.
        let icy_frames = whole_frames(&icy.audio, codec, "the edge's ICY listener");
        assert_contiguous_run(&icy_frames, &origin_frames, min);
        assert_audio_decodes(dir, &format!("icy.{ext}"), &icy.audio);
        let titles: Vec<&str> = icy.titles.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(titles, ["First Song", "Second Song"]);
        // Where the change went: the segment that brought it, and where that begins.
        let (seq, starts) = where_title_began(&quic, &icy_frames, "Second Song");
        let at = second.at as usize;
        let bound = title_delay_bound(&icy_frames, codec, before);
        eprintln!(
            "{ext}: set at audio byte {before}, the origin making segment \
             {open_before}..={open_after}; segment {seq} brought it, from byte {starts}; \
             said in the block after byte {at}: {} bytes after the change (bound {bound})",
            at - before
        );
        // Within a segment and a metadata interval of the change, as configured.
        assert!(
            at > before && at - before <= bound,
            "the change was made at {before} audio bytes, its block came after {at}: more \
             than a segment and a metadata interval ({bound} bytes)"
        );
        // Exactly: with the segment after the one the origin was making when it was set,
        // and in the first block after that segment's first byte.
        assert!(
            open_before < seq && seq <= open_after + 1,
            "the title was set while the origin made segment {open_before}..={open_after}, \
             and came with segment {seq}"
        );
        assert_eq!(
            at,
            first_block_after(starts),
            "segment {seq}, with the new title, starts at audio byte {starts}: the first block \
             after that is the one to say it"
        );

        // (b) What `quicast listen` wrote: the codec as it came, whole frames of the run.
        assert_eq!(probe_codec(&listened), ext);
        assert_decodes_cleanly(&listened);
        let written = std::fs::read(&listened).unwrap();
        let written = whole_frames(&written, codec, "quicast listen's output");
        assert_contiguous_run(&written, &origin_frames, min);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp3_from_an_icecast_source_reaches_listeners_two_relays_away_with_its_titles() {
    icecast_source_through_two_relays(Radio::Mp3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aac_from_an_icecast_source_reaches_listeners_two_relays_away_with_its_titles() {
    icecast_source_through_two_relays(Radio::Aac).await;
}

/// A node writes its HTTP listeners every `http-write-ms` (half a second by default: the
/// deliveries in between go in one write). Titles still begin where their segments do: each
/// of several changes is in the first ICY block after the first byte of the segment that
/// brought it, not in one before. (MP3 segments hold 38 or 39 frames, so where they start
/// wanders against the 16000-byte intervals: now just before a block, now just after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_title_is_in_the_first_icy_block_after_its_segment_begins_at_the_default_write_interval(
) {
    let codec = Radio::Mp3;
    let name = "radio";
    let origin = origin_with(origin_config()).await;
    let edge = relay_with(
        &[&origin],
        NodeConfig {
            http_write_ms: NodeConfig::default().http_write_ms,
            ..config()
        },
    )
    .await;
    let (oh, eh) = (http(&origin).await, http(&edge).await);
    let (origin_http, edge_http) = (oh.addr.to_string(), eh.addr.to_string());
    let encoder = Encoder::start(codec, &origin_http, name);
    wait_live(&origin, name).await;
    let mut icy = Listener::start(&edge_http, &format!("/{name}.mp3"), true);
    assert_stream_head(&icy.head().await, codec, true);
    let quic = quic_listener(&edge, name).await;
    // Six changes, each an interval after the block that said the one before.
    let mut said = Vec::new();
    let mut next = METAINT;
    for i in 0..6 {
        icy.until("audio", |h| h.audio.len() >= next).await;
        let title = format!("Song {i}");
        set_title(&origin_http, name, &title).await;
        let at = icy
            .until(&format!("block saying {title}"), |h| {
                h.title(&title).is_some()
            })
            .await
            .title(&title)
            .unwrap()
            .at as usize;
        said.push((title, at));
        next = at + METAINT;
    }
    tokio::task::block_in_place(|| encoder.stop());
    let icy = icy.end().await;
    let quic = quic.await.unwrap().unwrap();
    let icy_frames = whole_frames(&icy.audio, codec, "the edge's ICY listener");
    let misplaced: Vec<String> = said
        .iter()
        .filter_map(|(title, at)| {
            let (seq, starts) = where_title_began(&quic, &icy_frames, title);
            (*at != first_block_after(starts)).then(|| {
                format!(
                    "{title:?} came with segment {seq}, from audio byte {starts}, but was said \
                     in the block after byte {at}, not {}",
                    first_block_after(starts)
                )
            })
        })
        .collect();
    assert!(misplaced.is_empty(), "{misplaced:#?}");
}

/// `quicast publish` of `file` to `name` at `origin` (its first bytes say the codec), paced
/// in real time, to its end.
fn quicast_publish(origin: &Server, name: &str, file: &Path, extra: &[&str]) -> Proc {
    let url = format!("quic://{}/{name}", origin.addr);
    let mut args = vec![
        "publish",
        &url,
        "--input",
        file.to_str().unwrap(),
        "--fingerprint",
        &origin.fingerprint,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_published_with_an_mp3_file_is_in_the_first_icy_block_through_a_relay() {
    let work = tempfile::tempdir().unwrap();
    let src = tokio::task::block_in_place(|| make_radio(work.path(), Radio::Mp3, 4));
    let origin = origin_with(config()).await;
    let relay = relay_with(&[&origin], config()).await;
    let relay_server = http(&relay).await;
    let relay_http = relay_server.addr.to_string();
    // The listener is there before the stream: it hears all of it.
    let mut icy = Listener::start(&relay_http, "/show.mp3", true);
    subscribers(&relay, "show", 1).await;
    let mut publisher = quicast_publish(&origin, "show", &src, &["--title", "First"]);
    assert_stream_head(&icy.head().await, Radio::Mp3, true);
    let heard = icy.end().await;
    let status = tokio::task::block_in_place(|| publisher.wait_exit());
    assert!(status.success(), "{}", publisher.log.join("\n"));
    // The title from the first block on (and only there: it never changed).
    assert_eq!(
        heard.titles,
        [IcyTitle {
            at: METAINT as u64,
            title: "First".into()
        }]
    );
    // Around the blocks, every frame of the file, in order, byte for byte.
    let file = file_frames(&src, Radio::Mp3);
    let got = whole_frames(&heard.audio, Radio::Mp3, "the relay's ICY listener");
    assert_eq!(got.len(), file.len(), "frames heard, of the file's");
    assert!(got == file, "the frames heard are not the file's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_the_node_cannot_take_is_refused_and_costs_another_streams_listener_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = tokio::task::block_in_place(|| make_radio(work.path(), Radio::Mp3, 6));
    let origin = origin_with(origin_config()).await;
    let origin_server = http(&origin).await;
    let origin_http = origin_server.addr.to_string();
    // A stream published over QUIC with an HTTP listener from its start to its end.
    let mut good = Listener::start(&origin_http, "/good.mp3", false);
    subscribers(&origin, "good", 1).await;
    let mut publisher = quicast_publish(&origin, "good", &src, &[]);
    wait_live(&origin, "good").await;
    good.until("audio", |h| !h.audio.is_empty()).await;

    let auth = basic_auth("source", PASSWORD);
    // A content type no radio codec has: refused before its body.
    let video = work.path().join("video.mp4");
    std::fs::write(&video, vec![0u8; 4096]).unwrap();
    let (head, body) = put(&origin_http, "video", &auth, "video/mp4", &video).await;
    assert_eq!(head.status, 415, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("video/mp4"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Said to be MP3, but a web page: no frame in it, refused once the node has looked far
    // enough (and more than it looks at is sent).
    let junk = work.path().join("junk.mp3");
    std::fs::write(&junk, b"<html><body>Not Found</body></html>\n".repeat(8000)).unwrap();
    let (head, body) = put(&origin_http, "junk", &auth, "audio/mpeg", &junk).await;
    let said = String::from_utf8_lossy(&body);
    assert!(
        (400..500).contains(&head.status) && said.contains("not MP3"),
        "{head:?} {said}"
    );
    for name in ["video", "junk"] {
        assert!(
            origin
                .node
                .registry
                .get(name)
                .is_none_or(|s| !s.has_publisher()),
            "{name} is held"
        );
    }
    // All that happened while the good stream played.
    assert!(
        origin
            .node
            .registry
            .get("good")
            .and_then(|s| s.broadcast())
            .is_some(),
        "the good stream ended before the bad sources were done: make its file longer"
    );

    let status = tokio::task::block_in_place(|| publisher.wait_exit());
    assert!(status.success(), "{}", publisher.log.join("\n"));
    let heard = good.end().await;
    let got = whole_frames(&heard.audio, Radio::Mp3, "the good stream's listener");
    let file = file_frames(&src, Radio::Mp3);
    assert_eq!(got.len(), file.len(), "frames heard, of the file's");
    assert!(got == file, "the frames heard are not the file's");
}

/// `curl -T file` as an Icecast source: `PUT /NAME` with `Content-Type: ctype`.
async fn put(addr: &str, name: &str, auth: &str, ctype: &str, file: &Path) -> (Head, Vec<u8>) {
    let o = tokio::process::Command::new("curl")
        .args(["-s", "-i", "-T"])
        .arg(file)
        .args(["-H", auth, "-H", &format!("Content-Type: {ctype}")])
        .arg(format!("http://{addr}/{name}"))
        .output()
        .await
        .expect("curl");
    // The final response: after any 100 Continue.
    let raw = o.stdout;
    let text = String::from_utf8_lossy(&raw).to_string();
    let last = text.rfind("HTTP/1.").expect("a response");
    let end = text[last..]
        .find("\r\n\r\n")
        .map(|e| last + e)
        .unwrap_or(text.len());
    let mut lines = text[last..end].lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = text.get(end + 4..).unwrap_or("").as_bytes().to_vec();
    (Head { status, headers }, body)
}

/// The next control message on `recv` (bytes left over stay in `buf`).
async fn next_message(recv: &mut quinn::RecvStream, buf: &mut bytes::BytesMut) -> Message {
    let read = async {
        loop {
            if let Some(m) = Message::decode(buf).unwrap() {
                return m;
            }
            let c = recv
                .read_chunk(4096, true)
                .await
                .unwrap()
                .expect("a message");
            buf.extend_from_slice(&c.bytes);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a message")
}

/// A control stream to `node` that has said hello with protocol `version`.
async fn hello(
    node: &Server,
    version: u64,
) -> (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    bytes::BytesMut,
) {
    let conn = client(node).connect_raw(&url(node, "x")).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut b = bytes::BytesMut::new();
    Message::Hello {
        version,
        role: Role::Listener,
        token: Default::default(),
    }
    .encode(&mut b);
    send.write_all(&b).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    match next_message(&mut recv, &mut buf).await {
        Message::HelloOk { .. } => {}
        m => panic!("hello version {version}: {m:?}"),
    }
    (conn, send, recv, buf)
}

async fn subscribe(send: &mut quinn::SendStream, id: u64, path: &str) {
    let mut b = bytes::BytesMut::new();
    Message::Subscribe {
        id,
        path: path.into(),
        start: Start::Live,
        flags: 0,
    }
    .encode(&mut b);
    send.write_all(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_peer_is_refused_an_mp3_stream_by_name_and_given_an_opus_one() {
    let work = tempfile::tempdir().unwrap();
    let src = tokio::task::block_in_place(|| make_radio(work.path(), Radio::Mp3, 2));
    let origin = origin_with(config()).await;
    let mut mp3 = quicast_publish(&origin, "mp3", &src, &["--loop"]);
    tokio::task::block_in_place(|| mp3.wait_line("publishing"));
    let opus = publish(&origin, "opus", 500, Duration::from_millis(20), 60);
    wait_live(&origin, "mp3").await;
    wait_live(&origin, "opus").await;

    // Version 2 knows Opus only: MP3 is refused, saying what it is and what it needs.
    let (_conn, mut send, mut recv, mut buf) = hello(&origin, 2).await;
    subscribe(&mut send, 1, "mp3").await;
    match next_message(&mut recv, &mut buf).await {
        Message::SubscribeError { id, code, reason } => {
            assert_eq!((id, code), (1, ErrorCode::UnsupportedVersion as u64));
            assert_eq!(code, 6);
            // Said in one readable sentence: it goes to the peer's log as it is.
            assert!(
                reason.contains("mp3") && reason.contains("version 3") && !reason.contains("  "),
                "{reason:?}"
            );
        }
        m => panic!("a version 2 peer subscribing to MP3 got {m:?}"),
    }
    // The same peer, the same way, on an Opus stream: taken.
    subscribe(&mut send, 2, "opus").await;
    match next_message(&mut recv, &mut buf).await {
        Message::Subscribed { id, codec, .. } => {
            assert_eq!((id, codec.kind), (2, CODEC_OPUS));
        }
        m => panic!("a version 2 peer subscribing to Opus got {m:?}"),
    }
    // And a peer saying version 3 is given the MP3 stream.
    let (_conn3, mut send3, mut recv3, mut buf3) = hello(&origin, 3).await;
    subscribe(&mut send3, 1, "mp3").await;
    match next_message(&mut recv3, &mut buf3).await {
        Message::Subscribed { id, codec, .. } => assert_eq!((id, codec.kind), (1, CODEC_MP3)),
        m => panic!("a version 3 peer subscribing to MP3 got {m:?}"),
    }
    opus.abort();
}
