//! The `quicast` binary as operators and publishers use it, with real ffmpeg: separate
//! processes for the origin and relays, `quicast publish` and `quicast listen`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

use common::media::{assert_decodes_cleanly, make_opus, make_vorbis, packet_crcs};
use common::procs::*;

#[test]
fn ffmpeg_audio_through_two_relays_decodes_and_matches_the_source() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 4);
    let src_crcs = packet_crcs(&src);
    let mut t = tree();

    // A file listener and a stdout listener wait at the edge before the streams start.
    let out = work.path().join("out.opus");
    let mut listen_file = Proc::spawn(&[
        "listen",
        &format!("quic://{}/talk", t.r2_addr),
        "--fingerprint",
        &t.c.fp,
        "--output",
        out.to_str().unwrap(),
    ]);
    // `--output -`: what it writes to stdout lands in a file (and it is killed if we fail).
    let piped_file = work.path().join("piped.opus");
    let mut listen_pipe = Killed(
        Command::new(BIN)
            .args([
                "listen",
                &format!("quic://{}/piped", t.r2_addr),
                "--fingerprint",
                &t.c.fp,
                "--output",
                "-",
            ])
            .stdout(std::fs::File::create(&piped_file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    t.origin.wait_lines(&[
        "path=talk role=Relay}: quicast::node: stream has not started",
        "path=piped role=Relay}: quicast::node: stream has not started",
    ]);

    // Publish the file (paced in real time), and ffmpeg piping into `publish --input -`.
    let origin_url = |s: &str| format!("quic://{}/{s}", t.origin_addr);
    let mut pub_file = Proc::spawn(&[
        "publish",
        &origin_url("talk"),
        "--input",
        src.to_str().unwrap(),
        "--token",
        "tok",
        "--fingerprint",
        &t.c.fp,
    ]);
    let mut ff = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "error",
            "-re",
            "-i",
            src.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "ogg",
            "-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let st = Command::new(BIN)
        .args([
            "publish",
            &origin_url("piped"),
            "--input",
            "-",
            "--token",
            "tok",
            "--fingerprint",
            &t.c.fp,
        ])
        .stdin(ff.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "publish from stdin failed");
    assert!(ff.wait().unwrap().success());
    assert!(
        pub_file.wait_exit().success(),
        "publish from file failed:\n{}",
        pub_file.log.join("\n")
    );

    // The broadcasts end; both listeners exit by themselves.
    assert!(
        listen_file.wait_exit().success(),
        "listen failed:\n{}",
        listen_file.log.join("\n")
    );
    assert!(listen_pipe.0.wait().unwrap().success());

    for f in [&out, &piped_file] {
        assert_decodes_cleanly(f);
        let got = packet_crcs(f);
        if got.len() != src_crcs.len() {
            let first = src_crcs.iter().position(|p| p == &got[0]);
            eprintln!(
                "{}: {} of {} packets, first is source packet {first:?}",
                f.display(),
                got.len(),
                src_crcs.len()
            );
            eprintln!("listen log:\n{}", listen_file.log.join("\n"));
            eprintln!("origin log:\n{}", t.origin.log.join("\n"));
        }
        let start = assert_contiguous_run(&got, &src_crcs, src_crcs.len());
        assert_eq!(
            start, 0,
            "listeners that waited from the start hear it from the first packet"
        );
        assert_eq!(got.len(), src_crcs.len(), "and every packet to the last");
    }
}

#[test]
fn listen_with_duration_joins_live_and_exits_zero() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 3);
    let src_crcs = packet_crcs(&src);
    let t = tree();
    let _publisher = publish_loop(&t, "loop", &src);
    let out = work.path().join("live.opus");
    let mut l = Proc::spawn(&[
        "listen",
        &format!("quic://{}/loop", t.r2_addr),
        "--fingerprint",
        &t.c.fp,
        "--output",
        out.to_str().unwrap(),
        "--duration",
        "4",
    ]);
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_decodes_cleanly(&out);
    // Over 4 s the loop wraps around: match against the source twice over.
    let twice: Vec<_> = src_crcs
        .iter()
        .chain(src_crcs.iter())
        .chain(src_crcs.iter())
        .cloned()
        .collect();
    assert_contiguous_run(&packet_crcs(&out), &twice, 100);
}

