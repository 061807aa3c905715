//! The media playlist: the segments it lists, its target duration, and its rendering (the
//! parts of the newest segments, preload hints, titles as `EXT-X-DATERANGE`s).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::media::part_samples;
use crate::model::{Broadcast, Segment, WireFrame};

use super::segments::{complete_parts, frames_of, part_range, Form};
use super::titles::{date_time, quoted, title_runs, TitleRun, TITLE_CLASS};

/// Segments whose parts are listed, besides the open one.
const PARTS_OF_SEALED: usize = 2;

/// `samples` at `rate` in seconds.
fn seconds(samples: u64, rate: u32) -> f64 {
    samples as f64 / f64::from(rate.max(1))
}

fn duration_of(frames: &[WireFrame]) -> u64 {
    match (frames.first(), frames.last()) {
        (Some(a), Some(z)) => z.frame.pts + z.frame.duration as u64 - a.frame.pts,
        _ => 0,
    }
}

/// The segments the playlist lists: the unbroken run of held segments that ends with the
/// latest (media sequence numbers must follow one another).
pub(super) fn listed(b: &Broadcast) -> Vec<Arc<Segment>> {
    let span = b.span();
    let Some(latest) = span.latest else {
        return Vec::new();
    };
    let mut segs = Vec::new();
    let mut seq = latest;
    while let Some(s) = b.segment(seq) {
        segs.push(s);
        if seq == 0 || Some(seq) == span.first {
            break;
        }
        seq -= 1;
    }
    segs.reverse();
    segs
}

/// EXT-X-TARGETDURATION: whole seconds, at least every segment's duration rounded. A
/// segment's length is the origin's `segment-ms` (1 s by default); at least 1 s.
pub(super) fn target_duration(b: &Broadcast) -> Duration {
    let longest = listed(b)
        .iter()
        .filter(|s| s.is_sealed())
        .map(|s| duration_of(&frames_of(s)))
        .max()
        .unwrap_or(0);
    Duration::from_secs(seconds(longest, b.codec.sample_rate).round().max(1.0) as u64)
}

/// The playlist as the broadcast is now, rendered once per state of its newest segment: a
/// crowd of blocking reloads woken by the same part is answered from one rendering.
pub(super) fn playlist_of(b: &Broadcast) -> Bytes {
    type Key = (u64, u64, usize, bool, bool);
    static RENDERED: OnceLock<moka::sync::Cache<Key, Bytes>> = OnceLock::new();
    let cache = RENDERED.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(10))
            .build()
    });
    // What the playlist depends on: older segments never change, and the window moves
    // only when a segment begins.
    let span = b.span();
    let latest = span.latest.unwrap_or(0);
    let (len, sealed) = b
        .segment(latest)
        .map_or((0, false), |s| (s.len(), s.is_sealed()));
    let key = (b.local_id(), latest, len, sealed, span.ended);
    cache.get_with(key, || Bytes::from(render(b)))
}

