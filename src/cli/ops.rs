//! The node's operations beyond running: its identity from the config, `check-config`,
//! `token`, and the SIGHUP reload.

use anyhow::bail;
use quicast::node::config::{invalid, ConfigError};
use quicast::node::{mint, parse_when, Access, Claims, Grant};
use quicast::{Identity, NodeArgs, NodeConfig, QuicServer};
use tracing::{info, warn};

/// The server's identity: from `cert` and `key`, or generated.
pub fn identity(cfg: &NodeConfig) -> Result<Identity, ConfigError> {
    match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => {
            Identity::from_pem_files(c, k).map_err(|e| invalid(e.key, e.to_string()))
        }
        _ => Identity::self_signed(&[]).map_err(|e| invalid("cert", e.to_string())),
    }
}

/// `quicast check-config FILE`: what `origin`/`relay --config FILE` would refuse at start.
pub fn check_config(file: &std::path::Path, role: Option<&str>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read it ({})",
            file.display(),
            quicast::io_reason(&e)
        )
    })?;
    let args = NodeArgs::from_toml(&text, file)?;
    let cfg = args.clone().resolve();
    let relay = match role {
        None => cfg.is_relay(),
        Some("origin") => false,
        Some("relay") => true,
        Some(other) => bail!("--role is origin or relay, not {other:?}"),
    };
    args.check_role(relay, Some(file))?;
    cfg.check(relay)?;
    // The files it names, read as start reads them: a missing, garbage or mismatched
    // certificate or key, or an unusable CA, is refused here, not by a service manager
    // restarting a node that cannot start.
    if cfg.cert.is_some() {
        identity(&cfg)?;
    }
    if let Some(ca) = &cfg.ca {
        quicast::Trust::from_ca_file(ca).map_err(|e| invalid(e.key, e.to_string()))?;
    }
    println!(
        "{}: ok ({})",
        file.display(),
        if relay { "relay" } else { "origin" }
    );
    if relay {
        if let Some(why) = cfg.fails_closed() {
            println!("note: {why}");
        }
    }
    Ok(())
}

/// `quicast token`: one signed token on stdout, valid from `not_before` (default now) for
/// `ttl` seconds or until `expires` (either may be in the past: a token a node refuses, to
/// test that it does).
pub fn mint_token(
    key: &std::path::Path,
    kid: &str,
    role: Grant,
    path: String,
    ttl: Option<u64>,
    not_before: Option<&str>,
    expires: Option<&str>,
) -> anyhow::Result<()> {
    // No longer than a node takes (see `MAX_AHEAD_SECS`).
    const MAX_TTL: u64 = quicast::node::MAX_AHEAD_SECS;
    // A stream, a prefix ending in /, or / alone for every stream.
    if path != "/" {
        let name = path.strip_prefix('/').unwrap_or(&path);
        let name = name.strip_suffix('/').unwrap_or(name);
        quicast::proto::check_path(name).map_err(|e| {
            anyhow::anyhow!("--path {path:?}: {e} (a stream, a prefix ending in /, or /)")
        })?;
    }
    let now = quicast::node::unix_now();
    let when = |flag: &str, s: &str| -> anyhow::Result<i64> {
        let t = parse_when(s, now).map_err(|e| anyhow::anyhow!("--{flag} {e}"))?;
        if t < 0 {
            bail!("--{flag} {s:?} is before 1970");
        }
        Ok(t)
    };
    let start = not_before.map(|s| when("not-before", s)).transpose()?;
    let exp = match (ttl, expires) {
        (Some(ttl), None) => {
            if ttl == 0 || ttl > MAX_TTL {
                bail!("--ttl must be between 1 and {MAX_TTL} seconds (ten years)");
            }
            start.unwrap_or(now as i64) + ttl as i64
        }
        (None, Some(s)) => when("expires", s)?,
        // clap takes exactly one of them.
        _ => bail!("give --ttl SECONDS or --expires WHEN"),
    };
    // From now; one that has expired already, from the start of time (no `nbf`).
    let nbf = start.unwrap_or(if exp <= now as i64 { 0 } else { now as i64 });
    if exp <= nbf {
        bail!("it would expire ({exp}) before it starts (--not-before, {nbf}): no node would ever take it");
    }
    let horizon = (now + MAX_TTL) as i64;
    if exp > horizon || nbf > horizon {
        bail!("more than ten years ahead: a node refuses such a token (mint shorter ones, and rotate)");
    }
    if exp <= now as i64 {
        warn!("this token has expired already: a node refuses it (`token expired`)");
    } else if nbf > now as i64 {
        info!("this token is not valid yet: until then a node refuses it (`token not valid yet`)");
    }
    let claims = Claims {
        role,
        path,
        exp: exp as u64,
        nbf: nbf as u64,
        kid: kid.to_string(),
    };
    let token = mint(key, kid, &claims).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{token}");
    Ok(())
}

/// SIGHUPs, from the moment this is called (a SIGHUP no longer stops the process).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// Resolves at the next SIGHUP (never without the signal).
pub async fn hangup(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// SIGHUP: the config (file and flags) read again; its certificate, token keys and listen
/// policy taken for what comes next. All or nothing: a file that does not pass the start-up
/// checks is refused, naming the key, and nothing changes. Other keys take effect at restart.
pub fn reload(
    args: &NodeArgs,
    relay: bool,
    node: &quicast::Node,
    server: &QuicServer,
) -> Result<String, ConfigError> {
    let cfg = args.clone().load(relay)?.resolve();
    cfg.check(relay)?;
    let access = Access::from_config(&cfg)?;
    // A generated certificate is kept: a new one would break every fingerprint pin.
    let identity = match cfg.cert {
        Some(_) => Some(identity(&cfg)?),
        None => None,
    };
    if let Some(id) = &identity {
        server
            .set_identity(id)
            .map_err(|e| invalid("cert", e.to_string()))?;
    }
    let what = format!(
        "certificate {}, {} token key(s), listen policy",
        identity
            .as_ref()
            .map_or("unchanged (generated)".to_string(), |i| i
                .fingerprint
                .clone()),
        access.keys(),
    );
    node.set_access(access);
    Ok(what)
}
