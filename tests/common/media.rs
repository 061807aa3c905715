//! ffmpeg as a maker and checker of real audio, for the tests that use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn ffmpeg(args: &[&str]) -> Output {
    let out = Command::new("ffmpeg")
        .arg("-hide_banner")
        .args(args)
        .output()
        .expect("ffmpeg is needed by these tests (.ci/run installs it: apt-get install -y ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `secs` seconds of 64 kbit/s Ogg Opus (a tone with pink noise), as `dir/src.opus`.
pub fn make_opus(dir: &Path, secs: u32) -> PathBuf {
    let src = dir.join("src.opus");
    ffmpeg(&[
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=330:sample_rate=48000:duration={secs}"),
        "-f",
        "lavfi",
        "-i",
        &format!("anoisesrc=color=pink:amplitude=0.05:duration={secs}"),
        "-filter_complex",
        "amix=inputs=2",
        "-c:a",
        "libopus",
        "-b:a",
        "64k",
        src.to_str().unwrap(),
    ]);
    src
}

/// A second of Ogg Vorbis: valid Ogg, not Opus.
pub fn make_vorbis(dir: &Path) -> PathBuf {
    let p = dir.join("v.ogg");
    ffmpeg(&[
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=1",
        "-c:a",
        "libvorbis",
        p.to_str().unwrap(),
    ]);
    p
}

/// (size, crc) of every packet, as ffmpeg's framecrc muxer reports them without decoding.
pub fn packet_crcs(file: &Path) -> Vec<(String, String)> {
    let out = ffmpeg(&[
        "-v",
        "error",
        "-i",
        file.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "framecrc",
        "-",
    ]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim()).collect();
            (f[4].to_string(), f[5].to_string())
        })
        .collect()
}

/// Decodes `file` fully; ffmpeg must report no error at all.
pub fn assert_decodes_cleanly(file: &Path) {
    let out = ffmpeg(&[
        "-v",
        "error",
        "-i",
        file.to_str().unwrap(),
        "-f",
        "null",
        "-",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().is_empty(),
        "ffmpeg reported errors decoding {}: {err}",
        file.display()
    );
}
