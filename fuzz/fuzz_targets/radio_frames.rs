//! ADTS and MP3 frame headers, finding the next frame in junk, and a whole source stream cut
//! into frames (any format, in any chunking): an answer or none, never a panic, never a frame
//! shorter than its header or past the input, and every frame one its codec's check takes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicast::media::framing::{adts, mp3, resync};
use quicast::media::{frame_samples, SourceDemuxer, SourceEvent, SourceKind};

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
    // The first byte picks the format said and the chunk size; the rest is the stream.
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let said = [None, Some(SourceKind::Mp3), Some(SourceKind::Aac), Some(SourceKind::OggOpus)]
        [(pick & 3) as usize];
    let step = 1 + (pick >> 2) as usize * 13;
    let mut d = SourceDemuxer::new(said);
    let mut codec = None;
    let mut taken = 0usize;
    for chunk in stream.chunks(step) {
        d.push(chunk);
        loop {
            match d.next_event() {
                Ok(Some(SourceEvent::Head(c) | SourceEvent::Chain(c))) => codec = Some(c),
                Ok(Some(SourceEvent::Packet { payload, duration, .. })) => {
                    taken += payload.len();
                    assert!(taken <= stream.len());
                    if let Some(c) = &codec {
                        if c.kind != quicast::proto::CODEC_OPUS {
                            // Raw frames are checked at the origin as they were cut here
                            // (an ADTS frame of several raw data blocks is refused there).
                            if let Ok(n) = frame_samples(c, &payload) {
                                assert_eq!(n, duration);
                            } else {
                                assert!(c.kind == quicast::proto::CODEC_AAC && duration > 1024);
                            }
                        }
                    }
                }
                Ok(Some(SourceEvent::End)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
