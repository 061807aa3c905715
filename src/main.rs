//! The `quicast` binary: the CLI's edge. Library errors become `anyhow` here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use quicast::node::config::{Count, ROLES};
use quicast::node::Grant;
use quicast::{new_node, AdminServer, HttpServer, NodeArgs, QuicServer};
use tracing::{info, warn};

mod cli;

use cli::connect::TrustArgs;
use cli::demo::run_demo;
use cli::listen::run_listen;
use cli::loadgen_cmd::{run_loadgen, LoadgenArgs};
use cli::ops::{check_config, hangup, hangups, identity, mint_token, reload};
use cli::publish::run_publish;

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
