//! Parents found by DNS: a listed parent whose host is a name that resolves to several
//! addresses is that many parents, one per address, each named `IP:PORT` (so that every
//! relay that gets the same records ranks them alike in the rendezvous hash), all verified
//! by TLS against the name. A name with one address stays one parent named `HOST:PORT`, and
//! a literal address is itself, as before.
//!
//! Each name is resolved again when its records' TTL says (clamped to `MIN_TTL..MAX_TTL`),
//! through the system's resolver configuration (`/etc/resolv.conf`: `ip netns exec` gives
//! each namespace its own), so a tier scales by a DNS change: a Kubernetes headless Service,
//! Consul, a zone file. A resolution that fails keeps the last good addresses (counted; a
//! name never resolved is one parent named `HOST:PORT`, found at connection as before). At
//! most `MAX_ADDRESSES` of a name's addresses are taken (the lowest, so every relay takes
//! the same).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Kind};
use crate::node::Member;
use crate::proto::QuicUrl;

/// The most addresses taken from one name.
pub const MAX_ADDRESSES: usize = 64;
/// Bounds on how long a resolution is kept, whatever the records' TTL says.
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Backoff between attempts after a failed resolution.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// What a listed parent is known as now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Itself, found at connection: a literal address, or a name that failed to resolve
    /// before it ever had addresses.
    Listed,
    /// A name whose first resolution is under way: no parent yet.
    Pending,
    /// A name's addresses, as last resolved.
    Addrs(Vec<IpAddr>),
}

/// The parents `urls` make, `resolved[i]` saying what `urls[i]` is now (`Listed` if
/// missing). In listed order, a name's addresses in the order given (sorted: see `take`); a
/// parent named twice counts once.
pub fn members(urls: &[QuicUrl], resolved: &[Resolution]) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let each: Vec<Member> = match resolved.get(i).unwrap_or(&Resolution::Listed) {
            Resolution::Addrs(ips) if ips.len() > 1 => ips
                .iter()
                .map(|ip| {
                    let addr = SocketAddr::new(*ip, url.port);
                    Member {
                        name: addr.to_string(),
                        weight: url.weight.max(1),
                        url: url.clone(),
                        addr: Some(addr),
                    }
                })
                .collect(),
            Resolution::Pending => Vec::new(),
            _ => vec![Member::listed(url)],
        };
        for m in each {
            if !out.iter().any(|o| o.name == m.name) {
                out.push(m);
            }
        }
    }
    out
}

/// A name's addresses as taken: sorted, without repeats, at most `MAX_ADDRESSES` (and
/// whether some were left out).
pub fn take(ips: impl IntoIterator<Item = IpAddr>) -> (Vec<IpAddr>, bool) {
    let mut v: Vec<IpAddr> = ips.into_iter().collect();
    v.sort();
    v.dedup();
    let cut = v.len() > MAX_ADDRESSES;
    v.truncate(MAX_ADDRESSES);
    (v, cut)
}

/// How long a resolution valid until `until` is kept, from `now`.
pub fn keep_for(until: Instant, now: Instant) -> Duration {
    until.saturating_duration_since(now).clamp(MIN_TTL, MAX_TTL)
}

/// Whether a listed parent's host is a name to resolve (not a literal address).
pub fn is_name(url: &QuicUrl) -> bool {
    url.host.parse::<IpAddr>().is_err()
}

/// Where the parents are published, each time they change.
pub type MembersTx = Arc<watch::Sender<Arc<Vec<Member>>>>;

