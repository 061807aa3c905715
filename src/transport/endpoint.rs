//! QUIC endpoints: their UDP sockets, and the transport settings for listeners, publishers
//! and node-to-node links.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use rustls::sign::CertifiedKey;

use super::tls::{provider, Identity, PinnedVerifier, Trust};
use super::webcert::{ByAlpn, WebCerts, H3};
use crate::error::{Error, Result};
use crate::proto::ALPN;

/// Socket buffer size asked of the kernel for every QUIC endpoint.
pub const UDP_BUFFER: usize = 8 << 20;

/// A UDP socket for a QUIC endpoint, with large kernel buffers: a crowd of handshakes arriving
/// at once otherwise overflows the default (~208 KiB) and the lost packets wait out QUIC's
/// retransmission timer (a second, for a handshake). `reuse_port`: one of a server's shard
/// sockets (see `shards`).
pub fn udp_socket(
    addr: std::net::SocketAddr,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    for (what, set, get) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        let _ = set(&s, UDP_BUFFER);
        let got = get(&s).unwrap_or(0);
        // Linux reports twice what it grants.
        if got < UDP_BUFFER {
            tracing::debug!(
                "UDP {what} buffer is {} KiB, asked {} KiB: raise net.core.{}mem_max for crowds of joins",
                got / 1024,
                UDP_BUFFER / 1024,
                if what == "receive" { "r" } else { "w" }
            );
        }
    }
    s.set_nonblocking(true)?;
    #[cfg(unix)]
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The unspecified address of `target`'s family, any port: where a client binds.
pub fn unspecified_for(target: &SocketAddr) -> SocketAddr {
    if target.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Where a client binds to reach `host` (an IPv6 literal: the IPv6 unspecified address).
pub fn unspecified_for_host(host: &str) -> SocketAddr {
    let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
    unspecified_for(if host.contains(':') { &v6 } else { &v4 })
}

pub fn client_endpoint(addr: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(addr, false)?,
        runtime,
    )
}

/// What a node may have in flight to a child relay, all its streams together (a listener
/// connection keeps the default, `transport`'s send window): a relay carrying thousands of
/// streams at 8 KB/s each needs room for all of them over a round trip.
pub const RELAY_WINDOW: u64 = 16 << 20;

/// A relay's connection to its parent: it grants the parent this many concurrent segment
/// streams per stream it carries (the segment being received, the next one, one reset).
pub const UPSTREAM_STREAMS_PER_STREAM: u64 = 3;

/// QUIC transport settings for many low-rate connections: few streams granted, small
/// windows (they bound what a peer can make us buffer), keep-alives so NATs stay open.
/// `uni_streams` unidirectional streams are granted to the peer, each with a receive window
/// of `stream_window` bytes, `conn_window` for all together.
pub fn transport(uni_streams: u32, stream_window: u32, conn_window: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(uni_streams.into());
    t.stream_receive_window(stream_window.into());
    t.receive_window(conn_window.into());
    t.send_window(512 * 1024);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(
        Duration::from_secs(20)
            .try_into()
            .expect("20 s is a valid idle timeout"),
    ));
    // A client sends little but ACKs and control: no probing (see `probe_once`, servers).
    t.mtu_discovery_config(None);
    t
}

/// Path-MTU discovery that costs one probe per connection: packets start at QUIC's safe
/// 1200 bytes; once the handshake is done, one probe of `max` bytes (retried up to three
/// times) tells whether the path carries it, and from then on packets may be that large.
/// If large packets are lost later (a path that changed, a black hole), quinn's black-hole
/// detection drops back to 1200 and probes again after a minute: never silence. The
/// binary search stops at once because the smallest step it takes is the whole range.
pub fn probe_once(t: &mut quinn::TransportConfig, max: u16) {
    const SAFE: u16 = 1200;
    if max <= SAFE {
        t.mtu_discovery_config(None);
        return;
    }
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(max)
        .minimum_change(max - SAFE)
        .interval(Duration::from_secs(600));
    t.mtu_discovery_config(Some(m));
}

