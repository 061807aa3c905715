//! Radio codecs over HLS, through origin → relay → edge as separate processes (built by
//! `common::procs::http_tree`, origin and edge serving HTTP, segments of a second): MP3
//! (libmp3lame, 128 kbit/s) as packed audio and AAC (ffmpeg's `aac`) in fMP4, read from the
//! edge by ffmpeg's HLS reader and played by hls.js (npm, the version
//! `tests/browser/package.json` pins: 1.7.4) in headless Chromium on Media Source
//! Extensions; the now-playing title as an `EXT-X-DATERANGE` (and, in packed MP3, as
//! timed ID3), and a title changed at the origin in the edge's playlist from the next
//! segment on.
//!
//! What Safari is documented to take (not run here: no Safari on Linux): Apple's HLS
//! Authoring Specification for Apple Devices lists, as audio segment formats, packed
//! audio (AAC in ADTS, MP3, AC-3, E-AC-3: each segment starting with an ID3 `PRIV`
//! `com.apple.streaming.transportStreamTimestamp`, RFC 8216 §3.4) and fMP4 (CMAF) with
//! AAC (`mp4a.40.2`), so both forms here are Apple's own. Apple's LL-HLS documentation
//! describes partial segments of fMP4 and TS; packed MP3 is listed here as whole segments
//! (see `Form::has_parts` in src/egress/hls/segments.rs: hls.js cannot place parts of it).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::{headless, hls_js, page_server};
use common::media::{make_radio, packet_crcs_with, Radio};
use common::procs::*;

const PASSWORD: &str = "hackme";

/// (size, crc) of every packet of `src` as HLS carries them (AAC without ADTS headers).
fn packet_crcs(src: &Path, radio: Radio) -> Vec<(String, String)> {
    match radio {
        Radio::Aac => packet_crcs_with(src, &["-bsf:a", "aac_adtstoasc"]),
        Radio::Mp3 => packet_crcs_with(src, &[]),
    }
}

/// origin → mid → edge, origin (taking Icecast sources) and edge serving HTTP; segments of
/// a second, as an origin makes them by default.
fn radio_tree() -> HttpTree {
    http_tree(&["--source-password", PASSWORD], &[])
}

/// `quicast publish --loop` of `src` as `stream`, with `title` from its start.
fn publish_titled(t: &HttpTree, stream: &str, src: &Path, title: &str) -> Proc {
    let mut p = Proc::spawn(&[
        "publish",
        &t.origin.url(stream),
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--title",
        title,
        "--fingerprint",
        &t.c.fp,
    ]);
    p.wait_line("publishing");
    p
}

/// A response: status, body.
async fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let (head, body) = common::http::get(addr, path, &[]).await;
    (head.status, body)
}

async fn playlist(addr: &str, path: &str) -> String {
    let (status, body) = get(addr, path).await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    text
}

/// The value of attribute `key` in a tag's attribute list.
fn attr<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("{key}="))?;
    let v = &line[at + key.len() + 1..];
    Some(match v.strip_prefix('"') {
        Some(q) => &q[..q.find('"')?],
        None => v.split(',').next()?,
    })
}

/// The playlist's segments, (msn, uri, EXTINF seconds), and its date ranges (ID, X-TITLE,
/// the msn of the segment after the tag).
/// A listed segment: (msn, uri, EXTINF seconds).
type Seg = (u64, String, f64);
/// A title date range: (ID, X-TITLE, msn of the segment after it).
type TitleRange = (String, String, u64);

fn segments_and_titles(p: &str) -> (Vec<Seg>, Vec<TitleRange>) {
    let mut msn = None;
    let (mut segs, mut ranges, mut dur) = (Vec::new(), Vec::new(), None);
    let mut pending = Vec::new();
    for l in p.lines() {
        if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = Some(v.parse::<u64>().unwrap());
        } else if let Some(v) = l.strip_prefix("#EXT-X-DATERANGE:") {
            assert_eq!(attr(v, "CLASS"), Some("quicast.title"), "{l}");
            assert_eq!(attr(v, "END-ON-NEXT"), Some("YES"), "{l}");
            let date = attr(v, "START-DATE").unwrap();
            assert!(date.ends_with('Z') && date.len() == 24, "{l}");
            pending.push((
                attr(v, "ID").unwrap().to_string(),
                attr(v, "X-TITLE").unwrap().to_string(),
            ));
        } else if let Some(v) = l.strip_prefix("#EXTINF:") {
            dur = Some(v.trim_end_matches(',').parse().unwrap());
        } else if !l.starts_with('#') && !l.is_empty() {
            let m = msn.expect("MEDIA-SEQUENCE first");
            segs.push((m, l.to_string(), dur.take().expect("EXTINF first")));
            for (id, title) in pending.drain(..) {
                ranges.push((id, title, m));
            }
            msn = Some(m + 1);
        }
    }
    (segs, ranges)
}

