//! Now-playing titles: what a source says is playing, cleaned into the one form that travels
//! down the tree with the segments and out to listeners (UTF-8, no control characters, at
//! most `MAX_TITLE` bytes). Titles come from two places, both read here, I/O-free and bounded:
//!
//! - an Icecast source's metadata update, `GET /admin/metadata?mode=updinfo&mount=/NAME&song=…`
//!   (Icecast's `command_metadata` in `src/admin.c`), which encoders such as butt, Mixxx,
//!   liquidsoap and ices send alongside their audio;
//! - the comment header of an Ogg Opus stream (OpusTags, RFC 7845 §5.2), which a playout
//!   system rewrites at each track change by starting a new chained stream.
//!
//! Credentials and the mount's existence are the caller's: nothing here knows a node.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use crate::error::{Error, Kind, Result};

/// The longest title carried, in bytes of UTF-8. A title rides with every segment down the
/// tree, so it is kept small; real ones ("Artist - Title") are well under 200 bytes, and an
/// ICY block (255 × 16 bytes) holds this with room to spare.
pub use crate::proto::MAX_TITLE;

/// The longest `/admin/metadata` query string taken: a title's worth of percent-encoding
/// (three bytes per byte) for song, title and artist, and the rest.
pub const MAX_QUERY: usize = 8 * 1024;

/// A title as quicast carries it: control characters out (tabs and line breaks become
/// spaces, so "Artist\tTitle" keeps its gap), trimmed, cut to `MAX_TITLE` bytes on a
/// character boundary. `None` if nothing is left: an empty title means "no title".
///
/// Stops reading once `MAX_TITLE` bytes are kept, so a huge input costs no more than that.
pub fn clean_title(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let c = match c {
            c if c.is_control() && c.is_whitespace() => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if out.is_empty() && c.is_whitespace() {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_TITLE {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    (!out.is_empty()).then_some(out)
}

/// What a metadata update asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The stream, named as a source's `PUT /NAME` names it: the `mount` parameter without
    /// its leading `/`. Not checked here: the caller checks it after the source's
    /// credentials, as it does for a source's own request, so a stranger learns nothing.
    pub mount: String,
    /// The new title, cleaned (`clean_title`); `None` clears it (an empty `song=`).
    pub title: Option<String>,
}

/// Parses the query string of an Icecast metadata update, `/admin/metadata?…` (without the
/// `?`), as Icecast's `command_metadata` (src/admin.c) reads it:
///
/// - `mode=updinfo` is required (Icecast knows no other mode here);
/// - `mount` names the stream, with or without its leading `/`;
/// - `song` is the title; without it, `title` (with `artist`: "artist - title", as Icecast
///   builds the ICY title in `mp3_set_title`, src/format_mp3.c). Icecast itself ignores a
///   `title` without `artist`; it is taken here, a title being a title. Neither: refused,
///   where Icecast would answer success and change nothing, so a misconfigured source
///   learns why its titles never show;
/// - `charset` says how the values are encoded. Icecast converts from any charset iconv
///   knows; here UTF-8 and ISO-8859-1 (converted to UTF-8) are taken and anything else is
///   refused by name. Without it Icecast assumes the mount's charset, ISO-8859-1 by
///   default for legacy sources, which garbles the UTF-8 most encoders send today: here a
///   value that is valid UTF-8 is taken as such, anything else as ISO-8859-1 (a Latin-1
///   title with accents is almost never valid UTF-8 by chance);
/// - `url` and anything else: ignored. A parameter given twice: the first counts.
///
/// Values are form-encoded: percent escapes, and `+` for a space (an encoded plus is `%2B`).
pub fn updinfo_query(query: &str) -> Result<Update> {
    if query.len() > MAX_QUERY {
        return Err(Error::new(
            Kind::TooLarge,
            format!(
                "metadata update query is {} bytes, limit {MAX_QUERY}",
                query.len()
            ),
        ));
    }
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode_bytes(k).as_ref() == name.as_bytes()).then_some(v)
        })
    };
    match param("mode").map(decode_bytes) {
        Some(mode) if mode.as_ref() == b"updinfo" => {}
        Some(other) => {
            return Err(Error::protocol(format!(
                "metadata update mode {:?} is not known (only mode=updinfo)",
                String::from_utf8_lossy(&other)
            )))
        }
        None => return Err(Error::protocol("metadata update without mode=updinfo")),
    }
    let charset = match param("charset") {
        None => Charset::Guess,
        Some(name) => Charset::named(&decode_bytes(name))?,
    };
    let mount = match param("mount") {
        Some(m) => String::from_utf8(decode_bytes(m).into_owned())
            .map_err(|_| Error::protocol("metadata update's mount is not UTF-8"))?,
        None => return Err(Error::protocol("metadata update without mount=")),
    };
    let mount = mount.strip_prefix('/').unwrap_or(&mount);
    if mount.is_empty() {
        return Err(Error::protocol("metadata update with an empty mount"));
    }
    let value = |name: &str| -> Result<Option<Option<String>>> {
        match param(name) {
            Some(v) => Ok(Some(clean_title(&charset.decode(&decode_bytes(v), name)?))),
            None => Ok(None),
        }
    };
    let title = match (value("song")?, value("title")?, value("artist")?) {
        (Some(song), ..) => song,
        (None, Some(Some(title)), Some(Some(artist))) => {
            clean_title(&format!("{artist} - {title}"))
        }
        // A title without an artist; or an artist whose title is empty, which Icecast sends
        // out as an empty title too (mp3_set_title).
        (None, Some(title), _) => title,
        (None, None, _) => {
            return Err(Error::protocol(
                "metadata update without song= (or title=, with or without artist=)",
            ))
        }
    };
    Ok(Update {
        mount: mount.to_string(),
        title,
    })
}