/// The media playlist of the broadcast as held now.
fn render(b: &Broadcast) -> String {
    use std::fmt::Write;
    let segs = listed(b);
    let frames: Vec<Vec<WireFrame>> = segs.iter().map(|s| frames_of(s)).collect();
    let rate = b.codec.sample_rate;
    let form = Form::of(&b.codec);
    let ext = form.ext();
    let target = target_duration(b).as_secs();
    let part_len = part_samples(&b.codec);
    // Rounded up to the millisecond: no part is longer than the target it says.
    let part_target = (part_len * 1000).div_ceil(u64::from(rate.max(1))) as f64 / 1000.0;
    let base = format!("{}.hls/{}", leaf(&b.path), b.instance);
    let runs = title_runs(b, &segs, &frames);
    // Packed MP3 is listed as whole segments only (see `Form::has_parts`).
    let has_parts = form.has_parts();
    let mut o = String::with_capacity(2048);
    o.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(o, "#EXT-X-TARGETDURATION:{target}");
    if has_parts {
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
            part_target * 3.0
        );
        let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    } else {
        o.push_str("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n");
    }
    let _ = writeln!(
        o,
        "#EXT-X-MEDIA-SEQUENCE:{}",
        segs.first().map_or(0, |s| s.seq)
    );
    if form == Form::Fmp4 {
        let _ = writeln!(o, "#EXT-X-MAP:URI=\"{base}/init.mp4\"");
    }
    let ended = b.span().ended;
    let with_parts = segs.len().saturating_sub(PARTS_OF_SEALED + 1);
    let mut first_listed = true;
    for (i, (seg, fr)) in segs.iter().zip(&frames).enumerate() {
        let sealed = seg.is_sealed() || ended;
        if fr.is_empty() {
            // Only a segment just begun: its first part is to come.
            if !sealed && has_parts {
                let _ = writeln!(
                    o,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.{ext}\"",
                    seg.seq
                );
            }
            continue;
        }
        // The titles that begin here (the first listed segment: the one it plays under,
        // which may have begun before it).
        let here: Vec<&TitleRun> = runs
            .iter()
            .filter(|r| r.seq == seg.seq || (first_listed && r.seq < seg.seq))
            .collect();
        for r in &here {
            let _ = writeln!(
                o,
                "#EXT-X-DATERANGE:ID=\"title-{}\",CLASS=\"{TITLE_CLASS}\",START-DATE=\"{}\",END-ON-NEXT=YES,X-TITLE=\"{}\"",
                r.seq,
                date_time(r.wall_us),
                quoted(r.title.as_deref().unwrap_or_default())
            );
        }
        if i == 0 || i == with_parts || !here.is_empty() {
            let _ = writeln!(
                o,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                date_time(fr[0].frame.wall_us)
            );
        }
        first_listed = false;
        if i >= with_parts && !ended && has_parts {
            for k in 0..complete_parts(seg, fr, part_len).max(u64::from(sealed)) {
                let (from, to) = part_range(fr, part_len, k);
                if from == to {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "#EXT-X-PART:DURATION={:.3},URI=\"{base}/{}.{k}.{ext}\",INDEPENDENT=YES",
                    seconds(duration_of(&fr[from..to]), rate),
                    seg.seq
                );
            }
        }
        if sealed {
            let _ = writeln!(o, "#EXTINF:{:.3},", seconds(duration_of(fr), rate));
            let _ = writeln!(o, "{base}/{}.{ext}", seg.seq);
        } else if has_parts {
            let next = complete_parts(seg, fr, part_len);
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.{next}.{ext}\"",
                seg.seq
            );
        }
    }
    match segs.last() {
        _ if ended => o.push_str("#EXT-X-ENDLIST\n"),
        // A relay seals a segment when its parent's stream of it ends, before the next
        // begins: the next one's first part is the one to come.
        Some(last) if last.is_sealed() && has_parts => {
            let _ = writeln!(
                o,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}/{}.0.{ext}\"",
                last.seq + 1
            );
        }
        _ => {}
    }
    o
}