/// A server's QUIC config: packets up to `max_packet` bytes where the path carries them
/// (`probe_once`). `ack_delay` non-zero: peers are asked (ACK-frequency extension)
/// to ACK every 10th ack-eliciting packet, or after `ack_delay`, and at once on any gap.
/// Listeners get a packet per delivery interval and send only ACKs, so this halves the
/// datagrams a node handles (needs the patch in vendor/README.md to ask for more than 25 ms).
///
/// Browsers ask for `h3` (WebTransport, see `server::webtransport`): they get the node's
/// identity if a CA signed it, else a short-lived certificate of `web` (its page passes
/// the hash).
pub fn server_config(
    id: &Identity,
    web: Option<&Arc<WebCerts>>,
    ack_delay: Duration,
    max_packet: u16,
) -> Result<quinn::ServerConfig> {
    let signing = provider()
        .key_provider
        .load_private_key(id.key.clone_key())
        .map_err(|e| Error::local(format!("TLS: {e}")))?;
    let certs = ByAlpn {
        native: Arc::new(CertifiedKey::new(id.certs.clone(), signing)),
        web: web.cloned(),
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::local(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    tls.alpn_protocols = vec![ALPN.to_vec(), H3.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::local(format!("TLS: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // A client waiting in the queue of newcomers (see `engine::queue`) sends its Initial
    // again every PTO: a few of them are kept with it, and all waiting hold at most 64 MiB.
    cfg.incoming_buffer_size(16 * 1024)
        .incoming_buffer_size_total(64 << 20);
    // No NEW_TOKEN frames: a token is sealed per connection (two by default) so that a
    // client coming back may skip a Retry; quicast asks for Retry only under a flood, and
    // a join is the dearest thing a node does.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    cfg.validation_token_config(tokens);
    // Clients open one control stream, read as it comes. Three unidirectional streams are
    // granted before anyone is known, since HTTP/3 needs them at once (a browser's control
    // and QPACK streams, see `server::webtransport`); a quicast client opens none but a
    // publisher's frame stream, and any other is stopped unread (`server::session`). 64 KiB
    // is a second of the richest Opus stream, and 128 KiB all of a connection's streams
    // together: what a peer can make the node hold is small.
    let mut t = transport(3, 64 * 1024, 128 * 1024);
    // HTTP/3 datagrams are advertised (WebTransport needs the setting) but never read: a
    // peer's are dropped past a packet's worth, not held.
    t.datagram_receive_buffer_size(Some(1500));
    probe_once(&mut t, max_packet);
    if !ack_delay.is_zero() {
        let mut af = quinn::AckFrequencyConfig::default();
        af.ack_eliciting_threshold(9u32.into())
            .max_ack_delay(Some(ack_delay))
            .reordering_threshold(1u32.into());
        t.ack_frequency_config(Some(af));
    }
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig> {
    client_config_with(trust, true, listener_transport())
}

/// A publisher's transport: it sends audio all the time, so an origin that stops answering
/// (killed, cut off) is known lost after a second and the publisher reconnects, well within
/// what it keeps to send again: the origin that comes back misses nothing.
pub fn publisher_transport() -> quinn::TransportConfig {
    let mut t = listener_transport();
    t.keep_alive_interval(Some(Duration::from_millis(250)));
    t.max_idle_timeout(Some(
        Duration::from_secs(1)
            .try_into()
            .expect("1 s is a valid idle timeout"),
    ));
    t
}

/// A listener's transport: a few segment streams in flight (a subscription or two).
pub fn listener_transport() -> quinn::TransportConfig {
    transport(16, 256 * 1024, 1024 * 1024)
}

/// A relay's config for its parents: room for `streams` streams' segments at once, and a
/// window for all of them (a parent sends every stream the relay carries over one connection).
///
/// A live parent is never silent: it sends audio every delivery interval, and answers the
/// keep-alives this relay sends it four times per `silence`. A link that hears nothing for
/// `silence` is closed, and the relay moves its streams to other parents at once (a
/// listener's link, by contrast, keeps QUIC's slow default: a listener pays per packet).
pub fn upstream_config(
    trust: &Trust,
    streams: u64,
    silence: Duration,
) -> Result<quinn::ClientConfig> {
    let uni = (streams * UPSTREAM_STREAMS_PER_STREAM).clamp(64, 1 << 20) as u32;
    let mut t = transport(uni, 256 * 1024, RELAY_WINDOW as u32);
    t.keep_alive_interval(Some(silence / 4));
    if let Ok(idle) = silence.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    client_config_with(trust, true, t)
}

/// A client's QUIC config; `resume`: whether to keep TLS session tickets and resume with
/// them (cheaper handshakes on reconnects).
pub fn client_config_with(
    trust: &Trust,
    resume: bool,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig> {
    client_config_for(trust, resume, transport, ALPN)
}

/// Like `client_config_with`, offering `alpn` (`H3`: a WebTransport client, served the
/// node's browser certificate when its identity is self-signed).
pub fn client_config_for(
    trust: &Trust,
    resume: bool,
    transport: quinn::TransportConfig,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::local(format!("TLS: {e}")))?;
    let mut tls = match trust {
        Trust::Ca(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in cas {
                roots
                    .add(c.clone())
                    .map_err(|e| Error::local(format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(pins) => {
            if pins.is_empty() {
                return Err(Error::local("no fingerprint to pin"));
            }
            let algs = provider().signature_verification_algorithms;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pins: pins.clone(),
                    algs,
                }))
                .with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    if !resume {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::local(format!("TLS: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    // The server sends each segment on its own stream; a few may be in flight at once.
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
