//! The fragmented MP4 of AAC and MP3 checked against ffmpeg: a sine encoded by ffmpeg
//! (ADTS, MP3), cut into frames by `framing` as the ingest cuts them, muxed by `fmp4` into
//! an init segment and one fragment per second, and read back by ffprobe and ffmpeg, which
//! must decode all of it without an error and find the codec, rate, channels and duration
//! the frames say. Skipped (with a note) only where ffmpeg is not installed.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;

use super::framing::{self, FrameHeader};
use super::{aac_config, fragment, init_segment};
use crate::proto::{Codec, CODEC_AAC, CODEC_MP3};

fn have_ffmpeg() -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    runs("ffmpeg") && runs("ffprobe")
}

/// Runs ffmpeg with `args`, quietly; panics with its complaint if it fails.
fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ffmpeg: {e}"));
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffmpeg {args:?} complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The frames of an ADTS or MP3 stream, past any leading tag, as the ingest cuts them.
fn cut(stream: &[u8], header: fn(&[u8]) -> Option<FrameHeader>) -> Vec<(FrameHeader, Bytes)> {
    let stream = Bytes::copy_from_slice(stream);
    let (mut at, _) = framing::resync(&stream, header).unwrap_or_else(|| panic!("no frame"));
    let mut frames = Vec::new();
    while let Some(h) = header(&stream[at..]) {
        if at + h.len > stream.len() {
            break;
        }
        frames.push((h, stream.slice(at..at + h.len)));
        at += h.len;
    }
    assert_eq!(at, stream.len(), "the stream ends in a whole frame");
    frames
}

/// The init segment and one fragment per second of `frames`, as one file.
fn mux(codec: &Codec, frames: &[(FrameHeader, Bytes)]) -> Vec<u8> {
    let mut file = init_segment(codec)
        .unwrap_or_else(|e| panic!("init: {e}"))
        .to_vec();
    let mut pts = 0u64;
    let rate = codec.sample_rate as u64;
    let mut timed = Vec::new();
    for (h, p) in frames {
        timed.push((pts, h.samples, p));
        pts += h.samples as u64;
    }
    for (n, second) in timed.chunk_by(|a, b| a.0 / rate == b.0 / rate).enumerate() {
        let body = fragment(
            codec,
            n as u32 + 1,
            second[0].0,
            second.iter().map(|(_, d, p)| (*d, &p[..])),
        )
        .unwrap_or_else(|e| panic!("fragment {n}: {e}"));
        file.extend_from_slice(&body);
    }
    file
}

/// What ffprobe says of the file's one stream: codec, rate, channels, duration in seconds.
fn probe(path: &Path) -> (String, u32, u8, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_name,sample_rate,channels:format=duration")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running ffprobe: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("ffprobe said no {name}: {text}"))
            .to_string()
    };
    let number = |name: &str| {
        field(name)
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    (
        field("codec_name"),
        number("sample_rate") as u32,
        number("channels") as u8,
        number("duration"),
    )
}

/// Encodes 3 s of a 440 Hz sine with ffmpeg's `encoder` at `rate` Hz and `channels`,
/// muxes it, and checks what ffprobe and a full decode make of it. For AAC, the file must
/// decode to exactly what the ADTS stream decodes to: its samples are the stream's access
/// units, its config what the stream's headers say. (ffmpeg's MP3 demuxer drops the
/// encoder delay and padding its LAME tag says, which an MP4 without an edit list plays:
/// the PCM is longer there, and only its length is checked.)
fn check(dir: &Path, name: &str, encoder: &[&str], rate: u32, channels: u8, kind: u64) {
    let source = dir.join(format!("{name}.src"));
    let source = source.to_str().unwrap_or_else(|| panic!("temp path"));
    let sine = format!("sine=f=440:d=3:r={rate}");
    let layout = if channels == 1 { "mono" } else { "stereo" };
    let mut args = vec!["-f", "lavfi", "-i", &sine, "-af"];
    let format = format!("aformat=channel_layouts={layout}");
    args.push(&format);
    args.extend_from_slice(encoder);
    args.extend(["-y", source]);
    ffmpeg(&args);
    let stream = std::fs::read(source).unwrap_or_else(|e| panic!("reading {source}: {e}"));
    let frames = match kind {
        CODEC_AAC => cut(&stream, framing::adts),
        _ => cut(&stream, framing::mp3),
    };
    let first = &frames[0].0;
    assert_eq!((first.rate, first.channels), (rate, channels));
    let codec = Codec {
        kind,
        sample_rate: first.rate,
        channels: first.channels,
        header: match kind {
            CODEC_AAC => aac_config(&frames[0].1).unwrap_or_else(|| panic!("no config")),
            _ => Bytes::new(),
        },
    };
    let file = dir.join(format!("{name}.mp4"));
    std::fs::write(&file, mux(&codec, &frames)).unwrap_or_else(|e| panic!("writing: {e}"));

    let (codec_name, got_rate, got_channels, duration) = probe(&file);
    let samples: u64 = frames.iter().map(|(h, _)| h.samples as u64).sum();
    let want = samples as f64 / rate as f64;
    eprintln!(
        "{name}: {} frames; ffprobe: {codec_name}, {got_rate} Hz, {got_channels} ch, {duration} s (frames say {want:.6} s)",
        frames.len()
    );
    let want_name = if kind == CODEC_AAC { "aac" } else { "mp3" };
    assert_eq!(
        (codec_name.as_str(), got_rate, got_channels),
        (want_name, rate, channels)
    );
    assert!(
        (duration - want).abs() < 0.001,
        "{duration} s, frames say {want} s"
    );
    assert!((duration - 3.0).abs() < 0.1, "{duration} s of a 3 s sine");

    // A full decode, with errors (and corrupt-frame warnings) made loud.
    let file = file.to_str().unwrap_or_else(|| panic!("temp path"));
    let decode = |input: &str| {
        ffmpeg(&[
            "-err_detect",
            "crccheck+bitstream+buffer+explode",
            "-i",
            input,
            "-f",
            "s16le",
            "-",
        ])
    };
    let pcm = decode(file);
    assert_eq!(
        pcm.len() as u64,
        samples * channels as u64 * 2,
        "decoded samples"
    );
    if kind == CODEC_AAC {
        assert!(
            pcm == decode(source),
            "{name}: the MP4 decodes as the ADTS stream does"
        );
    }
}

/// Whether this ffmpeg has `encoder`.
fn has_encoder(encoder: &str) -> bool {
    let list = ffmpeg(&["-encoders"]);
    String::from_utf8_lossy(&list)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(encoder))
}

#[test]
fn aac_and_mp3_in_fragmented_mp4_decode_in_ffmpeg() {
    if !have_ffmpeg() {
        eprintln!("ffmpeg or ffprobe not installed: fMP4 check skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let aac = ["-c:a", "aac", "-b:a", "96k", "-f", "adts"];
    check(dir.path(), "aac44", &aac, 44100, 1, CODEC_AAC);
    check(dir.path(), "aac48", &aac, 48000, 2, CODEC_AAC);
    if !has_encoder("libmp3lame") {
        eprintln!("ffmpeg has no libmp3lame: the MP3 half of the fMP4 check skipped");
        return;
    }
    // MPEG-1 at 44.1 kHz, and MPEG-2 (576-sample frames, esds 0x69) at 22.05 kHz.
    let mp3 = ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"];
    check(dir.path(), "mp3_44", &mp3, 44100, 2, CODEC_MP3);
    check(dir.path(), "mp3_22", &mp3, 22050, 1, CODEC_MP3);
}
