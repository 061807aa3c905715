//! The one server path, for an origin and a relay alike: they differ only in where a
//! stream's segments come from (a publisher through `ingest`, or a parent through
//! `upstream`). The node admits connections, bounds what each peer may cost, subscribes
//! every kind of subscriber the same way, and runs its own background work. It knows
//! nothing of QUIC or HTTP: those are the shells around it (`server`, `ingress`, `egress`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use crate::error::{Error, Kind, Result};
use crate::model::{Announced, Create, PaceMode, Pacing, Registry, StoreConfig};
use crate::proto::{ErrorCode, Role, Start};

mod access;
mod admission;
pub mod audience;
mod auth;
pub mod catalog;
pub mod config;
mod config_values;
mod ingest;
mod load;
mod logs;
mod merge;
mod parents;
mod rendezvous;
mod stats;
mod token;
mod upstream;

pub use access::{Access, ListenRule, Need, Presented};
use admission::Counted;
pub use admission::{HttpAdmission, NotAdmitted, Peer, Subscriber};
pub use auth::{credential, secret_eq};
pub use config::{ConfigError, NodeArgs, NodeConfig};
pub use ingest::{Pace, Publishing};
pub use load::next_overload;
pub use parents::{Member, ParentEvent, ParentLink, ParentSubscription, Parents, SegmentReader};
pub use rendezvous::{hash_order, rendezvous};
pub(crate) use stats::{dec, inc};
pub use stats::{Stats, Timings};
pub use token::{
    mint, parse_when, unix_now, Claims, Grant, KeySet, Refusal, TokenKey, MAX_AHEAD_SECS, MAX_TOKEN,
};

pub(crate) use logs::{Logs, PEER_MISTAKES};
use upstream::Upstream;

pub struct Node {
    pub cfg: NodeConfig,
    pub registry: Arc<Registry>,
    pub stats: Stats,
    upstream: Option<Arc<Upstream>>,
    overloaded: AtomicBool,
    /// Told to go (SIGTERM): takes no newcomers while those it serves move elsewhere.
    draining: AtomicBool,
    /// Waiting subscriptions by listener address (see `Peer`).
    waiting_by_addr: Mutex<HashMap<IpAddr, usize>>,
    /// QUIC connections with nothing to do, by address (see `max-idle-per-addr`).
    idle_by_addr: Mutex<HashMap<IpAddr, u64>>,
    /// Names a relay's parent refused lately, and why: asked again, they are refused at
    /// once rather than asked of the parent again.
    refused: moka::sync::Cache<String, (ErrorCode, String)>,
    /// The node's own background work, stopped with it.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The runtime the node was made in: its own work (fetches from parents, a lost
    /// publisher's grace) runs there, not on the QUIC shard thread whose connection
    /// happened to start it.
    rt: tokio::runtime::Handle,
    /// Who may publish, listen and relay (swapped whole on reload).
    access: std::sync::RwLock<Arc<Access>>,
    /// Bounds on the lines peers can cause in the log.
    pub(crate) logs: Logs,
    /// HLS clients by stream, seen within their hold (see `audience`).
    pub audiences: audience::Audiences,
    /// Streams whose fetch closed for want of subscribers, kept a while to resume (see
    /// `merge::Rests`).
    pub(crate) rests: merge::Rests,
    /// What the parents say is live (a relay's: see `catalog`).
    heard: catalog::Heard,
    /// Where browsers reach this node over WebTransport (set when its QUIC port opens).
    pub web: std::sync::OnceLock<WebDoor>,
}

/// Where browsers reach a node over WebTransport: its QUIC port, and the hashes of the
/// certificates it makes for them (none where a CA signed its identity).
#[derive(Debug)]
pub struct WebDoor {
    pub port: u16,
    /// Changed by a reload that changes the node's certificate.
    pub certs: std::sync::RwLock<Option<Arc<crate::transport::WebCerts>>>,
}