#[test]
fn bad_input_and_bad_credentials_are_named() {
    let work = tempfile::tempdir().unwrap();
    let t = tree();
    let url = format!("quic://{}/x", t.origin_addr);
    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let text = work.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not audio at all, just some text that is long enough",
    )
    .unwrap();
    let e = run(&[
        "publish",
        &url,
        "--input",
        text.to_str().unwrap(),
        "--token",
        "tok",
        "--fingerprint",
        &t.c.fp,
    ]);
    assert!(e.contains("is not Ogg Opus, MP3 or AAC"), "{e}");

    let vorbis = make_vorbis(work.path());
    let e = run(&[
        "publish",
        &url,
        "--input",
        vorbis.to_str().unwrap(),
        "--token",
        "tok",
        "--fingerprint",
        &t.c.fp,
    ]);
    assert!(e.contains("not Opus") && e.contains("Vorbis"), "{e}");

    let src = make_opus(work.path(), 1);
    let e = run(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--token",
        "nope",
        "--fingerprint",
        &t.c.fp,
    ]);
    assert!(e.contains("wrong publish token"), "{e}");
    let e = run(&[
        "publish",
        &url,
        "--input",
        src.to_str().unwrap(),
        "--fingerprint",
        &t.c.fp,
    ]);
    assert!(e.contains("publish token required"), "{e}");
    let e = run(&["listen", &url, "--output", "-"]);
    assert!(
        e.contains("--fingerprint"),
        "no trust given: the error says how to give it: {e}"
    );
    let e = run(&[
        "listen",
        &url,
        "--output",
        "-",
        "--fingerprint",
        &"ab".repeat(32),
    ]);
    assert!(e.contains("not pinned"), "{e}");
}