/// A form-encoded value's bytes: `+` is a space, then percent escapes are decoded (a `%`
/// not followed by two hex digits stays as it is).
fn decode_bytes(v: &str) -> Cow<'_, [u8]> {
    if v.contains('+') {
        Cow::Owned(percent_decode(v.replace('+', " ").as_bytes()).collect())
    } else {
        percent_decode(v.as_bytes()).into()
    }
}

/// How an update's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    Latin1,
    /// None said: UTF-8 if the bytes are, else ISO-8859-1.
    Guess,
}

impl Charset {
    /// The charset a `charset=` names, by the names sources and iconv use for these two.
    fn named(name: &[u8]) -> Result<Charset> {
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        match lower.as_str() {
            "utf-8" | "utf8" => Ok(Charset::Utf8),
            "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1" => {
                Ok(Charset::Latin1)
            }
            _ => Err(Error::protocol(format!(
                "metadata update charset {:?} is not taken (UTF-8 or ISO-8859-1)",
                String::from_utf8_lossy(name)
            ))),
        }
    }

    /// `bytes` as text, for parameter `what` (named in the refusal if they do not decode).
    fn decode(self, bytes: &[u8], what: &str) -> Result<String> {
        match (self, std::str::from_utf8(bytes)) {
            (Charset::Utf8 | Charset::Guess, Ok(s)) => Ok(s.to_string()),
            (Charset::Utf8, Err(_)) => Err(Error::protocol(format!(
                "metadata update's {what} is not UTF-8, as its charset says"
            ))),
            (Charset::Latin1, _) | (Charset::Guess, Err(_)) => Ok(latin1(bytes)),
        }
    }
}

/// ISO-8859-1 to UTF-8: each byte is the code point of the same number.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The title an OpusTags packet (RFC 7845 §5.2) gives: "ARTIST - TITLE" if it has both,
/// TITLE alone if it has no artist, else `None`. That is what Icecast sends its ICY
/// listeners for a source's artist and title (`mp3_set_title`, src/format_mp3.c): an artist
/// alone gives an empty title. Keys are case-insensitive and the first of each counts
/// (Vorbis comments, which OpusTags are, may repeat a key; Icecast takes the first too).
/// A stream that puts the whole "Artist - Title" in TITLE shows it as it is.
///
/// Hostile lengths and counts cost nothing: every length is checked against what is left
/// of the packet, so the walk ends with the packet; a comment list cut short keeps what was
/// read before the cut. Values that are not UTF-8 (the RFC requires it) are read lossily.
pub fn opus_tags_title(packet: &[u8]) -> Option<String> {
    let mut rest = packet.strip_prefix(b"OpusTags")?;
    let _vendor = take_field(&mut rest)?;
    let count = take_u32(&mut rest)?;
    let (mut title, mut artist) = (None, None);
    for _ in 0..count {
        // Each comment takes at least its 4-byte length: the loop ends with the packet.
        let Some(comment) = take_field(&mut rest) else {
            break;
        };
        let Some((key, value)) = comment
            .iter()
            .position(|&b| b == b'=')
            .map(|eq| (&comment[..eq], &comment[eq + 1..]))
        else {
            continue;
        };
        if title.is_none() && key.eq_ignore_ascii_case(b"TITLE") {
            title = Some(value);
        } else if artist.is_none() && key.eq_ignore_ascii_case(b"ARTIST") {
            artist = Some(value);
        }
        if title.is_some() && artist.is_some() {
            break;
        }
    }
    let clean = |v: &[u8]| clean_title(&String::from_utf8_lossy(v));
    match (artist.and_then(clean), title.and_then(clean)) {
        (Some(artist), Some(title)) => clean_title(&format!("{artist} - {title}")),
        (_, title) => title,
    }
}

/// A little-endian u32 from the front of `rest`.
fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (n, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_le_bytes(*n))
}