impl WebDoor {
    /// The hashes a page passes (none where a CA signed the node's certificate).
    pub fn hashes(&self) -> Vec<String> {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.hashes())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// The model's settings, from the node's.
pub fn store_config(cfg: &NodeConfig) -> StoreConfig {
    StoreConfig {
        cache_bytes: cfg.cache_mib.bytes(),
        cache_ttl: cfg.cache_ttl_secs.get(),
        window: cfg.window_segments.value(),
        max_lag: cfg.max_lag_segments.value(),
        max_streams: cfg.max_streams.get(),
        max_waiting: cfg.max_waiting.get(),
        pacing: Pacing::new(
            match cfg.deliver_ms {
                Some(d) => PaceMode::Fixed(d.get()),
                None => PaceMode::Auto {
                    budget: cfg.latency_budget_ms.get(),
                },
            },
            cfg.max_packet_bytes.value() as u32,
            cfg.low_latency.iter().map(|a| a.0.clone()).collect(),
        ),
    }
}

impl Node {
    /// A node that runs `cfg`. A relay (`cfg.upstream` not empty) takes its streams through
    /// `parents`, the transport's way to them. Starts the node's background work.
    pub fn new(cfg: NodeConfig, parents: Option<Arc<dyn Parents>>) -> Result<Arc<Node>> {
        let registry = Registry::with_announced(
            store_config(&cfg),
            Announced::new(cfg.announce.iter().map(|a| a.0.clone()).collect()),
        );
        let upstream = match (cfg.is_relay(), parents) {
            (false, _) => None,
            (true, Some(p)) => Some(Upstream::new(p, cfg.parent_choice, cfg.hedge)),
            (true, None) => {
                return Err(Error::local(
                    "a relay needs a way to its parents (the QUIC client)",
                ))
            }
        };
        let access = Access::from_config(&cfg).map_err(|e| Error::local(e.to_string()))?;
        let refused = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(cfg.refusal_memory_secs.get().max(Duration::from_millis(1)))
            .build();
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::local("a node runs inside a Tokio runtime"))?;
        let node = Arc::new(Node {
            rt,
            cfg,
            registry,
            stats: Stats::default(),
            upstream,
            overloaded: Default::default(),
            draining: Default::default(),
            waiting_by_addr: Default::default(),
            idle_by_addr: Default::default(),
            refused,
            tasks: Mutex::default(),
            access: std::sync::RwLock::new(Arc::new(access)),
            logs: Logs::default(),
            audiences: Default::default(),
            rests: Default::default(),
            heard: Default::default(),
            web: Default::default(),
        });
        let mut tasks = Vec::new();
        if !node.cfg.overload_lag_ms.get().is_zero() {
            tasks.push(tokio::spawn(load::watch(Arc::downgrade(&node))).abort_handle());
        }
        if !node.is_relay() {
            tasks.push(tokio::spawn(load::sweep(Arc::downgrade(&node))).abort_handle());
        }
        if let Some(u) = &node.upstream {
            u.reach_all();
            tasks.push(tokio::spawn(catalog::refresh(Arc::downgrade(&node))).abort_handle());
        }
        if let Some(why) = node.cfg.fails_closed() {
            // Said, not warned: a tree with no protected stream is set up just so.
            tracing::info!("{why}");
        }
        *node.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        self.cfg.name()
    }

    /// Measures how late the current thread's timers fire and whether it is saturated, for
    /// the load watch (a QUIC thread, a current-thread runtime, calls this at its start);
    /// ends with the node.
    pub fn probe_load(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(load::probe(Arc::downgrade(self)))
    }

