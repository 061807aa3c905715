//! ICY metadata (the "Shoutcast" protocol Icecast speaks too): how an HTTP listener that
//! sent `Icy-MetaData: 1` is told the now-playing title. The answer carries `icy-metaint: N`
//! and, after every N bytes of audio, one metadata block: a length byte L, then 16 × L bytes
//! of `StreamTitle='…';` padded with NULs. A block whose title has not changed since the
//! listener last had it is the single byte 0.
//!
//! What Icecast does, and so what players expect (xiph/Icecast-Server, src/format_mp3.c:
//! `mp3_set_title` builds the block, `send_stream_metadata` and
//! `format_mp3_write_buf_to_client` interleave it):
//!
//! - the block follows the N-th audio byte at once, even at the end of a write;
//! - the length byte is `text / 16 + 1` (Icecast's `(len - 1) / 16 + 1`, its `len` counting
//!   a NUL), so the text is always followed by at least one NUL: C readers take the block
//!   as a string;
//! - the title is sent in the first block after it changed, a 0 byte in the blocks after;
//!   a new listener gets the current title in its first block (Icecast sends
//!   `StreamTitle='';` there when there is none, and so does this);
//! - a `'` in the title is not escaped: there is no escape in the format. Readers (Icecast's
//!   own relay, `filter_shoutcast_metadata`; ffmpeg; VLC) read up to the first `';`, so
//!   "Rock 'n' Roll" shows whole and only a title holding `';` itself is cut short there;
//! - a block is at most 255 × 16 bytes. Icecast drops a longer title (keeping the old one);
//!   here it is cut to fit on a character boundary, though titles come bounded to
//!   `MAX_TITLE` (1024 bytes), well inside that.
//!
//! One difference: Icecast converts the title to the mount's charset (ISO-8859-1 by
//! default for MP3 sources); quicast sends UTF-8, which is what it carries and what
//! today's players (VLC, ffmpeg, browsers' icecast-metadata-js) read.

use bytes::Bytes;

/// The metadata interval quicast offers: Icecast's default (`ICY_METADATA_INTERVAL`), so
/// nothing tuned for Icecast is surprised.
pub const DEFAULT_METAINT: usize = 16000;

/// The largest metadata block, length byte excluded: the length byte counts 16-byte units.
pub const MAX_BLOCK: usize = 255 * 16;

const PREFIX: &[u8] = b"StreamTitle='";
const SUFFIX: &[u8] = b"';";
/// The most title bytes a block holds: the rest of `MAX_BLOCK` is the prefix, the suffix
/// and one NUL.
const MAX_BLOCK_TITLE: usize = MAX_BLOCK - PREFIX.len() - SUFFIX.len() - 1;

/// The metadata block (length byte included) that says `title`, or no title (`''`). The
/// title is written as it is (see the module's notes on quotes); pass one cleaned by
/// `clean_title`, which has no control characters (a NUL would end it early for C readers).
pub fn metadata_block(title: Option<&str>) -> Bytes {
    let title = block_title(title);
    let text = PREFIX.len() + title.len() + SUFFIX.len();
    // Icecast: len counts the text and its NUL, length byte (len - 1) / 16 + 1.
    let units = text / 16 + 1;
    let mut b = Vec::with_capacity(1 + units * 16);
    // At most MAX_BLOCK_TITLE: text + 1 <= 255 * 16, so units <= 255.
    b.push(u8::try_from(units).unwrap_or(u8::MAX));
    b.extend_from_slice(PREFIX);
    b.extend_from_slice(title.as_bytes());
    b.extend_from_slice(SUFFIX);
    b.resize(1 + units * 16, 0);
    Bytes::from(b)
}

/// The part of `title` a block holds: all of it, or as much as fits, cut on a char boundary.
fn block_title(title: Option<&str>) -> &str {
    let t = title.unwrap_or("");
    let mut end = t.len().min(MAX_BLOCK_TITLE);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    &t[..end]
}

/// One HTTP listener's ICY state: where it is in the interval, and which title it has.
/// Audio goes out as zero-copy slices of the chunks it came in; the only bytes made here are
/// a block per title change.
#[derive(Debug, Clone)]
pub struct IcyWriter {
    metaint: usize,
    /// Audio bytes sent since the last block (or the start): always below `metaint`.
    since: usize,
    /// The current title's block.
    block: Bytes,
    /// Whether the listener has had `block`.
    sent: bool,
}

