//! Certificates a browser takes without a CA. WebTransport's `serverCertificateHashes`
//! accepts a self-signed ECDSA P-256 certificate valid for less than 14 days, named by its
//! SHA-256. A node whose identity is self-signed makes such certificates for browsers
//! (ALPN `h3`), and the next one ahead of time: its page lists both hashes, so a page loaded
//! before the node moves to the next one still connects after. Native clients keep the
//! node's long-lived identity (they pin its fingerprint): the certificate is chosen by ALPN.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::{provider, sha256_hex};
use crate::error::{Error, Result};

/// Each certificate's validity: under the 14 days browsers take with a hash.
const LIFETIME: Duration = Duration::from_secs(13 * 24 * 3600);
/// Its validity starts this much before it is made (clocks a little behind the node's).
const BACKDATE: Duration = Duration::from_secs(3600);
/// A certificate is listed for this long before it is served, and served this long: it is
/// let go with three days of its validity left (a connection made just before lives on).
const TURN: Duration = Duration::from_secs(5 * 24 * 3600);

/// The ALPN browsers ask for (WebTransport rides on HTTP/3).
pub const H3: &[u8] = b"h3";

/// One certificate for browsers.
struct Minted {
    key: Arc<CertifiedKey>,
    /// SHA-256 of its DER, lowercase hex.
    hash: String,
    made: SystemTime,
}

/// The certificate served to browsers and the one that comes next.
pub struct WebCerts {
    names: Vec<String>,
    now: RwLock<(Minted, Minted)>,
}

impl std::fmt::Debug for WebCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebCerts")
            .field("hashes", &self.hashes())
            .finish()
    }
}

impl WebCerts {
    /// Certificates for `names` (host names or addresses the browser may dial).
    pub fn new(names: &[String]) -> Result<Arc<WebCerts>> {
        let now = SystemTime::now();
        let pair = (mint(names, now)?, mint(names, now)?);
        Ok(Arc::new(WebCerts {
            names: names.to_vec(),
            now: RwLock::new(pair),
        }))
    }

    /// The hashes a page passes (`serverCertificateHashes`): the served one, then the next.
    pub fn hashes(&self) -> Vec<String> {
        let g = self.now.read().unwrap_or_else(|p| p.into_inner());
        vec![g.0.hash.clone(), g.1.hash.clone()]
    }

    /// Serves the next certificate once the served one has been served `TURN` (and makes
    /// the one after). Returns whether it moved.
    pub fn turn_if_due(&self, now: SystemTime) -> Result<bool> {
        let (due, lost) = {
            let g = self.now.read().unwrap_or_else(|p| p.into_inner());
            // The clock jumped (set at boot, then by NTP): the served one may not be valid
            // now; both are made again.
            let lost = g.0.made > now + BACKDATE
                || now.duration_since(g.0.made).unwrap_or_default() + TURN > LIFETIME + TURN / 2;
            (
                now.duration_since(g.1.made).unwrap_or_default() >= TURN,
                lost,
            )
        };
        if lost {
            let pair = (mint(&self.names, now)?, mint(&self.names, now)?);
            *self.now.write().unwrap_or_else(|p| p.into_inner()) = pair;
            return Ok(true);
        }
        if !due {
            return Ok(false);
        }
        let after = mint(&self.names, now)?;
        let mut g = self.now.write().unwrap_or_else(|p| p.into_inner());
        let next = std::mem::replace(&mut g.1, after);
        g.0 = next;
        Ok(true)
    }

    fn serving(&self) -> Arc<CertifiedKey> {
        self.now
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .key
            .clone()
    }
}

fn mint(names: &[String], now: SystemTime) -> Result<Minted> {
    let bad = |e: rcgen::Error| Error::local(format!("cannot make a certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(bad)?;
    let start = time::OffsetDateTime::from(now - BACKDATE);
    params.not_before = start;
    params.not_after = start + LIFETIME;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    let cert = params.self_signed(&pair).map_err(bad)?;
    let der = cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::local(format!("cannot use a certificate's key: {e}")))?;
    Ok(Minted {
        hash: sha256_hex(&der),
        key: Arc::new(CertifiedKey::new(vec![der], signing)),
        made: now,
    })
}

/// Whether a certificate (DER) names itself as its issuer: self-signed, so a browser takes
/// it only by its hash, and only if it is short-lived (which the node's own, pinned by
/// native clients for years, is not). Read from the DER: the issuer and subject `Name`s of
/// the TBSCertificate, compared byte for byte.
pub fn self_issued(der: &[u8]) -> bool {
    /// One DER element: all of it, and what follows it.
    struct Tlv<'a> {
        whole: &'a [u8],
        body: &'a [u8],
        rest: &'a [u8],
    }
    fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
        let (_, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |l, &d| (l << 8) | d as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let head = b.len() - rest.len();
        Some(Tlv {
            whole: &b[..head + len],
            body: &rest[..len],
            rest: &rest[len..],
        })
    }
    let names = || -> Option<bool> {
        let cert = tlv(der)?.body;
        let mut rest = tlv(cert)?.body;
        // [0] version, if present.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.rest;
        }
        let rest = tlv(rest)?.rest; // serial
        let rest = tlv(rest)?.rest; // signature algorithm
        let issuer = tlv(rest)?;
        let rest = tlv(issuer.rest)?.rest; // validity
        let subject = tlv(rest)?;
        Some(issuer.whole == subject.whole)
    };
    names().unwrap_or(false)
}

