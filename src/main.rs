//! The `quicast` binary: the CLI's edge. Library errors become `anyhow` here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use quicast::client::{
    listen_any, publish, Client, Input, ListenEvent, ListenOptions, Origin, PublishOptions,
    SourceReader,
};
use quicast::media::OggOpusWriter;
use quicast::node::config::{invalid, ConfigError, Count, Fingerprint, ROLES};
use quicast::node::Grant;
use quicast::proto::QuicUrl;
use quicast::{new_node, AdminServer, HttpServer, NodeArgs, QuicServer, Trust};
use tracing::{info, warn};

mod cli;

use cli::ops::{check_config, hangup, hangups, identity, mint_token, reload};
use cli::output::Output;
use cli::{demo, loadgen};

#[derive(Parser)]
#[command(
    name = "quicast",
    version,
    about = "Live audio over a tree of QUIC relays"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines (stderr) as `text`, or `json`: one JSON object a line, with the span fields
    /// (connection, stream) of each event, for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct TrustArgs {
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's (self-signed) certificate, as it logs it.
    #[arg(long = "fingerprint")]
    fingerprint: Vec<Fingerprint>,
}

/// A client's trust from `--ca` / `--fingerprint`: exactly one of them.
fn client_trust(
    ca: Option<&std::path::Path>,
    fingerprints: &[Fingerprint],
) -> Result<Trust, ConfigError> {
    match (ca, fingerprints.is_empty()) {
        (Some(ca), true) => Trust::from_ca_file(ca).map_err(|e| invalid(e.key, e.to_string())),
        (None, false) => Ok(Trust::pinned(fingerprints)),
        (Some(_), false) => Err(invalid("ca", "give --ca or --fingerprint, not both")),
        (None, true) => Err(invalid(
            "ca",
            "no way to trust the server: give --ca PEM, or --fingerprint HEX (printed in the server's log)",
        )),
    }
}

#[derive(clap::Args)]
struct LoadgenArgs {
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

#[derive(Subcommand)]
enum Cmd {
    /// Run an origin: takes publishers, serves listeners and relays.
    Origin(NodeArgs),
    /// Run a relay: fetches from its parents, serves listeners and child relays.
    Relay(NodeArgs),
    /// Publish Ogg Opus from a file or stdin, to one origin or to several at once (one
    /// broadcast, which redundant origins hold alike).
    Publish {
        /// quic://HOST:PORT/STREAM (repeat the URL for each origin, the same stream path).
        #[arg(required = true, num_args = 1..)]
        urls: Vec<String>,
        /// Ogg Opus, MP3 or AAC (ADTS) file, or - for stdin (the first bytes say which).
        #[arg(long)]
        input: String,
        /// The stream's now-playing title from its start (ICY `StreamTitle`, shown on the
        /// node's page and sent to listeners that ask for titles).
        #[arg(long)]
        title: Option<String>,
        /// Repeat the file forever, with continuous timestamps.
        #[arg(long = "loop")]
        looping: bool,
        /// The origin's publish token.
        #[arg(long, env = "QUICAST_TOKEN", default_value = "")]
        token: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Listen to a stream and write it in its codec's own format: Ogg Opus, MP3, or AAC in
    /// ADTS (its titles go to the log as they change).
    Listen {
        /// quic://HOST:PORT/STREAM (repeat the URL for each node to fall back to, in order;
        /// the same stream path).
        #[arg(required = true, num_args = 1..)]
        urls: Vec<String>,
        /// Once audio flows, a node that sends nothing for this many ms is taken for lost,
        /// and the listener moves to the next.
        #[arg(long, default_value_t = 1500)]
        silence_ms: u64,
        /// Output file, or - for stdout.
        #[arg(long)]
        output: String,
        /// Stop after this many seconds (exit 0).
        #[arg(long)]
        duration: Option<f64>,
        /// A listen token, for streams whose node asks for one.
        #[arg(long, env = "QUICAST_TOKEN", default_value = "")]
        token: String,
        /// Ask for every frame at once, not once per delivery interval (less latency, more
        /// cost to the node, which honours it while it has headroom).
        #[arg(long)]
        low_latency: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Open many listener connections to one node and report what they heard.
    Loadgen(LoadgenArgs),
    /// Check a node's config file without starting: the start-up checks of every key and of
    /// the keys together (exit 0 and "ok", or exit 1 naming the key and why).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// Check it as an `origin` or a `relay` [default: a relay if it names upstreams].
        #[arg(long)]
        role: Option<String>,
    },
    /// Mint a signed token (printed on stdout) for a publisher, a listener or a relay.
    Token {
        /// The signing key: an HMAC secret file (HS256), or a PEM ECDSA P-256 private key
        /// (ES256) whose public key the nodes hold.
        #[arg(long)]
        key: PathBuf,
        /// The key id the nodes know the key by (their `token-key KID=FILE`).
        #[arg(long)]
        kid: String,
        /// What it lets its holder do: publish, listen or relay.
        #[arg(long)]
        role: Grant,
        /// The stream path it is for, a prefix ending in /, or / for every stream.
        #[arg(long)]
        path: String,
        /// Seconds it is valid for, from its start (now, or --not-before).
        #[arg(long, required_unless_present = "expires", conflicts_with = "expires")]
        ttl: Option<u64>,
        /// When it starts to be valid: an RFC 3339 time (2026-12-24T18:00:00Z), or a
        /// duration from now, + or - (+1h, -30m; s, m, h, d) [default: now; with an
        /// --expires already past, no start].
        #[arg(long, allow_hyphen_values = true)]
        not_before: Option<String>,
        /// When it stops being valid, instead of --ttl: an RFC 3339 time, or a duration from
        /// now, + or - (+1h; -1h mints one that has expired already, to test a refusal).
        #[arg(long, allow_hyphen_values = true)]
        expires: Option<String>,
    },
    /// An origin, a mid-tier relay and two edge relays on loopback, playing a sample in a loop.
    Demo {
        /// Ports used: this one and the next three (0 = any free ports).
        #[arg(long, default_value_t = 4700)]
        base_port: u16,
    },
}

/// The command line: `origin` and `relay` each show only the flags they take (the others
/// stay parsed, hidden, so that one given is refused by name rather than as unknown).
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for (sub, relay) in [("origin", false), ("relay", true)] {
        cmd = cmd.mut_subcommand(sub, |mut c| {
            for (field, role) in ROLES {
                if !role.takes(relay) {
                    c = c.mut_arg(*field, |a| a.hide(true));
                }
            }
            c
        });
    }
    cmd
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        // Colour only for a person at a terminal; log files and pipes get plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C: at once.
    Interrupt,
    /// SIGTERM (a service manager): drain first.
    Terminate,
}

async fn stop_signal() -> Stop {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return Stop::Interrupt;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Stop::Interrupt,
            _ = term.recv() => Stop::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Stop::Interrupt
    }
}

