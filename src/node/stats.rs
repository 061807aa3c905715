//! Counters an operator (and a test) can read.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub subscriptions: AtomicU64,
    pub subscriptions_total: AtomicU64,
    pub upstream_subscriptions_total: AtomicU64,
    pub skips_total: AtomicU64,
    pub refused_total: AtomicU64,
    pub publishers: AtomicU64,
    pub http_connections: AtomicU64,
    /// Connections refused because the node was overloaded (also in `refused_total`).
    pub shed_total: AtomicU64,
    /// Peers refused for their token (or its absence): publishers, listeners, relays.
    pub auth_refused_total: AtomicU64,
    /// Subscriptions refused because the stream is not there (nor did it start in time).
    pub not_found_total: AtomicU64,
    /// How late the node's tasks last ran, in ms (see `load::watch`).
    pub lag_ms: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}
