//! Now-playing metadata from any bytes: read as an ICY stream (in pieces), as an Icecast
//! metadata update's query, as an OpusTags packet. Never a panic; what comes out is bounded
//! (audio no more than came in, titles within a block) and a title quicast would carry is
//! clean. And the bytes as audio, under the text as a title, go through `IcyWriter` and read
//! back through `IcyReader` as they went in.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicast::media::icy::{IcyReader, IcyWriter, MAX_BLOCK};
use quicast::media::metadata::{clean_title, opus_tags_title, updinfo_query, MAX_TITLE};

/// What `clean_title` promises.
fn assert_clean(t: &str) {
    assert!(!t.is_empty() && t.len() <= MAX_TITLE, "{t:?}");
    assert!(!t.chars().any(char::is_control), "{t:?}");
    assert_eq!(t.trim(), t);
}

fuzz_target!(|data: &[u8]| {
    // The first byte is the metadata interval (0: none), the second the size of the pieces.
    let Some((&[metaint, piece], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (metaint, piece) = (metaint as usize, piece as usize + 1);

    let mut r = IcyReader::new(metaint);
    let (mut audio, mut titles) = (Vec::new(), Vec::new());
    for c in rest.chunks(piece) {
        r.feed(c, &mut audio, &mut titles);
    }
    assert!(audio.len() <= rest.len());
    assert_eq!(r.audio_bytes(), audio.len() as u64);
    let mut last = 0;
    for t in &titles {
        assert!(t.at >= last && t.at <= audio.len() as u64);
        assert!(t.title.chars().count() <= MAX_BLOCK);
        last = t.at;
    }

    let text = String::from_utf8_lossy(rest);
    if let Ok(u) = updinfo_query(&text) {
        assert!(!u.mount.is_empty());
        if let Some(t) = &u.title {
            assert_clean(t);
        }
    }
    for packet in [rest, &[&b"OpusTags"[..], rest].concat()] {
        if let Some(t) = opus_tags_title(packet) {
            assert_clean(&t);
        }
    }

    let title = clean_title(&text);
    if let Some(t) = &title {
        assert_clean(t);
    }
    let mut w = IcyWriter::new(metaint);
    w.set_title(title.as_deref());
    let mut out = Vec::new();
    for c in rest.chunks(piece) {
        w.write(Bytes::copy_from_slice(c), &mut out);
    }
    let stream = out.concat();
    let mut r = IcyReader::new(metaint);
    let (mut audio, mut titles) = (Vec::new(), Vec::new());
    r.feed(&stream, &mut audio, &mut titles);
    assert_eq!(audio, rest);
    if metaint == 0 || rest.len() < metaint {
        assert!(titles.is_empty());
    } else {
        // The title in the first block only; whole unless it holds the `';` that ends it.
        assert_eq!(titles.len(), 1);
        assert_eq!(titles[0].at, metaint as u64);
        let want = title.unwrap_or_default();
        if !want.contains("';") {
            assert_eq!(titles[0].title, want);
        }
    }
});