async fn shutdown_signal() {
    stop_signal().await;
}

/// Raises the process's descriptor limit to its hard limit, and returns how many HTTP
/// connections fit in it, keeping a reserve for the node's own files and sockets.
fn descriptor_budget() -> u64 {
    let (before, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(before);
    let reserve = 64 + limit / 32;
    let budget = limit.saturating_sub(reserve);
    info!(
        limit,
        raised_from = before,
        http_connections = budget,
        "file descriptors: HTTP connections beyond this get 503"
    );
    budget
}

async fn run_node(args: NodeArgs, relay: bool) -> anyhow::Result<()> {
    let mut hups = hangups();
    let mut cfg = args.clone().load(relay)?.resolve();
    cfg.check(relay)?;
    if cfg.max_http_connections.is_none() {
        cfg.max_http_connections = Some(Count::new(descriptor_budget()));
    }
    let identity = identity(&cfg)?;
    if identity.self_signed {
        info!(fingerprint = %identity.fingerprint, "no --cert/--key: generated a self-signed certificate; clients pin it with --fingerprint");
    }
    let (listen, http, admin, drain) = (cfg.listen, cfg.http, cfg.admin, cfg.drain_secs.get());
    let alternates: Vec<String> = cfg.alternates.iter().map(|u| u.to_string()).collect();
    let node = new_node(cfg)?;
    let server = QuicServer::start(node.clone(), listen, &identity).await?;
    let _admin = match admin {
        Some(addr) => Some(AdminServer::start(node.clone(), addr).await?),
        None => None,
    };
    let _http = match http {
        Some(addr) => Some(HttpServer::start(node.clone(), addr).await?),
        None => None,
    };
    // One stop signal for the whole loop: a SIGTERM during a reload is not lost.
    let stopping = stop_signal();
    tokio::pin!(stopping);
    let stop = loop {
        tokio::select! {
            stop = &mut stopping => break stop,
            () = hangup(&mut hups) => match reload(&args, relay, &node, &server) {
                Ok(what) => info!("reloaded on SIGHUP: {what}"),
                Err(e) => warn!("reload refused, the running settings stay: {e}"),
            },
        }
    };
    if stop == Stop::Terminate && !drain.is_zero() {
        // Tell listeners and child relays to move, and give them the time to.
        server.drain(alternates);
        tokio::select! {
            gone = server.drained(drain) => {
                if gone {
                    info!("every peer has moved");
                } else {
                    info!(wait = ?drain, "drain time is up");
                }
            }
            _ = stop_signal() => info!("asked again: stopping now"),
        }
    }
    info!("shutting down");
    server.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), server.wait_idle()).await;
    Ok(())
}

