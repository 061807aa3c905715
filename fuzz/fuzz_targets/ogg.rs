//! The Ogg Opus demuxer (QUIC publishers' files and stdin, Icecast sources): any bytes,
//! pushed in pieces, give events or an error; never a panic, and what it buffers stays
//! within a page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicast::media::metadata::MAX_TITLE;
use quicast::media::OggOpusDemuxer;

fuzz_target!(|data: &[u8]| {
    let mut d = OggOpusDemuxer::new();
    for piece in data.chunks(997) {
        d.push(piece);
        loop {
            match d.next_event() {
                Ok(Some(_)) => {
                    if let Some(Some(t)) = d.take_title() {
                        assert!(!t.is_empty() && t.len() <= MAX_TITLE);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // At most one page (27 + 255 lacing + 255 * 255 bytes) and the piece that began it.
        assert!(d.buffered() <= 27 + 255 + 255 * 255 + 997);
    }
});
