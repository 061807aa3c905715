//! How a client command (`listen`, `publish`, `loadgen`) reaches its nodes: the trust
//! flags (`--ca`, `--fingerprint`) and the address a `quic://` URL names.

use std::path::PathBuf;

use anyhow::Context;
use quicast::node::config::{invalid, ConfigError, Fingerprint};
use quicast::proto::QuicUrl;
use quicast::Trust;

#[derive(clap::Args)]
pub(crate) struct TrustArgs {
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    pub(super) ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's (self-signed) certificate, as it logs it.
    #[arg(long = "fingerprint")]
    pub(super) fingerprint: Vec<Fingerprint>,
}

/// A client's trust from `--ca` / `--fingerprint`: exactly one of them.
pub(super) fn client_trust(
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

pub(super) async fn resolve(url: &QuicUrl) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("cannot resolve {}", url.host))?
        .next()
        .with_context(|| format!("{} did not resolve", url.host))
}

/// The nodes' URLs, parsed, and the one stream they all name (`same` says what every node
/// is to do with it, for the error when one names another).
pub(super) fn one_stream(urls: &[String], same: &str) -> anyhow::Result<(Vec<QuicUrl>, String)> {
    let urls = urls
        .iter()
        .map(|u| QuicUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = urls.first() else {
        anyhow::bail!("no node URL given");
    };
    let path = first.stream()?.to_string();
    if let Some(u) = urls.iter().find(|u| u.path != path) {
        anyhow::bail!("{u}: {same} ({path})");
    }
    Ok((urls, path))
}
