//! Admission: whether the node takes a newcomer (connection limits, overload, draining),
//! who a subscriber is (`Peer`) and the bounds on its waiting subscriptions, and the
//! places in the node's counts that connections and subscriptions hold until dropped.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{dec, inc, Node, Presented};
use crate::error::{Error, Kind, Result};
use crate::model::{Cursor, Egress, SubscriberGuard};
use crate::proto::Role;

impl Node {
    /// A new HTTP connection's place in the node's counts, if it may be taken: as `admit`,
    /// and within the descriptors the process may open (`max-http-connections`).
    pub fn admit_http(self: &Arc<Self>) -> Option<HttpAdmission> {
        let max = self
            .cfg
            .max_http_connections
            .map_or(u64::MAX, |m| m.value());
        if self.stats.http_connections.load(Ordering::Relaxed) >= max {
            inc(&self.stats.refused_total);
            return None;
        }
        if !self.admit() {
            return None;
        }
        inc(&self.stats.http_connections);
        Some(HttpAdmission(self.clone()))
    }

    /// Whether a new connection (QUIC or HTTP) may be taken: under the connection limit, not
    /// overloaded, not draining. Counts a refusal.
    pub fn admit(&self) -> bool {
        self.admission().is_ok()
    }

    /// As `admit`, saying why not.
    pub fn admission(&self) -> std::result::Result<(), NotAdmitted> {
        let open = self.stats.connections.load(Ordering::Relaxed)
            + self.stats.http_connections.load(Ordering::Relaxed);
        let no = if self.is_draining() {
            NotAdmitted::Draining
        } else if open >= self.cfg.max_connections.value() {
            NotAdmitted::Full
        } else if self.overloaded() {
            inc(&self.stats.shed_total);
            NotAdmitted::Overloaded
        } else {
            return Ok(());
        };
        inc(&self.stats.refused_total);
        Err(no)
    }

    /// A place for one more subscription to a stream that is not live, within `peer`'s bounds.
    pub(super) fn wait_permit(self: &Arc<Self>, peer: &Peer) -> Result<WaitPermit> {
        let held = peer.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = WaitPermit {
            node: self.clone(),
            peer: peer.clone(),
        };
        if peer.role == Role::Relay {
            return Ok(permit);
        }
        let per_addr = {
            let mut m = self
                .waiting_by_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = m.entry(peer.addr).or_default();
            *n += 1;
            *n
        };
        if held >= self.cfg.max_waiting_per_conn.get() {
            inc(&self.stats.refused_total);
            return Err(Error::new(
                Kind::Overloaded,
                format!(
                    "at most {} subscriptions per connection to streams that are not live",
                    self.cfg.max_waiting_per_conn
                ),
            ));
        }
        if per_addr > self.cfg.max_waiting_per_addr.get() {
            inc(&self.stats.refused_total);
            return Err(Error::new(
                Kind::Overloaded,
                format!(
                    "at most {} subscriptions from one address to streams that are not live",
                    self.cfg.max_waiting_per_addr
                ),
            ));
        }
        Ok(permit)
    }
}

/// Who subscribes, for the bounds on subscriptions to streams that are not live: per
/// connection, and per address for listeners (a child relay carries its own listeners'
/// waiting rooms, bounded by its own node). Made when a connection has said hello, or an
/// HTTP request arrived.
#[derive(Clone, Debug)]
pub struct Peer {
    pub role: Role,
    pub addr: IpAddr,
    /// How its subscriptions are served (counted by kind): a QUIC listener or child relay
    /// by its role; the HTTP shells say theirs (`Peer::served_as`).
    pub egress: Egress,
    /// When it came: its subscriptions' joins are timed from here (the first one's).
    pub since: Instant,
    /// Whether it has subscribed yet.
    pub(super) subscribed: Arc<AtomicBool>,
    /// Waiting subscriptions this connection holds now.
    pub waiting: Arc<AtomicUsize>,
    /// The token it showed, checked once as it came: each stream it subscribes to is let
    /// in by the rule the stream brings as well as this node's own.
    pub presented: Arc<Presented>,
}

impl Peer {
    pub fn new(role: Role, addr: IpAddr) -> Peer {
        Peer {
            role,
            addr,
            egress: if role == Role::Relay {
                Egress::Relay
            } else {
                Egress::Quic
            },
            since: Instant::now(),
            subscribed: Arc::default(),
            waiting: Arc::default(),
            presented: Arc::new(Presented::None),
        }
    }

    /// The same peer, having shown `presented`.
    pub fn presenting(self, presented: Presented) -> Peer {
        Peer {
            presented: Arc::new(presented),
            ..self
        }
    }

    /// The same peer, its subscriptions served as `egress`.
    pub fn served_as(&self, egress: Egress) -> Peer {
        Peer {
            egress,
            ..self.clone()
        }
    }
}

/// One waiting subscription's place in its peer's bounds; given back when it goes.
pub(super) struct WaitPermit {
    node: Arc<Node>,
    peer: Peer,
}

impl Drop for WaitPermit {
    fn drop(&mut self) {
        self.peer.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.peer.role != Role::Relay {
            let mut m = self
                .node
                .waiting_by_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&self.peer.addr) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.peer.addr);
                }
            }
        }
    }
}

/// A subscription on this node: where it is in the broadcast, and its place in the counts.
pub struct Subscriber {
    pub cursor: Cursor,
    /// When it began to join (see `Peer::since`): its first audio ends the join.
    pub joining: Instant,
    pub(super) _guard: SubscriberGuard,
    pub(super) _counted: Counted,
}

impl Subscriber {
    /// The stream's slot.
    pub fn slot(&self) -> &Arc<crate::model::Slot> {
        &self._guard.slot
    }

    /// No longer counted among the stream's listeners by egress (a request in flight that
    /// is not a listener of its own: see `audience`).
    pub fn uncount(&mut self) {
        self._guard.uncount();
    }
}

pub(super) struct Counted(pub(super) Arc<Node>);

/// An HTTP connection's place in the node's counts: given back when it is dropped, however
/// the connection ends (its last request answered, an error, a panic as its task unwinds,
/// its listener leaving the HTTP Ogg writer), so nothing can leak the node's admission.
pub struct HttpAdmission(Arc<Node>);

impl Drop for HttpAdmission {
    fn drop(&mut self) {
        dec(&self.0.stats.http_connections);
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        dec(&self.0.stats.subscriptions);
    }
}

/// Why a newcomer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// The node is going away (it told its alternates).
    Draining,
    /// At `max-connections`.
    Full,
    /// Its listeners would suffer (the load watch says so): it sheds newcomers.
    Overloaded,
}

impl NotAdmitted {
    /// What it says, and when a client may come back (its own jitter added).
    pub fn reason(self) -> (&'static str, u32) {
        match self {
            NotAdmitted::Draining => ("draining", 0),
            NotAdmitted::Full => ("full", 10),
            NotAdmitted::Overloaded => ("overloaded", 5),
        }
    }
}
