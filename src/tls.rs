//! TLS for quicast: a server's identity (PEM files, or a generated self-signed ECDSA P-256
//! certificate whose SHA-256 fingerprint is logged), and a client's trust (a CA file, or
//! pinned fingerprints). There is no "accept any certificate" mode.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};
use crate::proto::ALPN;

/// ring's provider with the TLS 1.3 suites in the order we want: AES-128-GCM with SHA-256
/// first (then ChaCha20-Poly1305). ring's default puts AES-256-GCM-SHA384 first, whose key
/// schedule runs on SHA-384, for which ring has no hardware path here: 10 % of a relay's
/// CPU in a join storm. AES-128 also takes fewer rounds for every packet after. Both are
/// standard TLS 1.3 suites (the first is the one every QUIC stack must have).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

pub fn sha256_hex(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses a fingerprint given as 64 hex digits, colons allowed (`AB:CD:...`).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(Error::Tls(format!(
            "fingerprint {s:?} is not 32 bytes of hex (SHA-256)"
        )));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| Error::Tls(format!("fingerprint {s:?} is not hex")))?;
    }
    Ok(out)
}

/// The certificates of a PEM file (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in PEM file",
            path.display()
        )));
    }
    Ok(certs)
}

/// A server's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate, lowercase hex: what clients pin.
    pub fingerprint: String,
    pub self_signed: bool,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
            self_signed: self.self_signed,
        }
    }
}

impl Identity {
    /// A fresh self-signed ECDSA P-256 certificate for localhost and the given names.
    pub fn self_signed(extra_names: &[String]) -> Result<Identity> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let ck =
            rcgen::generate_simple_self_signed(names).map_err(|e| Error::Tls(e.to_string()))?;
        let der = ck.cert.der().clone();
        let fingerprint = sha256_hex(&der);
        let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        Ok(Identity {
            certs: vec![der],
            key,
            fingerprint,
            self_signed: true,
        })
    }

    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity> {
        let certs = read_certs(cert)?;
        let key_pem = std::fs::read(key)
            .map_err(|e| Error::Tls(format!("reading {}: {e}", key.display())))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?
            .ok_or_else(|| Error::Tls(format!("{}: no private key in PEM file", key.display())))?;
        let fingerprint = sha256_hex(&certs[0]);
        Ok(Identity {
            certs,
            key,
            fingerprint,
            self_signed: false,
        })
    }
}

/// What a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates signed by these CAs (PEM), checked against the server name as usual.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly these end-entity certificates, by SHA-256 (for self-signed servers).
    Pinned(Vec<[u8; 32]>),
}

impl Trust {
    pub fn from_ca_file(path: &Path) -> Result<Trust> {
        let certs = read_certs(path)?;
        Ok(Trust::Ca(certs))
    }

    pub fn pinned(fingerprints: &[String]) -> Result<Trust> {
        let fps = fingerprints
            .iter()
            .map(|f| parse_fingerprint(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Trust::Pinned(fps))
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if self.pins.iter().any(|p| p.as_slice() == d.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} is not pinned",
                sha256_hex(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Socket buffer size asked of the kernel for every QUIC endpoint.
pub const UDP_BUFFER: usize = 8 << 20;

/// A UDP socket for a QUIC endpoint, with large kernel buffers: a crowd of handshakes arriving
/// at once otherwise overflows the default (~208 KiB) and the lost packets wait out QUIC's
/// retransmission timer (a second, for a handshake).
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
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
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Datagrams a server connection hands the kernel in one send (GSO). quinn keeps a send
/// buffer per connection as large as its largest batch (up to 10 × 1200 bytes), for the
/// connection's life; a listener's steady traffic is one packet at a time, so batching only
/// ever helped its join burst. One: −8 KiB per listener (47 → 37 KiB at 2,000 listeners),
/// CPU and join times unchanged within noise.
const SERVER_SEND_SEGMENTS: usize = 1;

/// A UDP socket that hands quinn at most `segments` datagrams per send.
#[derive(Debug)]
struct FewSegments {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    segments: usize,
}

impl quinn::AsyncUdpSocket for FewSegments {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }
    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments)
    }
    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }
    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

pub fn server_endpoint(
    cfg: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let inner = runtime.wrap_udp_socket(udp_socket(addr)?)?;
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(cfg),
        Arc::new(FewSegments {
            inner,
            segments: SERVER_SEND_SEGMENTS,
        }),
        runtime,
    )
}

pub fn client_endpoint(addr: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(addr)?,
        runtime,
    )
}

/// QUIC transport settings for many low-rate connections: few streams granted, small
/// windows (they bound what a peer can make us buffer), keep-alives so NATs stay open.
pub fn transport(uni_streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(uni_streams.into());
    t.stream_receive_window((256u32 * 1024).into());
    t.receive_window((1024u32 * 1024).into());
    t.send_window(512 * 1024);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(
        Duration::from_secs(20)
            .try_into()
            .expect("20 s is a valid idle timeout"),
    ));
    // Audio packets are far below QUIC's 1200-byte minimum MTU: probing for a larger one only
    // costs packets (most at join, when they are dearest).
    t.mtu_discovery_config(None);
    t
}

/// A server's QUIC config. `ack_delay` non-zero: peers are asked (ACK-frequency extension)
/// to ACK every 10th ack-eliciting packet, or after `ack_delay`, and at once on any gap.
/// Listeners get a packet per delivery interval and send only ACKs, so this halves the
/// datagrams a node handles (needs the patch in vendor/README.md to ask for more than 25 ms).
pub fn server_config(id: &Identity, ack_delay: Duration) -> Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| Error::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Clients open one control stream and (publishers) one frame stream.
    let mut t = transport(1);
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
    client_config_with(trust, true)
}

/// A client's QUIC config; `resume`: whether to keep TLS session tickets and resume with
/// them (cheaper handshakes on reconnects).
pub fn client_config_with(trust: &Trust, resume: bool) -> Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut tls = match trust {
        Trust::Ca(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in cas {
                roots
                    .add(c.clone())
                    .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(pins) => {
            if pins.is_empty() {
                return Err(Error::Tls("no fingerprint to pin".into()));
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
    tls.alpn_protocols = vec![ALPN.to_vec()];
    if !resume {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    // The server sends each segment on its own stream; a few may be in flight at once.
    cfg.transport_config(Arc::new(transport(16)));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let id = Identity::self_signed(&[]).unwrap();
        let a = parse_fingerprint(&id.fingerprint).unwrap();
        let colons: Vec<String> = id
            .fingerprint
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), a);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