impl IcyWriter {
    /// A listener told `icy-metaint: metaint`. 0 means no metadata (Icecast too: audio
    /// passes as it is).
    pub fn new(metaint: usize) -> IcyWriter {
        IcyWriter {
            metaint,
            since: 0,
            block: metadata_block(None),
            sent: false,
        }
    }

    pub fn metaint(&self) -> usize {
        self.metaint
    }

    /// The title from now on (`None`: none). The same title again is no change: the
    /// listener is not sent it twice. Costs nothing unless the title changed.
    pub fn set_title(&mut self, title: Option<&str>) {
        let t = block_title(title).as_bytes();
        let held = self
            .block
            .get(1 + PREFIX.len()..)
            .and_then(|b| b.strip_prefix(t))
            .is_some_and(|rest| rest.starts_with(SUFFIX));
        if !held {
            self.block = metadata_block(title);
            self.sent = false;
        }
    }

    /// Appends to `out` what to send for `audio`: slices of it, with a metadata block after
    /// every `metaint` audio bytes since the last one.
    pub fn write(&mut self, mut audio: Bytes, out: &mut Vec<Bytes>) {
        if self.metaint == 0 {
            if !audio.is_empty() {
                out.push(audio);
            }
            return;
        }
        while !audio.is_empty() {
            let room = self.metaint - self.since;
            if audio.len() < room {
                self.since += audio.len();
                out.push(audio);
                return;
            }
            out.push(audio.split_to(room));
            out.push(self.next_block());
            self.since = 0;
        }
    }

    /// The block due now: the title if the listener has not had it, else a 0 byte.
    fn next_block(&mut self) -> Bytes {
        if self.sent {
            Bytes::from_static(&[0])
        } else {
            self.sent = true;
            self.block.clone()
        }
    }
}

/// A title read from an ICY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcyTitle {
    /// Audio bytes before the block that said it.
    pub at: u64,
    /// The `StreamTitle` value as sent ("" for none), not cleaned: a reader that shows it
    /// passes it through `clean_title` first. UTF-8 as sent if it is, else read as
    /// ISO-8859-1 (what Icecast sends by default for MP3 sources).
    pub title: String,
}

/// Where a reader is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Audio,
    Length,
    Block { left: usize },
}

/// Separates an ICY stream (what a listener that sent `Icy-MetaData: 1` receives) into its
/// audio and the titles of its metadata blocks, fed in any pieces. For tests and the CLI.
/// Holds at most one block (`MAX_BLOCK` bytes); never fails: a block without a StreamTitle
/// says nothing, any byte is a valid length.
#[derive(Debug, Clone)]
pub struct IcyReader {
    metaint: usize,
    since: usize,
    state: State,
    /// Audio bytes read so far.
    audio: u64,
    block: Vec<u8>,
}

impl IcyReader {
    /// A reader for a stream answered with `icy-metaint: metaint` (0: audio only).
    pub fn new(metaint: usize) -> IcyReader {
        IcyReader {
            metaint,
            since: 0,
            state: State::Audio,
            audio: 0,
            block: Vec::new(),
        }
    }

    /// Audio bytes read so far.
    pub fn audio_bytes(&self) -> u64 {
        self.audio
    }

    /// Reads `data`: its audio is appended to `audio`, the title of each block that ends in
    /// it to `titles` (blocks of length 0, "no change", say nothing).
    pub fn feed(&mut self, mut data: &[u8], audio: &mut Vec<u8>, titles: &mut Vec<IcyTitle>) {
        while !data.is_empty() {
            match self.state {
                State::Audio => {
                    let n = if self.metaint == 0 {
                        data.len()
                    } else {
                        data.len().min(self.metaint - self.since)
                    };
                    let (a, rest) = data.split_at(n);
                    audio.extend_from_slice(a);
                    self.audio += n as u64;
                    data = rest;
                    self.since += n;
                    if self.metaint != 0 && self.since == self.metaint {
                        self.since = 0;
                        self.state = State::Length;
                    }
                }
                State::Length => {
                    let left = data[0] as usize * 16;
                    data = &data[1..];
                    self.state = if left == 0 {
                        State::Audio
                    } else {
                        State::Block { left }
                    };
                }
                State::Block { left } => {
                    let n = data.len().min(left);
                    self.block.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if n < left {
                        self.state = State::Block { left: left - n };
                        continue;
                    }
                    if let Some(title) = stream_title(&self.block) {
                        titles.push(IcyTitle {
                            at: self.audio,
                            title,
                        });
                    }
                    self.block.clear();
                    self.state = State::Audio;
                }
            }
        }
    }
}

