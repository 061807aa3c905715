//! quicast: a live-audio CDN. Origins take audio from publishers and send it over QUIC to a
//! tree of relays; every relay caches recent segments and fans out to listeners and child
//! relays, holding one upstream subscription per stream however many listen below it.
//!
//! The rooms, one concept each. Arrows point from the shells to the node, and from the node
//! to the model, media and proto; nothing points back.
//!
//! - `proto`: the wire grammar (messages, frames, stream headers, varints, error codes,
//!   `quic://` URLs). No I/O.
//! - `media`: Opus in Ogg, in and out, and the one timestamp rule for Ogg sources. No I/O.
//! - `model`: streams, broadcasts, segments, the cursor, the registry and cache, the
//!   segmenter. No transport.
//! - `node`: the one server path for origin and relay: configuration, admission,
//!   subscribing, the ingest policy, the upstream fetch (over the `Parents` trait), the
//!   fan-out and its `Sink`, the node's background work. No transport.
//! - `transport`: QUIC endpoints and sockets, TLS, stream I/O, QUIC's errors.
//! - `ingress`: QUIC publishers, Icecast sources. `egress`: QUIC listeners and child
//!   relays, HTTP progressive Ogg. `admin`: the node's pages.
//! - `server`: the front doors (QUIC and HTTP) that hand connections to the shells above.
//! - `client`: sessions, listen, publish, and a relay's QUIC way to its parents.

mod admin;
pub mod client;
mod egress;
pub mod engine;
mod error;
mod ingress;
pub mod media;
pub mod model;
pub mod node;
pub mod proto;
mod server;
mod transport;

pub use error::{io_reason, Error, Kind as ErrorKind, Result, Side};
pub use node::{Node, NodeArgs, NodeConfig, Peer};
/// For the fuzz target (`fuzz/`): a request head parsed and routed as the HTTP server does.
#[doc(hidden)]
pub use server::http::fuzz_head as fuzz_http_head;
pub use server::{new_node, AdminServer, HttpServer, QuicServer};
pub use transport::{sha256_hex, FileError, Identity, Trust};
