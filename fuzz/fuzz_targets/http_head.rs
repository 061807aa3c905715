//! The HTTP front door's request heads and routing: any bytes parse to a head and a route,
//! or to a refusal with a status; never a panic (a panicking request once leaked the node's
//! admission count, see issue 23).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = quicast::fuzz_http_head(data);
});
