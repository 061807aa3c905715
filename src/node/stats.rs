//! Counters an operator (and a test) can read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

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
    /// New connections asked to prove their address first (QUIC Retry).
    pub retries_total: AtomicU64,
    /// New QUIC clients queued behind others for their handshake.
    pub joins_queued_total: AtomicU64,
    /// New QUIC clients taken up with nobody waiting before them.
    pub joins_first_total: AtomicU64,
    /// New QUIC clients deferred: the queue held what the node takes up in `join-queue-ms`,
    /// so their first packet went unanswered (their clients send it again).
    pub joins_deferred_total: AtomicU64,
    /// New QUIC clients waiting in the queue now.
    pub join_queue: AtomicU64,
    /// Peers refused for their token (or its absence): publishers, listeners, relays.
    pub auth_refused_total: AtomicU64,
    /// Subscriptions refused because the stream is not there (nor did it start in time).
    pub not_found_total: AtomicU64,
    /// The latest a subscriber took its wake-up since the load watch last looked, in µs.
    pub fanout_late_us: AtomicU64,
    /// The latest a QUIC thread's timer fired since the load watch last looked, in µs: how
    /// long that thread's work waits for the CPU (see `load::probe`).
    pub thread_late_us: AtomicU64,
    /// When a thread that serves connections was last seen saturated (busy nearly all of
    /// the last second), in µs of `since_epoch`; 0: never.
    pub saturated_at_us: AtomicU64,
    /// How late the node's tasks last ran, in ms (see `load::watch`).
    pub lag_ms: AtomicU64,
    /// Frames taken in (from publishers and sources, or from parents) and their payload
    /// bytes: added once per batch received.
    pub frames_received_total: AtomicU64,
    pub bytes_received_total: AtomicU64,
    /// Frames written to subscribers and the bytes written for them (wire records, Ogg
    /// pages, fMP4 fragments): added in bulk (per pass of the QUIC engine or an HTTP herd).
    pub frames_sent_total: AtomicU64,
    pub bytes_sent_total: AtomicU64,
    pub timings: Timings,
}

/// Distributions, in seconds.
#[derive(Debug)]
pub struct Timings {
    /// Age of audio on arrival here, from the origin's receive stamp (`Frame::wall_us`): on a
    /// relay, one sample per segment taken from a parent. An origin observes none (its
    /// stamp is its own arrival time).
    pub publisher_latency: Histogram,
    /// A subscriber's join, to the first audio written to it: from its connection's start
    /// (QUIC: its hello) or its HTTP request's arrival, for a listener's first subscription;
    /// a later one, or a child relay's, from its subscribe. HLS requests are not timed.
    pub join: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            publisher_latency: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            join: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        }
    }
}

impl Stats {
    /// Audio taken in: `frames` frames of `bytes` payload bytes (one batch).
    pub(crate) fn received(&self, frames: u64, bytes: u64) {
        if frames > 0 {
            self.frames_received_total
                .fetch_add(frames, Ordering::Relaxed);
            self.bytes_received_total
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Audio written to subscribers: `frames` frames in `bytes` bytes (every egress counts
    /// here: a fan-out's tally once per segment, the engine's the same, HLS per response).
    pub(crate) fn sent(&self, frames: u64, bytes: u64) {
        self.frames_sent_total.fetch_add(frames, Ordering::Relaxed);
        self.bytes_sent_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A frame stamped by the origin at `wall_us` (µs since the Unix epoch) arrived now.
    pub(crate) fn arrived(&self, wall_us: u64) {
        if wall_us == 0 {
            return;
        }
        let age = super::now_us().saturating_sub(wall_us);
        self.timings
            .publisher_latency
            .observe(Duration::from_micros(age).as_secs_f64());
    }

    /// A subscriber that began to join at `since` was written its first audio.
    pub(crate) fn joined(&self, since: Instant) {
        self.timings.join.observe(since.elapsed().as_secs_f64());
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}
