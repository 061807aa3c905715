//! `quicast loadgen`: many real listeners (each its own QUIC connection and TLS handshake)
//! against one node, and what they heard: frames, gaps, latency, join time.
//!
//! Cheap by construction: connections share a few client endpoints, each listener is one
//! task plus its session's three, and per-frame work is a histogram increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use quicast::client::{listen, listen_any, Client, ListenEvent, ListenOptions};
use quicast::node::now_us;
use quicast::proto::{QuicUrl, Role, Start};
use quicast::{Result, Trust};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The node to listen to, or several: each listener starts on the first and moves to
    /// the next when one is lost, silent or draining.
    pub urls: Vec<QuicUrl>,
    /// With several nodes: silence that makes a listener move.
    pub silence: Duration,
    pub trust: Trust,
    pub listeners: usize,
    pub duration: Duration,
    /// Spread connection starts over this long (zero: as fast as possible).
    pub ramp: Duration,
    /// Client endpoints (UDP sockets) to spread connections over.
    pub endpoints: usize,
}

/// Millisecond buckets up to a minute.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..60_001).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn record_us(&self, us: u64) {
        let ms = (us / 1000).min(60_000);
        self.buckets[ms as usize].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The q-quantile in ms (upper edge of its bucket), 0 when empty.
    fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return (ms + 1) as f64;
            }
        }
        60_000.0
    }

    fn max_ms(&self) -> f64 {
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    /// Listeners whose join is settled: audio heard, or failed before any.
    settled: AtomicU64,
    frames: AtomicU64,
    gaps: AtomicU64,
    skips: AtomicU64,
    moves: AtomicU64,
}

