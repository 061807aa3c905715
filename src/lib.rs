//! quicast: a live-audio CDN. Origins take audio from publishers and send it over QUIC to a
//! tree of relays; every relay caches recent segments and fans out to listeners and child
//! relays, holding one upstream subscription per stream however many listen below it.
//!
//! Layout: `proto` (the wire codec, no I/O), `store` (the data model, no transport),
//! `media` (Ogg/Opus), `wire` + `client` + `server` + `upstream` (the async shell over quinn).

pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod listen;
pub mod loadgen;
pub mod media;
pub mod proto;
pub mod publish;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod wire;

pub use error::{Error, ErrorCode, Result};