#[test]
fn a_bad_config_file_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\nupstrem = [\"quic://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["relay", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("upstrem"), "{e}");
    std::fs::write(&bad, "segment-ms = 3\n").unwrap();
    let o = Command::new(BIN)
        .args(["origin", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("segment-ms"));
    // A TOML syntax error: the file, line and column, and the key of the line.
    std::fs::write(&bad, "segment-ms = 500\nlisten = \"127.0.0.1:0\n").unwrap();
    for args in [
        vec!["origin", "--config", bad.to_str().unwrap()],
        vec!["check-config", bad.to_str().unwrap()],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains(&format!("error: {}:2:", bad.display())) && e.contains("`listen`"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn origin_and_relay_each_show_and_take_only_their_own_flags() {
    let help = |cmd: &str| {
        let o = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    let (origin, relay) = (help("origin"), help("relay"));
    for flag in [
        "--upstream ",
        "--hedge ",
        "--relay-token ",
        "--linger-secs ",
        "--ca ",
    ] {
        assert!(!origin.contains(flag), "origin --help lists {flag}");
        assert!(relay.contains(flag), "relay --help lacks {flag}");
    }
    for flag in [
        "--publish-token ",
        "--source-password ",
        "--publisher-grace-secs ",
    ] {
        assert!(origin.contains(flag), "origin --help lacks {flag}");
        assert!(!relay.contains(flag), "relay --help lists {flag}");
    }
    for both in ["--listen ", "--http ", "--cache-mib ", "--token-key "] {
        assert!(origin.contains(both) && relay.contains(both), "{both}");
    }

    let dir = tempfile::tempdir().unwrap();
    let fails = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let fp = "ab".repeat(32);
    let e = fails(&["origin", "--listen", "127.0.0.1:0", "--hedge", "on"]);
    assert!(e.contains("error: --hedge: only a relay takes this"), "{e}");
    let e = fails(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "quic://127.0.0.1:1",
        "--fingerprint",
        &fp,
        "--source-timeout-ms",
        "500",
    ]);
    assert!(
        e.contains("error: --source-timeout-ms: only an origin takes this"),
        "{e}"
    );
    // In a file: the key, and the file.
    let f = dir.path().join("origin.toml");
    std::fs::write(&f, "listen = \"127.0.0.1:0\"\nparent-timeout-ms = 500\n").unwrap();
    let e = fails(&["origin", "--config", f.to_str().unwrap()]);
    assert!(
        e.contains("error: parent-timeout-ms: only a relay takes this")
            && e.contains("origin.toml"),
        "{e}"
    );
    let e = fails(&["check-config", f.to_str().unwrap(), "--role", "origin"]);
    assert!(
        e.contains("error: parent-timeout-ms: only a relay takes this"),
        "{e}"
    );
    let f = dir.path().join("relay.toml");
    std::fs::write(
        &f,
        format!("upstream = [\"quic://127.0.0.1:1\"]\nfingerprint = [\"{fp}\"]\npublisher-grace-secs = 5\n"),
    )
    .unwrap();
    let e = fails(&["relay", "--config", f.to_str().unwrap()]);
    assert!(
        e.contains("error: publisher-grace-secs: only an origin takes this"),
        "{e}"
    );
    let e = fails(&["check-config", f.to_str().unwrap()]);
    assert!(
        e.contains("error: publisher-grace-secs: only an origin takes this"),
        "{e}"
    );
}

#[test]
fn a_refused_listen_leaves_no_file_and_an_existing_one_as_it_was() {
    let work = tempfile::tempdir().unwrap();
    let c = certs();
    let key = work.path().join("k1.key");
    std::fs::write(&key, format!("{}\n", "s".repeat(48))).unwrap();
    let key_arg = format!("k1={}", key.display());
    let o = Node::spawn(
        &c,
        &[
            "origin",
            "--unannounced-wait-secs",
            "1",
            "--token-key",
            &key_arg,
            "--listen-policy",
            "paid/=token",
        ],
    );
    let listen = |url: &str, out: &std::path::Path, fp: &str, token: &str| {
        let o = Command::new(BIN)
            .args([
                "listen",
                url,
                "--fingerprint",
                fp,
                "--output",
                out.to_str().unwrap(),
                "--token",
                token,
                "--duration",
                "20",
            ])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{url}: a refused listen exits 1");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let other_fp = "ab".repeat(32);
    let cases = [
        (
            "an untrusted node",
            o.url("free/x"),
            other_fp.as_str(),
            "",
            "not pinned",
        ),
        (
            "no such stream",
            o.url("free/nobody"),
            c.fp.as_str(),
            "",
            "not_found",
        ),
        (
            "a malformed token",
            o.url("paid/x"),
            c.fp.as_str(),
            "garbage",
            "malformed token",
        ),
        (
            "no token",
            o.url("paid/x"),
            c.fp.as_str(),
            "",
            "listen token required",
        ),
    ];
    for (case, url, fp, token, why) in &cases {
        let fresh = work.path().join("fresh.opus");
        let e = listen(url, &fresh, fp, token);
        assert!(e.contains(why), "{case}: {e}");
        assert!(
            !fresh.exists(),
            "{case}: a refused listen left {}",
            fresh.display()
        );
        let kept = work.path().join("kept.opus");
        std::fs::write(&kept, b"an earlier recording").unwrap();
        listen(url, &kept, fp, token);
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"an earlier recording",
            "{case}: a refused listen touched an existing file"
        );
    }
    // An output nowhere to be written is refused before connecting.
    let e = listen(
        &o.url("free/x"),
        &work.path().join("no/such/dir/x.opus"),
        &c.fp,
        "",
    );
    assert!(
        e.contains("--output") && e.contains("no such directory"),
        "{e}"
    );
}

#[test]
fn library_errors_reach_the_operator_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        for leak in [
            "Base64",
            "base64 error",
            "os error",
            "Asn1",
            "BadEncoding",
            "symbol",
            "expected one of",
            "i64",
        ] {
            assert!(!e.contains(leak), "{args:?}: {e}");
        }
        e
    };
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bad_pub = w(
        "bad.pub",
        "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n",
    );
    let cfg = w("keys.toml", &format!("token-key = [\"k1={bad_pub}\"]\n"));
    let e = run(&["check-config", &cfg]);
    assert!(
        e.contains("error: token-key:") && e.contains("not a usable ECDSA P-256 public key"),
        "{e}"
    );
    let bad_priv = w("bad.pem", "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgt\n-----END PRIVATE KEY-----\n");
    let e = run(&[
        "token", "--key", &bad_priv, "--kid", "k", "--role", "listen", "--path", "/", "--ttl", "60",
    ]);
    assert!(e.contains("not a usable ECDSA P-256 private key"), "{e}");
    let e = run(&[
        "token",
        "--key",
        "/nonexistent/k",
        "--kid",
        "k",
        "--role",
        "listen",
        "--path",
        "/",
        "--ttl",
        "60",
    ]);
    assert!(
        e.contains("/nonexistent/k: cannot read it (no such file)"),
        "{e}"
    );
    let cert = w(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let cfg = w(
        "cert.toml",
        &format!("cert = \"{cert}\"\nkey = \"{bad_priv}\"\n"),
    );
    let e = run(&["check-config", &cfg]);
    assert!(
        e.contains("error: cert:") && e.contains("not a valid PEM file"),
        "{e}"
    );
    let cfg = w("type.toml", "segment-ms = \"500\"\n");
    let e = run(&["check-config", &cfg]);
    assert!(
        e.contains("error: segment-ms:") && e.contains("a whole number"),
        "{e}"
    );
    let e = run(&["check-config", "/nonexistent/node.toml"]);
    assert!(e.contains("cannot read it (no such file)"), "{e}");
}

#[test]
fn the_demo_prints_listen_commands_that_play_and_stops_on_ctrl_c() {
    // Killed on drop, so a failing assertion does not leave the demo running.
    let mut demo = Killed(
        Command::new(BIN)
            .args(["demo", "--base-port", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let mut commands = Vec::new();
    let mut http_urls = Vec::new();
    while commands.len() < 2 || http_urls.len() < 2 {
        let l = lines.next().expect("demo output").unwrap();
        if let Some(cmd) = l.trim().strip_prefix("quicast listen ") {
            commands.push(cmd.split(" | ").next().unwrap().to_string());
        }
        if let Some(rest) = l.trim().strip_prefix("ffplay -nodisp ") {
            http_urls.push(rest.split_whitespace().next().unwrap().to_string());
        }
    }
    let work = tempfile::tempdir().unwrap();
    for (i, cmd) in commands.iter().enumerate() {
        let out = work.path().join(format!("edge{i}.opus"));
        let mut args: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        let o = args.iter().position(|a| a == "--output").unwrap();
        args[o + 1] = out.to_str().unwrap().to_string();
        args.extend(["--duration".into(), "2.5".into()]);
        let st = Command::new(BIN)
            .arg("listen")
            .args(&args)
            .env("RUST_LOG", "warn")
            .status()
            .unwrap();
        assert!(st.success());
        assert_decodes_cleanly(&out);
        assert!(
            packet_crcs(&out).len() >= 50,
            "at least a second of audio from edge {i}"
        );
    }
    // The printed HTTP URLs play too (curl stops after 2.5 s of a live stream).
    let out = work.path().join("http.ogg");
    let st = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "2.5",
            "-o",
            out.to_str().unwrap(),
            &http_urls[0],
        ])
        .status()
        .unwrap();
    assert_eq!(
        st.code(),
        Some(28),
        "curl ran until its time limit, streaming"
    );
    assert_decodes_cleanly(&out);
    assert!(
        packet_crcs(&out).len() >= 50,
        "at least a second of audio over HTTP"
    );
    Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        demo.0.wait().unwrap().success(),
        "Ctrl-C stops the demo cleanly"
    );
}

#[test]
fn loadgen_reports_what_its_listeners_heard_as_one_json_line() {
    let work = tempfile::tempdir().unwrap();
    let src = make_opus(work.path(), 2);
    let t = tree();
    let _publisher = publish_loop(&t, "load", &src);
    let o = Command::new(BIN)
        .args([
            "loadgen",
            &format!("quic://{}/load", t.r2_addr),
            "--listeners",
            "8",
            "--duration",
            "2",
            "--ramp",
            "0.5",
            // Two engine threads, four listeners each.
            "--endpoints",
            "2",
            "--fingerprint",
            &t.c.fp,
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["listeners"], 8);
    assert_eq!(v["connected"], 8);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["gaps"], 0);
    assert_eq!(v["skips"], 0);
    // 8 listeners for 2 s of 20 ms frames, plus the join burst: well over 8 x 50 frames.
    assert!(v["frames"].as_u64().unwrap() >= 8 * 50, "{last}");
    for k in ["p50", "p99", "max"] {
        assert!(
            v["latency_ms"][k].as_f64().unwrap() > 0.0,
            "latency_ms.{k} in {last}"
        );
    }
    for k in ["p50", "p99"] {
        assert!(
            v["join_ms"][k].as_f64().unwrap() > 0.0,
            "join_ms.{k} in {last}"
        );
    }
}

#[test]
fn check_config_passes_every_example_and_names_the_key_of_a_broken_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .chain(std::fs::read_dir(root.join("redundant")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    // The certificates the examples name, made as the walkthrough makes them; check-config
    // reads them as start does.
    let certs = tempfile::tempdir().unwrap();
    let names = [
        "origin-a", "origin-b", "mid-1", "mid-2", "mid-3", "mid-4", "edge-1",
    ];
    let made = Command::new("bash")
        .arg(root.join("deploy/make-certs.sh"))
        .arg(certs.path())
        .args(names.iter().map(|n| format!("{n}.example")))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for n in names {
        for ext in ["crt", "key"] {
            std::fs::rename(
                certs.path().join(format!("{n}.example.{ext}")),
                certs.path().join(format!("{n}.{ext}")),
            )
            .unwrap();
        }
    }
    // And the token files the secured examples name, made as the walkthrough makes them.
    let made = Command::new("openssl")
        .args(["rand", "-base64", "-out"])
        .arg(certs.path().join("tokens-2026-12.key"))
        .arg("48")
        .output()
        .unwrap();
    assert!(made.status.success());
    let relay = Command::new(BIN)
        .arg("token")
        .arg("--key")
        .arg(certs.path().join("tokens-2026-12.key"))
        .args([
            "--kid", "2026-12", "--role", "relay", "--path", "/", "--ttl", "31536000",
        ])
        .output()
        .unwrap();
    assert!(relay.status.success());
    std::fs::write(certs.path().join("relay.token"), &relay.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .unwrap()
            .replace("/etc/quicast/", &format!("{}/", certs.path().display()));
        let f = &dir.path().join(f.file_name().unwrap());
        std::fs::write(f, &text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(f)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let first = said.lines().next().unwrap_or_default();
        assert!(
            first.ends_with("ok (origin)") || first.ends_with("ok (relay)"),
            "{said}"
        );
        // A relay with no token key is told it will refuse protected streams' listeners.
        let keyless_relay = first.ends_with("ok (relay)") && !text.contains("token-key");
        assert_eq!(
            said.contains("note: this relay has no token-key"),
            keyless_relay,
            "{said}"
        );
    }
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (crt, key_a, key_b) = (
        certs.path().join("mid-1.crt"),
        certs.path().join("mid-1.key"),
        certs.path().join("mid-2.key"),
    );
    let files_cases = [
        (format!("cert = {garbage:?}\nkey = {key_a:?}\n"), "cert"),
        (
            format!("cert = \"/nonexistent.crt\"\nkey = {key_a:?}\n"),
            "cert",
        ),
        (format!("cert = {crt:?}\nkey = {garbage:?}\n"), "key"),
        // A key that is not the certificate's.
        (format!("cert = {crt:?}\nkey = {key_b:?}\n"), "key"),
        (
            format!("upstream = [\"quic://127.0.0.1:1\"]\nca = {garbage:?}\n"),
            "ca",
        ),
        (
            "upstream = [\"quic://127.0.0.1:1\"]\nca = \"/nonexistent/ca.pem\"\n".to_string(),
            "ca",
        ),
    ];
    for (text, key) in &files_cases {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains(&format!("error: {key}")), "{text}: {err}");
    }
    for (text, key, role) in [
        ("segment-ms = 5\n", "segment-ms", None),
        ("nonsense = 1\n", "nonsense", None),
        ("listen = \"not an address\"\n", "listen", None),
        (
            "upstream = [\"quic://127.0.0.1:1/x\"]\nfingerprint = [\"00\"]\n",
            "fingerprint",
            None,
        ),
        ("listen = \"127.0.0.1:4433\"\n", "upstream", Some("relay")),
        (
            "http = \"127.0.0.1:8000\"\nadmin = \"127.0.0.1:8000\"\n",
            "admin",
            None,
        ),
        ("token-key = [\"k1=/nonexistent/k1.key\"]\n", "token-key", None),
        ("token-key = [\"bad kid=/x\"]\n", "token-key", None),
        ("listen-policy = [\"/=token\"]\n", "listen-policy", None),
        ("listen-policy = [\"/=maybe\"]\n", "listen-policy", None),
        (
            "upstream = [\"quic://127.0.0.1:1\"]\nfingerprint = [\"abababababababababababababababababababababababababababababababab\"]\nrelay-token = \"/nonexistent\"\n",
            "relay-token",
            None,
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config").arg(&f);
        if let Some(r) = role {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains(&format!("error: {key}")), "{text}: {err}");
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deploy/quicast@.service"),
    )
    .unwrap();
    // An instance of the template, running this build.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("quicast@edge-1.service");
    std::fs::write(&f, unit.replace("/usr/local/bin/quicast", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&f)
        .output()
        .expect("systemd-analyze (Debian's systemd; .ci/run installs it)");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("quicast@"),
        "systemd-analyze has something to say: {said}"
    );
}
