//! What a browser's stream says it is (HTTP/3 and WebTransport preambles, a CONNECT request
//! through QPACK): an answer, or a request for more; never a panic, never past the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicast::proto::webtransport::{preamble, Preamble};

fuzz_target!(|data: &[u8]| {
    // The first byte says which way the stream goes (odd: unidirectional).
    let Some((&dir, rest)) = data.split_first() else {
        return;
    };
    match preamble(rest, dir & 1 == 1) {
        Preamble::Stream { used, .. } => assert!(used <= rest.len()),
        Preamble::More if rest.len() <= 512 => {
            // More input never turns a complete answer into a request for more: a prefix
            // that asked for more still does.
            for cut in 0..rest.len() {
                assert_eq!(preamble(&rest[..cut], dir & 1 == 1), Preamble::More);
            }
        }
        _ => {}
    }
});