async fn run_listen(
    urls: Vec<String>,
    silence_ms: u64,
    output: String,
    duration: Option<f64>,
    token: String,
    low_latency: bool,
    trust: TrustArgs,
) -> anyhow::Result<()> {
    let urls = urls
        .iter()
        .map(|u| QuicUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let path = urls[0].stream()?.to_string();
    if let Some(u) = urls.iter().find(|u| u.path != path) {
        bail!("{u}: every node is asked for the same stream ({path})");
    }
    if !(50..=3_600_000).contains(&silence_ms) {
        bail!("--silence-ms must be between 50 and 3600000");
    }
    let url = &urls[0];
    const MAX_DURATION: f64 = 366.0 * 86_400.0;
    let deadline = match duration {
        Some(d) if d.is_finite() && d > 0.0 && d <= MAX_DURATION => {
            Some(tokio::time::Instant::now() + Duration::from_secs_f64(d))
        }
        Some(_) => bail!(
            "--duration must be a number of seconds above 0 and at most {MAX_DURATION} (a year)"
        ),
        None => None,
    };
    // Checked now, created (or truncated) only when audio arrives: a refused listen leaves
    // no empty file, and an existing one as it was.
    let mut out = Output::new(&output)?;
    let trust = client_trust(trust.ca.as_deref(), &trust.fingerprint)?;
    let mut nodes = Vec::new();
    for u in &urls {
        let addr = resolve(u).await?;
        nodes.push((Client::for_target(&addr, &trust)?, u.clone()));
    }
    let opts = ListenOptions {
        path,
        deadline,
        silence: Duration::from_millis(silence_ms),
        token,
        low_latency,
    };
    let mut writer = OggOpusWriter::new(rand::random());
    let mut started = false;
    // MP3 and AAC frames are their own stream format: written as they came.
    let mut raw = false;
    let report = listen_any(&nodes, &opts, |ev| {
        let (bytes, audio) = match ev {
            ListenEvent::Header { codec, .. } if !started => {
                started = true;
                raw = codec.kind != quicast::proto::CODEC_OPUS;
                if raw {
                    return Ok(());
                }
                (writer.headers(&codec.header), false)
            }
            ListenEvent::Frames(frames) if raw => (
                frames
                    .iter()
                    .fold(Vec::new(), |mut v, f| {
                        v.extend_from_slice(&f.payload);
                        v
                    })
                    .into(),
                !frames.is_empty(),
            ),
            ListenEvent::Frames(frames) => (writer.frames(frames), !frames.is_empty()),
            ListenEvent::Title(t) => {
                info!(title = t.unwrap_or(""), "now playing");
                return Ok(());
            }
            ListenEvent::Skipped(seq) => {
                tracing::warn!(seq, "fell behind: the node skipped us forward");
                return Ok(());
            }
            ListenEvent::Missed { first, count } => {
                tracing::warn!(
                    first,
                    count,
                    "fell behind: the node skipped us past whole segments"
                );
                return Ok(());
            }
            _ => return Ok(()),
        };
        out.write(&bytes, audio)?;
        Ok(())
    })
    .await;
    // Leave politely: the node frees the listener's place now, not at its idle timeout.
    for (client, _) in &nodes {
        client.close().await;
    }
    let report = report?;
    out.finish(&if raw {
        bytes::Bytes::new()
    } else {
        writer.finish()
    })?;
    info!(
        frames = report.frames,
        segments = report.segments,
        skipped = report.skipped,
        missed = report.missed,
        ended = report.ended,
        moves = report.moves,
        "done"
    );
    if report.frames == 0 {
        let why = if started {
            "the stream is live but sent no audio"
        } else {
            "the stream has not started"
        };
        bail!("no audio received from {url}: {why}");
    }
    Ok(())
}

async fn run_publish(
    urls: Vec<String>,
    input: String,
    title: Option<String>,
    looping: bool,
    token: String,
    trust: TrustArgs,
) -> anyhow::Result<()> {
    let urls = urls
        .iter()
        .map(|u| QuicUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let path = urls[0].stream()?.to_string();
    if let Some(u) = urls.iter().find(|u| u.path != path) {
        bail!("{u}: every origin gets the same stream ({path})");
    }
    let (input, realtime) = if input == "-" {
        (Input::Stdin, false)
    } else {
        (Input::File(input.into()), true)
    };
    if looping && matches!(input, Input::Stdin) {
        bail!("--loop needs a file, not stdin");
    }
    // Check the input before connecting, so a bad file is reported as such.
    if let Input::File(p) = &input {
        SourceReader::open(&input)
            .await?
            .head()
            .await
            .with_context(|| format!("{}", p.display()))?;
    }
    let trust = client_trust(trust.ca.as_deref(), &trust.fingerprint)?;
    let mut origins = Vec::new();
    for url in urls {
        let addr = resolve(&url).await?;
        origins.push(Origin {
            client: Client::publisher_for(&addr, &trust)?,
            url,
            token: token.clone(),
        });
    }
    let opts = PublishOptions {
        path,
        input,
        looping,
        realtime,
        title,
    };
    let clients: Vec<Client> = origins.iter().map(|o| o.client.clone()).collect();
    let r = publish(origins, &opts).await;
    // Leave politely: each origin knows at once (a publisher that failed is not taken for
    // one that was cut off).
    for c in &clients {
        c.close().await;
    }
    r?;
    Ok(())
}

async fn resolve(url: &QuicUrl) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("cannot resolve {}", url.host))?
        .next()
        .with_context(|| format!("{} did not resolve", url.host))
}

