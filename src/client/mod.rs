//! The client side of the protocol, one code for everything that connects to a node:
//! `quicast listen`, `quicast publish`, the load generator, and a relay fetching from its
//! parents (`QuicParents`, the node's way to them over QUIC).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;

use crate::error::Result;
use tracing::debug;

use crate::proto::{self, ErrorCode, QuicUrl, Role};
use crate::transport::{self, Trust};

mod listen;
mod parents;
mod publish;
pub mod resolve;
mod session;

pub use listen::{listen, listen_any, ListenEvent, ListenOptions, ListenReport};
pub use parents::QuicParents;
pub use publish::{
    publish, title_record, Input, Origin, PublishOptions, PublishReport, SourceReader,
};
pub use session::{Event, Publication, Session, Subscription};

/// A client endpoint: one UDP socket, many connections.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

/// A listener's QUIC client settings with no session resumption: every connection makes a
/// full TLS handshake, as a crowd of first-time visitors would (the load generator's).
pub fn fresh_listener_config(trust: &Trust) -> Result<quinn::ClientConfig> {
    transport::client_config_with(trust, false, transport::listener_transport())
}

/// `fresh_listener_config` for a WebTransport client (ALPN `h3`): the load generator's
/// listeners as a browser connects.
pub fn fresh_webtransport_config(trust: &Trust) -> Result<quinn::ClientConfig> {
    transport::client_config_for(trust, false, transport::listener_transport(), transport::H3)
}

/// A UDP socket for connections to `target`: its address family, any port, large buffers.
pub fn udp_socket_for(target: &SocketAddr) -> Result<std::net::UdpSocket> {
    Ok(transport::udp_socket(
        transport::unspecified_for(target),
        false,
    )?)
}

impl Client {
    pub fn new(bind: SocketAddr, trust: &Trust) -> Result<Client> {
        Client::with_config(bind, transport::client_config(trust)?)
    }

    /// This client makes a full TLS handshake on every connection: no session resumption.
    pub fn without_resumption(mut self, trust: &Trust) -> Result<Client> {
        self.config = transport::client_config_with(trust, false, transport::listener_transport())?;
        Ok(self)
    }

    /// A client whose connections use `config` (a relay's, for its parents).
    pub fn with_config(bind: SocketAddr, config: quinn::ClientConfig) -> Result<Client> {
        Ok(Client {
            endpoint: transport::client_endpoint(bind)?,
            config,
        })
    }

    /// A publisher's client for `target`: its connections notice a lost origin within a
    /// second (see `transport::publisher_transport`).
    pub fn publisher_for(target: &SocketAddr, trust: &Trust) -> Result<Client> {
        let config = transport::client_config_with(trust, true, transport::publisher_transport())?;
        Client::with_config(transport::unspecified_for(target), config)
    }

    /// A client bound to an ephemeral port of the same address family as `target`.
    pub fn for_target(target: &SocketAddr, trust: &Trust) -> Result<Client> {
        Client::new(transport::unspecified_for(target), trust)
    }

    /// Closes every connection of this client politely (the node learns at once that its
    /// listener or publisher is gone, not after an idle timeout) and waits, briefly, for the
    /// close to be sent.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    /// Moves this client to a fresh local socket, as a network change or a NAT rebinding
    /// would: its connections carry on from the new address (QUIC migration).
    pub fn rebind(&self) -> Result<()> {
        let bind = self.endpoint.local_addr()?;
        let fresh = std::net::SocketAddr::new(bind.ip(), 0);
        self.endpoint
            .rebind(std::net::UdpSocket::bind(fresh)?)
            .map_err(|e| crate::error::Error::local(format!("cannot rebind: {e}")))
    }

    /// Connects to the node at `url` and says hello as `role`.
    pub async fn connect(&self, url: &QuicUrl, role: Role, token: &str) -> Result<Arc<Session>> {
        let addr = transport::resolve(url).await?;
        self.connect_to(url, addr, role, token).await
    }

    /// A session with the node at `addr`, one address of `url`'s host: TLS verifies the
    /// certificate against the host's name, as if it had been resolved to `addr`.
    pub async fn connect_to(
        &self,
        url: &QuicUrl,
        addr: std::net::SocketAddr,
        role: Role,
        token: &str,
    ) -> Result<Arc<Session>> {
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), addr, &url.host)?
            .await?;
        match Session::start(conn, role, token, proto::VERSION).await {
            // A node from before version 3 (a tree being upgraded) refuses it: say 2, which
            // carries Opus streams without titles.
            Err(e) if e.remote_code() == Some(ErrorCode::UnsupportedVersion) => {
                debug!(
                    "the node does not speak version {}: saying 2",
                    proto::VERSION
                );
                let conn = self
                    .endpoint
                    .connect_with(self.config.clone(), addr, &url.host)?
                    .await?;
                Session::start(conn, role, token, 2).await
            }
            r => r,
        }
    }

    /// A bare QUIC connection (TLS done, nothing said yet): for tools and tests that speak
    /// the protocol themselves.
    pub async fn connect_raw(&self, url: &QuicUrl) -> Result<Connection> {
        let addr = transport::resolve(url).await?;
        Ok(self
            .endpoint
            .connect_with(self.config.clone(), addr, &url.host)?
            .await?)
    }
}

/// `d` times a random factor between one half and three halves: clients refused or lost
/// together spread their returns over a whole `d` instead of coming back in one instant.
pub fn jittered(d: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}
