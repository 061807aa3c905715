//! Unidirectional stream headers: decode, ask for more, or refuse; never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quicast::proto::UniHeader;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let before = buf.clone();
    match UniHeader::decode(&mut buf) {
        Ok(Some(h)) => {
            let mut again = BytesMut::new();
            h.encode(&mut again);
            assert_eq!(UniHeader::decode(&mut again), Ok(Some(h)));
        }
        Ok(None) => assert_eq!(buf, before),
        Err(_) => {}
    }
});
