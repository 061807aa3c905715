//! LL-HLS at every node, tried as HLS clients do, against separate processes: ffmpeg as a
//! player through origin → relay → edge; a strict checker following the playlist with
//! blocking reloads until the broadcast ends; hostile queries; and nginx from Debian as a
//! caching reverse proxy in front of an edge with 200 clients behind it. The trees are
//! `common::procs::http_tree`'s (origin and edge serving HTTP), with 500 ms segments.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::media::{make_opus, packet_crcs};
use common::procs::*;

/// A response: status, headers (lower-case names), body.
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// GET over HTTP/1.1, one connection per request.
async fn get(addr: &str, path: &str) -> Resp {
    let (head, body) = common::http::get(addr, path, &[]).await;
    Resp {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// A listed segment: (msn, uri, duration, parts (duration, uri), program date-time).
type Seg = (u64, String, f64, Vec<(f64, String)>, Option<String>);

/// Segments' bytes by media sequence number.
type Segments = BTreeMap<u64, Vec<u8>>;

/// A media playlist, parsed strictly: any tag quicast does not write fails the test.
#[derive(Debug, Default, Clone)]
struct Playlist {
    target: u64,
    part_target: f64,
    part_hold_back: f64,
    media_seq: u64,
    map: String,
    segs: Vec<Seg>,
    /// Parts of the segment being made, and the hint of the next one.
    open_parts: Vec<(f64, String)>,
    hint: Option<String>,
    ended: bool,
}

fn attr<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key} missing in {line}"));
    let v = &line[at + key.len() + 1..];
    if let Some(q) = v.strip_prefix('"') {
        &q[..q.find('"').unwrap()]
    } else {
        v.split(',').next().unwrap()
    }
}

fn parse(text: &str) -> Playlist {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"));
    let mut p = Playlist::default();
    let (mut parts, mut pdt, mut dur) = (Vec::new(), None, None::<f64>);
    let mut next_msn = None;
    let mut can_block = false;
    for l in lines {
        if let Some(v) = l.strip_prefix("#EXT-X-VERSION:") {
            assert_eq!(v, "9");
        } else if let Some(v) = l.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            can_block = attr(v, "CAN-BLOCK-RELOAD") == "YES";
            p.part_hold_back = attr(v, "PART-HOLD-BACK").parse().unwrap();
        } else if let Some(v) = l.strip_prefix("#EXT-X-PART-INF:") {
            p.part_target = attr(v, "PART-TARGET").parse().unwrap();
        } else if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_seq = v.parse().unwrap();
            next_msn = Some(p.media_seq);
        } else if let Some(v) = l.strip_prefix("#EXT-X-MAP:") {
            p.map = attr(v, "URI").to_string();
        } else if let Some(v) = l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            assert!(v.ends_with('Z') && v.len() == 24, "date-time {v}");
            pdt = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("#EXT-X-PART:") {
            assert_eq!(attr(v, "INDEPENDENT"), "YES");
            parts.push((
                attr(v, "DURATION").parse().unwrap(),
                attr(v, "URI").to_string(),
            ));
        } else if let Some(v) = l.strip_prefix("#EXTINF:") {
            dur = Some(v.trim_end_matches(',').parse().unwrap());
        } else if let Some(v) = l.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            assert_eq!(attr(v, "TYPE"), "PART");
            p.hint = Some(attr(v, "URI").to_string());
        } else if l == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if !l.starts_with('#') && !l.is_empty() {
            let msn = next_msn.expect("MEDIA-SEQUENCE before the segments");
            let d = dur.take().expect("EXTINF before a segment's URI");
            p.segs.push((
                msn,
                l.to_string(),
                d,
                std::mem::take(&mut parts),
                pdt.take(),
            ));
            next_msn = Some(msn + 1);
        } else {
            panic!("unexpected line {l:?}");
        }
    }
    p.open_parts = parts;
    assert!(can_block, "CAN-BLOCK-RELOAD=YES");
    p
}