/// Checks a live playlist's shape for `radio` at 44.1 kHz: packed MP3 listed as whole
/// `.mp3` segments with no map and no parts; AAC as fMP4 with parts of 8 frames; every
/// duration a whole number of the codec's frames at 44.1 kHz.
fn check_shape(p: &str, radio: Radio) {
    let frame = radio.samples_per_frame() as f64 / 44_100.0;
    let whole = |d: f64| {
        let n = (d / frame).round();
        assert!(
            n >= 1.0 && (n * frame - d).abs() < 0.0006,
            "{d} s is not whole frames in {p}"
        );
    };
    assert!(
        p.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"),
        "{p}"
    );
    let (segs, _) = segments_and_titles(p);
    assert!(segs.len() >= 2, "{p}");
    for (msn, uri, d) in &segs {
        whole(*d);
        let ext = if radio == Radio::Mp3 { "mp3" } else { "m4s" };
        assert!(uri.ends_with(&format!("/{msn}.{ext}")), "{uri} in {p}");
    }
    match radio {
        Radio::Mp3 => {
            assert!(!p.contains("#EXT-X-MAP"), "{p}");
            assert!(!p.contains("PART"), "{p}");
        }
        Radio::Aac => {
            assert!(p.contains("#EXT-X-MAP:URI="), "{p}");
            assert!(p.contains("#EXT-X-PART-INF:PART-TARGET=0.186\n"), "{p}");
            let parts: Vec<f64> = p
                .lines()
                .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
                .map(|v| attr(v, "DURATION").unwrap().parse().unwrap())
                .collect();
            assert!(parts.len() >= 5, "{p}");
            // Every part a whole one, 8 frames: a segment is a whole number of parts, with
            // no runt at its end (hls.js left such a one out, a hole, when the playlist
            // closing its segment came while it loaded the part before).
            for d in parts {
                assert_eq!(d, 0.186, "a part of {d} s in {p}");
                whole(d);
            }
        }
    }
}

/// The ID3 tag a packed-audio segment starts with: its 90 kHz timestamp and its TIT2
/// title, if any; and where the audio starts.
fn id3(seg: &[u8]) -> (u64, Option<String>, usize) {
    assert_eq!(&seg[..5], b"ID3\x04\x00", "an ID3v2.4 tag first");
    let size = |b: &[u8]| b.iter().fold(0usize, |n, &x| n << 7 | x as usize);
    let end = 10 + size(&seg[6..10]);
    let (mut at, mut ts, mut title) = (10, None, None);
    while at + 10 <= end {
        let n = size(&seg[at + 4..at + 8]);
        let body = &seg[at + 10..at + 10 + n];
        match &seg[at..at + 4] {
            b"PRIV" => {
                let owner = b"com.apple.streaming.transportStreamTimestamp\0";
                assert_eq!(&body[..owner.len()], owner);
                let t = &body[owner.len()..];
                assert_eq!(t.len(), 8);
                ts = Some(u64::from_be_bytes(t.try_into().unwrap()));
            }
            b"TIT2" => {
                assert_eq!(body[0], 3, "UTF-8");
                title = Some(String::from_utf8(body[1..].to_vec()).unwrap());
            }
            other => panic!("unexpected ID3 frame {other:?}"),
        }
        at += 10 + n;
    }
    assert_eq!(at, end);
    assert!(
        seg[end] == 0xff && seg[end + 1] & 0xe0 == 0xe0,
        "MP3 after the tag"
    );
    (ts.expect("a timestamp"), title, end)
}

