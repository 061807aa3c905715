//! Node configuration: one struct that is both the command-line flags and the TOML file.
//! Flags win over the file. A file with an unknown key or a bad value is refused at start,
//! naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::client::QuicUrl;
use crate::server::NodeConfig;
use crate::store::StoreConfig;
use crate::tls::{Identity, Trust};

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeArgs {
    /// TOML file with any of these settings (flags win).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Name of this node, in logs and in its hello to peers.
    #[arg(long)]
    pub name: Option<String>,
    /// UDP address to serve QUIC on [default: 127.0.0.1:4433].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Parent node, quic://HOST:PORT (repeat, in priority order). Makes this node a relay.
    #[arg(long = "upstream")]
    #[serde(default)]
    pub upstream: Vec<String>,
    /// TLS certificate chain (PEM). Without --cert/--key a self-signed one is generated.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificate(s) (PEM) to trust for parents.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint of a parent's certificate to pin (repeat for several parents).
    #[arg(long = "fingerprint")]
    #[serde(default)]
    pub fingerprint: Vec<String>,
    /// TCP address for HTTP: listeners (GET /STREAM.ogg, the page at /) and, on an origin,
    /// Icecast sources (PUT or SOURCE /STREAM). Off unless given.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Password Icecast sources give as basic auth `source:PASSWORD` (origin). Without it,
    /// HTTP ingest is off.
    #[arg(long)]
    pub source_password: Option<String>,
    /// Seconds an HTTP listener may wait for a stream that has not started, then 404 [default: 30].
    #[arg(long)]
    pub http_wait_secs: Option<u64>,
    /// Token publishers must present (origin).
    #[arg(long)]
    pub publish_token: Option<String>,
    /// Target segment duration in milliseconds (origin) [default: 1000].
    #[arg(long)]
    pub segment_ms: Option<u64>,
    /// Delivery interval in ms (origin): listeners are sent new frames at most this often, in
    /// one write, instead of at every frame; fewer packets and wake-ups for up to this much
    /// more latency. 0 sends every frame at once [default: see README].
    #[arg(long)]
    pub deliver_ms: Option<u64>,
    /// Segment cache size in MiB, all streams together [default: 256].
    #[arg(long)]
    pub cache_mib: Option<u64>,
    /// Seconds a cached segment is kept [default: 60].
    #[arg(long)]
    pub cache_ttl_secs: Option<u64>,
    /// Sealed segments kept per stream [default: 8].
    #[arg(long)]
    pub window_segments: Option<u64>,
    /// Segments a subscriber may fall behind before it is moved to the newest [default: 3].
    #[arg(long)]
    pub max_lag_segments: Option<u64>,
    /// Live streams (and announced names) this node holds at once [default: 10000].
    #[arg(long)]
    pub max_streams: Option<u64>,
    /// Waiting rooms for names nobody announced, held at once; apart from max-streams, so
    /// they never keep a publisher from starting [default: 1000].
    #[arg(long)]
    pub max_waiting: Option<u64>,
    /// Subscriptions to streams that are not live one listener connection may hold [default: 4].
    #[arg(long)]
    pub max_waiting_per_conn: Option<u64>,
    /// ... and all listeners from one IP address together [default: 64].
    #[arg(long)]
    pub max_waiting_per_addr: Option<u64>,
    /// Stream names (or prefixes ending in /) announced ahead: their waiting rooms are kept
    /// for waiting-room-secs and never count against max-waiting (repeat).
    #[arg(long = "announce")]
    #[serde(default)]
    pub announce: Vec<String>,
    /// Seconds a subscription may wait for an announced stream that has not started [default: 3600].
    #[arg(long)]
    pub waiting_room_secs: Option<u64>,
    /// Seconds a subscription may wait for a name nobody announced [default: 30].
    #[arg(long)]
    pub unannounced_wait_secs: Option<u64>,
    /// A publisher or source that sends no audio for this many ms is lost: its grace period
    /// starts [default: 3000].
    #[arg(long)]
    pub source_timeout_ms: Option<u64>,
    /// Seconds a relay keeps an upstream subscription after its last subscriber left [default: 5].
    #[arg(long)]
    pub linger_secs: Option<u64>,
    /// Seconds an origin waits for a lost publisher to come back before ending the stream [default: 10].
    #[arg(long)]
    pub publisher_grace_secs: Option<u64>,
    /// Most connections served at once [default: 100000].
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Longest a listener is asked to delay its ACKs, in ms (QUIC ACK-frequency extension):
    /// one ACK per 10 packets or this long, instead of one per packet. 0 asks nothing
    /// [default: 1000].
    #[arg(long)]
    pub ack_delay_ms: Option<u64>,
    /// Refuse new connections while the node's tasks run this many ms late (CPU overload),
    /// to keep serving the listeners it has. 0 never refuses [default: 1000].
    #[arg(long)]
    pub overload_lag_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read it: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl NodeArgs {
    pub fn from_toml(text: &str, path: &Path) -> Result<NodeArgs, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The file named by `--config` (if any), overridden by the flags given.
    pub fn load(self) -> Result<NodeArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e,
        })?;
        let file = NodeArgs::from_toml(&text, &path)?;
        Ok(file.overridden_by(self))
    }

    pub fn overridden_by(self, flags: NodeArgs) -> NodeArgs {
        fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
            flag.or(file)
        }
        fn pick_vec<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
            if flag.is_empty() {
                file
            } else {
                flag
            }
        }
        NodeArgs {
            config: flags.config,
            name: pick(flags.name, self.name),
            listen: pick(flags.listen, self.listen),
            http: pick(flags.http, self.http),
            source_password: pick(flags.source_password, self.source_password),
            http_wait_secs: pick(flags.http_wait_secs, self.http_wait_secs),
            upstream: pick_vec(flags.upstream, self.upstream),
            cert: pick(flags.cert, self.cert),
            key: pick(flags.key, self.key),
            ca: pick(flags.ca, self.ca),
            fingerprint: pick_vec(flags.fingerprint, self.fingerprint),
            publish_token: pick(flags.publish_token, self.publish_token),
            segment_ms: pick(flags.segment_ms, self.segment_ms),
            deliver_ms: pick(flags.deliver_ms, self.deliver_ms),
            max_streams: pick(flags.max_streams, self.max_streams),
            max_waiting: pick(flags.max_waiting, self.max_waiting),
            max_waiting_per_conn: pick(flags.max_waiting_per_conn, self.max_waiting_per_conn),
            max_waiting_per_addr: pick(flags.max_waiting_per_addr, self.max_waiting_per_addr),
            announce: pick_vec(flags.announce, self.announce),
            unannounced_wait_secs: pick(flags.unannounced_wait_secs, self.unannounced_wait_secs),
            source_timeout_ms: pick(flags.source_timeout_ms, self.source_timeout_ms),
            cache_mib: pick(flags.cache_mib, self.cache_mib),
            cache_ttl_secs: pick(flags.cache_ttl_secs, self.cache_ttl_secs),
            window_segments: pick(flags.window_segments, self.window_segments),
            max_lag_segments: pick(flags.max_lag_segments, self.max_lag_segments),
            waiting_room_secs: pick(flags.waiting_room_secs, self.waiting_room_secs),
            linger_secs: pick(flags.linger_secs, self.linger_secs),
            publisher_grace_secs: pick(flags.publisher_grace_secs, self.publisher_grace_secs),
            max_connections: pick(flags.max_connections, self.max_connections),
            ack_delay_ms: pick(flags.ack_delay_ms, self.ack_delay_ms),
            overload_lag_ms: pick(flags.overload_lag_ms, self.overload_lag_ms),
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4433)))
    }

    /// The server identity: from --cert/--key, or generated.
    pub fn identity(&self) -> Result<Identity, ConfigError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                Identity::from_pem_files(c, k).map_err(|e| invalid(e.key, e.to_string()))
            }
            (None, None) => Identity::self_signed(&[]).map_err(|e| invalid("cert", e.to_string())),
            (Some(_), None) => Err(invalid("key", "--cert needs --key")),
            (None, Some(_)) => Err(invalid("cert", "--key needs --cert")),
        }
    }

    /// Checks every value and builds the node's configuration. `relay` says which command runs it.
    pub fn node_config(&self, relay: bool) -> Result<NodeConfig, ConfigError> {
        let d = NodeConfig::default();
        let ds = StoreConfig::default();
        fn range(
            key: &'static str,
            v: Option<u64>,
            lo: u64,
            hi: u64,
            default: u64,
        ) -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(x) if (lo..=hi).contains(&x) => Ok(x),
                Some(x) => Err(invalid(key, format!("{x} is outside {lo}..={hi}"))),
            }
        }
        let upstream = self
            .upstream
            .iter()
            .map(|u| {
                let url = QuicUrl::parse(u).map_err(|e| invalid("upstream", e.to_string()))?;
                if !url.path.is_empty() {
                    return Err(invalid(
                        "upstream",
                        format!("{u}: a parent is quic://HOST:PORT, with no stream path"),
                    ));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for a in &self.announce {
            let name = a.strip_suffix('/').unwrap_or(a);
            crate::proto::check_path(name)
                .map_err(|e| invalid("announce", format!("{a:?}: {e}")))?;
        }
        if relay && upstream.is_empty() {
            return Err(invalid(
                "upstream",
                "a relay needs at least one --upstream quic://HOST:PORT",
            ));
        }
        if !relay && !upstream.is_empty() {
            return Err(invalid(
                "upstream",
                "an origin takes no upstream (did you mean `quicast relay`?)",
            ));
        }
        if relay && self.publish_token.is_some() {
            return Err(invalid("publish-token", "a relay takes no publishers"));
        }
        if relay && self.source_password.is_some() {
            return Err(invalid("source-password", "a relay takes no sources"));
        }
        if self.source_password.as_deref() == Some("") {
            return Err(invalid("source-password", "empty password"));
        }
        if self.publish_token.as_deref() == Some("") {
            return Err(invalid("publish-token", "empty token"));
        }
        let upstream_trust = if relay {
            Some(client_trust(self.ca.as_deref(), &self.fingerprint)?)
        } else {
            None
        };
        let name = self.name.clone().unwrap_or_else(|| {
            if relay {
                "relay".into()
            } else {
                "origin".into()
            }
        });
        if name.is_empty() || name.len() > crate::proto::MAX_NAME {
            return Err(invalid("name", "must be 1 to 128 bytes"));
        }
        Ok(NodeConfig {
            name,
            store: StoreConfig {
                cache_bytes: range(
                    "cache-mib",
                    self.cache_mib,
                    1,
                    1 << 20,
                    ds.cache_bytes >> 20,
                )? << 20,
                cache_ttl: Duration::from_secs(range(
                    "cache-ttl-secs",
                    self.cache_ttl_secs,
                    1,
                    86_400,
                    ds.cache_ttl.as_secs(),
                )?),
                window: range("window-segments", self.window_segments, 1, 1000, ds.window)?,
                max_streams: range(
                    "max-streams",
                    self.max_streams,
                    1,
                    10_000_000,
                    ds.max_streams as u64,
                )? as usize,
                max_waiting: range(
                    "max-waiting",
                    self.max_waiting,
                    0,
                    10_000_000,
                    ds.max_waiting as u64,
                )? as usize,
                coalesce: Duration::from_millis(range(
                    "deliver-ms",
                    self.deliver_ms,
                    0,
                    100,
                    ds.coalesce.as_millis() as u64,
                )?),
                max_lag: range(
                    "max-lag-segments",
                    self.max_lag_segments,
                    1,
                    1000,
                    ds.max_lag,
                )?,
            },
            segment_duration: Duration::from_millis(range(
                "segment-ms",
                self.segment_ms,
                20,
                10_000,
                1000,
            )?),
            publish_token: self.publish_token.clone(),
            source_password: self.source_password.clone(),
            http_wait: Duration::from_secs(range(
                "http-wait-secs",
                self.http_wait_secs,
                0,
                3600,
                d.http_wait.as_secs(),
            )?),
            upstream,
            upstream_trust,
            waiting_room: Duration::from_secs(range(
                "waiting-room-secs",
                self.waiting_room_secs,
                0,
                7 * 86_400,
                d.waiting_room.as_secs(),
            )?),
            unannounced_wait: Duration::from_secs(range(
                "unannounced-wait-secs",
                self.unannounced_wait_secs,
                0,
                7 * 86_400,
                d.unannounced_wait.as_secs(),
            )?),
            max_waiting_per_conn: range(
                "max-waiting-per-conn",
                self.max_waiting_per_conn,
                0,
                100_000,
                d.max_waiting_per_conn as u64,
            )? as usize,
            max_waiting_per_addr: range(
                "max-waiting-per-addr",
                self.max_waiting_per_addr,
                0,
                10_000_000,
                d.max_waiting_per_addr as u64,
            )? as usize,
            announce: self.announce.clone(),
            source_timeout: Duration::from_millis(range(
                "source-timeout-ms",
                self.source_timeout_ms,
                100,
                600_000,
                d.source_timeout.as_millis() as u64,
            )?),
            linger: Duration::from_secs(range(
                "linger-secs",
                self.linger_secs,
                0,
                3600,
                d.linger.as_secs(),
            )?),
            publisher_grace: Duration::from_secs(range(
                "publisher-grace-secs",
                self.publisher_grace_secs,
                0,
                3600,
                d.publisher_grace.as_secs(),
            )?),
            max_connections: range(
                "max-connections",
                self.max_connections,
                1,
                10_000_000,
                d.max_connections,
            )?,
            ack_delay: Duration::from_millis(range(
                "ack-delay-ms",
                self.ack_delay_ms,
                0,
                10_000,
                d.ack_delay.as_millis() as u64,
            )?),
            overload_lag: Duration::from_millis(range(
                "overload-lag-ms",
                self.overload_lag_ms,
                0,
                60_000,
                d.overload_lag.as_millis() as u64,
            )?),
            ..d
        })
    }
}

/// A client's trust from `--ca` / `--fingerprint`: exactly one of them.
pub fn client_trust(ca: Option<&Path>, fingerprints: &[String]) -> Result<Trust, ConfigError> {
    match (ca, fingerprints.is_empty()) {
        (Some(ca), true) => Trust::from_ca_file(ca).map_err(|e| invalid(e.key, e.to_string())),
        (None, false) => Trust::pinned(fingerprints).map_err(|e| invalid("fingerprint", e.to_string())),
        (Some(_), false) => Err(invalid("ca", "give --ca or --fingerprint, not both")),
        (None, true) => Err(invalid(
            "ca",
            "no way to trust the server: give --ca PEM, or --fingerprint HEX (printed in the server's log)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NodeArgs, ConfigError> {
        NodeArgs::from_toml(s, Path::new("node.toml"))
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("lisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = parse("listen = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let a = parse("segment-ms = 5\n").unwrap();
        let e = a.node_config(false).unwrap_err().to_string();
        assert!(e.starts_with("segment-ms"), "{e}");
        let a = parse("upstream = [\"http://x:1\"]\nfingerprint = [\"00\"]\n").unwrap();
        assert!(a
            .node_config(true)
            .unwrap_err()
            .to_string()
            .starts_with("upstream"));
    }

    #[test]
    fn flags_win_over_file() {
        let file =
            parse("listen = \"127.0.0.1:1000\"\nsegment-ms = 500\nupstream = [\"quic://a:1\"]\n")
                .unwrap();
        let flags = NodeArgs {
            listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let m = file.overridden_by(flags);
        assert_eq!(m.listen_addr().port(), 2000);
        assert_eq!(m.segment_ms, Some(500));
        assert_eq!(m.upstream, vec!["quic://a:1".to_string()]);
    }

    #[test]
    fn relay_needs_upstream_and_trust() {
        let a = NodeArgs::default();
        assert!(a
            .node_config(true)
            .unwrap_err()
            .to_string()
            .starts_with("upstream"));
        let a = NodeArgs {
            upstream: vec!["quic://127.0.0.1:1".into()],
            ..Default::default()
        };
        assert!(a
            .node_config(true)
            .unwrap_err()
            .to_string()
            .starts_with("ca"));
        assert!(a.node_config(false).is_err());
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let a = NodeArgs::from_toml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
                let relay = !a.upstream.is_empty();
                a.node_config(relay)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 3, "expected the example configs in config/");
    }
}