impl Totals {
    /// One more listener's join is settled; says so in the log when the last one is (the
    /// benchmark starts its steady window from that line).
    fn settle(&self, listeners: usize) {
        if self.settled.fetch_add(1, Ordering::Relaxed) + 1 == listeners as u64 {
            info!(
                connected = self.connected.load(Ordering::Relaxed),
                "every listener has joined or failed"
            );
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub listeners: usize,
    pub connected: u64,
    pub failed: u64,
    /// Failure reasons and how many listeners each stopped.
    pub failures: Vec<(String, u64)>,
    pub frames: u64,
    /// Frames missing between the first and last each listener heard (from timestamps).
    pub gaps: u64,
    /// Segments the node skipped listeners past: the rest of one (its stream reset), or
    /// whole ones never begun (a jump in segment sequence).
    pub skips: u64,
    /// Origin wall clock to listener, for frames the origin received after the listener joined.
    pub latency_ms: Quantiles,
    /// Connect start to first audio byte.
    pub join_ms: Quantiles,
    /// Each listener's longest wait between two frames (a failover shows here).
    pub stall_ms: Quantiles,
    /// Moves of listeners to another node.
    pub moves: u64,
    pub duration_s: f64,
}

pub async fn run(opts: LoadOptions) -> Result<LoadReport> {
    let url = opts
        .urls
        .first()
        .ok_or_else(|| quicast::Error::local("no node to listen to"))?
        .clone();
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await?
        .next()
        .ok_or_else(|| quicast::Error::local(format!("{} did not resolve", url.host)))?;
    let path = url.stream()?.to_string();
    let endpoints: Vec<Client> = (0..opts.endpoints.max(1))
        .map(|_| {
            // Every simulated listener is a first-time visitor: a full handshake, as the
            // relay would pay for a real crowd (one process's shared ticket store would
            // otherwise resume nearly every connection).
            Client::for_target(&addr, &opts.trust).and_then(|c| c.without_resumption(&opts.trust))
        })
        .collect::<Result<_>>()?;
    let latency = Arc::new(Histogram::new());
    let join = Arc::new(Histogram::new());
    let stall = Arc::new(Histogram::new());
    let totals = Arc::new(Totals::default());
    let failures: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let start = Instant::now();
    let end = start + opts.ramp + opts.duration;
    let mut tasks = Vec::with_capacity(opts.listeners);
    let listeners = opts.listeners;
    for i in 0..opts.listeners {
        let at = start + opts.ramp.mul_f64(i as f64 / opts.listeners.max(1) as f64);
        let client = endpoints[i % endpoints.len()].clone();
        let (urls, path, silence) = (opts.urls.clone(), path.clone(), opts.silence);
        let (latency, join, stall, totals, failures) = (
            latency.clone(),
            join.clone(),
            stall.clone(),
            totals.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let t0 = Instant::now();
            let joined_us = now_us();
            let mut first = true;
            let mut last_at: Option<Instant> = None;
            let mut longest = Duration::ZERO;
            let r = async {
                let mut next_pts: Option<u64> = None;
                let on = |ev: ListenEvent<'_>| {
                    match ev {
                        ListenEvent::Frames(frames) => {
                            let at = Instant::now();
                            if let Some(l) = last_at {
                                longest = longest.max(at - l);
                            }
                            last_at = Some(at);
                            if first {
                                first = false;
                                join.record_us(t0.elapsed().as_micros() as u64);
                                totals.settle(listeners);
                            }
                            let now = now_us();
                            for f in frames {
                                if let Some(expect) = next_pts {
                                    if f.pts > expect && f.duration > 0 {
                                        totals.gaps.fetch_add(
                                            (f.pts - expect) / f.duration as u64,
                                            Ordering::Relaxed,
                                        );
                                    }
                                }
                                next_pts = Some(f.pts + f.duration as u64);
                                if f.wall_us >= joined_us {
                                    latency.record_us(now.saturating_sub(f.wall_us));
                                }
                            }
                            totals
                                .frames
                                .fetch_add(frames.len() as u64, Ordering::Relaxed);
                        }
                        ListenEvent::Skipped(_) => {
                            totals.skips.fetch_add(1, Ordering::Relaxed);
                        }
                        ListenEvent::Missed { count, .. } => {
                            totals.skips.fetch_add(count, Ordering::Relaxed);
                        }
                        ListenEvent::Moved { .. } => {
                            totals.moves.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    Ok(())
                };
                if urls.len() == 1 {
                    let session = client.connect(&urls[0], Role::Listener, "").await?;
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                    listen(&session, &path, Start::Live, Some(end), on).await?;
                } else {
                    let nodes: Vec<_> = urls.iter().map(|u| (client.clone(), u.clone())).collect();
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                    let lo = ListenOptions {
                        path: path.clone(),
                        deadline: Some(end),
                        silence,
                        token: String::new(),
                        low_latency: false,
                    };
                    listen_any(&nodes, &lo, on).await?;
                }
                Ok::<_, quicast::Error>(())
            }
            .await;
            if last_at.is_some() {
                stall.record_us(longest.as_micros() as u64);
            }
            if r.is_err() && first {
                totals.settle(listeners);
            }
            if let Err(e) = r {
                let mut reason = e.to_string();
                reason.truncate(120);
                *failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(reason)
                    .or_default() += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failures: Vec<(String, u64)> = failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .into_iter()
        .collect();
    let failed = failures.iter().map(|(_, n)| n).sum();
    Ok(LoadReport {
        listeners: opts.listeners,
        connected: totals.connected.load(Ordering::Relaxed),
        failed,
        failures,
        frames: totals.frames.load(Ordering::Relaxed),
        gaps: totals.gaps.load(Ordering::Relaxed),
        skips: totals.skips.load(Ordering::Relaxed),
        latency_ms: Quantiles {
            p50: latency.quantile_ms(0.5),
            p99: latency.quantile_ms(0.99),
            max: Some(latency.max_ms()),
        },
        join_ms: Quantiles {
            p50: join.quantile_ms(0.5),
            p99: join.quantile_ms(0.99),
            max: None,
        },
        stall_ms: Quantiles {
            p50: stall.quantile_ms(0.5),
            p99: stall.quantile_ms(0.99),
            max: Some(stall.max_ms()),
        },
        moves: totals.moves.load(Ordering::Relaxed),
        duration_s: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        assert_eq!(h.quantile_ms(0.5), 0.0);
        for ms in 1..=100u64 {
            h.record_us(ms * 1000 - 500);
        }
        assert_eq!(h.quantile_ms(0.5), 50.0);
        assert_eq!(h.quantile_ms(0.99), 99.0);
        assert_eq!(h.max_ms(), 99.5);
    }
}
