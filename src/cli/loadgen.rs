//! `quicast loadgen`: many real listeners (each its own QUIC connection and TLS handshake)
//! against one node, and what they heard: frames, gaps, latency, join time.
//!
//! Cheap by construction: against one node, listeners run on the engine (see
//! `loadgen_engine`: a thread per client socket drives thousands of connections, no task
//! per listener); against several (failover), on the client library. Per-frame work is a
//! histogram increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use quicast::client::{listen_any, Client, ListenEvent, ListenOptions};
use quicast::node::now_us;
use quicast::proto::QuicUrl;
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
    /// Listeners speak WebTransport (ALPN `h3`, a CONNECT session) as browsers do, not the
    /// native protocol; one node only.
    pub webtransport: bool,
}

/// Millisecond buckets up to a minute.
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: (0..60_001).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn record_us(&self, us: u64) {
        let ms = (us / 1000).min(60_000);
        self.buckets[ms as usize].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The q-quantile in ms (upper edge of its bucket), 0 when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
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

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) connected: AtomicU64,
    /// Listeners whose join is settled: audio heard, or failed before any.
    settled: AtomicU64,
    /// Listeners that heard audio (a frame or more).
    heard: AtomicU64,
    frames: AtomicU64,
    gaps: AtomicU64,
    skips: AtomicU64,
    moves: AtomicU64,
    /// Joins refused before a handshake (CONNECTION_REFUSED), unanswered until QUIC gave
    /// up (timed out), and tries again after either.
    pub(crate) refused: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) retried: AtomicU64,
    /// Origin wall clock (µs) from which the join storm is over: every listener settled,
    /// one second ago (0: not yet).
    steady_from_us: AtomicU64,
}

impl Totals {
    /// One more listener's join is settled; says so in the log when the last one is (the
    /// benchmark starts its steady window from that line).
    fn settle(&self, listeners: usize) {
        if self.settled.fetch_add(1, Ordering::Relaxed) + 1 == listeners as u64 {
            self.steady_from_us
                .store(now_us() + STEADY_AFTER_US, Ordering::Relaxed);
            info!(
                connected = self.connected.load(Ordering::Relaxed),
                "every listener has joined or failed"
            );
        }
    }
}

/// The steady state starts this long (µs) after the last listener settled: frames sent
/// before then may have queued behind the joins.
const STEADY_AFTER_US: u64 = 1_000_000;

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
    /// Listeners that heard audio: a frame or more (all of them, in a run that went well).
    pub heard: u64,
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
    /// The same for frames the origin received a second or more after every listener
    /// settled: the steady state, without the join storm (none: the run ended first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_latency_ms: Option<Quantiles>,
    /// Connect start to first audio byte.
    pub join_ms: Quantiles,
    /// Each listener's longest wait between two frames (a failover shows here).
    pub stall_ms: Quantiles,
    /// Moves of listeners to another node.
    pub moves: u64,
    /// Join attempts refused by the node before a handshake (each tried again, jittered).
    pub refused: u64,
    /// Join attempts the node never answered until QUIC gave up (each tried again).
    pub timed_out: u64,
    /// Join attempts made again after a refusal or a time-out.
    pub retried: u64,
    pub duration_s: f64,
}

/// What every listener of a run adds to: histograms and totals.
pub(crate) struct Stats {
    latency: Histogram,
    steady: Histogram,
    join: Histogram,
    stall: Histogram,
    pub(crate) totals: Totals,
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    listeners: usize,
}

impl Stats {
    fn new(listeners: usize) -> Stats {
        Stats {
            latency: Histogram::new(),
            steady: Histogram::new(),
            join: Histogram::new(),
            stall: Histogram::new(),
            totals: Totals::default(),
            failures: Mutex::default(),
            listeners,
        }
    }

    fn report(&self, duration: Duration) -> LoadReport {
        let failures: Vec<(String, u64)> = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .into_iter()
            .collect();
        let failed = failures.iter().map(|(_, n)| n).sum();
        let q = |h: &Histogram, max: bool| Quantiles {
            p50: h.quantile_ms(0.5),
            p99: h.quantile_ms(0.99),
            max: max.then(|| h.max_ms()),
        };
        let t = &self.totals;
        LoadReport {
            listeners: self.listeners,
            connected: t.connected.load(Ordering::Relaxed),
            heard: t.heard.load(Ordering::Relaxed),
            failed,
            failures,
            frames: t.frames.load(Ordering::Relaxed),
            gaps: t.gaps.load(Ordering::Relaxed),
            skips: t.skips.load(Ordering::Relaxed),
            latency_ms: q(&self.latency, true),
            steady_latency_ms: (self.steady.count() > 0).then(|| q(&self.steady, true)),
            join_ms: q(&self.join, false),
            stall_ms: q(&self.stall, true),
            moves: t.moves.load(Ordering::Relaxed),
            refused: t.refused.load(Ordering::Relaxed),
            timed_out: t.timed_out.load(Ordering::Relaxed),
            retried: t.retried.load(Ordering::Relaxed),
            duration_s: duration.as_secs_f64(),
        }
    }
}

/// One listener's account of what it heard.
pub(crate) struct Ear<'a> {
    stats: &'a Stats,
    t0: std::time::Instant,
    joined_us: u64,
    first: bool,
    last_at: Option<std::time::Instant>,
    longest: Duration,
    next_pts: Option<u64>,
}