/// The resolution of a relay's listed parents, kept up to date by one task per name: the
/// parents they make are published on `tx`. Its tasks end when it is dropped.
pub struct Dns {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Dns {
    /// The parents `urls` make now, and (if any is a name) the resolution that keeps
    /// them up to date on `tx`, started with the system's resolver configuration. Without
    /// one to read (a warning), each name is one parent found at connection, as a relay
    /// always did.
    pub fn start(urls: &[QuicUrl], failures: Arc<AtomicU64>) -> (MembersTx, Option<Dns>) {
        let listed = || Arc::new(watch::Sender::new(Arc::new(members(urls, &[]))));
        if !urls.iter().any(is_name) {
            return (listed(), None);
        }
        let resolver = match TokioResolver::builder_tokio() {
            Ok(b) => Arc::new(b.build()),
            Err(e) => {
                warn!(
                    side = "internal",
                    "cannot read the system's DNS configuration ({e}): each parent's name is \
                     one parent, resolved as it is connected to"
                );
                return (listed(), None);
            }
        };
        // A name is no parent until its first answer (or failure) says what it is.
        let now: Vec<Resolution> = urls
            .iter()
            .map(|u| {
                if is_name(u) {
                    Resolution::Pending
                } else {
                    Resolution::Listed
                }
            })
            .collect();
        let tx = Arc::new(watch::Sender::new(Arc::new(members(urls, &now))));
        let resolved = Arc::new(Mutex::new(now));
        let urls: Arc<Vec<QuicUrl>> = Arc::new(urls.to_vec());
        let tasks = (0..urls.len())
            .filter(|&i| is_name(&urls[i]))
            .map(|i| {
                let follow = Follow {
                    urls: urls.clone(),
                    i,
                    resolver: resolver.clone(),
                    resolved: resolved.clone(),
                    tx: tx.clone(),
                    failures: failures.clone(),
                };
                tokio::spawn(follow.run()).abort_handle()
            })
            .collect();
        (tx, Some(Dns { tasks }))
    }
}

/// One listed name, resolved again and again.
struct Follow {
    urls: Arc<Vec<QuicUrl>>,
    i: usize,
    resolver: Arc<TokioResolver>,
    resolved: Arc<Mutex<Vec<Resolution>>>,
    tx: MembersTx,
    failures: Arc<AtomicU64>,
}

impl Follow {
    async fn run(self) {
        let url = &self.urls[self.i];
        let mut retry = FIRST_RETRY;
        let mut had: Option<Vec<IpAddr>> = None;
        loop {
            let wait = match self.resolve(url).await {
                Ok((ips, ttl)) => {
                    retry = FIRST_RETRY;
                    if had.as_ref() != Some(&ips) {
                        info!(
                            parent = %url.authority(),
                            addresses = ?ips,
                            ttl_secs = ttl.as_secs(),
                            "parent's name resolved"
                        );
                        had = Some(ips.clone());
                        self.publish(Resolution::Addrs(ips));
                    }
                    ttl
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        side = %e.side(),
                        kind = ?e.kind(),
                        parent = %url.authority(),
                        retry_secs = retry.as_secs(),
                        "{e}; the parents it had are kept"
                    );
                    if had.is_none() {
                        // Never resolved: the name is one parent, found at connection (and
                        // not reached, as /readyz says, while it has no address).
                        self.publish(Resolution::Listed);
                    }
                    let w = retry;
                    retry = (retry * 2).min(LAST_RETRY);
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The name's addresses now, and how long to keep them.
    async fn resolve(&self, url: &QuicUrl) -> Result<(Vec<IpAddr>, Duration), Error> {
        let fail = |why: String| {
            Error::new(
                Kind::Upstream,
                format!("cannot resolve {}: {why}", url.host),
            )
            .upstream()
        };
        let lookup = self
            .resolver
            .lookup_ip(url.host.as_str())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let ttl = keep_for(lookup.valid_until(), Instant::now());
        let (ips, cut) = take(lookup.iter());
        if ips.is_empty() {
            return Err(fail("no addresses".into()));
        }
        if cut {
            warn!(
                parent = %url.authority(),
                "the name has more than {MAX_ADDRESSES} addresses: the lowest {MAX_ADDRESSES} are parents, the rest left out"
            );
        }
        Ok((ips, ttl))
    }

    fn publish(&self, what: Resolution) {
        let now = {
            let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = r.get_mut(self.i) {
                *slot = what;
            }
            members(&self.urls, &r)
        };
        self.tx.send_if_modified(|m| {
            if **m == now {
                return false;
            }
            *m = Arc::new(now);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> QuicUrl {
        QuicUrl::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_with_several_addresses_is_a_parent_per_address() {
        let urls = [
            url("quic://mids.example:4434?weight=2"),
            url("quic://10.0.0.9:4433"),
        ];
        let m = members(
            &urls,
            &[
                Resolution::Addrs(vec![ip("10.0.0.1"), ip("10.0.0.2")]),
                Resolution::Listed,
            ],
        );
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.1:4434", "10.0.0.2:4434", "10.0.0.9:4433"]);
        assert_eq!(m[0].url.host, "mids.example", "TLS verifies the name");
        assert_eq!(m[1].addr, Some("10.0.0.2:4434".parse().unwrap()));
        assert_eq!((m[0].weight, m[2].weight), (2, 1));
        assert_eq!(m[2].addr, None);
    }

    #[test]
    fn one_address_a_literal_or_a_failed_name_is_the_parent_as_listed() {
        let urls = [
            url("quic://origin.example:4433"),
            url("quic://mids.example:4434"),
            url("quic://10.0.0.7:4433"),
            url("quic://edges.example:4435"),
        ];
        let m = members(
            &urls,
            &[
                Resolution::Addrs(vec![ip("10.0.0.1")]),
                Resolution::Listed,
                Resolution::Listed,
                Resolution::Pending,
            ],
        );
        assert_eq!(
            m,
            vec![
                Member::listed(&urls[0]),
                Member::listed(&urls[1]),
                Member::listed(&urls[2])
            ],
            "a name not yet answered is no parent yet"
        );
        // A parent named twice (a name's address listed too) counts once.
        let m = members(
            &[url("quic://a.example:1"), url("quic://10.0.0.1:1")],
            &[
                Resolution::Addrs(vec![ip("10.0.0.1"), ip("10.0.0.2")]),
                Resolution::Listed,
            ],
        );
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn addresses_are_sorted_deduplicated_and_bounded() {
        let (v, cut) = take([ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(v, [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(!cut);
        let many = (0..100u8).rev().map(|i| IpAddr::from([10, 0, 1, i]));
        let (v, cut) = take(many);
        assert!(cut);
        assert_eq!(v.len(), MAX_ADDRESSES);
        assert_eq!(
            v[0],
            ip("10.0.1.0"),
            "the lowest are kept, as on every relay"
        );
    }

    #[test]
    fn ttls_are_clamped() {
        let now = Instant::now();
        assert_eq!(keep_for(now, now), MIN_TTL);
        assert_eq!(
            keep_for(now + Duration::from_secs(30), now),
            Duration::from_secs(30)
        );
        assert_eq!(keep_for(now + Duration::from_secs(86_400), now), MAX_TTL);
    }
}
