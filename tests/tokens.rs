//! Signed tokens and reloads, as operators and their users meet them: separate processes,
//! an origin whose `paid/` streams need a listen token, publishers and relays that need
//! theirs; every kind of bad token over QUIC and over HTTP (Ogg and HLS); keys rotated and a
//! certificate replaced with SIGHUP while listeners keep their audio.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::media::{make_opus, packet_crcs};
use common::procs::*;
use quicast::node::{mint, unix_now, Claims, Grant};

/// HMAC key files in a temporary directory.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh HMAC secret file named `name`.
    fn secret(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        let secret: String = (0..48)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A token signed with `key` as `kid`, valid from `nbf` to `exp` seconds from now.
fn token(key: &Path, kid: &str, role: Grant, path: &str, nbf: i64, exp: i64) -> String {
    let now = unix_now() as i64;
    mint(
        key,
        kid,
        &Claims {
            role,
            path: path.into(),
            exp: (now + exp) as u64,
            nbf: (now + nbf) as u64,
            kid: kid.to_string(),
        },
    )
    .unwrap()
}

fn good(key: &Path, kid: &str, role: Grant, path: &str) -> String {
    token(key, kid, role, path, 0, 600)
}

/// `quicast listen` of `url` with `token` for a few seconds: (exited well, packets heard,
/// its log).
fn quic_listen(c: &Certs, url: &str, token: &str, out: &Path, secs: u32) -> (bool, usize, String) {
    let secs = secs.to_string();
    let mut p = Proc::spawn(&[
        "listen",
        url,
        "--token",
        token,
        "--fingerprint",
        &c.fp,
        "--output",
        out.to_str().unwrap(),
        "--duration",
        &secs,
    ]);
    let ok = p.wait_exit().success();
    while let Ok(l) = p.lines.try_recv() {
        p.log.push(l);
    }
    let heard = if ok && out.exists() {
        packet_crcs(out).len()
    } else {
        0
    };
    (ok, heard, p.log.join("\n"))
}

/// `curl` of `url` with extra `args`, for at most `secs`: (status, body).
fn curl(url: &str, args: &[&str], secs: u32) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            &secs.to_string(),
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let body = out.stdout;
    let cut = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[cut + 1..]).to_string();
    (code, body[..cut].to_vec())
}