/// The `StreamTitle` of a block's text (`key='value';` pairs, NUL-padded), read as ffmpeg
/// and Icecast's relay read it: each value runs to the first `';`. Keys are matched without
/// regard to case, as VLC does.
fn stream_title(block: &[u8]) -> Option<String> {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    let mut rest = &block[..end];
    while let Some(eq) = find(rest, b"='") {
        let key = &rest[..eq];
        let value = &rest[eq + 2..];
        let close = find(value, SUFFIX)?;
        if key.eq_ignore_ascii_case(b"StreamTitle") {
            let v = &value[..close];
            return Some(match std::str::from_utf8(v) {
                Ok(s) => s.to_string(),
                Err(_) => v.iter().map(|&b| b as char).collect(),
            });
        }
        rest = &value[close + SUFFIX.len()..];
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn a_block_is_icecasts_streamtitle_padded_to_16_with_at_least_one_nul() {
        // Icecast's own empty block, byte for byte ("\001StreamTitle='';").
        assert_eq!(&metadata_block(None)[..], b"\x01StreamTitle='';\0");
        // 13 + 1 + 2 = 16 bytes of text: a second unit, for the NUL.
        let b = metadata_block(Some("a"));
        assert_eq!(b.len(), 33);
        assert_eq!(&b[..17], b"\x02StreamTitle='a';");
        assert_eq!(&b[17..], [0; 16]);
        // Quotes go as they are: there is no escape in the format.
        let b = metadata_block(Some("Rock 'n' Roll"));
        assert!(b.starts_with(b"\x02StreamTitle='Rock 'n' Roll';\0"));
    }

    #[test]
    fn a_title_too_long_for_a_block_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_BLOCK);
        let b = metadata_block(Some(&long));
        assert_eq!((b[0], b.len()), (255, 1 + MAX_BLOCK));
        assert_eq!(b[MAX_BLOCK], 0);
        let mut titles = Vec::new();
        let mut r = IcyReader::new(1);
        let mut audio = Vec::new();
        r.feed(b"x", &mut audio, &mut titles);
        r.feed(&b, &mut audio, &mut titles);
        let t = &titles[0].title;
        // 4064 bytes of room: 2032 two-byte characters, whole.
        assert_eq!(t.len(), MAX_BLOCK_TITLE);
        assert!(t.chars().all(|c| c == 'é'));
        // An odd room: the half character is left out.
        let b = metadata_block(Some(&format!("a{long}")));
        assert_eq!(b[0], 255);
        assert!(b.ends_with(b"';\0\0"));
    }

    #[test]
    fn blocks_go_every_metaint_audio_bytes_the_title_once_per_change() {
        let mut w = IcyWriter::new(4);
        let mut out = Vec::new();
        // A new listener gets the current title in its first block.
        w.set_title(Some("One"));
        w.write(Bytes::from_static(b"abcdefghij"), &mut out);
        let one = metadata_block(Some("One"));
        assert_eq!(
            out,
            vec![
                Bytes::from_static(b"abcd"),
                one.clone(),
                Bytes::from_static(b"efgh"),
                Bytes::from_static(b"\0"),
                Bytes::from_static(b"ij"),
            ]
        );
        // The same title again is no change; a new one goes in the next block only. The
        // block follows the 4th byte at once, though the chunk ends there.
        w.set_title(Some("One"));
        out.clear();
        w.write(Bytes::from_static(b"kl"), &mut out);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"kl"), Bytes::from_static(b"\0")]
        );
        w.set_title(Some("Two"));
        out.clear();
        w.write(Bytes::from_static(b"mnop"), &mut out);
        w.write(Bytes::from_static(b"qrst"), &mut out);
        assert_eq!(
            out,
            vec![
                Bytes::from_static(b"mnop"),
                metadata_block(Some("Two")),
                Bytes::from_static(b"qrst"),
                Bytes::from_static(b"\0"),
            ]
        );
        // Cleared: the empty title, once.
        w.set_title(None);
        out.clear();
        w.write(Bytes::from_static(b"uvwxyz01"), &mut out);
        assert_eq!(out[1], metadata_block(None));
        assert_eq!(out[3], Bytes::from_static(b"\0"));
    }

    #[test]
    fn audio_goes_out_as_slices_of_the_chunks_it_came_in() {
        let chunk = Bytes::from(vec![7u8; 100]);
        let mut w = IcyWriter::new(30);
        let mut out = Vec::new();
        w.write(chunk.clone(), &mut out);
        let start = chunk.as_ptr() as usize;
        let audio: Vec<_> = out.iter().filter(|p| p.len() > 1 && p[0] == 7).collect();
        assert_eq!(audio.len(), 4);
        for (i, a) in audio.iter().enumerate() {
            assert_eq!(a.as_ptr() as usize, start + 30 * i);
        }
        // metaint 0: no metadata at all.
        let mut w = IcyWriter::new(0);
        out.clear();
        w.set_title(Some("x"));
        w.write(chunk.clone(), &mut out);
        w.write(Bytes::new(), &mut out);
        assert_eq!(out, vec![chunk]);
    }

    #[test]
    fn a_reader_gets_back_audio_and_titles_at_their_offsets_in_any_pieces() {
        let mut w = IcyWriter::new(DEFAULT_METAINT);
        let mut out = Vec::new();
        let audio: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let titles = [
            (0, Some("First")),
            (20_000, Some("Zweite – Café ♫")),
            (50_000, None),
            (70_000, Some("It's 'quoted'")),
        ];
        let mut from = 0;
        for (i, (at, t)) in titles.iter().enumerate() {
            let to = titles.get(i + 1).map_or(audio.len(), |n| n.0);
            assert_eq!(*at, from);
            w.set_title(*t);
            for piece in audio[from..to].chunks(3333) {
                w.write(Bytes::copy_from_slice(piece), &mut out);
            }
            from = to;
        }
        let stream = concat(&out);
        // Each title at the first block after its change: at a multiple of metaint.
        let want = vec![
            (16_000, "First"),
            (32_000, "Zweite – Café ♫"),
            (64_000, ""),
            (80_000, "It's 'quoted'"),
        ];
        for piece in [1, 7, 16_001, stream.len()] {
            let mut r = IcyReader::new(DEFAULT_METAINT);
            let (mut a, mut t) = (Vec::new(), Vec::new());
            for p in stream.chunks(piece) {
                r.feed(p, &mut a, &mut t);
            }
            assert_eq!(a, audio, "pieces of {piece}");
            assert_eq!(r.audio_bytes(), audio.len() as u64);
            let got: Vec<_> = t.iter().map(|t| (t.at, t.title.as_str())).collect();
            assert_eq!(got, want, "pieces of {piece}");
        }
    }

    #[test]
    fn a_reader_takes_what_others_send_and_survives_what_nobody_should() {
        let read = |metaint: usize, s: &[u8]| {
            let mut r = IcyReader::new(metaint);
            let (mut a, mut t) = (Vec::new(), Vec::new());
            r.feed(s, &mut a, &mut t);
            (a, t)
        };
        // Icecast with a StreamUrl; a lower-case key; Latin-1 as Icecast sends by default.
        let mut s = b"ab\x03StreamTitle='A - B';StreamUrl='http://x/';".to_vec();
        s.resize(2 + 1 + 48, 0);
        let (a, t) = read(2, &s);
        assert_eq!((a.as_slice(), t[0].title.as_str()), (&b"ab"[..], "A - B"));
        let mut s = b"ab\x03StreamUrl='u';streamtitle='Caf\xe9';".to_vec();
        s.resize(2 + 1 + 48, 0);
        assert_eq!(read(2, &s).1[0].title, "Café");
        // No StreamTitle, no closing "';", garbage: no title, and the audio still comes.
        for junk in [&b"StreamUrl='u';"[..], b"StreamTitle='open", b"\xff\xfe='"] {
            let mut s = b"ab\x01".to_vec();
            s.extend(junk.iter().take(16));
            s.resize(2 + 1 + 16, b' ');
            s.extend(b"cd");
            let (a, t) = read(2, &s);
            assert_eq!((a.as_slice(), t.len()), (&b"abcd"[..], 0), "{junk:?}");
        }
        // The largest block, then a stream cut in a block.
        let mut s = vec![b'a', 255];
        s.extend(std::iter::repeat_n(b'z', MAX_BLOCK));
        s.push(b'b');
        s.extend([200, b'x']);
        let (a, t) = read(1, &s);
        assert_eq!((a.as_slice(), t.len()), (&b"ab"[..], 0));
        // metaint 0: all audio.
        assert_eq!(read(0, b"\x05StreamTitle='x';").0, b"\x05StreamTitle='x';");
    }
}
