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
    packet_crcs_with(file, &[])
}

/// The same, the packets passed through `filters` (ffmpeg arguments, a bitstream filter)
/// first.
pub fn packet_crcs_with(file: &Path, filters: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["-v", "error", "-i", file.to_str().unwrap(), "-c", "copy"];
    args.extend_from_slice(filters);
    args.extend(["-f", "framecrc", "-"]);
    let out = ffmpeg(&args);
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

/// An MP3 (libmp3lame) or AAC (ffmpeg's `aac`, in ADTS) stream: what a radio encoder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Radio {
    Mp3,
    Aac,
}

impl Radio {
    /// The stream's extension on a node (`/NAME.mp3`), and what ffprobe calls its codec.
    pub fn ext(self) -> &'static str {
        match self {
            Radio::Mp3 => "mp3",
            Radio::Aac => "aac",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Radio::Mp3 => "audio/mpeg",
            Radio::Aac => "audio/aac",
        }
    }

    /// ffmpeg's encoder and muxer arguments: 128 kbit/s MP3, 96 kbit/s AAC.
    pub fn encode_args(self) -> [&'static str; 6] {
        match self {
            Radio::Mp3 => ["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"],
            Radio::Aac => ["-c:a", "aac", "-b:a", "96k", "-f", "adts"],
        }
    }

    /// Samples per frame (MPEG-1 layer III, AAC LC).
    pub fn samples_per_frame(self) -> u64 {
        match self {
            Radio::Mp3 => 1152,
            Radio::Aac => 1024,
        }
    }

    /// Its frame header reader.
    pub fn header(self) -> fn(&[u8]) -> Option<quicast::media::framing::FrameHeader> {
        match self {
            Radio::Mp3 => quicast::media::framing::mp3,
            Radio::Aac => quicast::media::framing::adts,
        }
    }
}

/// ffmpeg's input arguments for a 440 Hz tone at 44.1 kHz with pink noise mixed in (so no two
/// encoded frames are alike, and a frame missing from a run cannot go unseen), lasting `secs`
/// (None: for ever).
pub fn tone_with_noise(secs: Option<u32>) -> Vec<String> {
    let d = secs.map_or(String::new(), |s| format!(":d={s}"));
    vec![
        "-f".to_string(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=f=440:r=44100{d}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("anoisesrc=color=pink:amplitude=0.05:r=44100{d}"),
        "-filter_complex".into(),
        "amix=inputs=2".into(),
    ]
}

/// `secs` seconds of `codec` (see `tone_with_noise`) in stereo, as `dir/src.mp3` (frames only:
/// no ID3 tag, no Xing frame) or `dir/src.aac`.
pub fn make_radio(dir: &Path, codec: Radio, secs: u32) -> PathBuf {
    let out = dir.join(format!("src.{}", codec.ext()));
    let mut args: Vec<String> = vec!["-y".into(), "-v".into(), "error".into()];
    args.extend(tone_with_noise(Some(secs)));
    args.extend(["-ac".to_string(), "2".into()]);
    if codec == Radio::Mp3 {
        args.extend(["-write_xing", "0", "-id3v2_version", "0"].map(String::from));
    }
    args.extend(codec.encode_args().iter().map(|s| s.to_string()));
    args.push(out.to_str().unwrap().into());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out
}

/// One MP3 or ADTS frame, header included. Compared byte for byte; shown short.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AudioFrame(pub bytes::Bytes);

impl std::fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        write!(f, "frame({} bytes, hash {:016x})", self.0.len(), h.finish())
    }
}

/// Cuts `stream` into its frames, asserting it is nothing else: a frame header at its first
/// byte and right after each frame, and the last frame whole at its end. `what` names the
/// stream in a failure.
pub fn whole_frames(stream: &[u8], codec: Radio, what: &str) -> Vec<AudioFrame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let h = codec.header()(&stream[at..]).unwrap_or_else(|| {
            panic!(
                "{what}: no {codec:?} frame header at byte {at} of {} (after {} whole frames): {:02x?}",
                stream.len(),
                frames.len(),
                &stream[at..stream.len().min(at + 8)]
            )
        });
        assert!(
            at + h.len <= stream.len(),
            "{what}: its last frame is cut: {} of its {} bytes, at byte {at}",
            stream.len() - at,
            h.len
        );
        frames.push(AudioFrame(bytes::Bytes::copy_from_slice(
            &stream[at..at + h.len],
        )));
        at += h.len;
    }
    frames
}

/// The frames of an MP3 or ADTS file as an encoder wrote it: past a leading ID3v2 tag.
pub fn file_frames(file: &Path, codec: Radio) -> Vec<AudioFrame> {
    let b = std::fs::read(file).unwrap();
    let mut at = 0;
    if b.starts_with(b"ID3") && b.len() >= 10 {
        let size = b[6..10]
            .iter()
            .fold(0usize, |n, &x| (n << 7) | (x & 0x7f) as usize);
        at = 10 + size + if b[5] & 0x10 != 0 { 10 } else { 0 };
    }
    whole_frames(&b[at..], codec, &file.display().to_string())
}

/// The codec ffprobe finds in `file`'s first audio stream (`mp3`, `aac`, `opus`).
pub fn probe_codec(file: &Path) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe comes with ffmpeg");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