/// The rules every playlist keeps (rfc8216bis, LL-HLS).
fn check(p: &Playlist) {
    assert!(p.target >= 1);
    assert!(
        p.part_hold_back >= 2.0 * p.part_target,
        "PART-HOLD-BACK >= 2 part targets"
    );
    let base = p
        .map
        .strip_suffix("/init.mp4")
        .expect("the map is BASE/init.mp4");
    for (i, (msn, uri, d, parts, _)) in p.segs.iter().enumerate() {
        assert_eq!(*msn, p.media_seq + i as u64);
        assert_eq!(*uri, format!("{base}/{msn}.m4s"));
        assert!(
            d.round() as u64 <= p.target,
            "segment {msn}: {d} s over the target"
        );
        for (k, (pd, pu)) in parts.iter().enumerate() {
            assert_eq!(*pu, format!("{base}/{msn}.{k}.m4s"));
            assert!(*pd <= p.part_target + 1e-6, "part {pu}: {pd} s");
        }
        if !parts.is_empty() {
            let sum: f64 = parts.iter().map(|(d, _)| d).sum();
            assert!(
                (sum - d).abs() < 0.002,
                "segment {msn}: parts {sum} s, segment {d} s"
            );
        }
    }
    if p.ended {
        assert!(p.hint.is_none() && p.open_parts.is_empty());
    } else {
        // The open segment follows the last complete one; the hint names its next part.
        let open = p.segs.last().map_or(p.media_seq, |s| s.0 + 1);
        for (k, (_, pu)) in p.open_parts.iter().enumerate() {
            assert_eq!(*pu, format!("{base}/{open}.{k}.m4s"));
        }
        let hint = p
            .hint
            .as_ref()
            .unwrap_or_else(|| panic!("a live playlist hints the next part: {p:?}"));
        assert_eq!(*hint, format!("{base}/{open}.{}.m4s", p.open_parts.len()));
    }
}

/// What a later playlist must keep of an earlier one.
fn check_follows(a: &Playlist, b: &Playlist) {
    assert_eq!(a.target, b.target, "the target duration never changes");
    assert!(b.media_seq >= a.media_seq);
    assert_eq!(a.map, b.map);
    let old: BTreeMap<u64, (&String, f64)> = a.segs.iter().map(|s| (s.0, (&s.1, s.2))).collect();
    for s in &b.segs {
        if let Some((uri, d)) = old.get(&s.0) {
            assert_eq!((*uri, *d), (&s.1, s.2), "segment {} changed", s.0);
        }
    }
    let last = |p: &Playlist| p.segs.last().map_or(0, |s| s.0);
    assert!(last(b) >= last(a));
}

/// (msn, part) of a part URI `BASE/MSN.PART.m4s`.
fn position(uri: &str) -> (u64, u64) {
    let f = uri
        .rsplit('/')
        .next()
        .unwrap()
        .strip_suffix(".m4s")
        .unwrap();
    let (m, k) = f.split_once('.').unwrap();
    (m.parse().unwrap(), k.parse().unwrap())
}

fn dir_of(path: &str) -> &str {
    &path[..path.rfind('/').unwrap() + 1]
}

fn is_box(b: &[u8], kind: &[u8; 4]) -> bool {
    b.len() >= 8 && &b[4..8] == kind
}

/// origin → mid → edge, origin and edge serving HTTP, both with the flags `extra`; the
/// origin making segments of half a second.
fn tree3(extra: &[&str]) -> HttpTree {
    http_tree(&["--segment-ms", "500"], extra)
}

#[test]
fn ffmpeg_plays_hls_from_an_edge_one_contiguous_run() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let t = tree3(&[]);
    let _pub = publish(&t.c, &[&t.origin], "talk", &src);
    let out = work.path().join("heard.opus");
    // ffmpeg's HLS reader polls the playlist (no blocking reloads) and is the edge's only
    // listener: between its polls nothing is in flight. 20 s: several polls past the
    // window it read at once (QUICAST_HLS_SECS=60 for the minute).
    let secs: usize = std::env::var("QUICAST_HLS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(format!("http://{}/talk.m3u8", t.edge_http))
        .args(["-t", &secs.to_string(), "-c", "copy", "-y"])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_one_run(&out, &src_crcs, (secs - 1) * 50);
    eprintln!("ffmpeg read {secs} s of HLS from the edge: one contiguous run");
    // Having held the stream all along, the edge lists at least three target durations
    // (RFC 8216 6.2.2).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(get(&t.edge_http, "/talk.m3u8"));
    let p = parse(&String::from_utf8(p.body).unwrap());
    let listed: f64 = p.segs.iter().map(|s| s.2).sum();
    assert!(
        listed >= 3.0 * p.target as f64,
        "{listed} s listed, target duration {} s",
        p.target
    );
}

