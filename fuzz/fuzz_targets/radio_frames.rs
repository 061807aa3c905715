//! ADTS and MP3 frame headers, and finding the next frame in junk: an answer or none, never
//! a panic, never a frame shorter than its header or past the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicast::media::framing::{adts, mp3, resync};

fuzz_target!(|data: &[u8]| {
    for header in [adts as fn(&[u8]) -> _, mp3] {
        if let Some(h) = header(data) {
            assert!(h.len > 4 && h.samples > 0 && h.rate > 0 && h.channels > 0);
        }
        if let Some((at, h)) = resync(data, header) {
            assert!(at < data.len());
            assert_eq!(header(&data[at..]), Some(h));
        }
    }
});