/// What ffmpeg read of a stream over HLS: the codec, rate and channels its demuxer found,
/// every packet as it came (size, crc), and how many samples its decoder made of them.
struct Read {
    codec: String,
    packets: Vec<(String, String)>,
    decoded: u64,
}

/// ffmpeg reads `stream`'s HLS from `http` for `secs` seconds (its HLS reader polls the
/// playlist), each packet kept as it came (framecrc) and decoded, in one run; nothing may
/// be logged at level error. The packets go to framecrc rather than into a file: ffmpeg's
/// reader gives the packet before or after each packed-audio segment's ID3 tag a timestamp
/// one frame off (its MP3 demuxer reads ahead of where the tag is intercepted), and a file
/// muxer drops a packet whose timestamp does not grow.
fn ffmpeg_reads(http: &str, stream: &str, secs: u32, dir: &Path) -> Read {
    let (crc, pcm) = (
        dir.join(format!("{stream}.crc")),
        dir.join(format!("{stream}.pcm.crc")),
    );
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "error",
            "-y",
            "-t",
            &secs.to_string(),
            "-i",
        ])
        .arg(format!("http://{http}/{stream}.m3u8"))
        .args(["-map", "0:a", "-c", "copy", "-f", "framecrc"])
        .arg(&crc)
        .args(["-map", "0:a", "-c:a", "pcm_s16le", "-f", "framecrc"])
        .arg(&pcm)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        st.status.success() && st.stderr.is_empty(),
        "ffmpeg reading {stream}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let crc = std::fs::read_to_string(crc).unwrap();
    let header = |key: &str| {
        crc.lines()
            .find_map(|l| l.strip_prefix(&format!("#{key} 0: ")))
            .unwrap_or("?")
            .to_string()
    };
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').map(|x| x.trim().to_string()).collect())
            .collect()
    };
    let packets = rows(&crc)
        .into_iter()
        .map(|f| (f[4].clone(), f[5].clone()))
        .collect();
    // Decoded frames: 16-bit stereo.
    let decoded = rows(&std::fs::read_to_string(pcm).unwrap())
        .iter()
        .map(|f| f[4].parse::<u64>().unwrap() / 4)
        .sum();
    Read {
        codec: format!(
            "{},{},{}",
            header("codec_id"),
            header("sample_rate"),
            header("channel_layout_name")
        ),
        packets,
        decoded,
    }
}

