//! Ingress: publishers, into the node's one ingest. QUIC publishers, and Icecast sources
//! over HTTP (ffmpeg's `icecast://`, older encoders' `SOURCE`).

pub(crate) mod icecast;
pub(crate) mod quic;

#[cfg(test)]
mod tests;
