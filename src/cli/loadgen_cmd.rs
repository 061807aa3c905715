//! `quicast loadgen` as a command: its flags, their checks, which crowd runs (QUIC
//! listeners, or an HTTP crowd), and the report it prints.

use std::time::Duration;

use anyhow::bail;
use quicast::proto::QuicUrl;

use super::connect::{client_trust, TrustArgs};

#[derive(clap::Args)]
pub(crate) struct LoadgenArgs {
    /// quic://HOST:PORT/STREAM (repeat: each listener falls back to the next nodes), or
    /// one http://HOST:PORT/PATH: an HTTP crowd (each request read for the duration).
    #[arg(required = true, num_args = 1..)]
    urls: Vec<String>,
    /// Listener connections to open (each its own QUIC connection and TLS handshake).
    #[arg(long)]
    listeners: usize,
    /// Seconds to stay subscribed (after the ramp).
    #[arg(long)]
    duration: f64,
    /// Seconds over which to spread the connection starts [default: as fast as possible].
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Client UDP sockets to spread the connections over. With one node each is driven
    /// by a thread of its own [default: one per core this process may run on]; with
    /// several, by the client library [default: one per 2,000 listeners].
    #[arg(long)]
    endpoints: Option<usize>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Listeners speak WebTransport as browsers do (ALPN h3, an extended CONNECT
    /// session carrying the listener protocol), not the native protocol. One quic://
    /// node; a self-signed node serves h3 its browser certificate: pin the first of
    /// the `hashes=` it logs.
    #[arg(long)]
    webtransport: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

pub(crate) async fn run_loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    let LoadgenArgs {
        urls,
        listeners,
        duration,
        ramp,
        endpoints,
        json,
        webtransport,
        trust,
    } = args;
    let secs = |what: &str, v: f64| -> anyhow::Result<Duration> {
        if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
            bail!("--{what} must be between 0 and 86400 seconds");
        }
        Ok(Duration::from_secs_f64(v))
    };
    if listeners == 0 || listeners > 1_000_000 {
        bail!("--listeners must be between 1 and 1000000");
    }
    // An HTTP crowd: plain requests, each read for the duration.
    if let [url] = urls.as_slice() {
        if url.starts_with("http://") {
            if webtransport {
                bail!("--webtransport takes a quic:// node, not an HTTP crowd");
            }
            let r = super::loadgen_http::run(
                url,
                listeners,
                secs("ramp", ramp)?,
                secs("duration", duration)?,
            )
            .await?;
            println!("requests {}  served {}", r.requests, r.served);
            for (why, n) in &r.failures {
                println!("  failed x{n}: {why}");
            }
            println!(
                "first byte ms  p50 {:.0}  p99 {:.0}  max {:.1}   bytes each p50 {}",
                r.first_byte_ms.p50,
                r.first_byte_ms.p99,
                r.first_byte_ms.max.unwrap_or(0.0),
                r.bytes_p50
            );
            println!(
                "gaps: {} listeners missed {} Ogg pages",
                r.gapped, r.pages_missed
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            return Ok(());
        }
    }
    let urls = urls
        .iter()
        .map(|u| QuicUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    for u in &urls {
        u.stream()?;
    }
    let opts = super::loadgen::LoadOptions {
        urls: urls.clone(),
        silence: Duration::from_millis(1500),
        trust: client_trust(trust.ca.as_deref(), &trust.fingerprint)?,
        listeners,
        duration: secs("duration", duration)?,
        ramp: secs("ramp", ramp)?,
        endpoints: endpoints
            .unwrap_or(if urls.len() == 1 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                listeners / 2000 + 1
            })
            .clamp(1, 64),
        webtransport,
    };
    let r = super::loadgen::run(opts).await?;
    println!(
        "listeners {}  connected {}  heard audio {}  failed {}",
        r.listeners, r.connected, r.heard, r.failed
    );
    for (reason, n) in &r.failures {
        println!("  failed x{n}: {reason}");
    }
    println!(
        "joins refused {}  timed out {}  retried {}  (attempts, each tried again with jitter)",
        r.refused, r.timed_out, r.retried
    );
    println!("frames {}  gaps {}  skips {}", r.frames, r.gaps, r.skips);
    println!(
        "latency ms  p50 {:.0}  p99 {:.0}  max {:.1}",
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.max.unwrap_or(0.0)
    );
    println!(
        "join ms     p50 {:.0}  p99 {:.0}",
        r.join_ms.p50, r.join_ms.p99
    );
    println!(
        "stall ms    p50 {:.0}  p99 {:.0}  max {:.1}  (each listener's longest wait between frames; {} moves)",
        r.stall_ms.p50,
        r.stall_ms.p99,
        r.stall_ms.max.unwrap_or(0.0),
        r.moves
    );
    if json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