/// The last component of a stream path: playlist URIs are relative to the playlist's.
fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::hls::tests::codec;
    use crate::proto::{self, CODEC_MP3};

    /// A 44.1 kHz MP3 broadcast holding `window` sealed segments, built by `feed`.
    fn mp3_broadcast(window: u64) -> Arc<Broadcast> {
        use crate::model::{PaceMode, Pacing, Provenance, SegmentCache, StoreConfig};
        let cfg = StoreConfig {
            cache_bytes: 64 << 20,
            cache_ttl: Duration::from_secs(60),
            window,
            max_lag: 100,
            max_streams: 10,
            max_waiting: 10,
            pacing: Pacing::new(PaceMode::Fixed(Duration::ZERO), 1452, vec![]),
        };
        let cache = SegmentCache::new(&cfg);
        Broadcast::new(
            "radio/mp3",
            42,
            codec(CODEC_MP3, 44100),
            Provenance::here(),
            &cache,
            &cfg,
        )
    }

    /// Segment `seq` of 38 frames of 1152 samples (about a second) titled `title`, its
    /// first frame at `seq` seconds past 2026-01-01.
    fn feed(b: &Broadcast, seq: u64, title: Option<&str>) {
        let seg = b
            .begin_titled(seq, title.map(|t| Bytes::from(t.to_string())))
            .unwrap_or_else(|e| panic!("{e}"));
        for n in 0..38u64 {
            let f = proto::Frame {
                pts: (seq * 38 + n) * 1152,
                duration: 1152,
                wall_us: 1_767_225_600_000_000 + seq * 1_000_000 + n * 26_122,
                payload: Bytes::from_static(&[0xff, 0xfb, 0x90, 0x64]),
            };
            b.append(&seg, WireFrame::new(f))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn dateranges(p: &str) -> Vec<&str> {
        p.lines()
            .filter(|l| l.starts_with("#EXT-X-DATERANGE:"))
            .collect()
    }

    #[tokio::test]
    async fn an_mp3_playlist_is_packed_audio_at_its_own_rate_with_its_titles() {
        let b = mp3_broadcast(4);
        feed(&b, 0, Some("A"));
        feed(&b, 1, Some("A"));
        feed(&b, 2, Some("B \"live\""));
        feed(&b, 3, Some("B \"live\""));
        let p = render(&b);
        assert!(!p.contains("EXT-X-MAP"), "{p}");
        // Whole segments only: no parts, no hints; blocking reloads all the same.
        assert!(
            p.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n"),
            "{p}"
        );
        assert!(!p.contains("PART"), "{p}");
        // 38 frames of 1152 samples at 44.1 kHz.
        assert!(p.contains("#EXTINF:0.993,\nmp3.hls/42/0.mp3\n"), "{p}");
        assert!(p.ends_with("#EXTINF:0.993,\nmp3.hls/42/2.mp3\n"), "{p}");
        // The open segment's parts are still served, 7 frames (183 ms) each.
        let open = b.segment(3).unwrap_or_else(|| panic!("segment 3 held"));
        assert_eq!(
            part_range(&frames_of(&open), part_samples(&b.codec), 4),
            (28, 35)
        );
        assert_eq!(
            dateranges(&p),
            [
                "#EXT-X-DATERANGE:ID=\"title-0\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:00.000Z\",END-ON-NEXT=YES,X-TITLE=\"A\"",
                "#EXT-X-DATERANGE:ID=\"title-2\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:02.000Z\",END-ON-NEXT=YES,X-TITLE=\"B 'live'\"",
            ]
        );
        // The segment a title begins with has its own date-time, right after the range.
        assert!(
            p.contains("X-TITLE=\"B 'live'\"\n#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:02.000Z\n")
        );
        // The window moves past the segments A and B began with: the ranges keep their
        // IDs and dates (title-0 ends where title-2 begins, and is gone).
        for seq in 4..9 {
            feed(&b, seq, Some("B \"live\""));
        }
        let p = render(&b);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{p}");
        assert_eq!(
            dateranges(&p),
            ["#EXT-X-DATERANGE:ID=\"title-2\",CLASS=\"quicast.title\",START-DATE=\"2026-01-01T00:00:02.000Z\",END-ON-NEXT=YES,X-TITLE=\"B 'live'\""]
        );
        // A title taken away ends the last one with an empty one.
        feed(&b, 9, None);
        let p = render(&b);
        assert!(p.contains("ID=\"title-9\""), "{p}");
        assert!(p.contains("X-TITLE=\"\""), "{p}");
    }

    #[tokio::test]
    async fn a_node_that_saw_nothing_for_a_while_starts_the_title_at_its_first_segment() {
        let b = mp3_broadcast(3);
        feed(&b, 0, Some("A"));
        let _ = render(&b);
        // Nobody asked while the window moved past all it had seen: where A began here is
        // not known, so the oldest listed segment is where it begins.
        for seq in 1..8 {
            feed(&b, seq, Some("A"));
        }
        let p = render(&b);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{p}");
        let ranges = dateranges(&p);
        assert_eq!(ranges.len(), 1, "{p}");
        assert!(ranges[0].contains("ID=\"title-4\""), "{p}");
        assert!(
            ranges[0].contains("START-DATE=\"2026-01-01T00:00:04.000Z\""),
            "{p}"
        );
    }
}
