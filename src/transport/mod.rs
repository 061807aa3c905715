//! QUIC, for servers and clients alike: endpoints and their UDP sockets, TLS identities and
//! trust, stream I/O (control messages, frame records), and QUIC's errors read as ours.

mod endpoint;
mod errors;
mod io;
pub mod shards;
mod tls;
mod webcert;

use std::net::SocketAddr;

pub use endpoint::{
    client_config, client_config_for, client_config_with, client_endpoint, listener_transport,
    publisher_transport, server_config, udp_socket, unspecified_for, unspecified_for_host,
    upstream_config, RELAY_WINDOW,
};
pub use errors::{conn_error, varint};
pub use io::{write_message, ControlReader, ControlWriter, FrameReader};
pub use tls::{sha256_hex, FileError, Fingerprint, Identity, Trust};
pub use webcert::{self_issued, WebCerts, H3};

use crate::error::{Error, Result};
use crate::proto::QuicUrl;

/// The address a URL's host and port resolve to (the first, if several).
pub async fn resolve(url: &QuicUrl) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| Error::local(format!("cannot resolve {}: {e}", url.host)))?;
    addrs
        .next()
        .ok_or_else(|| Error::local(format!("{} did not resolve", url.host)))
}