/// The origin: `paid/` needs a listen token, the rest is public; keys from `toml_keys`.
fn origin_config(dir: &Path, keys: &[(&str, &Path)]) -> PathBuf {
    let list: Vec<String> = keys
        .iter()
        .map(|(kid, f)| format!("\"{kid}={}\"", f.display()))
        .collect();
    let p = dir.join("origin.toml");
    std::fs::write(
        &p,
        format!(
            "token-key = [{}]\nlisten-policy = [\"/=public\", \"paid/=token\"]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    p
}

/// The `quicast_refusals_total{reason="auth"}` an admin port says.
fn auth_refusals(admin: &str) -> u64 {
    let (code, body) = curl(&format!("http://{admin}/metrics"), &[], 5);
    assert_eq!(code, "200");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("quicast_refusals_total{reason=\"auth\"} "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_token_matrix_over_quic_and_http_and_a_key_rotation() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let keys = Keys::new();
    let (k1, k2, stranger) = (keys.secret("k1"), keys.secret("k2"), keys.secret("x"));
    let cfg = origin_config(work.path(), &[("k1", &k1)]);
    let c = certs();
    let mut o = origin_node(
        &c,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = o.logged_addr("admin");
    let http = o.http_addr();

    // Publishers: none, another role, another path are refused; the right one publishes.
    let publish = |tok: &str| {
        Proc::spawn(&[
            "publish",
            &o.url("paid/show"),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--token",
            tok,
            "--fingerprint",
            &c.fp,
        ])
    };
    for (tok, why) in [
        (String::new(), "token required"),
        (good(&k1, "k1", Grant::Listen, "paid/"), "another role"),
        (good(&k1, "k1", Grant::Publish, "free/"), "another path"),
    ] {
        let mut p = publish(&tok);
        assert!(!p.wait_exit().success(), "a publisher with {why:?} got in");
        while let Ok(l) = p.lines.try_recv() {
            p.log.push(l);
        }
        assert!(
            p.log.join("\n").contains(why),
            "{why}: {}",
            p.log.join("\n")
        );
    }
    assert_eq!(auth_refusals(&admin), 3);
    let mut publisher = publish(&good(&k1, "k1", Grant::Publish, "paid/"));
    publisher.wait_line("publishing");

    // Listeners of paid/show: each bad token refused with its reason, over QUIC and HTTP.
    let ogg = format!("http://{http}/paid/show.ogg");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("none", String::new(), "token required", "401"),
        (
            "expired",
            token(&k1, "k1", Grant::Listen, "paid/", -7200, -3600),
            "token expired",
            "401",
        ),
        (
            "not yet valid",
            token(&k1, "k1", Grant::Listen, "paid/", 3600, 7200),
            "not valid yet",
            "401",
        ),
        (
            "another path",
            good(&k1, "k1", Grant::Listen, "free/"),
            "another path",
            "403",
        ),
        (
            "another role",
            good(&k1, "k1", Grant::Publish, "paid/"),
            "another role",
            "403",
        ),
        (
            "unknown key id",
            good(&k1, "k7", Grant::Listen, "paid/"),
            "unknown token key id",
            "401",
        ),
        (
            "bad signature",
            good(&stranger, "k1", Grant::Listen, "paid/"),
            "bad token signature",
            "401",
        ),
        ("malformed", "garbage".to_string(), "malformed token", "401"),
    ];
    let mut refused = auth_refusals(&admin);
    for (case, tok, why, status) in &cases {
        let out = work.path().join("refused.opus");
        let (ok, heard, log) = quic_listen(&c, &o.url("paid/show"), tok, &out, 5);
        assert!(!ok && heard == 0, "QUIC, {case}: let in");
        assert!(log.contains(why), "QUIC, {case}: {log}");
        let url = format!("{ogg}?token={tok}");
        let (code, body) = curl(&url, &[], 5);
        assert_eq!(&code, status, "HTTP, {case}");
        assert!(String::from_utf8_lossy(&body).contains(why), "HTTP, {case}");
        let (code, _) = curl(&format!("http://{http}/paid/show.m3u8?token={tok}"), &[], 5);
        assert_eq!(&code, status, "HLS, {case}");
        refused += 3;
        assert_eq!(
            auth_refusals(&admin),
            refused,
            "{case}: every refusal counted"
        );
    }

    // The good token: audio over QUIC, over HTTP (query and Bearer), and HLS whose playlist
    // carries the token on to every part and segment.
    let tok = good(&k1, "k1", Grant::Listen, "paid/");
    let out = work.path().join("heard.opus");
    let (ok, heard, log) = quic_listen(&c, &o.url("paid/show"), &tok, &out, 3);
    assert!(ok && heard > 50, "QUIC, good token: {heard} packets; {log}");
    let (code, body) = curl(&format!("{ogg}?token={tok}"), &[], 2);
    assert_eq!(code, "200");
    assert!(body.starts_with(b"OggS") && body.len() > 4000);
    let bearer = format!("Authorization: Bearer {tok}");
    let (code, body) = curl(&ogg, &["-H", &bearer], 2);
    assert_eq!(code, "200");
    assert!(body.starts_with(b"OggS"));
    let (code, playlist) = curl(
        &format!("http://{http}/paid/show.m3u8?token={tok}"),
        &[],
        10,
    );
    assert_eq!(code, "200");
    let playlist = String::from_utf8(playlist).unwrap();
    let uris: Vec<&str> = playlist
        .lines()
        .filter_map(|l| l.split("URI=\"").nth(1).and_then(|r| r.split('"').next()))
        .chain(
            playlist
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
        .collect();
    assert!(uris.len() > 2, "{playlist}");
    for u in &uris {
        assert!(u.ends_with(&format!("token={tok}")), "{u} lacks the token");
    }
    let init = uris.iter().find(|u| u.contains("init.mp4")).unwrap();
    let (code, _) = curl(&format!("http://{http}/paid/{init}"), &[], 5);
    assert_eq!(
        code, "200",
        "the init segment, with the token the playlist gave"
    );
    let init_bare = init.split('?').next().unwrap();
    let (code, _) = curl(&format!("http://{http}/paid/{init_bare}"), &[], 5);
    assert_eq!(code, "401", "the init segment without a token");
    // A public stream needs none.
    let (code, _) = curl(&format!("http://{http}/free/x.ogg"), &["-I"], 2);
    assert_ne!(code, "401");

    // Rotation: k2 in, k1 out, on SIGHUP. k2's tokens are taken, k1's are unknown; the
    // publisher (in with a k1 token) keeps publishing.
    origin_config(work.path(), &[("k2", &k2)]);
    sighup(&o);
    o.p.wait_line("reloaded on SIGHUP");
    let tok2 = good(&k2, "k2", Grant::Listen, "paid/");
    let (ok, heard, log) = quic_listen(&c, &o.url("paid/show"), &tok2, &out, 3);
    assert!(
        ok && heard > 50,
        "after rotation, a k2 token: {heard}; {log}"
    );
    let (ok, _, log) = quic_listen(&c, &o.url("paid/show"), &tok, &out, 3);
    assert!(
        !ok && log.contains("unknown token key id") && log.contains("k1"),
        "{log}"
    );
    assert!(
        publisher.child.try_wait().unwrap().is_none(),
        "the publisher was dropped"
    );
    // A broken key file on reload: refused, k2 still holds.
    std::fs::write(keys.path("k2-broken"), "short\n").unwrap();
    origin_config(work.path(), &[("k2", &keys.path("k2-broken"))]);
    sighup(&o);
    let l = o.p.wait_line("reload refused");
    assert!(l.contains("token-key") && l.contains("too short"), "{l}");
    let (code, _) = curl(&format!("{ogg}?token={tok2}"), &[], 1);
    assert_eq!(code, "200", "the old keys stay after a refused reload");
}

fn sighup(n: &Node) {
    let st = Command::new("kill")
        .args(["-HUP", &n.p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Issue 26, 1: a stream's access rule travels with it. The origin says `paid/` needs a
/// token signed with its key `k1`; relays whose own configuration says nothing of it (no
/// listen policy; one with no key at all) still refuse listeners without a good token, over
/// QUIC, Ogg and HLS. A relay with no key fails closed (its listeners and the relays below
/// it are refused the stream) and says so as it starts; a token signed with a key the
/// relay holds but the origin does not name is refused.
#[test]
fn a_protected_stream_stays_protected_on_relays_whose_config_forgot_it() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let keys = Keys::new();
    let k1 = keys.secret("k1");
    let k2 = keys.secret("k2");
    let cfg = origin_config(work.path(), &[("k1", &k1)]);
    let c = certs();
    let mut o = origin_node(
        &c,
        &["--config", cfg.to_str().unwrap(), "--http", "127.0.0.1:0"],
    );
    let origin_http = o.http_addr();
    let publish = |stream: &str| {
        let mut p = Proc::spawn(&[
            "publish",
            &o.url(stream),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--token",
            &good(&k1, "k1", Grant::Publish, "/"),
            "--fingerprint",
            &c.fp,
        ]);
        p.wait_line("publishing");
        p
    };
    let _paid = publish("paid/show");
    let _free = publish("free/news");
    let relay_tok = keys.path("relay.token");
    std::fs::write(&relay_tok, good(&k1, "k1", Grant::Relay, "/")).unwrap();
    let rt = relay_tok.to_str().unwrap();
    let http = ["--http", "127.0.0.1:0"];

    // A mid with its relay token and no key at all: a slip in its config.
    let mut keyless = relay_node(&c, &[&o], &[&["--relay-token", rt][..], &http].concat());
    keyless.p.wait_lines(&["has no token-key"]);
    let keyless_http = keyless.http_addr();
    // An edge under it with the key (the keyless mid asks no relay token), and an edge
    // under the origin with the key and a second one the origin does not name, neither
    // with a listen policy.
    let k1_arg = format!("k1={}", k1.display());
    let k2_arg = format!("k2={}", k2.display());
    let mut below = relay_node(
        &c,
        &[&keyless],
        &[&["--relay-token", rt, "--token-key", &k1_arg][..], &http].concat(),
    );
    let below_http = below.http_addr();
    let mut keyed = relay_node(
        &c,
        &[&o],
        &[
            &[
                "--relay-token",
                rt,
                "--token-key",
                &k1_arg,
                "--token-key",
                &k2_arg,
            ][..],
            &http,
        ]
        .concat(),
    );
    let keyed_http = keyed.http_addr();

    let listen_tok = good(&k1, "k1", Grant::Listen, "paid/show");
    let k2_tok = good(&k2, "k2", Grant::Listen, "paid/show");
    let out = work.path().join("heard.opus");

    // The public stream plays everywhere without a token.
    for h in [&keyless_http, &below_http, &keyed_http] {
        let (code, body) = curl(&format!("http://{h}/free/news.ogg"), &[], 2);
        assert!(
            body.starts_with(b"OggS") && (code == "200" || code == "000"),
            "free/news on {h}: {code}"
        );
    }

    // The keyless mid: nobody hears the protected stream, and is told why.
    let (code, body) = curl(&format!("http://{keyless_http}/paid/show.ogg"), &[], 10);
    let body = String::from_utf8_lossy(&body);
    assert!(
        code == "500" && body.contains("no token key"),
        "{code} {body}"
    );
    let (code, _) = curl(
        &format!("http://{keyless_http}/paid/show.ogg?token={listen_tok}"),
        &[],
        10,
    );
    assert_eq!(
        code, "500",
        "a token does not help a node that cannot check it"
    );
    let (code, _) = curl(&format!("http://{keyless_http}/paid/show.m3u8"), &[], 10);
    assert_eq!(code, "500");
    let (ok, heard, log) = quic_listen(&c, &keyless.url("paid/show"), &listen_tok, &out, 2);
    assert!(!ok && heard == 0 && log.contains("no token key"), "{log}");

    // Edges with the key and no policy: the origin's rule holds, through a keyless mid too.
    // Under the keyless mid: it cannot check that whoever says "relay" is one, so it
    // hands the protected stream to no relay either; the edge's listeners are told why.
    let (code, body) = curl(
        &format!("http://{below_http}/paid/show.ogg?token={listen_tok}"),
        &[],
        10,
    );
    let body = String::from_utf8_lossy(&body);
    assert!(
        code == "403" && body.contains("no token key"),
        "{code} {body}"
    );
    let (_, body) = curl(&format!("http://{below_http}/free/news.ogg"), &[], 2);
    assert!(
        body.starts_with(b"OggS"),
        "the public stream still plays below it"
    );

    let (edge, h) = (&keyed, &keyed_http);
    let (code, body) = curl(&format!("http://{h}/paid/show.ogg"), &[], 10);
    assert_eq!(code, "401", "{}", String::from_utf8_lossy(&body));
    let (code, body) = curl(&format!("http://{h}/paid/show.m3u8"), &[], 10);
    assert_eq!(code, "401", "{}", String::from_utf8_lossy(&body));
    let (_, body) = curl(
        &format!("http://{h}/paid/show.ogg?token={listen_tok}"),
        &[],
        2,
    );
    assert!(body.starts_with(b"OggS"), "with its token on {h}");
    let (ok, heard, log) = quic_listen(&c, &edge.url("paid/show"), "", &out, 2);
    assert!(!ok && heard == 0 && log.contains("token required"), "{log}");
    let (ok, heard, log) = quic_listen(&c, &edge.url("paid/show"), &listen_tok, &out, 2);
    assert!(ok && heard > 20, "with its token over QUIC: {heard}; {log}");

    // A key the edge holds but the origin does not name signs nothing for the stream.
    let (code, body) = curl(
        &format!("http://{keyed_http}/paid/show.ogg?token={k2_tok}"),
        &[],
        10,
    );
    let body = String::from_utf8_lossy(&body);
    assert!(
        code == "401" && body.contains("may not sign for this stream"),
        "{code} {body}"
    );
    let (ok, _, log) = quic_listen(&c, &keyed.url("paid/show"), &k2_tok, &out, 2);
    assert!(!ok && log.contains("may not sign for this stream"), "{log}");

    // /streams says who may listen, the broadcast's start at the origin and the interval
    // its listeners are sent frames at (a relay passes on its parent's), alike on every node.
    let started: Vec<(serde_json::Value, serde_json::Value)> =
        [&origin_http, &keyless_http, &below_http, &keyed_http]
            .iter()
            .map(|h| {
                let (_, body) = curl(&format!("http://{h}/streams"), &[], 5);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let s = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == "paid/show")
                    .unwrap_or_else(|| panic!("paid/show in {v}"));
                assert_eq!(s["access"], "token", "{s}");
                (s["started_at"].clone(), s["delivery_interval_ms"].clone())
            })
            .collect();
    assert!(started.iter().all(|s| s.0 == started[0].0), "{started:?}");
    // Where it is carried (the origin, the edge with its key): the same interval.
    let (o_iv, keyed_iv) = (&started[0].1, &started[3].1);
    assert!(
        o_iv.as_u64().unwrap() > 0 && o_iv == keyed_iv,
        "{started:?}"
    );
}

/// `/streams` of the node at `http`, once `ok` holds of it (the catalog comes down the
/// tree every few seconds): polled, at most a minute.
fn streams_when(http: &str, ok: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, body) = curl(&format!("http://{http}/streams"), &[], 5);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        if ok(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < until, "never: {v:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Issue 26, 2: every node knows what is live in its tree, not only what it carries. An
/// edge two hops down with no listener lists both streams (carried: false) on `/streams`
/// and its page; the page offers a player for the public one, asks for a token for the
/// protected one, plays it with a good `?token=` and says why a bad one is refused. Once
/// a listener comes, the edge carries it and lists its listener.
#[test]
fn an_edge_lists_the_trees_live_streams_before_anyone_listens_there() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let keys = Keys::new();
    let k1 = keys.secret("k1");
    let cfg = origin_config(work.path(), &[("k1", &k1)]);
    let c = certs();
    let o = origin_node(&c, &["--config", cfg.to_str().unwrap()]);
    let publish = |stream: &str| {
        let mut p = Proc::spawn(&[
            "publish",
            &o.url(stream),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--token",
            &good(&k1, "k1", Grant::Publish, "/"),
            "--fingerprint",
            &c.fp,
        ]);
        p.wait_line("publishing");
        p
    };
    let _paid = publish("paid/show");
    let _free = publish("free/news");
    let relay_tok = keys.path("relay.token");
    std::fs::write(&relay_tok, good(&k1, "k1", Grant::Relay, "/")).unwrap();
    let rt = relay_tok.to_str().unwrap();
    let k1_arg = format!("k1={}", k1.display());
    let relay_args = ["--relay-token", rt, "--token-key", &k1_arg];
    let mid = relay_node(&c, &[&o], &relay_args);
    let mut edge = relay_node(
        &c,
        &[&mid],
        &[&relay_args[..], &["--http", "127.0.0.1:0"]].concat(),
    );
    let http = edge.http_addr();

    let v = streams_when(&http, |v| v.len() == 2);
    let by = |name: &str| v.iter().find(|s| s["name"] == name).unwrap().clone();
    let (free, paid) = (by("free/news"), by("paid/show"));
    assert_eq!(free["carried"], false, "{free}");
    assert_eq!(free["access"], "public");
    assert_eq!(paid["access"], "token");
    assert_eq!(paid["listeners"], 0);
    assert!(paid["started_at"].as_u64().unwrap() > 1_600_000_000);

    let page = |q: &str| {
        let (code, body) = curl(&format!("http://{http}/{q}"), &[], 5);
        assert_eq!(code, "200");
        String::from_utf8(body).unwrap()
    };
    let item = |page: &str, name: &str| -> String {
        let at = page
            .find(&format!("<li data-name=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} on the page: {page}"));
        page[at..at + page[at..].find("</li>").unwrap()].to_string()
    };
    let p = page("");
    assert!(
        item(&p, "free/news").contains("data-stream=\"free/news\""),
        "{p}"
    );
    let paid_item = item(&p, "paid/show");
    assert!(
        !paid_item.contains("<audio") && paid_item.contains("name=\"token\""),
        "{paid_item}"
    );
    let tok = good(&k1, "k1", Grant::Listen, "paid/show");
    let p = page(&format!("?token={tok}"));
    let paid_item = item(&p, "paid/show");
    assert!(
        paid_item.contains(&format!("data-token=\"{tok}\"")),
        "{paid_item}"
    );
    let other = good(&k1, "k1", Grant::Listen, "paid/other");
    let p = page(&format!("?token={other}"));
    let paid_item = item(&p, "paid/show");
    assert!(
        !paid_item.contains("<audio") && paid_item.contains("token for another path"),
        "{paid_item}"
    );

    // The player's URL, with the token, plays; the edge then carries the stream.
    let (_, body) = curl(&format!("http://{http}/paid/show.ogg?token={tok}"), &[], 2);
    assert!(body.starts_with(b"OggS"));
    let out = work.path().join("heard.opus");
    let _l = Proc::spawn(&[
        "listen",
        &edge.url("free/news"),
        "--fingerprint",
        &c.fp,
        "--output",
        out.to_str().unwrap(),
        "--duration",
        "30",
    ]);
    let v = streams_when(&http, |v| {
        v.iter()
            .any(|s| s["name"] == "free/news" && s["carried"] == true && s["listeners"] == 1)
    });
    let free = v.iter().find(|s| s["name"] == "free/news").unwrap();
    assert_eq!(free["codec"], "opus", "{free}");
}

#[test]
fn a_relay_presents_its_relay_token_and_one_without_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let keys = Keys::new();
    let k1 = keys.secret("k1");
    let cfg = origin_config(work.path(), &[("k1", &k1)]);
    let c = certs();
    let mut o = origin_node(
        &c,
        &["--config", cfg.to_str().unwrap(), "--admin", "127.0.0.1:0"],
    );
    let admin = o.logged_addr("admin");
    let _p = {
        let mut p = Proc::spawn(&[
            "publish",
            &o.url("paid/show"),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--token",
            &good(&k1, "k1", Grant::Publish, "/"),
            "--fingerprint",
            &c.fp,
        ]);
        p.wait_line("publishing");
        p
    };
    // With its token (the relay checks listeners with the same key).
    let relay_tok = keys.path("relay.token");
    std::fs::write(&relay_tok, good(&k1, "k1", Grant::Relay, "/")).unwrap();
    let key_arg = format!("k1={}", k1.display());
    let r = relay_node(
        &c,
        &[&o],
        &[
            "--relay-token",
            relay_tok.to_str().unwrap(),
            "--token-key",
            &key_arg,
            "--listen-policy",
            "paid/=token",
        ],
    );
    let out = work.path().join("heard.opus");
    let tok = good(&k1, "k1", Grant::Listen, "paid/show");
    let (ok, heard, log) = quic_listen(&c, &r.url("paid/show"), &tok, &out, 3);
    assert!(
        ok && heard > 50,
        "through a relay with its token: {heard}; {log}"
    );
    let (ok, _, log) = quic_listen(&c, &r.url("paid/show"), "", &out, 3);
    assert!(
        !ok && log.contains("token required"),
        "the relay checks its listeners: {log}"
    );
    assert_eq!(auth_refusals(&admin), 0);

    // Without one: the origin refuses the relay (counted), whose listeners hear nothing, and
    // are told why at once, not at the end of their wait (http-wait-secs: a minute here).
    let mut bare = relay_node(
        &c,
        &[&o],
        &["--http", "127.0.0.1:0", "--http-wait-secs", "60"],
    );
    let http = bare.logged_addr("HTTP");
    let (ok, heard, log) = quic_listen(&c, &bare.url("paid/show"), "", &out, 3);
    assert!(!ok && heard == 0, "{log}");
    assert!(log.contains("refused this relay"), "{log}");
    bare.p.wait_line("token required");
    assert!(auth_refusals(&admin) >= 1);
    let r = std::process::Command::new("curl")
        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}"])
        .arg(format!("http://{http}/paid/show.ogg"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "502", "{text}");
    assert!(body.contains("refused this relay"), "{body}");
}

#[test]
fn sighup_with_a_new_certificate_serves_it_to_newcomers_and_keeps_old_listeners() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let old = certs();
    let new = certs();
    // The origin reads its certificate from files the operator replaces.
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let mut o = Node {
        p: Proc::spawn(&[
            "origin",
            "--segment-ms",
            "500",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]),
        addr: String::new(),
    };
    o.addr = o.p.addr();
    let _p = publish(&old, &[&o], "talk", &src);
    // A listener from before the reload, for the whole test.
    let before = work.path().join("before.opus");
    let mut early = listen(&old, &[&o], "talk", &before, 8);
    o.p.wait_line("egress::quic: subscribed");

    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    sighup(&o);
    let l = o.p.wait_line("reloaded on SIGHUP");
    assert!(l.contains(&new.fp), "{l}");
    let out = work.path().join("after.opus");
    let (ok, heard, log) = quic_listen(&new, &o.url("talk"), "", &out, 2);
    assert!(
        ok && heard > 30,
        "a newcomer trusting the new certificate: {log}"
    );
    let (ok, heard, _) = quic_listen(&old, &o.url("talk"), "", &out, 2);
    assert!(
        !ok && heard == 0,
        "a newcomer pinning the old certificate got in"
    );

    // A broken certificate file: refused, the new one still served.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnonsense\n").unwrap();
    sighup(&o);
    let l = o.p.wait_line("reload refused");
    assert!(l.contains("cert"), "{l}");
    let (ok, heard, _) = quic_listen(&new, &o.url("talk"), "", &out, 2);
    assert!(ok && heard > 30);

    // The listener from before heard one unbroken run all along.
    assert!(early.wait_exit().success());
    assert_one_run(&before, &src_crcs, 250);
}

/// `quicast token` with `extra` flags: the token it prints.
fn cli_token(key: &Path, extra: &[&str]) -> String {
    let o = Command::new(BIN)
        .args(["token", "--key", key.to_str().unwrap(), "--kid", "k1"])
        .args(["--role", "listen", "--path", "paid/"])
        .args(extra)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A token's (nbf, exp), read from its claims.
fn times(token: &str) -> (i64, i64) {
    use base64::Engine as _;
    let body = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    (v["nbf"].as_i64().unwrap(), v["exp"].as_i64().unwrap())
}

#[test]
fn the_token_command_mints_not_yet_valid_and_expired_tokens_that_nodes_refuse() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let keys = Keys::new();
    let k1 = keys.secret("k1");
    let cfg = origin_config(work.path(), &[("k1", &k1)]);
    let c = certs();
    let mut o = origin_node(
        &c,
        &["--config", cfg.to_str().unwrap(), "--http", "127.0.0.1:0"],
    );
    let http = o.http_addr();
    let mut publisher = Proc::spawn(&[
        "publish",
        &o.url("paid/show"),
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--token",
        &good(&k1, "k1", Grant::Publish, "paid/"),
        "--fingerprint",
        &c.fp,
    ]);
    publisher.wait_line("publishing");

    let now = unix_now() as i64;
    let later = cli_token(&k1, &["--not-before", "+1h", "--ttl", "3600"]);
    let (nbf, exp) = times(&later);
    assert!((nbf - (now + 3600)).abs() <= 5, "nbf {nbf}");
    assert_eq!(exp, nbf + 3600, "--ttl counts from --not-before");
    let expired = cli_token(&k1, &["--not-before", "-2h", "--expires", "-1h"]);
    let (nbf, exp) = times(&expired);
    assert!((nbf - (now - 7200)).abs() <= 5 && (exp - (now - 3600)).abs() <= 5);
    let at = cli_token(
        &k1,
        &[
            "--not-before",
            "2030-01-01T00:00:00Z",
            "--expires",
            "2030-01-01T02:00:00+01:00",
        ],
    );
    assert_eq!(times(&at), (1_893_456_000, 1_893_456_000 + 3600));
    // A window that is open now, written both ways.
    let open = cli_token(&k1, &["--not-before", "-1m", "--expires", "+10m"]);

    let out = work.path().join("heard.opus");
    for (case, tok, why) in [
        ("not yet valid", &later, "token not valid yet"),
        ("expired", &expired, "token expired"),
    ] {
        let (ok, heard, log) = quic_listen(&c, &o.url("paid/show"), tok, &out, 3);
        assert!(!ok && heard == 0, "QUIC, {case}: let in");
        assert!(log.contains(why), "QUIC, {case}: {log}");
        let (code, body) = curl(&format!("http://{http}/paid/show.ogg?token={tok}"), &[], 5);
        assert_eq!(code, "401", "HTTP, {case}");
        assert!(String::from_utf8_lossy(&body).contains(why), "HTTP, {case}");
    }
    let (ok, heard, log) = quic_listen(&c, &o.url("paid/show"), &open, &out, 3);
    assert!(ok && heard > 50, "a token open now: {heard}; {log}");

    // What the command refuses, by flag.
    let refuse = |extra: &[&str], says: &str| {
        let o = Command::new(BIN)
            .args(["token", "--key", k1.to_str().unwrap(), "--kid", "k1"])
            .args(["--role", "listen", "--path", "paid/"])
            .args(extra)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && e.contains(says), "{extra:?}: {e}");
    };
    refuse(
        &["--not-before", "tomorrow", "--ttl", "60"],
        "--not-before \"tomorrow\"",
    );
    refuse(&["--expires", "3600"], "give a unit");
    refuse(
        &["--not-before", "+2h", "--expires", "+1h"],
        "before it starts",
    );
    refuse(&["--ttl", "60", "--expires", "+1h"], "cannot be used with");
    refuse(&["--not-before", "+1h"], "--ttl");
}