/// Follows a node's playlist as an LL-HLS client does (blocking reload on the hinted part,
/// fetching every part and segment) until the broadcast ends; every playlist is checked
/// and checked against the one before. Returns the segments' bytes by sequence number.
async fn follow(http: &str, name: &str) -> BTreeMap<u64, Vec<u8>> {
    let path = format!("/{name}.m3u8");
    let dir = dir_of(&path).to_string();
    let first = get(http, &path).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["content-type"],
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(first.headers["access-control-allow-origin"], "*");
    let mut prev = parse(&String::from_utf8(first.body).unwrap());
    check(&prev);
    let init = get(http, &format!("{dir}{}", prev.map)).await;
    assert_eq!(init.status, 200);
    assert!(is_box(&init.body, b"ftyp"));
    assert_eq!(
        init.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let mut segments = BTreeMap::new();
    let mut parts_seen = 0;
    while !prev.ended {
        let (msn, part) = position(prev.hint.as_ref().unwrap());
        // The hinted part: held until it exists (or its segment ended without it: 404).
        let hinted = get(http, &format!("{dir}{}", prev.hint.as_ref().unwrap())).await;
        if hinted.status == 200 {
            assert!(is_box(&hinted.body, b"moof"));
            parts_seen += 1;
        } else {
            assert_eq!(hinted.status, 404);
        }
        let r = get(http, &format!("{path}?_HLS_msn={msn}&_HLS_part={part}")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let p = parse(&String::from_utf8(r.body).unwrap());
        check(&p);
        check_follows(&prev, &p);
        // It holds what was asked for: that part, or a later segment.
        let last = p.segs.last().map_or(0, |s| s.0);
        assert!(
            p.ended || last >= msn || p.open_parts.len() as u64 > part,
            "asked {msn}.{part}, got {p:?}"
        );
        for (m, uri, ..) in &p.segs {
            if !segments.contains_key(m) {
                let s = get(http, &format!("{dir}{uri}")).await;
                assert_eq!(s.status, 200);
                assert!(is_box(&s.body, b"moof"));
                segments.insert(*m, s.body);
            }
        }
        prev = p;
    }
    assert!(parts_seen >= 10, "{parts_seen} hinted parts fetched");
    segments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playlist_stays_valid_live_and_ends_with_the_broadcast() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 8);
    let t = tree3(&[]);
    // No --loop: the broadcast ends with the file, and the playlist with it.
    let mut p = Proc::spawn(&[
        "publish",
        &t.origin.url("talk"),
        "--input",
        src.to_str().unwrap(),
        "--fingerprint",
        &t.c.fp,
    ]);
    p.wait_line("publishing");
    let (at_origin, at_edge) =
        tokio::join!(follow(&t.origin_http, "talk"), follow(&t.edge_http, "talk"));
    // The same segments, byte for byte, at the origin and at the edge (what both hold).
    let both: BTreeSet<_> = at_origin
        .keys()
        .filter(|k| at_edge.contains_key(k))
        .collect();
    assert!(both.len() >= 5, "{} segments in common", both.len());
    for k in both {
        assert_eq!(at_origin[k], at_edge[k], "segment {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hls_requests_get_400_or_404_and_cost_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    // A short window: segments leave the store within seconds.
    let t = tree3(&["--http-wait-secs", "1", "--window-segments", "4"]);
    let _pub = publish(&t.c, &[&t.origin], "talk", &src);
    for http in [&t.origin_http, &t.edge_http] {
        let p = parse(&String::from_utf8(get(http, "/talk.m3u8").await.body).unwrap());
        let base = p.map.strip_suffix("/init.mp4").unwrap().to_string();
        let last = p.segs.last().map_or(p.media_seq, |s| s.0);
        for (q, want) in [
            (format!("/talk.m3u8?_HLS_msn={}", last + 100), 400),
            ("/talk.m3u8?_HLS_msn=-1".into(), 400),
            ("/talk.m3u8?_HLS_msn=184467440737095516150".into(), 400),
            ("/talk.m3u8?_HLS_part=1".into(), 400),
            ("/talk.m3u8?_HLS_msn=1&_HLS_part=99999".into(), 400),
            ("/talk.hls/x/init.mp4".into(), 400),
            ("/talk.hls/1/init.mp4".into(), 404),
            (format!("/{base}/999999999.m4s"), 404),
            (format!("/{base}/{}.m4s", last + 1), 404),
            (format!("/{base}/{}.0.m4s", last + 50), 404),
            ("/never-started.m3u8".into(), 404),
        ] {
            let r = get(http, &q).await;
            assert_eq!(r.status, want, "{q} at {http}");
        }
        // A part of a segment no longer held: 404 at once (it was waited for, then 503).
        let mut p = parse(&String::from_utf8(get(http, "/talk.m3u8").await.body).unwrap());
        while p.media_seq < 6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            p = parse(&String::from_utf8(get(http, "/talk.m3u8").await.body).unwrap());
        }
        // Four segments kept and six sealed since: segment 0 is gone from every node.
        let gone = 0;
        let r = get(http, &format!("/{base}/{gone}.0.m4s")).await;
        assert_eq!(
            r.status, 404,
            "a part of segment {gone}, no longer held, at {http}"
        );
        // And the stream is served as before.
        let r = get(http, "/talk.m3u8").await;
        assert_eq!(r.status, 200);
    }
}

/// Debian's nginx with `config/nginx-hls-cache.conf` (addresses and paths replaced), in
/// front of `edge`; its access log names every request it sent the edge.
struct Nginx {
    _p: Proc,
    addr: String,
    log: std::path::PathBuf,
}

fn nginx(edge: &str, dir: &Path) -> Nginx {
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx-hls-cache.conf"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = dir.join("cache");
    let snippet = snippet
        .replace("127.0.0.1:8000", edge)
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("/var/cache/nginx/quicast", cache.to_str().unwrap());
    let log = dir.join("upstream.log");
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  log_format up '$upstream_addr $request_uri $status';\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{snippet}\n}}\n",
        d = dir.display()
    );
    let conf = conf.replace(
        "add_header X-Cache-Status $upstream_cache_status;",
        &format!(
            "add_header X-Cache-Status $upstream_cache_status;\n    access_log {} up;",
            log.display()
        ),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let p = Proc::spawn_program("nginx", &["-c", path.to_str().unwrap(), "-e", "stderr"]);
    let addr = format!("127.0.0.1:{port}");
    // Ready once it accepts.
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { _p: p, addr, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_through_nginx_get_every_segment_the_edge_serves_each_once() {
    assert!(
        Command::new("nginx").arg("-v").output().is_ok(),
        "nginx is needed (.ci/run installs it: apt-get install -y nginx-light)"
    );
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let t = tree3(&[]);
    let _pub = publish(&t.c, &[&t.origin], "talk", &src);
    let nx = nginx(&t.edge_http, work.path());
    // Each client: the playlist, the init segment, then blocking reloads segment by
    // segment (`_HLS_msn`), fetching every new segment, for four segments.
    let got: Arc<Mutex<Vec<Segments>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (addr, got) = (nx.addr.clone(), got.clone());
        tasks.push(tokio::spawn(async move {
            let r = get(&addr, "/talk.m3u8").await;
            assert_eq!(r.status, 200);
            let mut p = parse(&String::from_utf8(r.body).unwrap());
            check(&p);
            assert_eq!(get(&addr, &format!("/{}", p.map)).await.status, 200);
            let start = p.segs.last().map_or(p.media_seq, |s| s.0 + 1);
            let mut mine = BTreeMap::new();
            for msn in start..start + 4 {
                let r = get(&addr, &format!("/talk.m3u8?_HLS_msn={msn}")).await;
                assert_eq!(r.status, 200);
                p = parse(&String::from_utf8(r.body).unwrap());
                check(&p);
                let (_, uri, ..) = p
                    .segs
                    .iter()
                    .find(|s| s.0 == msn)
                    .unwrap_or_else(|| panic!("asked for {msn}, got {p:?}"));
                let s = get(&addr, &format!("/{uri}")).await;
                assert_eq!(s.status, 200);
                mine.insert(msn, s.body);
            }
            got.lock().unwrap().push(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 200);
    // Everyone got every segment of their run, and the same bytes for the same segment.
    let mut by_msn: BTreeMap<u64, &Vec<u8>> = BTreeMap::new();
    for mine in got.iter() {
        assert_eq!(mine.len(), 4);
        for (m, b) in mine {
            assert_eq!(*by_msn.entry(*m).or_insert(b), b, "segment {m}");
        }
    }
    // What the edge was asked: each segment and the init once, whatever the crowd.
    let log = std::fs::read_to_string(&nx.log).unwrap();
    let mut upstream: BTreeMap<String, usize> = BTreeMap::new();
    for l in log.lines() {
        let mut f = l.split_whitespace();
        let (up, uri) = (f.next().unwrap(), f.next().unwrap());
        if up != "-" {
            *upstream.entry(uri.to_string()).or_default() += 1;
        }
    }
    let media: Vec<_> = upstream
        .iter()
        .filter(|(u, _)| u.ends_with(".m4s") || u.ends_with(".mp4"))
        .collect();
    eprintln!(
        "edge asked {} times in all ({} requests through nginx); media: {media:?}",
        upstream.values().sum::<usize>(),
        log.lines().count()
    );
    assert!(media.len() >= 5);
    for (uri, n) in media {
        assert_eq!(*n, 1, "{uri}: the edge served it {n} times");
    }
}

/// GET with a User-Agent (a client of its own to the node's HLS audience).
async fn get_as(addr: &str, path: &str, agent: &str) -> u16 {
    let agent = format!("User-Agent: {agent}");
    common::http::get(addr, path, &[&agent]).await.0.status
}

/// The edge's HLS listeners of `talk`, as `/streams` and the metrics say.
async fn hls_listeners(http: &str, admin: &str) -> (u64, u64) {
    let streams: serde_json::Value =
        serde_json::from_slice(&get(http, "/streams").await.body).unwrap();
    let in_streams = streams
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "talk")
        .map_or(0, |s| s["by_egress"]["hls"].as_u64().unwrap());
    let metrics = String::from_utf8(get(admin, "/metrics").await.body).unwrap();
    let in_metrics = metrics
        .lines()
        .find(|l| {
            l.starts_with("quicast_listeners{")
                && l.contains("stream=\"talk\"")
                && l.contains("egress=\"hls\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    (in_streams, in_metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_hls_clients_are_counted_while_they_listen_and_not_after() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let c = certs();
    let mut origin = origin_node(&c, &["--http", "127.0.0.1:0"]);
    let _origin_http = origin.http_addr();
    let mut edge = relay_node(
        &c,
        &[&origin],
        &["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    );
    let http = edge.http_addr();
    let admin = edge.logged_addr("admin");
    let _pub = publish(&c, &[&origin], "talk", &src);
    // Two clients polling the playlist as ordinary players do: nothing in flight between
    // their requests, yet both are listening.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for agent in ["player-a/1.0", "player-b/2.0"] {
        let (http, stop) = (http.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(get_as(&http, "/talk.m3u8", agent).await, 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = hls_listeners(&http, &admin).await;
        if n == (2, 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "HLS listeners {n:?}, want (2, 2)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    // Gone once not seen for their hold (a few target durations).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = hls_listeners(&http, &admin).await;
        if n == (0, 0) {
            break;
        }
        assert!(n.0 <= 2 && n.1 <= 2, "never more than the two: {n:?}");
        assert!(
            std::time::Instant::now() < until,
            "HLS listeners {n:?} long after they stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