    /// Runs the node's own background work on the node's runtime.
    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }

    /// Who may publish, listen and relay, now.
    pub fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes new access rules (a reload): connections already in keep theirs.
    pub fn set_access(&self, access: Access) {
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }

    /// Counts a refusal for a token (or its absence) and says why in the log.
    /// A bounded number of lines a second (see `Logs`): a crowd of requests without a token
    /// costs the log one line a refusal only while it is small (every one is counted).
    pub fn refused_auth(&self, what: &str, why: &Refusal) {
        inc(&self.stats.auth_refused_total);
        match self.logs.refusals.admit() {
            Some(suppressed) => tracing::warn!(
                side = "downstream",
                reason = %why,
                suppressed,
                "refused {what}: {why}"
            ),
            None => tracing::debug!(side = "downstream", reason = %why, "refused {what}: {why}"),
        }
    }

    /// Whether new connections are being refused to protect the listeners already served.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Sets the overload state (normally the load watch does).
    pub fn set_overloaded(&self, on: bool) {
        self.overloaded.store(on, Ordering::Relaxed);
    }

    /// The node is going away: it takes no newcomers from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The longest delivery interval a live stream here has of its own, or takes to fill a
    /// packet (a relay passes its parent's batches on as they come: about that often).
    pub fn longest_interval(&self) -> Duration {
        self.registry
            .list()
            .iter()
            .filter_map(|s| s.broadcast())
            .map(|b| {
                b.base_interval()
                    .max(b.fill_interval().min(self.cfg.latency_budget_ms.get()))
            })
            .max()
            .unwrap_or_default()
    }

    /// The floor the load watch put under every delivery interval (zero: none).
    pub fn interval_floor(&self) -> Duration {
        self.registry.cfg.pacing.floor()
    }

    /// A relay's parents that are up (not known down, not draining), of how many; `None`
    /// on an origin.
    pub fn parents_up(&self) -> Option<(usize, usize)> {
        self.upstream.as_ref().map(|u| u.parents_up())
    }

    /// Resolutions of a parent's DNS name that failed (0 on an origin).
    pub fn resolve_failures(&self) -> u64 {
        self.upstream.as_ref().map_or(0, |u| u.resolve_failures())
    }

    /// Parents this relay lost or saw drain, each moving its streams (0 on an origin).
    pub fn parent_failovers(&self) -> u64 {
        self.upstream.as_ref().map_or(0, |u| u.failovers())
    }

    pub fn is_relay(&self) -> bool {
        self.upstream.is_some()
    }

    /// Subscribes to `path` for any kind of subscriber: counts it, starts the upstream fetch
    /// on a relay's first subscriber, and waits up to `wait` for the stream to start (the
    /// waiting room; `not_found` after that). Who waited hears the stream from its first packet.
    ///
    /// A name that is not live costs a stranger its own bounds, never the node's: at most
    /// `max-waiting-per-conn` such subscriptions per connection and `max-waiting-per-addr`
    /// per listener address, and a name nobody announced waits `unannounced-wait-secs` at most.
    pub async fn subscribe(
        self: &Arc<Self>,
        path: &str,
        start: Start,
        wait: Duration,
        peer: &Peer,
    ) -> Result<Subscriber> {
        let r = self.subscribe_once(path, start, wait, peer).await;
        if matches!(&r, Err(e) if e.kind() == Kind::NotFound) {
            inc(&self.stats.not_found_total);
        }
        r
    }

    async fn subscribe_once(
        self: &Arc<Self>,
        path: &str,
        start: Start,
        wait: Duration,
        peer: &Peer,
    ) -> Result<Subscriber> {
        if let Some((code, reason)) = self.refused.get(path) {
            return Err(Error::refused(code, reason));
        }
        // A name that is not live here takes a place in the peer's bounds before it costs
        // the node anything; on a relay, only once the parent has had its chance to say the
        // stream is live (a stream live upstream is no waiting room).
        let live = self
            .registry
            .get(path)
            .is_some_and(|s| s.broadcast().is_some());
        let mut permit = if live || self.is_relay() {
            None
        } else {
            Some(self.wait_permit(peer)?)
        };
        let how = if self.is_relay() {
            Create::Asking
        } else {
            Create::Waiting
        };
        let (mut guard, created) = self.registry.subscribe(path, how)?;
        guard.count_as(peer.egress);
        // A listener's first subscription joins from its connection's start (or request's
        // arrival); a later one, or a child relay's (its connection serves many), from now.
        let first = !peer.subscribed.swap(true, Ordering::AcqRel);
        let joining = if first && peer.role != Role::Relay {
            peer.since
        } else {
            Instant::now()
        };
        inc(&self.stats.subscriptions);
        inc(&self.stats.subscriptions_total);
        let counted = Counted(self.clone());
        if created {
            if let Some(up) = &self.upstream {
                up.lead(self.clone(), guard.slot.clone(), start);
            }
        }
        let waited = guard.slot.broadcast().is_none();
        if waited {
            debug!("stream has not started: waiting room");
        }
        // On an origin, a subscriber that asked before the stream was live is heard from its
        // start, even if the publisher began between that look and this one (it is not put
        // at the live edge of a broadcast it was waiting for).
        let waited = waited || (!live && !self.is_relay());
        let wait = if guard.slot.announced {
            wait
        } else {
            wait.min(self.cfg.unannounced_wait_secs.get())
        };
        let deadline = tokio::time::Instant::now() + wait;
        let not_found = |_| {
            Error::new(
                Kind::NotFound,
                format!("stream {path} did not start within {} s", wait.as_secs()),
            )
        };
        let b = match guard.slot.broadcast() {
            Some(b) => b,
            None => {
                let answered = if permit.is_none() {
                    let probe = self.cfg.probe_ms.get().min(wait);
                    tokio::time::timeout(probe, guard.slot.wait_broadcast())
                        .await
                        .ok()
                } else {
                    None
                };
                match answered {
                    Some(b) => b?,
                    None => {
                        if permit.is_none() {
                            permit = Some(self.wait_permit(peer)?);
                        }
                        tokio::time::timeout_at(deadline, guard.slot.wait_broadcast())
                            .await
                            .map_err(not_found)??
                    }
                }
            }
        };
        drop(permit);
        // The rule the stream came with (a relay learns it only now, from its parent).
        self.may_have(peer, path, &b)?;
        let cursor = if waited && start == Start::Live {
            b.cursor_from_first()
        } else {
            b.cursor(start)
        };
        Ok(Subscriber {
            cursor,
            joining,
            _guard: guard,
            _counted: counted,
        })
    }

    /// Whether `peer` may have broadcast `b` of `path`: this node's policy and the rule the
    /// broadcast brings, both (refusals counted and logged as at the door).
    pub fn may_have(&self, peer: &Peer, path: &str, b: &crate::model::Broadcast) -> Result<()> {
        let access = self.access();
        access
            .may_listen_to(&peer.presented, path, peer.role == Role::Relay, &b.access())
            .map_err(|why| {
                self.refused_auth(&format!("a listener of {path}"), &why);
                why.into_error()
            })
    }

    /// Whether `addr` holds more idle connections than `max-idle-per-addr`.
    pub fn idle_over(&self, addr: IpAddr) -> bool {
        let m = self.idle_by_addr.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&addr).copied().unwrap_or(0) > self.cfg.max_idle_per_addr.value()
    }

    /// A connection from `addr` has nothing to do (`true`) or something again (`false`).
    pub fn set_idle(&self, addr: IpAddr, idle: bool) {
        let mut m = self.idle_by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if idle {
            *m.entry(addr).or_default() += 1;
        } else if let Some(n) = m.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&addr);
            }
        }
    }

    /// Remembers for a while that the parent refused `path` (see `Node::refused`).
    pub(crate) fn remember_refusal(&self, path: &str, code: ErrorCode, reason: &str) {
        self.refused
            .insert(path.to_string(), (code, reason.to_string()));
    }

    /// Subscriptions a connection of `role` may hold.
    pub fn max_subscriptions(&self, role: Role) -> usize {
        if role == Role::Relay {
            self.cfg.max_streams.get() + self.cfg.max_waiting.get()
        } else {
            self.cfg.max_subscriptions_per_conn.get()
        }
    }

    /// How many subscriptions this node has served for `path` (child relays included).
    pub fn subscriptions_for(&self, path: &str) -> u64 {
        self.registry
            .get(path)
            .map(|s| s.subscriptions_total.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Now, as the origin stamps frames: microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