/// A length-prefixed field from the front of `rest`, if all of it is there.
fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut tail = *rest;
    let len = usize::try_from(take_u32(&mut tail)?).ok()?;
    if len > tail.len() {
        return None;
    }
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_loses_control_characters_and_outer_space() {
        // Tabs and line breaks (C0 and C1) become spaces; other controls go.
        assert_eq!(
            clean_title("  Artist\t-\r\nTitle \u{7}\u{0}\u{9b}\u{85}").as_deref(),
            Some("Artist -  Title")
        );
        assert_eq!(clean_title("a\u{0}b\u{7f}c").as_deref(), Some("abc"));
        assert_eq!(clean_title("Café ♫").as_deref(), Some("Café ♫"));
        for empty in ["", "   ", "\u{0}\u{1b}", "\t\r\n", "\u{3000}"] {
            assert_eq!(clean_title(empty), None, "{empty:?}");
        }
    }

    #[test]
    fn a_title_is_cut_to_max_title_bytes_on_a_char_boundary() {
        let t = clean_title(&"é".repeat(MAX_TITLE)).unwrap_or_default();
        assert_eq!(t.len(), MAX_TITLE);
        // One byte, then two-byte characters: the last that fits ends at MAX_TITLE - 1.
        let t = clean_title(&format!("a{}", "é".repeat(MAX_TITLE))).unwrap_or_default();
        assert_eq!(t.len(), MAX_TITLE - 1);
        assert!(t.ends_with('é'));
        // A cut that leaves a space at the end is trimmed again.
        let spaced = format!("{} tail", "x".repeat(MAX_TITLE - 1));
        assert_eq!(
            clean_title(&spaced).unwrap_or_default().len(),
            MAX_TITLE - 1
        );
    }

    fn update(q: &str) -> Update {
        updinfo_query(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn refusal(q: &str) -> String {
        match updinfo_query(q) {
            Ok(u) => panic!("{q}: taken as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_icecast_update_names_its_mount_and_song() {
        // As butt and liquidsoap send it.
        assert_eq!(
            update("mode=updinfo&mount=%2Flive&song=Artist+-+Title%21+1%2B1"),
            Update {
                mount: "live".into(),
                title: Some("Artist - Title! 1+1".into())
            }
        );
        // The mount with or without its slash; the parameters in any order.
        assert_eq!(update("song=x&mount=a/b&mode=updinfo").mount, "a/b");
        assert_eq!(update("mode=updinfo&mount=/a/b&song=x").mount, "a/b");
        // Keys and values alike may come percent-encoded.
        assert_eq!(update("m%6Fde=upd%69nfo&mount=l&song=x").mount, "l");
        // Cleaned as any title; an empty song clears the title.
        assert_eq!(
            update("mode=updinfo&mount=/l&song=%20A%09B%0A")
                .title
                .as_deref(),
            Some("A B")
        );
        assert_eq!(update("mode=updinfo&mount=/l&song=").title, None);
        assert_eq!(update("mode=updinfo&mount=/l&song").title, None);
        // The first of a repeated parameter counts; unknown ones (url) are ignored.
        assert_eq!(
            update("mode=updinfo&mount=/l&song=a&song=b&url=http%3A%2F%2Fx")
                .title
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn title_and_artist_stand_in_for_a_missing_song() {
        let t = |q: &str| update(&format!("mode=updinfo&mount=/l&{q}")).title;
        assert_eq!(t("title=T&artist=A").as_deref(), Some("A - T"));
        assert_eq!(t("artist=A&title=T").as_deref(), Some("A - T"));
        assert_eq!(t("title=T").as_deref(), Some("T"));
        assert_eq!(t("title=T&artist=").as_deref(), Some("T"));
        // An artist with an empty title: no title (Icecast's mp3_set_title too).
        assert_eq!(t("title=&artist=A"), None);
        // A song wins over both.
        assert_eq!(t("title=T&artist=A&song=S").as_deref(), Some("S"));
    }

    #[test]
    fn latin1_is_converted_and_utf8_taken_whatever_the_charset_says() {
        let t = |q: &str| update(&format!("mode=updinfo&mount=/l&{q}")).title;
        for cs in ["ISO-8859-1", "iso8859-1", "latin1", "LATIN-1"] {
            assert_eq!(
                t(&format!("song=Caf%E9&charset={cs}")).as_deref(),
                Some("Café")
            );
        }
        for cs in ["UTF-8", "utf8"] {
            assert_eq!(
                t(&format!("song=Caf%C3%A9&charset={cs}")).as_deref(),
                Some("Café")
            );
        }
        // No charset: UTF-8 if it is, else Latin-1.
        assert_eq!(t("song=Caf%C3%A9").as_deref(), Some("Café"));
        assert_eq!(t("song=Caf%E9").as_deref(), Some("Café"));
        // Latin-1 said: UTF-8 bytes are read as Latin-1 (what the source asked for).
        assert_eq!(
            t("song=Caf%C3%A9&charset=ISO-8859-1").as_deref(),
            Some("CafÃ©")
        );
        // Latin-1 bytes 0x80-0x9f are C1 controls: cleaned away.
        assert_eq!(t("song=a%85b%9bc&charset=latin1").as_deref(), Some("a bc"));
    }

    #[test]
    fn what_icecast_would_not_take_or_quicast_cannot_is_refused_saying_why() {
        assert!(refusal("mount=/l&song=x").contains("mode=updinfo"));
        assert!(refusal("mode=updinfox&mount=/l&song=x").contains("\"updinfox\""));
        assert!(refusal("mode=updinfo&song=x").contains("mount"));
        assert!(refusal("mode=updinfo&mount=/&song=x").contains("empty mount"));
        assert!(refusal("mode=updinfo&mount=%FF&song=x").contains("not UTF-8"));
        assert!(refusal("mode=updinfo&mount=/l").contains("without song"));
        assert!(refusal("mode=updinfo&mount=/l&artist=A").contains("without song"));
        let e = refusal("mode=updinfo&mount=/l&song=x&charset=windows-1252");
        assert!(
            e.contains("\"windows-1252\"") && e.contains("UTF-8 or ISO-8859-1"),
            "{e}"
        );
        let e = refusal("mode=updinfo&mount=/l&song=Caf%E9&charset=UTF-8");
        assert!(e.contains("song is not UTF-8"), "{e}");
        let long = format!("mode=updinfo&mount=/l&song={}", "x".repeat(MAX_QUERY));
        assert_eq!(
            updinfo_query(&long).map_err(|e| e.kind()),
            Err(Kind::TooLarge)
        );
    }

    /// An OpusTags packet with `comments` (and a count that may lie).
    fn tags(count: u32, comments: &[&[u8]]) -> Vec<u8> {
        let mut p = b"OpusTags".to_vec();
        p.extend(6u32.to_le_bytes());
        p.extend(b"vendor");
        p.extend(count.to_le_bytes());
        for c in comments {
            p.extend((c.len() as u32).to_le_bytes());
            p.extend(*c);
        }
        p
    }

    #[test]
    fn opus_tags_give_artist_and_title_as_icecast_shows_them() {
        let t = |c: &[&[u8]]| opus_tags_title(&tags(c.len() as u32, c));
        assert_eq!(
            t(&[b"ENCODER=x", b"artist=A", b"Title=T"]).as_deref(),
            Some("A - T")
        );
        assert_eq!(
            t(&[b"TITLE=Station - Song"]).as_deref(),
            Some("Station - Song")
        );
        // An artist alone is no title; nothing, neither.
        assert_eq!(t(&[b"ARTIST=A"]), None);
        assert_eq!(t(&[]), None);
        // The first of each counts; a comment without '=' is skipped; values are cleaned.
        assert_eq!(
            t(&[b"junk", b"TITLE= T1\n", b"TITLE=T2", b"ARTIST=\x07"]).as_deref(),
            Some("T1")
        );
        // Not UTF-8 (against the RFC): read lossily rather than dropped.
        assert_eq!(t(&[b"TITLE=Caf\xe9"]).as_deref(), Some("Caf\u{fffd}"));
        // Keys are whole: TITLEX is not TITLE.
        assert_eq!(t(&[b"TITLEX=no", b"SUBTITLE=no"]), None);
    }

    #[test]
    fn hostile_opus_tags_end_with_the_packet() {
        // A count far beyond what is there: what was read stands.
        assert_eq!(
            opus_tags_title(&tags(u32::MAX, &[b"TITLE=T"])).as_deref(),
            Some("T")
        );
        // A comment whose length runs past the end: the list ends before it.
        let mut p = tags(3, &[b"TITLE=T"]);
        p.extend(u32::MAX.to_le_bytes());
        p.extend(b"ARTIST=A");
        assert_eq!(opus_tags_title(&p).as_deref(), Some("T"));
        // A vendor length past the end, a packet cut anywhere, another header: no title.
        let mut v = b"OpusTags".to_vec();
        v.extend(u32::MAX.to_le_bytes());
        assert_eq!(opus_tags_title(&v), None);
        let whole = tags(2, &[b"ARTIST=A", b"TITLE=T"]);
        for cut in 0..whole.len() {
            let t = opus_tags_title(&whole[..cut]);
            assert!(t.is_none() || t.as_deref() == Some("T"), "{cut}: {t:?}");
        }
        assert_eq!(opus_tags_title(&whole).as_deref(), Some("A - T"));
        assert_eq!(opus_tags_title(b"OpusHead\x01\x02"), None);
    }
}