impl<'a> Ear<'a> {
    /// A listener starting now.
    pub(crate) fn new(stats: &'a Stats) -> Ear<'a> {
        Ear {
            stats,
            t0: std::time::Instant::now(),
            joined_us: now_us(),
            first: true,
            last_at: None,
            longest: Duration::ZERO,
            next_pts: None,
        }
    }

    pub(crate) fn frames(&mut self, frames: &[quicast::proto::Frame]) {
        let (stats, totals) = (self.stats, &self.stats.totals);
        let at = std::time::Instant::now();
        if let Some(l) = self.last_at {
            self.longest = self.longest.max(at - l);
        }
        self.last_at = Some(at);
        if self.first {
            self.first = false;
            stats.join.record_us(self.t0.elapsed().as_micros() as u64);
            totals.heard.fetch_add(1, Ordering::Relaxed);
            totals.settle(stats.listeners);
        }
        let now = now_us();
        let steady_from = totals.steady_from_us.load(Ordering::Relaxed);
        for f in frames {
            if let Some(expect) = self.next_pts {
                if f.pts > expect && f.duration > 0 {
                    totals
                        .gaps
                        .fetch_add((f.pts - expect) / f.duration as u64, Ordering::Relaxed);
                }
            }
            self.next_pts = Some(f.pts + f.duration as u64);
            if f.wall_us >= self.joined_us {
                stats.latency.record_us(now.saturating_sub(f.wall_us));
            }
            if steady_from != 0 && f.wall_us >= steady_from {
                stats.steady.record_us(now.saturating_sub(f.wall_us));
            }
        }
        totals
            .frames
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
    }

    /// Segments the node skipped this listener past.
    pub(crate) fn skipped(&mut self, segments: u64) {
        self.stats
            .totals
            .skips
            .fetch_add(segments, Ordering::Relaxed);
    }

    /// The listener is done: `failed` says why, if it failed.
    pub(crate) fn end(self, failed: Option<String>) {
        if self.last_at.is_some() {
            self.stats.stall.record_us(self.longest.as_micros() as u64);
        }
        if let Some(mut reason) = failed {
            if self.first {
                self.stats.totals.settle(self.stats.listeners);
            }
            reason.truncate(120);
            *self
                .stats
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(reason)
                .or_default() += 1;
        }
    }
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
    if opts.webtransport && opts.urls.len() > 1 {
        return Err(quicast::Error::unsupported(
            "WebTransport listeners go to one node (no failover between several)",
        ));
    }
    let stats = Arc::new(Stats::new(opts.listeners));
    let start = Instant::now();
    // One node: listeners on the engine (a loop per endpoint, no task per listener), so
    // one core of load drives far more of them. Several (failover): the client library.
    if opts.urls.len() == 1 {
        let (cfg, webtransport) = if opts.webtransport {
            (
                quicast::client::fresh_webtransport_config(&opts.trust)?,
                Some(super::loadgen_wt::session_url(&url)?),
            )
        } else {
            (quicast::client::fresh_listener_config(&opts.trust)?, None)
        };
        let threads = opts.endpoints.max(1).min(opts.listeners.max(1));
        let mut runs = Vec::new();
        for t in 0..threads {
            let plan = super::loadgen_engine::Plan {
                remote: addr,
                server_name: url.host.clone(),
                path: path.clone(),
                cfg: cfg.clone(),
                // Listener i of all goes to thread i % threads, at its place in the ramp.
                starts: (t..opts.listeners)
                    .step_by(threads)
                    .map(|i| opts.ramp.mul_f64(i as f64 / opts.listeners.max(1) as f64))
                    .collect(),
                duration: opts.ramp + opts.duration,
                webtransport: webtransport.clone(),
            };
            let stats = stats.clone();
            runs.push(tokio::task::spawn_blocking(move || {
                super::loadgen_engine::run(plan, &stats)
            }));
        }
        for r in runs {
            r.await
                .map_err(|e| quicast::Error::local(format!("a load thread failed: {e}")))??;
        }
        return Ok(stats.report(start.elapsed()));
    }
    let endpoints: Vec<Client> = (0..opts.endpoints.max(1))
        .map(|_| {
            // Every simulated listener is a first-time visitor: a full handshake, as the
            // relay would pay for a real crowd (one process's shared ticket store would
            // otherwise resume nearly every connection).
            Client::for_target(&addr, &opts.trust).and_then(|c| c.without_resumption(&opts.trust))
        })
        .collect::<Result<_>>()?;
    let end = start + opts.ramp + opts.duration;
    let mut tasks = Vec::with_capacity(opts.listeners);
    for i in 0..opts.listeners {
        let at = start + opts.ramp.mul_f64(i as f64 / opts.listeners.max(1) as f64);
        let client = endpoints[i % endpoints.len()].clone();
        let (urls, path, silence) = (opts.urls.clone(), path.clone(), opts.silence);
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut ear = Ear::new(&stats);
            let r = async {
                let on = |ev: ListenEvent<'_>| {
                    match ev {
                        ListenEvent::Frames(frames) => ear.frames(frames),
                        ListenEvent::Skipped(_) => ear.skipped(1),
                        ListenEvent::Missed { count, .. } => ear.skipped(count),
                        ListenEvent::Moved { .. } => {
                            stats.totals.moves.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    Ok(())
                };
                let nodes: Vec<_> = urls.iter().map(|u| (client.clone(), u.clone())).collect();
                stats.totals.connected.fetch_add(1, Ordering::Relaxed);
                let lo = ListenOptions {
                    path: path.clone(),
                    deadline: Some(end),
                    silence,
                    token: String::new(),
                    low_latency: false,
                };
                listen_any(&nodes, &lo, on).await
            }
            .await;
            ear.end(r.err().map(|e| e.to_string()));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(stats.report(start.elapsed()))
}
