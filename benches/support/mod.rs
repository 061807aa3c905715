//! What the benchmarks share: child processes killed when dropped, the 64 kbit/s source,
//! a self-signed certificate, a log read line by line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_quicast");

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `bin ARGS`, pinned to core `pin` if taskset exists (taskset execs it: same pid), its log
/// (stderr) piped.
pub fn spawn_bin(bin: &str, args: &[&str], pin: Option<&str>, log: &str) -> Killed {
    let mut cmd = match pin {
        Some(cpu) if has("taskset") => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, bin]);
            c
        }
        _ => Command::new(bin),
    };
    let child = cmd
        .args(args)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quicast");
    Killed(child)
}

/// A child's log, line by line, each with the moment it was read.
pub struct Log {
    rx: mpsc::Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Log {
    pub fn of(k: &mut Killed) -> Log {
        let err = k.0.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Log {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line (seen before or from now on) containing `needle`, within `limit`.
    pub fn wait(&mut self, needle: &str, limit: Duration) -> Option<(Instant, String)> {
        if let Some(l) = self.seen.iter().find(|(_, l)| l.contains(needle)) {
            return Some(l.clone());
        }
        let end = Instant::now() + limit;
        while let Ok(l) = self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l.clone());
            if l.1.contains(needle) {
                return Some(l);
            }
        }
        None
    }

    /// The HTTP address the node serves on (`--http`).
    pub fn http_addr(&mut self) -> String {
        let (_, l) = self
            .wait("listening (HTTP)", Duration::from_secs(30))
            .expect("the node serves HTTP");
        field(&l, "addr=")
    }

    /// The QUIC address the node serves on.
    pub fn addr(&mut self) -> String {
        let (_, l) = self
            .wait("listening (QUIC)", Duration::from_secs(30))
            .expect("node exited before listening");
        field(&l, "addr=")
    }
}

/// The value after `key` in a log line, up to the next space.
pub fn field(line: &str, key: &str) -> String {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// Reads the child's log until the "listening" line; returns the address, and keeps
/// draining the log after (so the child never blocks on a full pipe).
pub fn addr(k: &mut Killed) -> String {
    let err = k.0.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains("listening (QUIC)") {
            let a = field(&l, "addr=");
            std::thread::spawn(move || for _ in lines {});
            return a;
        }
    }
    panic!("node exited before listening");
}

/// A self-signed certificate in `dir`: (cert path, key path, SHA-256 fingerprint).
pub fn cert(dir: &Path) -> (String, String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let fp = quicast::sha256_hex(ck.cert.der());
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        fp,
    )
}

/// 20 s of 64 kbit/s CBR Opus (20 ms frames): a tone over pink noise; or, with
/// `QUICAST_BENCH_CODEC=mp3`, the same talk as 128 kbit/s MP3 at 44.1 kHz stereo (what an
/// Icecast radio sends).
pub fn source(dir: &Path) -> PathBuf {
    if std::env::var("QUICAST_BENCH_CODEC").is_ok_and(|c| c == "mp3") {
        let mp3 = [
            "-ar",
            "44100",
            "-ac",
            "2",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-write_xing",
            "0",
            "-id3v2_version",
            "0",
        ];
        return talk(dir, "talk128k.mp3", &mp3);
    }
    let opus = [
        "-c:a",
        "libopus",
        "-b:a",
        "64k",
        "-vbr",
        "off",
        "-frame_duration",
        "20",
    ];
    talk(dir, "talk64k.opus", &opus)
}

/// `dir/name`, made once: 20 s of a tone over pink noise, encoded with `codec`'s arguments.
fn talk(dir: &Path, name: &str, codec: &[&str]) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        let st = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=300:duration=20",
                "-f",
                "lavfi",
                "-i",
                "anoisesrc=color=pink:amplitude=0.1:duration=20",
                "-filter_complex",
                "amix=inputs=2",
            ])
            .args(codec)
            .arg(&p)
            .status()
            .expect("ffmpeg makes the benchmark's source (apt-get install -y ffmpeg)");
        assert!(st.success());
    }
    p
}

/// `quicast publish --loop` of `src` to `quic://ORIGIN/STREAM`, trusting `fp`.
pub fn publisher(origin: &str, stream: &str, src: &Path, fp: &str, pin: Option<&str>) -> Killed {
    spawn_bin(
        BIN,
        &[
            "publish",
            &format!("quic://{origin}/{stream}"),
            "--input",
            src.to_str().unwrap(),
            "--loop",
            "--fingerprint",
            fp,
        ],
        pin,
        "warn",
    )
}
