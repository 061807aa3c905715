//! The README's deployment walkthrough, in miniature on loopback: certificates from the
//! tree's own CA (`config/deploy/make-certs.sh`), an origin, a mid and an edge from config
//! files, relays that trust their parents by that CA and present relay tokens, a publisher
//! and a listener with tokens minted by `quicast token`.

mod common;

use std::path::Path;
use std::process::Command;

use common::media::{make_opus, packet_crcs};
use common::procs::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `quicast token ...`: the token it prints.
fn token(key: &Path, role: &str, path: &str) -> String {
    let out = run(Command::new(BIN).args([
        "token",
        "--key",
        key.to_str().unwrap(),
        "--kid",
        "2026-12",
        "--role",
        role,
        "--path",
        path,
        "--ttl",
        "3600",
    ]));
    out.trim().to_string()
}

/// Starts `quicast ROLE --config FILE` once `check-config` passes it.
fn node(role: &str, file: &Path) -> Node {
    let said = run(Command::new(BIN).arg("check-config").arg(file));
    assert!(said.contains(&format!("ok ({role})")), "{said}");
    let mut p = Proc::spawn(&[role, "--config", file.to_str().unwrap()]);
    let addr = p.addr();
    Node { p, addr }
}

#[test]
fn a_tree_deployed_as_the_readme_says_carries_audio_with_ca_certificates_and_tokens() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let src = make_opus(dir, 3);
    let pki = dir.join("pki");
    // The nodes are named by address here (no DNS in a test): the certificates say so.
    run(Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/deploy/make-certs.sh"
        ))
        .arg(&pki)
        .arg("127.0.0.1"));
    let key = dir.join("tokens.key");
    run(Command::new("openssl")
        .args(["rand", "-base64", "-out"])
        .arg(&key)
        .arg("48"));
    let (crt, k, ca) = (
        pki.join("127.0.0.1.crt"),
        pki.join("127.0.0.1.key"),
        pki.join("ca.pem"),
    );
    let common = format!(
        "cert = \"{}\"\nkey = \"{}\"\ntoken-key = [\"2026-12={}\"]\nlisten-policy = [\"/=token\"]\nsegment-ms = 500\n",
        crt.display(),
        k.display(),
        key.display()
    );
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let origin = node(
        "origin",
        &write(
            "origin.toml",
            format!("name = \"origin-a\"\nlisten = \"127.0.0.1:0\"\n{common}"),
        ),
    );
    let relay_token = write("relay.token", token(&key, "relay", "/"));
    let relay = |name: &str, parent: &Node| {
        let text = format!(
            "name = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = [\"quic://{}\"]\nca = \"{}\"\nrelay-token = \"{}\"\n{common}",
            parent.addr,
            ca.display(),
            relay_token.display()
        );
        node("relay", &write(&format!("{name}.toml"), text))
    };
    let mid = relay("mid-1", &origin);
    let edge = relay("edge-1", &mid);

    let mut publisher = Proc::spawn(&[
        "publish",
        &origin.url("spaces/town-hall"),
        "--input",
        src.to_str().unwrap(),
        "--loop",
        "--token",
        &token(&key, "publish", "spaces/"),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    publisher.wait_line("publishing");
    let out = dir.join("heard.opus");
    let mut l = Proc::spawn(&[
        "listen",
        &edge.url("spaces/town-hall"),
        "--token",
        &token(&key, "listen", "spaces/town-hall"),
        "--ca",
        ca.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--duration",
        "4",
    ]);
    assert!(l.wait_exit().success(), "{}", l.log.join("\n"));
    assert_one_run(&out, &packet_crcs(&src), 100);
}
