//! Egress: every kind of listener, each one more subscriber of the node's one fan-out.
//! QUIC listeners and child relays get the wire records as they are; HTTP listeners get
//! the stream progressively in its codec's own format (Ogg Opus, MP3, AAC), or as HLS.

pub(crate) mod hls;
pub(crate) mod progressive;
pub(crate) mod quic;
