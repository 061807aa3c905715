//! What a node tells its operator's monitoring: Prometheus metrics (`GET /metrics` on the
//! admin port) and its health for load balancers (`/healthz`, `/readyz`).
//!
//! The values are the node's own counters and state, read at each scrape by a collector
//! (nothing is kept twice), and written in the text exposition format by the
//! `prometheus-client` crate.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::model::Egress;
use crate::node::Node;

/// Reads the node at each scrape.
struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCollector({})", self.0.name())
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn seconds(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, Some(&Unit::Seconds), g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A histogram in seconds (`name` without the unit).
fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> std::fmt::Result {
    h.encode(e.encode_descriptor(name, help, Some(&Unit::Seconds), h.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let n = &self.0;
        let s = &n.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "quicast_connections",
            "Connections served now, QUIC and HTTP.",
            get(&s.connections) + get(&s.http_connections),
        )?;
        gauge(
            &mut e,
            "quicast_http_connections",
            "HTTP connections served now.",
            get(&s.http_connections),
        )?;
        counter(
            &mut e,
            "quicast_connections_accepted",
            "QUIC connections accepted.",
            get(&s.connections_total),
        )?;
        gauge(
            &mut e,
            "quicast_subscriptions",
            "Subscriptions now (listeners, child relays, HLS requests being served).",
            get(&s.subscriptions),
        )?;
        counter(
            &mut e,
            "quicast_joins",
            "Subscriptions taken (joins).",
            get(&s.subscriptions_total),
        )?;
        counter(
            &mut e,
            "quicast_skips",
            "Slow subscribers moved forward past a segment.",
            get(&s.skips_total),
        )?;
        counter(
            &mut e,
            "quicast_upstream_subscriptions",
            "Subscriptions this relay took from its parents.",
            get(&s.upstream_subscriptions_total),
        )?;
        counter(
            &mut e,
            "quicast_parent_failovers",
            "Parents lost or drained, each moving its streams to others.",
            n.parent_failovers(),
        )?;
        counter(
            &mut e,
            "quicast_retries",
            "New QUIC connections asked to prove their address first (Retry), under a handshake flood.",
            get(&s.retries_total),
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut fam = e.encode_descriptor(
                "quicast_newcomers",
                "New QUIC clients by what became of their first packet: taken up with nobody before them (first), queued behind others, or deferred (unanswered: the queue held what the node takes up in join-queue-ms; the client sends again).",
                None,
                c.metric_type(),
            )?;
            for (outcome, v) in [
                ("first", get(&s.joins_first_total)),
                ("queued", get(&s.joins_queued_total)),
                ("deferred", get(&s.joins_deferred_total)),
            ] {
                ConstCounter::new(v).encode(fam.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        gauge(
            &mut e,
            "quicast_join_queue",
            "New QUIC clients waiting for their handshake now.",
            get(&s.join_queue),
        )?;
        gauge(
            &mut e,
            "quicast_publishers",
            "Publishers and sources now.",
            get(&s.publishers),
        )?;
        seconds(
            &mut e,
            "quicast_overload_lag",
            "How late the node's tasks ran, last measured.",
            get(&s.lag_ms) as f64 / 1000.0,
        )?;
        gauge(
            &mut e,
            "quicast_draining",
            "1 while the node drains (SIGTERM).",
            u64::from(n.is_draining()),
        )?;
        {
            let shed = get(&s.shed_total);
            let c = ConstCounter::new(0u64);
            let mut fam = e.encode_descriptor(
                "quicast_refusals",
                "Connections, subscriptions and requests refused, by reason.",
                None,
                c.metric_type(),
            )?;
            for (reason, v) in [
                ("overload", shed),
                ("limit", get(&s.refused_total).saturating_sub(shed)),
                ("auth", get(&s.auth_refused_total)),
                ("not_found", get(&s.not_found_total)),
            ] {
                ConstCounter::new(v).encode(fam.encode_family(&[("reason", reason)])?)?;
            }
        }
        for (name, help, v) in [
            (
                "quicast_frames_received",
                "Audio frames taken in, from publishers and sources or from parents.",
                &s.frames_received_total,
            ),
            (
                "quicast_bytes_received",
                "Audio payload bytes taken in, from publishers and sources or from parents.",
                &s.bytes_received_total,
            ),
            (
                "quicast_frames_sent",
                "Audio frames written to subscribers (added once per segment each).",
                &s.frames_sent_total,
            ),
            (
                "quicast_bytes_sent",
                "Bytes of audio written to subscribers as sent: frame records, Ogg pages, fMP4.",
                &s.bytes_sent_total,
            ),
        ] {
            counter(&mut e, name, help, get(v))?;
        }
        let (segments, bytes) = n.registry.cache.usage();
        gauge(
            &mut e,
            "quicast_cached_segments",
            "Segments held in the cache now, all streams together.",
            segments,
        )?;
        gauge(
            &mut e,
            "quicast_cached_bytes",
            "Bytes the cache holds now, as counted against cache-mib.",
            bytes,
        )?;
        histogram(
            &mut e,
            "quicast_publisher_latency",
            "Age of audio on arrival from a parent, since the origin received it (one sample \
             per segment; none on an origin, whose stamp is its arrival).",
            &s.timings.publisher_latency,
        )?;
        histogram(
            &mut e,
            "quicast_join",
            "From a connection's start (or an HTTP request's arrival) to the first audio \
             written to a subscription.",
            &s.timings.join,
        )?;
        if let Some((up, all)) = n.parents_up() {
            gauge(
                &mut e,
                "quicast_parents_up",
                "Parents neither known down nor draining.",
                up as u64,
            )?;
            gauge(
                &mut e,
                "quicast_parents",
                "Parents now: as listed, a name with several addresses counting one per address.",
                all as u64,
            )?;
            counter(
                &mut e,
                "quicast_upstream_resolve_failures",
                "Resolutions of a parent's DNS name that failed (the last good addresses kept).",
                n.resolve_failures(),
            )?;
        }
        // Per stream: its subscribers here, and (on a relay) where it comes from.
        let slots = n.registry.list();
        let live: Vec<_> = slots
            .iter()
            .filter_map(|s| s.broadcast().map(|b| (s, b)))
            .collect();
        gauge(
            &mut e,
            "quicast_streams",
            "Live streams held.",
            live.len() as u64,
        )?;
        gauge(
            &mut e,
            "quicast_waiting_rooms",
            "Names waited on that nobody announced and are not live.",
            n.registry.waiting(),
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut fam = e.encode_descriptor(
                "quicast_listeners",
                "Subscribers of a stream now, by egress: quic (QUIC listeners), relay (child \
                 relays), http_ogg (HTTP Ogg listeners), hls (HLS clients: each address and User-Agent seen within four \
                 target durations, at least 6 s).",
                None,
                g.metric_type(),
            )?;
            for (slot, _) in &live {
                for egress in Egress::ALL {
                    let labels = [("stream", slot.path.as_str()), ("egress", egress.label())];
                    ConstGauge::new(slot.subscribers_by(egress) as i64)
                        .encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        {
            let g = ConstGauge::new(0i64);
            let mut fam = e.encode_descriptor(
                "quicast_stream_bitrate_bytes_per_second",
                "A stream's rate (payload bytes per second) over the segments held.",
                None,
                g.metric_type(),
            )?;
            for (slot, b) in &live {
                ConstGauge::new((b.bitrate() / 8) as i64)
                    .encode(fam.encode_family(&[("stream", slot.path.as_str())])?)?;
            }
        }
        {
            let g = ConstGauge::new(0f64);
            let mut fam = e.encode_descriptor(
                "quicast_stream_delivery_interval",
                "How often a stream's subscribers are sent new frames now (its own interval, on a relay its parent's, or the node's floor under load; 0: every frame at once).",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?;
            for (slot, b) in &live {
                ConstGauge::new(b.delivery_interval().as_secs_f64())
                    .encode(fam.encode_family(&[("stream", slot.path.as_str())])?)?;
            }
        }
        seconds(
            &mut e,
            "quicast_delivery_interval_floor",
            "The floor the node put under every delivery interval because of CPU load (0: none).",
            n.interval_floor().as_secs_f64(),
        )?;
        if n.is_relay() {
            let g = ConstGauge::new(0i64);
            let mut fam = e.encode_descriptor(
                "quicast_stream_parent",
                "1 for each parent a stream comes from now; rank 0 is the active one.",
                None,
                g.metric_type(),
            )?;
            for (slot, _) in &live {
                for (rank, parent) in slot.parents().iter().enumerate() {
                    let rank = rank.to_string();
                    let labels = [
                        ("stream", slot.path.as_str()),
                        ("parent", parent.as_str()),
                        ("rank", rank.as_str()),
                    ];
                    ConstGauge::new(1i64).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        {
            let g = ConstGauge::new(1i64);
            let mut fam = e.encode_descriptor(
                "quicast_build_info",
                "The build: always 1.",
                None,
                g.metric_type(),
            )?;
            let role = if n.is_relay() { "relay" } else { "origin" };
            g.encode(
                fam.encode_family(&[("version", env!("CARGO_PKG_VERSION")), ("role", role)])?,
            )?;
        }
        Ok(())
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub(crate) fn text(node: &Arc<Node>) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector(node.clone())));
    let mut out = String::with_capacity(4096);
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        out.clear();
        out.push_str("# error encoding the metrics\n");
    }
    out
}

/// The same in the Prometheus text format (0.0.4), which promtool and older scrapers read:
/// a counter's HELP and TYPE name its `_total` series, and OpenMetrics' `# UNIT` and
/// `# EOF` lines go.
pub(crate) fn prometheus_text(node: &Arc<Node>) -> String {
    let open = text(node);
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 256);
    for l in open.lines() {
        if l.starts_with("# UNIT ") || l == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("{p}{name} {tail}\n"));
            }
            None => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// `GET /readyz`: whether the node should be sent listeners, and if not, why (one line).
pub(crate) fn ready(node: &Node) -> Result<(), String> {
    if node.is_draining() {
        return Err("draining".into());
    }
    if node.overloaded() {
        return Err("overloaded".into());
    }
    if let Some((0, all)) = node.parents_up() {
        return Err(format!("no parent reachable (0 of {all})"));
    }
    Ok(())
}
