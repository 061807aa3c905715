//! Now-playing titles in the playlist: the runs of segments under one title (kept across
//! renderings), and how a title and a date are written in an `EXT-X-DATERANGE`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::model::{Broadcast, Segment, WireFrame};

/// A title in an `EXT-X-DATERANGE` is cut to this many bytes (on a character boundary).
const MAX_DATERANGE_TITLE: usize = 512;

/// The `CLASS` of the title `EXT-X-DATERANGE`s (`END-ON-NEXT=YES` needs one): each ends
/// where the next begins.
pub(super) const TITLE_CLASS: &str = "quicast.title";

/// A title begun at segment `seq`, whose first frame was at `wall_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TitleRun {
    pub(super) seq: u64,
    pub(super) wall_us: u64,
    pub(super) title: Option<Bytes>,
}

/// What a node remembers of a broadcast's titles between renderings of its playlist: where
/// each began, so that the title the oldest listed segment plays under keeps its `ID` (and
/// so its `START-DATE`) as the window moves past the segment it began with.
#[derive(Default)]
struct TitleMemo {
    runs: Vec<TitleRun>,
    /// The newest segment seen (with a frame) by a rendering.
    seen_through: Option<u64>,
}

/// The titles of the listed segments `segs` (with their `frames`), as runs in order: the
/// one the first segment with a frame plays under (it may have begun before it, if this node
/// saw that), then one at each segment whose title is not the one before's. An untitled
/// first run is left out. A run's `ID` is its first segment's, and its `START-DATE` that
/// segment's first frame's: the same attributes for an `ID` on every node and in every
/// rendering (players merge ranges by `ID` and refuse one whose attributes change).
pub(super) fn title_runs(
    b: &Broadcast,
    segs: &[Arc<Segment>],
    frames: &[Vec<WireFrame>],
) -> Vec<TitleRun> {
    type Memos = moka::sync::Cache<u64, Arc<std::sync::Mutex<TitleMemo>>>;
    static MEMOS: OnceLock<Memos> = OnceLock::new();
    let memos = MEMOS.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(120))
            .build()
    });
    let with_audio: Vec<TitleRun> = segs
        .iter()
        .zip(frames)
        .filter_map(|(s, f)| {
            Some(TitleRun {
                seq: s.seq,
                wall_us: f.first()?.frame.wall_us,
                title: s.title.clone(),
            })
        })
        .collect();
    let Some(first) = with_audio.first() else {
        return Vec::new();
    };
    let memo = memos.get_with(b.local_id(), Default::default);
    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
    // Segments this node's renderings never saw between the last and this one: what it
    // remembers may have changed since.
    if m.seen_through.is_none_or(|s| first.seq > s + 1) {
        m.runs.clear();
    }
    // Only the run the first segment plays under, and later ones, are of use.
    if let Some(k) = m.runs.iter().rposition(|r| r.seq <= first.seq) {
        m.runs.drain(..k);
    }
    match m.runs.first() {
        Some(r) if r.seq <= first.seq && r.title == first.title => {}
        _ => {
            m.runs.retain(|r| r.seq > first.seq);
            m.runs.insert(0, first.clone());
        }
    }
    for w in with_audio.windows(2) {
        if w[1].title != w[0].title && !m.runs.iter().any(|r| r.seq == w[1].seq) {
            let at = m.runs.partition_point(|r| r.seq < w[1].seq);
            m.runs.insert(at, w[1].clone());
        }
    }
    let last = with_audio.last().map_or(first.seq, |r| r.seq);
    m.seen_through = Some(m.seen_through.map_or(last, |s| s.max(last)));
    let mut runs: Vec<TitleRun> = m.runs.iter().filter(|r| r.seq <= last).cloned().collect();
    if runs.first().is_some_and(|r| r.title.is_none()) {
        runs.remove(0);
    }
    runs
}

/// A title as an attribute's quoted-string (which has no escapes): `"` becomes `'`, line
/// breaks and other control characters are left out, and it is cut to
/// `MAX_DATERANGE_TITLE` bytes on a character boundary.
pub(super) fn quoted(title: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(title).chars() {
        let c = if c == '"' { '\'' } else { c };
        if c.is_control() {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_DATERANGE_TITLE {
            break;
        }
        out.push(c);
    }
    out
}

/// RFC 3339 UTC with milliseconds, from microseconds since the Unix epoch.
pub(super) fn date_time(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000 / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_quoted_strings_bounded() {
        assert_eq!(quoted(b"a \"b\"\r\nc"), "a 'b'c");
        let long = "\u{e9}".repeat(400);
        let q = quoted(long.as_bytes());
        assert_eq!(q.len(), 512);
        assert!(q.chars().all(|c| c == '\u{e9}'));
        assert_eq!(quoted(b"\xff ok"), "\u{fffd} ok");
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(date_time(1_796_000_000_123_456), "2026-11-30T00:53:20.123Z");
        assert_eq!(date_time(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