async fn run_demo(base_port: u16) -> anyhow::Result<()> {
    let demo = demo::start(base_port).await.with_context(|| {
        format!(
            "starting the demo on ports {base_port}..{} (try --base-port)",
            base_port.saturating_add(3)
        )
    })?;
    println!(
        "quicast demo: origin {} -> mid relay {} -> edges {}",
        demo.origin.addr,
        demo.mid.addr,
        demo.edges
            .iter()
            .map(|e| e.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "publishing the sample in a loop to stream '{}'. Listen on an edge with:",
        demo::STREAM
    );
    for (url, fp) in demo.edge_urls() {
        println!("  quicast listen {url} --fingerprint {fp} --output - | ffplay -nodisp -");
    }
    for h in &demo.edge_http {
        println!(
            "  ffplay -nodisp http://{}/{}.ogg     (or open http://{}/ in a browser)",
            h.addr,
            demo::STREAM,
            h.addr
        );
    }
    println!("A browser plays from an edge's page:");
    for h in &demo.edge_http {
        println!(
            "  open http://{}/     (WebTransport + WebCodecs in Chromium, Edge, Firefox; else LL-HLS, else Ogg)",
            h.addr
        );
    }
    println!("(or: cargo run --release -- listen ... ; add --duration 10 --output demo.opus to save 10 s)");
    println!("Ctrl-C stops the demo.");
    shutdown_signal().await;
    println!("stopping");
    demo.shutdown();
    for s in demo.nodes() {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.wait_idle()).await;
    }
    Ok(())
}

async fn run_loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
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
            let r = cli::loadgen_http::run(
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
    let opts = loadgen::LoadOptions {
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
    let r = loadgen::run(opts).await?;
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    init_logs(cli.log_format);
    let r = match cli.cmd {
        Cmd::Origin(a) => run_node(a, false).await,
        Cmd::Relay(a) => run_node(a, true).await,
        Cmd::Publish {
            urls,
            input,
            title,
            looping,
            token,
            trust,
        } => run_publish(urls, input, title, looping, token, trust).await,
        Cmd::Listen {
            urls,
            silence_ms,
            output,
            duration,
            token,
            low_latency,
            trust,
        } => {
            run_listen(
                urls,
                silence_ms,
                output,
                duration,
                token,
                low_latency,
                trust,
            )
            .await
        }
        Cmd::Demo { base_port } => run_demo(base_port).await,
        Cmd::Token {
            key,
            kid,
            role,
            path,
            ttl,
            not_before,
            expires,
        } => mint_token(
            &key,
            &kid,
            role,
            path,
            ttl,
            not_before.as_deref(),
            expires.as_deref(),
        ),
        Cmd::CheckConfig { file, role } => check_config(&file, role.as_deref()),
        Cmd::Loadgen(args) => run_loadgen(args).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quicast: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
