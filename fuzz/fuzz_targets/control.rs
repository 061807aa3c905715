//! Control-stream messages: any bytes, fed in any split, decode to messages or an error;
//! never a panic, never more buffered than one message's limit. Whatever decodes, encodes
//! to bytes that decode to the same message (varints may come longer than they need to be,
//! so not always to the same bytes).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quicast::proto::{Message, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::new();
    // The first byte says where to split the input into two arrivals.
    let (split, rest) = match data.split_first() {
        Some((s, rest)) => (*s as usize % (rest.len() + 1), rest),
        None => return,
    };
    for part in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(part);
        loop {
            let before = buf.clone();
            match Message::decode(&mut buf) {
                Ok(Some(m)) => {
                    let mut again = BytesMut::from(&m.to_bytes()[..]);
                    assert_eq!(Message::decode(&mut again), Ok(Some(m)), "round trip");
                    assert!(again.is_empty());
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete message is left untouched");
                    assert!(buf.len() <= MAX_MESSAGE + 16, "buffered {}", buf.len());
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