/// MP3 pushed by ffmpeg as an Icecast source and AAC published with `quicast publish`, both
/// looped, read from the edge two relays down by ffmpeg's HLS reader for 12 s each: the
/// right codec, clean decoding, and one contiguous run of the source's packets (nothing
/// lost, doubled or reordered at any segment boundary); the playlists are shaped as each
/// codec needs, at 44.1 kHz; packed MP3 segments' ID3 timestamps follow one another
/// exactly as their durations say.
#[test]
fn ffmpeg_reads_mp3_and_aac_hls_from_an_edge_two_relays_down_one_contiguous_run() {
    let work = tempfile::tempdir().unwrap();
    let mp3 = make_radio(work.path(), Radio::Mp3, 8);
    let aac = make_radio(work.path(), Radio::Aac, 8);
    let t = radio_tree();
    let _icecast = Killed(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-v",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
            ])
            .arg(&mp3)
            .args([
                "-c",
                "copy",
                "-write_xing",
                "0",
                "-id3v2_version",
                "0",
                "-content_type",
                "audio/mpeg",
                "-f",
                "mp3",
            ])
            .arg(format!("icecast://source:{PASSWORD}@{}/fm", t.origin_http))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _aac_pub = publish(&t.c, &[&t.origin], "aacfm", &aac);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The edge's playlist waits for the stream to be live there (and for a whole segment).
    for (stream, radio) in [("fm", Radio::Mp3), ("aacfm", Radio::Aac)] {
        let p = rt.block_on(playlist(&t.edge_http, &format!("/{stream}.m3u8")));
        eprintln!("{stream} at the edge:\n{p}");
        // Once the edge holds two more segments, the playlist has its live shape.
        let (segs, _) = segments_and_titles(&p);
        let next = segs.last().unwrap().0 + 2;
        let p = rt.block_on(playlist(
            &t.edge_http,
            &format!("/{stream}.m3u8?_HLS_msn={next}"),
        ));
        check_shape(&p, radio);
        if radio == Radio::Mp3 {
            // Consecutive segments: each one's timestamp is the one before's plus its
            // frames (to the 90 kHz tick: each is rounded down from 44.1 kHz samples).
            let (segs, _) = segments_and_titles(&p);
            let mut last: Option<(u64, u64)> = None;
            for (_, uri, _) in &segs {
                let (status, body) = rt.block_on(get(&t.edge_http, &format!("/{uri}")));
                assert_eq!(status, 200);
                let (ts, title, audio) = id3(&body);
                assert_eq!(
                    title, None,
                    "an Icecast source gives no title on this branch"
                );
                let mut frames = 0u64;
                let mut at = audio;
                while at < body.len() {
                    let h = quicast::media::framing::mp3(&body[at..]).expect("an MP3 frame");
                    at += h.len;
                    frames += 1;
                }
                assert_eq!(at, body.len(), "{uri} is whole frames");
                if let Some((ts0, frames0)) = last {
                    let step = (frames0 * 1152 * 90_000) as f64 / 44_100.0;
                    let got = ts.wrapping_sub(ts0) as f64;
                    assert!(
                        (got - step).abs() <= 1.0,
                        "{uri}: {got} ticks after the last, not {step}"
                    );
                }
                last = Some((ts, frames));
            }
        }
    }
    // ffmpeg's reader for 12 s of each, side by side.
    let secs = 12;
    let streams = [("fm", Radio::Mp3, &mp3), ("aacfm", Radio::Aac, &aac)];
    let reads: Vec<Read> = std::thread::scope(|s| {
        let readers: Vec<_> = streams
            .iter()
            .map(|(stream, ..)| {
                let (http, dir) = (&t.edge_http, work.path());
                s.spawn(move || ffmpeg_reads(http, stream, secs, dir))
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for ((stream, radio, src), read) in streams.iter().zip(reads) {
        assert_eq!(
            read.codec,
            format!("{},44100,stereo", radio.ext()),
            "{stream}"
        );
        let src_crcs = packet_crcs(src, *radio);
        let got = read.packets;
        let looped: Vec<_> = src_crcs
            .iter()
            .cycle()
            .take(src_crcs.len() * (got.len() / src_crcs.len() + 2))
            .cloned()
            .collect();
        let min = (secs as usize - 1) * 44_100 / radio.samples_per_frame() as usize;
        assert_contiguous_run(&got, &looped, min);
        // Every packet decoded to its frame's samples (the first may be trimmed by the
        // decoder; ffmpeg may add a few where its reader's timestamps jump, see
        // `ffmpeg_reads`).
        let frames = got.len() as u64;
        assert!(
            read.decoded + radio.samples_per_frame() >= frames * radio.samples_per_frame(),
            "{stream}: {} samples decoded from {frames} frames",
            read.decoded
        );
        eprintln!(
            "{stream}: ffmpeg read {frames} {} frames from the edge, one contiguous run, {} samples decoded",
            radio.ext(),
            read.decoded
        );
    }
}

/// The test's page: hls.js (inlined) plays each of `streams` from `edge` in an `<audio>`
/// element of its own, side by side, on Media Source Extensions, and once its element has
/// played `play_secs` of audio (its `timeupdate` events say), reports how: what went to
/// MSE (BUFFER_CODECS), every error hls.js raised, `waiting` events after it began to
/// play, the element's played and buffered ranges, bytes of audio decoded, the title date
/// ranges of the playlist (`hls.levels[0].details.dateRanges`), titles from timed ID3, and
/// each segment or part buffered.
fn hlsjs_page(edge: &str, streams: &[&str], play_secs: u32) -> String {
    let hls = hls_js();
    let list = serde_json::to_string(streams).unwrap();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body>
<script>{hls}</script>
<script>
const reportTo = location.origin + '/report?';
const ranges = r => [...Array(r.length).keys()].map(i => [r.start(i), r.end(i)]);
// The title of an ID3 tag's TIT2 frame (ID3v2.4: syncsafe sizes, encoding 3: UTF-8).
function tit2(d) {{
  const size = i => (d[i] << 21) | (d[i + 1] << 14) | (d[i + 2] << 7) | d[i + 3];
  const end = 10 + size(6);
  for (let at = 10; at + 10 <= end; at += 10 + size(at + 4)) {{
    const id = String.fromCharCode(d[at], d[at + 1], d[at + 2], d[at + 3]);
    if (id === 'TIT2') return new TextDecoder().decode(d.subarray(at + 11, at + 10 + size(at + 4)));
  }}
  return null;
}}
for (const name of {list}) {{
  const a = document.createElement('audio');
  a.muted = true;
  document.body.appendChild(a);
  const r = {{ name, version: Hls.version, codecs: {{}}, errors: [], waits: 0, id3: [], id3tags: 0 }};
  let sent = false;
  const report = extra => {{
    if (sent) return;
    sent = true;
    const dr = hls.levels.length && hls.levels[0].details ? hls.levels[0].details.dateRanges : {{}};
    Object.assign(r, extra, {{
      played: ranges(a.played), buffered: ranges(a.buffered),
      decoded: a.webkitAudioDecodedByteCount, currentTime: a.currentTime,
      dateRanges: Object.values(dr).map(d => ({{ id: d.id, cls: d.class, start: d.startDate.toISOString(), title: d.attr['X-TITLE'] }})),
    }});
    hls.destroy();
    fetch(reportTo + encodeURIComponent(JSON.stringify(r)));
  }};
  const hls = new Hls({{ lowLatencyMode: true }});
  hls.on(Hls.Events.BUFFER_CODECS, (e, d) => {{
    for (const [k, v] of Object.entries(d)) if (v && v.container) r.codecs[k] = [v.container, v.codec || ''];
  }});
  hls.on(Hls.Events.ERROR, (e, d) => {{
    r.errors.push(d.details + (d.fatal ? ' (fatal)' : ''));
    if (d.fatal) report({{ fatal: d.details }});
  }});
  // What was buffered, as it was (segment, part or -1, start, duration): where a hole
  // came from, if one did.
  r.frags = [];
  hls.on(Hls.Events.FRAG_BUFFERED, (e, d) => {{
    const m = d.part || d.frag;
    r.frags.push([d.frag.sn, d.part ? d.part.index : -1, +m.start.toFixed(3), +m.duration.toFixed(3)]);
  }});
  hls.on(Hls.Events.FRAG_PARSING_METADATA, (e, d) => {{
    for (const s of d.samples) {{
      const t = tit2(s.data);
      if (t !== null) {{ r.id3tags++; if (!r.id3.includes(t)) r.id3.push(t); }}
    }}
  }});
  hls.on(Hls.Events.MANIFEST_PARSED, () => a.play().catch(e => report({{ fatal: String(e) }})));
  let start = null;
  a.addEventListener('playing', () => {{ if (start === null) start = a.currentTime; }}, {{ once: true }});
  a.addEventListener('waiting', () => {{ if (start !== null) r.waits++; }});
  a.addEventListener('timeupdate', () => {{
    if (start !== null && a.currentTime - start >= {play_secs}) report({{ playedFrom: start }});
  }});
  hls.loadSource('http://{edge}/' + name + '.m3u8');
  hls.attachMedia(a);
}}
</script></body></html>"#
    )
}

/// What the page reported of one stream.
fn field<'a>(r: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    &r[key]
}

/// AAC and MP3 published with a title (with a `"` in it) and played by hls.js in headless
/// Chromium from the edge two relays down, side by side, each for 10 s of its audio: AAC
/// through MSE as fMP4 (`mp4a.40.2`), MP3 as packed audio hls.js hands to MSE as
/// `audio/mpeg`; not one error, not one stall, one played range and one buffered range
/// (no hole skipped, none waited on), audio decoded; and the title in the playlist as
/// hls.js reads it (a date range of class `quicast.title`, the `"` made `'`), and for MP3
/// in its timed ID3 as it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hlsjs_plays_aac_and_mp3_from_an_edge_with_no_gaps_and_reads_the_titles() {
    let work = tempfile::tempdir().unwrap();
    let (mp3, aac) = tokio::task::block_in_place(|| {
        (
            make_radio(work.path(), Radio::Mp3, 8),
            make_radio(work.path(), Radio::Aac, 8),
        )
    });
    let t = tokio::task::block_in_place(radio_tree);
    let title = "Ça \"live\" — Morning Show";
    let shown = "Ça 'live' — Morning Show";
    let _p = tokio::task::block_in_place(|| {
        [
            publish_titled(&t, "fm", &mp3, title),
            publish_titled(&t, "aacfm", &aac, title),
        ]
    });
    // Both live at the edge, with a whole segment: its playlist waits for that.
    for s in ["fm", "aacfm"] {
        playlist(&t.edge_http, &format!("/{s}.m3u8")).await;
    }
    let secs = 10;
    let (page, mut rx) = page_server(hlsjs_page(&t.edge_http, &["fm", "aacfm"], secs)).await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = headless(&format!("http://{page}/"), profile.path());
    let mut reports = BTreeMap::new();
    while reports.len() < 2 {
        let q = tokio::time::timeout(Duration::from_secs(90), rx.recv())
            .await
            .expect("the page reported")
            .unwrap();
        let text = percent_decode(&q);
        let r: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        eprintln!("hls.js: {r}");
        reports.insert(r["name"].as_str().unwrap().to_string(), r);
    }
    let _ = browser.kill().await;
    for (name, want) in [
        ("fm", serde_json::json!({ "audio": ["audio/mpeg", ""] })),
        (
            "aacfm",
            serde_json::json!({ "audio": ["audio/mp4", "mp4a.40.2"] }),
        ),
    ] {
        let r = &reports[name];
        assert_eq!(field(r, "version"), "1.7.4", "the pinned hls.js");
        assert!(field(r, "fatal").is_null(), "{name}: {r}");
        assert_eq!(field(r, "codecs"), &want, "{name}: {r}");
        assert_eq!(field(r, "errors"), &serde_json::json!([]), "{name}: {r}");
        assert_eq!(field(r, "waits"), 0, "{name}: stalled while playing: {r}");
        let played = field(r, "played").as_array().unwrap();
        let buffered = field(r, "buffered").as_array().unwrap();
        assert_eq!(played.len(), 1, "{name}: a hole skipped: {r}");
        assert_eq!(
            buffered.len(),
            1,
            "{name}: a hole in what was buffered: {r}"
        );
        let span = |v: &serde_json::Value| v[1].as_f64().unwrap() - v[0].as_f64().unwrap();
        assert!(span(&played[0]) >= secs as f64, "{name}: {r}");
        assert!(field(r, "decoded").as_u64().unwrap() > 0, "{name}: {r}");
        let ranges = field(r, "dateRanges").as_array().unwrap();
        assert!(
            ranges.iter().any(|d| d["title"] == shown
                && d["cls"] == "quicast.title"
                && d["id"].as_str().unwrap().starts_with("title-")),
            "{name}: the title as a date range: {r}"
        );
    }
    // Timed ID3: the title as it was given, in every packed segment hls.js read.
    let fm = &reports["fm"];
    assert_eq!(field(fm, "id3"), &serde_json::json!([title]), "{fm}");
    assert!(
        field(fm, "id3tags").as_u64().unwrap() >= secs as u64,
        "{fm}"
    );
}

