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
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b':').collect();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::Tls(format!(
            "fingerprint {s:?} is not 64 hex digits (a SHA-256, colons allowed)"
        )));
    }
    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

/// A TLS file that cannot be used: which setting named it, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FileError {
    /// The configuration key (and flag) that named the file: `cert`, `key` or `ca`.
    pub key: &'static str,
    pub path: String,
    pub problem: String,
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Self {
        Error::Tls(format!("{}: {e}", e.key))
    }
}

fn file_error(key: &'static str, path: &Path, problem: impl Into<String>) -> FileError {
    FileError {
        key,
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn read_file(key: &'static str, path: &Path) -> std::result::Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot read it: {e}")))
}

/// The certificates of a PEM file (at least one), each checked to be a certificate.
fn read_certs(
    key: &'static str,
    path: &Path,
) -> std::result::Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read_file(key, path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| file_error(key, path, format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE in this PEM file"));
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::server::ParsedCertificate::try_from(c).map_err(|e| {
            file_error(
                key,
                path,
                format!(
                    "certificate {} is not a valid X.509 certificate: {e}",
                    i + 1
                ),
            )
        })?;
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

    /// A certificate chain and its key from PEM files, checked as the server will use them:
    /// each error names the file and says what is wrong with it.
    pub fn from_pem_files(cert: &Path, key: &Path) -> std::result::Result<Identity, FileError> {
        let certs = read_certs("cert", cert)?;
        let key_pem = read_file("key", key)?;
        let der = match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
            Ok(Some(k)) => k,
            Ok(None) if String::from_utf8_lossy(&key_pem).contains("ENCRYPTED") => {
                return Err(file_error(
                    "key",
                    key,
                    "the key is encrypted; quicast needs it unencrypted (openssl pkey -in KEY -out PLAIN)",
                ))
            }
            Ok(None) => return Err(file_error("key", key, "no PRIVATE KEY in this PEM file")),
            Err(e) => return Err(file_error("key", key, format!("not a valid PEM file: {e}"))),
        };
        let signing = provider()
            .key_provider
            .load_private_key(der.clone_key())
            .map_err(|e| {
                file_error(
                    "key",
                    key,
                    format!("unusable private key ({e}): quicast takes ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more"),
                )
            })?;
        match rustls::sign::CertifiedKey::new(certs.clone(), signing).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(file_error(
                    "key",
                    key,
                    format!(
                        "this key does not belong to the certificate in {}",
                        cert.display()
                    ),
                ))
            }
            Err(e) => return Err(file_error("cert", cert, e.to_string())),
        }
        let fingerprint = sha256_hex(&certs[0]);
        Ok(Identity {
            certs,
            key: der,
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
    pub fn from_ca_file(path: &Path) -> std::result::Result<Trust, FileError> {
        let certs = read_certs("ca", path)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots
                .add(c.clone())
                .map_err(|e| file_error("ca", path, format!("not a usable CA certificate: {e}")))?;
        }
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
    // Clients open one control stream, read as it comes; a publisher is granted its one
    // frame stream after its hello, nobody else any (see `server::handle_connection`). 64 KiB
    // is a second of the richest Opus stream: what a peer can make the node hold is small.
    let mut t = transport(0, 64 * 1024, 128 * 1024);
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

/// A listener's transport: a few segment streams in flight (a subscription or two).
pub fn listener_transport() -> quinn::TransportConfig {
    transport(16, 256 * 1024, 1024 * 1024)
}

/// A relay's config for its parents: room for `streams` streams' segments at once, and a
/// window for all of them (a parent sends every stream the relay carries over one connection).
pub fn upstream_config(trust: &Trust, streams: u64) -> Result<quinn::ClientConfig> {
    let uni = (streams * UPSTREAM_STREAMS_PER_STREAM).clamp(64, 1 << 20) as u32;
    client_config_with(trust, true, transport(uni, 256 * 1024, RELAY_WINDOW as u32))
}

/// A client's QUIC config; `resume`: whether to keep TLS session tickets and resume with
/// them (cheaper handshakes on reconnects).
pub fn client_config_with(
    trust: &Trust,
    resume: bool,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig> {
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
    cfg.transport_config(Arc::new(transport));
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