/// Picks the certificate by ALPN: browsers (`h3`) get the short-lived one where the node
/// makes them; every other client, and browsers of a node with a CA-signed identity, the
/// node's own.
#[derive(Debug)]
pub(crate) struct ByAlpn {
    pub(crate) native: Arc<CertifiedKey>,
    pub(crate) web: Option<Arc<WebCerts>>,
}

impl ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A client that offers quicast's own ALPN gets it (the server prefers it), and the
        // certificate it pins.
        let offered = |want: &[u8]| hello.alpn().is_some_and(|mut a| a.any(|p| p == want));
        let browser = offered(H3) && !offered(crate::proto::ALPN);
        match &self.web {
            Some(w) if browser => Some(w.serving()),
            _ => Some(self.native.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_certificates_are_short_lived_p256_and_turn_over_to_the_listed_next() {
        let w = WebCerts::new(&["localhost".into()]).unwrap();
        let before = w.hashes();
        assert_eq!(before.len(), 2);
        assert_ne!(before[0], before[1]);
        let der = w.serving().cert[0].clone();
        let (_, x509) = x509_validity(&der);
        assert!(x509 < Duration::from_secs(14 * 24 * 3600), "{x509:?}");
        let t0 = SystemTime::now();
        assert!(!w.turn_if_due(t0 + Duration::from_secs(24 * 3600)).unwrap());
        assert_eq!(w.hashes(), before);
        assert!(w.turn_if_due(t0 + TURN + Duration::from_secs(1)).unwrap());
        let after = w.hashes();
        // The next one is served; a page that listed it still connects.
        assert_eq!(after[0], before[1]);
        assert_ne!(after[1], before[1]);
        assert_eq!(sha256_hex(&w.serving().cert[0]), after[0]);
    }

    #[test]
    fn self_issued_certificates_are_told_from_ca_signed_ones() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let own = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert!(self_issued(own.cert.der()));
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "a CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        assert!(!self_issued(leaf.der()));
        assert!(self_issued(ca.der()));
        // Not a certificate, or cut short: not taken for one.
        assert!(!self_issued(b"not DER"));
        assert!(!self_issued(&own.cert.der()[..100]));
    }

    #[test]
    fn a_clock_that_jumped_makes_both_anew() {
        let w = WebCerts::new(&["localhost".into()]).unwrap();
        let before = w.hashes();
        // A month on (the node started with its clock a month behind).
        let later = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
        assert!(w.turn_if_due(later).unwrap());
        let after = w.hashes();
        assert!(!after.contains(&before[0]) && !after.contains(&before[1]));
    }

    /// The DER of a certificate's validity (`notBefore`, `notAfter` UTCTime) read back: the
    /// span between them.
    fn x509_validity(der: &[u8]) -> (usize, Duration) {
        // UTCTime is tag 0x17, length 13: YYMMDDHHMMSSZ. The first two are the validity.
        let mut times = Vec::new();
        let mut i = 0;
        while i + 15 <= der.len() && times.len() < 2 {
            if der[i] == 0x17 && der[i + 1] == 13 {
                let d = |k: usize| -> u8 {
                    let s = std::str::from_utf8(&der[i + 2 + k..i + 4 + k]).unwrap();
                    s.parse().unwrap()
                };
                let month = time::Month::try_from(d(2)).unwrap();
                let date = time::Date::from_calendar_date(2000 + d(0) as i32, month, d(4)).unwrap();
                let p = date.with_hms(d(6), d(8), d(10)).unwrap();
                times.push(p.assume_utc());
                i += 15;
            } else {
                i += 1;
            }
        }
        assert_eq!(times.len(), 2);
        (times.len(), (times[1] - times[0]).unsigned_abs())
    }
}
