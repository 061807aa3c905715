//! TLS for quicast: a server's identity (PEM files, or a generated self-signed ECDSA P-256
//! certificate whose SHA-256 fingerprint is logged), and a client's trust (a CA file, or
//! pinned fingerprints). There is no "accept any certificate" mode.

use std::fmt;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// The SHA-256 of a certificate's DER: 64 hex digits, colons allowed (`AB:CD:...`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b':').collect();
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "fingerprint {s:?} is not 64 hex digits (a SHA-256, colons allowed)"
            ));
        }
        let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *o = (digit(pair[0]) << 4) | digit(pair[1]);
        }
        Ok(Fingerprint(out))
    }
}
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// ring's provider with the TLS 1.3 suites in the order we want: AES-128-GCM with SHA-256
/// first (then ChaCha20-Poly1305). ring's default puts AES-256-GCM-SHA384 first, whose key
/// schedule runs on SHA-384, for which ring has no hardware path here: 10 % of a relay's
/// CPU in a join storm. AES-128 also takes fewer rounds for every packet after. Both are
/// standard TLS 1.3 suites (the first is the one every QUIC stack must have).
pub(crate) fn provider() -> Arc<CryptoProvider> {
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
        Error::local(format!("{}: {e}", e.key))
    }
}

fn file_error(key: &'static str, path: &Path, problem: impl Into<String>) -> FileError {
    FileError {
        key,
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// A PEM file that cannot be read as one.
const BAD_PEM: &str = "not a valid PEM file (a BEGIN/END section is damaged or cut short)";

fn read_file(key: &'static str, path: &Path) -> std::result::Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| {
        file_error(
            key,
            path,
            format!("cannot read it ({})", crate::error::io_reason(&e)),
        )
    })
}

/// The certificates of a PEM file (at least one), each checked to be a certificate.
fn read_certs(
    key: &'static str,
    path: &Path,
) -> std::result::Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read_file(key, path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            tracing::debug!(file = %path.display(), "PEM not read: {e}");
            file_error(key, path, BAD_PEM)
        })?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE in this PEM file"));
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::server::ParsedCertificate::try_from(c).map_err(|e| {
            tracing::debug!(file = %path.display(), "certificate {} not parsed: {e}", i + 1);
            file_error(
                key,
                path,
                format!(
                    "certificate {} in it is not a valid X.509 certificate",
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
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::local(format!("cannot make a certificate: {e}")))?;
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
            Err(e) => {
                tracing::debug!(file = %key.display(), "PEM not read: {e}");
                return Err(file_error("key", key, BAD_PEM));
            }
        };
        let signing = provider()
            .key_provider
            .load_private_key(der.clone_key())
            .map_err(|e| {
                tracing::debug!(file = %key.display(), "private key not usable: {e}");
                file_error(
                    "key",
                    key,
                    "unusable private key: quicast takes ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more",
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
            Err(e) => {
                tracing::debug!(file = %cert.display(), "key not checked against the certificate: {e}");
                return Err(file_error(
                    "cert",
                    cert,
                    "cannot check that the key belongs to this certificate",
                ));
            }
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
    Pinned(Vec<Fingerprint>),
}

impl Trust {
    pub fn from_ca_file(path: &Path) -> std::result::Result<Trust, FileError> {
        let certs = read_certs("ca", path)?;
        let mut roots = rustls::RootCertStore::empty();
        for (i, c) in certs.iter().enumerate() {
            roots.add(c.clone()).map_err(|e| {
                tracing::debug!(file = %path.display(), "CA certificate {} not taken: {e}", i + 1);
                file_error(
                    "ca",
                    path,
                    format!("certificate {} in it cannot serve as a CA", i + 1),
                )
            })?;
        }
        Ok(Trust::Ca(certs))
    }

    pub fn pinned(fingerprints: &[Fingerprint]) -> Trust {
        Trust::Pinned(fingerprints.to_vec())
    }
}

#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pub(crate) pins: Vec<Fingerprint>,
    pub(crate) algs: WebPkiSupportedAlgorithms,
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
        if self.pins.iter().any(|p| p.0.as_slice() == d.as_ref()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let id = Identity::self_signed(&[]).unwrap();
        let a: Fingerprint = id.fingerprint.parse().unwrap();
        let colons: Vec<String> = id
            .fingerprint
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), a);
        assert_eq!(a.to_string(), id.fingerprint);
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        assert!("+f".repeat(32).parse::<Fingerprint>().is_err());
        assert!("é".repeat(32).parse::<Fingerprint>().is_err());
    }
}