/// `%XX` escapes decoded (the page's report is one encoded JSON text; UTF-8).
fn percent_decode(q: &str) -> String {
    let b = q.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A title changed at the origin in the middle of a broadcast reaches the edge's playlist
/// at the first segment that begins after the change: the segment before it still plays
/// under the old title, the change's point lies in that segment, and both titles' date
/// ranges are listed with IDs and dates of the segments they begin with.
///
/// The change is a title record on the publish stream (the one `quicast publish --title`
/// sends at the start, and which an origin takes at any point): this branch has no Icecast
/// `/admin/metadata?mode=updinfo` yet, so the test is the publisher, with the client
/// library, sending MP3 frames in real time and title "B" before the frame at 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_changed_at_the_origin_shows_in_the_edge_playlist_from_the_next_segment() {
    use quicast::client::{title_record, Client, Input, SourceReader};
    use quicast::media::SourceEvent;
    use quicast::proto::{Frame, QuicUrl, Role};

    let work = tempfile::tempdir().unwrap();
    let mp3 = tokio::task::block_in_place(|| make_radio(work.path(), Radio::Mp3, 8));
    let t = tokio::task::block_in_place(radio_tree);
    let trust = quicast::Trust::pinned(&[t.c.fp.parse().unwrap()]);
    let client = Client::for_target(&t.origin.addr.parse().unwrap(), &trust).unwrap();
    let session = client
        .connect(
            &QuicUrl::parse(&t.origin.url("show")).unwrap(),
            Role::Publisher,
            "",
        )
        .await
        .unwrap();
    let mut reader = SourceReader::open(&Input::File(mp3.clone())).await.unwrap();
    let codec = reader.head().await.unwrap();
    assert_eq!((codec.sample_rate, codec.channels), (44_100, 2));
    let mut publication = session.publish("show", codec, None).await.unwrap();
    // The change: before the frame at 4 s (frame 153).
    let change = 153 * 1152;
    let publisher = tokio::spawn(async move {
        publication.send(&[title_record(0, "A")]).await.unwrap();
        let start = tokio::time::Instant::now();
        let mut pts = 0u64;
        loop {
            let (payload, duration) = match reader.next().await.unwrap() {
                Some(SourceEvent::Packet {
                    payload, duration, ..
                }) => (payload, duration),
                // Looped, the timestamps going on.
                Some(SourceEvent::End) | None => {
                    reader = SourceReader::open(&Input::File(mp3.clone())).await.unwrap();
                    reader.head().await.unwrap();
                    continue;
                }
                Some(other) => panic!("{other:?}"),
            };
            if pts == change {
                publication.send(&[title_record(pts, "B")]).await.unwrap();
            }
            // In real time, as a live source is.
            tokio::time::sleep_until(start + Duration::from_micros(pts * 1_000_000 / 44_100)).await;
            let f = Frame {
                pts,
                duration,
                wall_us: 0,
                payload,
            };
            publication.send(&[f]).await.unwrap();
            pts += u64::from(duration);
        }
    });
    // Follow the edge's playlist with blocking reloads, a segment at a time, until B shows.
    let mut p = playlist(&t.edge_http, "/show.m3u8").await;
    let b = loop {
        let (segs, ranges) = segments_and_titles(&p);
        if let Some(b) = ranges.iter().find(|r| r.1 == "B") {
            break b.clone();
        }
        let next = segs.last().map_or(0, |s| s.0) + 1;
        p = tokio::time::timeout(
            Duration::from_secs(60),
            playlist(&t.edge_http, &format!("/show.m3u8?_HLS_msn={next}")),
        )
        .await
        .expect("B shows at the edge");
    };
    publisher.abort();
    eprintln!("{p}");
    let (segs, ranges) = segments_and_titles(&p);
    let s = b.2;
    assert_eq!(b.0, format!("title-{s}"), "{p}");
    // A is listed too, from a segment before S.
    let a = ranges
        .iter()
        .find(|r| r.1 == "A")
        .unwrap_or_else(|| panic!("A listed: {p}"));
    assert!(a.2 < s, "{p}");
    // B's START-DATE is segment S's date-time, given right after it.
    let line = p.lines().position(|l| l.contains("X-TITLE=\"B\"")).unwrap();
    let start = attr(p.lines().nth(line).unwrap(), "START-DATE").unwrap();
    assert_eq!(
        p.lines().nth(line + 1),
        Some(format!("#EXT-X-PROGRAM-DATE-TIME:{start}").as_str()),
        "{p}"
    );
    // The change lies in segment S-1, still A: B from the next segment on.
    let uri = |msn: u64| {
        segs.iter()
            .find(|x| x.0 == msn)
            .map(|x| x.1.clone())
            .unwrap_or_else(|| panic!("segment {msn} listed: {p}"))
    };
    let (_, before) = get(&t.edge_http, &format!("/{}", uri(s - 1))).await;
    let (_, at) = get(&t.edge_http, &format!("/{}", uri(s))).await;
    let (ts_before, title_before, _) = id3(&before);
    let (ts_at, title_at, _) = id3(&at);
    assert_eq!(title_before.as_deref(), Some("A"));
    assert_eq!(title_at.as_deref(), Some("B"));
    let change_90k = quicast::media::timestamp_90k(change, 44_100);
    assert!(
        ts_before < change_90k && change_90k <= ts_at,
        "the change at {change_90k} is not in segment {} ({ts_before}..{ts_at})",
        s - 1
    );
}
