//! Frame records (segment and publish streams): decode or refuse, never a panic; a decoded
//! frame's payload is within the limit, and it round-trips through its encoding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quicast::proto::{Frame, MAX_FRAME_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some((frame, _record))) = Frame::decode(&mut buf) {
        assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
        let mut again = BytesMut::from(&frame.to_bytes()[..]);
        let (same, _) = Frame::decode(&mut again).unwrap().unwrap();
        assert_eq!(same, frame);
    }
});
