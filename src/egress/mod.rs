//! Egress: every kind of listener, each one more subscriber of the node's one fan-out.
//! QUIC listeners and child relays get the wire records as they are; HTTP listeners get
//! progressive Ogg Opus.

pub(crate) mod hls;
pub(crate) mod http_ogg;
pub(crate) mod quic;
