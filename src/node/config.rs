//! A node's configuration: every key declared once, in `keys!` below, with its type (which
//! carries its unit and bounds), its default and its doc. That one declaration makes the
//! command-line flags (`--segment-ms 500`), the TOML file's keys (`segment-ms = 500`) and the
//! resolved `NodeConfig` the node runs with. A flag wins over the file. An unknown key, or a
//! value of the wrong type or out of its bounds, is refused at start, naming the key.
//!
//! Adding a key: one line in `keys!` (and its row in README's table, which a test checks).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::proto::QuicUrl;

pub use super::access::ListenRule;
pub use super::config_values::{
    Announce, Count, Mib, Millis, Name, ParentChoice, Secret, Secs, Switch,
};
pub use super::token::TokenKey;
pub use crate::transport::Fingerprint;

/// A configuration key that cannot be taken: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read it ({})", crate::error::io_reason(.error))]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// How a key's value is given: exactly one (with a default), maybe one, or a list (the flag
/// repeated, a TOML array; its type is the `Vec`).
macro_rules! cfg_ty {
    (one, $t:ty) => { $t };
    (opt, $t:ty) => { Option<$t> };
    (list, $t:ty) => { $t };
}
macro_rules! default_of {
    (one, $t:ty, $d:literal) => {
        <$t as FromStr>::from_str($d)
            .unwrap_or_else(|_| panic!("default {:?} of {} does not parse", $d, stringify!($t)))
    };
    (opt, $t:ty, $d:literal) => {
        None
    };
    (list, $t:ty, $d:literal) => {
        Vec::new()
    };
}
macro_rules! merge {
    (one, $given:expr, $default:expr) => {
        $given.unwrap_or($default)
    };
    (opt, $given:expr, $default:expr) => {
        $given.or($default)
    };
    (list, $given:expr, $default:expr) => {
        $given.unwrap_or($default)
    };
}

/// Which nodes take a key: every node, or only an origin or only a relay (`for origin`,
/// `for relay` after its default in `keys!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Any,
    Origin,
    Relay,
}

impl Role {
    /// Whether a node of this kind (`relay` or not) takes the key.
    pub fn takes(self, relay: bool) -> bool {
        match self {
            Role::Any => true,
            Role::Origin => !relay,
            Role::Relay => relay,
        }
    }
}

macro_rules! role_of {
    () => {
        Role::Any
    };
    (origin) => {
        Role::Origin
    };
    (relay) => {
        Role::Relay
    };
}

macro_rules! keys {
    ($( $(#[doc = $doc:literal])+ $field:ident : $mode:ident $ty:ty = $default:literal $(for $role:ident)? ; )*) => {
        /// The node's settings as given: flags, or a file's keys, each maybe absent.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct NodeArgs {
            /// TOML file with any of these settings (flags win).
            #[arg(long)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])+
                #[arg(long, help = help_of(concat!($($doc, "\n"),+), $default))]
                pub $field: Option<$ty>,
            )*
        }

        /// The settings a node runs with: every key has its value.
        #[derive(Debug, Clone)]
        pub struct NodeConfig {
            $( $(#[doc = $doc])+ pub $field: cfg_ty!($mode, $ty), )*
        }

        impl Default for NodeConfig {
            fn default() -> Self {
                NodeConfig { $( $field: default_of!($mode, $ty, $default), )* }
            }
        }

        /// Every key, as it is written in a file (kebab-case), with its doc.
        pub const KEYS: &[(&str, &str)] = &[ $( (stringify!($field), concat!($($doc),+)), )* ];

        /// Every key (its field's name) and the nodes that take it.
        pub const ROLES: &[(&str, Role)] = &[ $( (stringify!($field), role_of!($($role)?)), )* ];

        impl NodeArgs {
            /// The file's settings, overridden by the flags given.
            pub fn overridden_by(self, flags: NodeArgs) -> NodeArgs {
                NodeArgs {
                    config: flags.config,
                    $( $field: flags.$field.or(self.$field), )*
                }
            }

            /// The keys given (field names).
            pub fn given(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$field.is_some() { v.push(stringify!($field)); } )*
                v
            }

            /// Every key given, over the defaults.
            pub fn resolve(self) -> NodeConfig {
                let d = NodeConfig::default();
                NodeConfig { $( $field: merge!($mode, self.$field, d.$field), )* }
            }

            /// The settings of a TOML file; an unknown key or a bad value is refused by name.
            /// A TOML syntax error names the file, line and column (and the key of that line);
            /// a bad key or value names the key, and where it is.
            pub fn from_toml(text: &str, path: &Path) -> Result<NodeArgs, ConfigError> {
                let table: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
                    toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
                // In the file's order: the first wrong key is the one reported.
                let mut entries: Vec<_> = table.into_iter().collect();
                entries.sort_by_key(|(_, v)| v.span().start);
                let mut args = NodeArgs::default();
                for (key, value) in entries {
                    let (line, col) = line_col(text, value.span().start);
                    let at = format!("{}:{line}:{col}", path.display());
                    let field = key.replace('-', "_");
                    let known = !key.contains('_') && KEYS.iter().any(|(k, _)| *k == field);
                    if !known {
                        return Err(invalid(&key, format!(
                            "unknown key ({at}; see `quicast origin --help` and `quicast relay --help` for the keys)"
                        )));
                    }
                    let value = value.into_inner();
                    $(
                        if field == stringify!($field) {
                            let is_list = matches!(stringify!($mode), "list");
                            if is_list && !value.is_array() {
                                return Err(invalid(&key, format!(
                                    "a list, written [\"...\", \"...\"] ({at})"
                                )));
                            }
                            args.$field = Some(value.try_into().map_err(|e: toml::de::Error| {
                                invalid(&key, format!("{} ({at})", e.message().trim()))
                            })?);
                            continue;
                        }
                    )*
                }
                Ok(args)
            }
        }
    };
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// A TOML syntax error: the file, line and column, what is wrong, and the key of that line
/// when it has one.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().trim_end_matches('.').to_string();
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            path: path.display().to_string(),
            message: format!("not valid TOML: {message}"),
        };
    };
    let (line, col) = line_col(text, span.start);
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ConfigError::Parse {
        path: format!("{}:{line}:{col}", path.display()),
        message: match key {
            Some(k) => format!("not valid TOML, at key `{k}`: {message}"),
            None => format!("not valid TOML: {message}"),
        },
    }
}

/// A key's help: its doc as one paragraph, and its default when it has one.
fn help_of(doc: &str, default: &str) -> String {
    let text: Vec<&str> = doc
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = text.join(" ");
    if default.is_empty() || text.contains("[default:") {
        text
    } else {
        format!("{text} [default: {default}]")
    }
}

keys! {
    /// Name of this node, in logs and in its hello to peers [default: origin or relay].
    name: opt Name = "";
    /// UDP address to serve QUIC on.
    listen: one SocketAddr = "127.0.0.1:4433";
    /// Parent node, quic://HOST:PORT (repeat, in priority order). Makes this node a relay.
    upstream: list Vec<QuicUrl> = "" for relay;
    /// TLS certificate chain (PEM). Without cert and key a self-signed one is generated.
    cert: opt PathBuf = "";
    /// TLS private key (PEM).
    key: opt PathBuf = "";
    /// CA certificate(s) (PEM) to trust for parents.
    ca: opt PathBuf = "" for relay;
    /// SHA-256 fingerprint of a parent's certificate to pin (repeat for several parents).
    fingerprint: list Vec<Fingerprint> = "" for relay;
    /// TCP address for HTTP: listeners (GET /STREAM.ogg, the page at /) and, on an origin,
    /// Icecast sources (PUT or SOURCE /STREAM). Off unless given.
    http: opt SocketAddr = "";
    /// TCP address of the admin port: GET /metrics (Prometheus), /healthz, /readyz. Off
    /// unless given; never the public HTTP address.
    admin: opt SocketAddr = "";
    /// Password Icecast sources give as basic auth `source:PASSWORD` (origin). Without it,
    /// HTTP ingest is off.
    source_password: opt Secret = "" for origin;
    /// Seconds an HTTP listener may wait for a stream that has not started, then 404.
    http_wait_secs: one Secs<0, 3600> = "30";
    /// How often an HTTP Ogg listener's socket is written, in ms: the pages of the
    /// deliveries in between go in one write (a socket write costs the kernel far more than
    /// the bytes). Half a second: at a second Chromium's `<audio>` still stalled now and then
    /// with seconds in hand. 0: at every delivery. `?latency=low`: every frame.
    http_write_ms: one Millis<0, 5000> = "500";
    /// How much audio an HTTP Ogg listener is sent at once as it joins, in ms (whole
    /// segments, as far back as the node holds): a browser's `<audio>` plays progressive
    /// Ogg from the first page it gets, and with less in hand it stalls (Chromium: a
    /// `waiting` within seconds). Icecast sends 64 KB, 8 s at 64 kbit/s. `?latency=low`:
    /// one segment.
    http_burst_ms: one Millis<0, 30000> = "6000";
    /// Token publishers must present (origin). Without one, anyone may publish.
    publish_token: opt Secret = "" for origin;
    /// A key signed tokens are checked with, KID=FILE (repeat: several at once let keys
    /// rotate): an HMAC-SHA256 secret (at least 32 bytes) or an ECDSA P-256 public key (PEM,
    /// ES256). With keys, publishers and child relays need a signed token. Re-read on SIGHUP.
    token_key: list Vec<TokenKey> = "";
    /// Who may listen, PREFIX=public or PREFIX=token (repeat; the longest matching prefix
    /// decides, / is every stream) [default: every stream public]. Re-read on SIGHUP.
    listen_policy: list Vec<ListenRule> = "";
    /// File holding the relay token (role relay) this relay presents to its parents; read
    /// at each connection to a parent, so a new one is taken without a restart.
    relay_token: opt PathBuf = "" for relay;
    /// Target segment duration in milliseconds (origin), rounded to whole LL-HLS parts of
    /// about 200 ms.
    segment_ms: one Millis<20, 10_000> = "1000";
    /// Delivery interval in ms (origin), fixed for every stream: listeners are sent new
    /// frames at most this often, in one write [default: per stream, the longest interval
    /// whose frames fill one packet, within latency-budget-ms]. 0 sends every frame at once.
    deliver_ms: opt Millis<0, 1000> = "";
    /// Most latency the automatic delivery interval may add, in ms (origin): a stream whose
    /// packet would take longer to fill (a low bitrate) is sent this often.
    latency_budget_ms: one Millis<20, 1000> = "200";
    /// Largest UDP payload sent to a peer once its path has carried one (probed once per
    /// connection; back to 1200 if large packets are lost). 1200 turns probing off.
    max_packet_bytes: one Count<1200, 1452> = "1452";
    /// Under CPU load, the delivery interval grows step by step up to this many ms (every
    /// listener keeps its audio, with more latency) before newcomers are refused; it shrinks
    /// again when load falls. 0: it never grows.
    max_deliver_ms: one Millis<0, 5000> = "500";
    /// While the node serves its subscribers this many ms after their wake-up (its fan-out
    /// falls behind), or its tasks run this late, or a thread serving connections is
    /// saturated, the delivery interval grows a step.
    stretch_lag_ms: one Millis<1, 60_000> = "150";
    /// Stream names (or prefixes ending in /) sent every frame at once, at more cost per
    /// listener, while the node has headroom (repeat).
    low_latency: list Vec<Announce> = "";
    /// Segment cache size in MiB, all streams together.
    cache_mib: one Mib<1, 1_048_576> = "256";
    /// Seconds a cached segment is kept.
    cache_ttl_secs: one Secs<1, 86_400> = "60";
    /// Sealed segments kept per stream.
    window_segments: one Count<1, 1000> = "8";
    /// Segments a subscriber may fall behind before it is moved to the newest.
    max_lag_segments: one Count<1, 1000> = "3";
    /// Live streams (and announced names) this node holds at once.
    max_streams: one Count<1, 10_000_000> = "10000";
    /// Waiting rooms for names nobody announced, held at once; apart from max-streams, so
    /// they never keep a publisher from starting.
    max_waiting: one Count<0, 10_000_000> = "1000";
    /// Subscriptions to streams that are not live one listener connection may hold.
    max_waiting_per_conn: one Count<0, 100_000> = "4";
    /// Subscriptions to streams that are not live all listeners from one IP address may hold.
    max_waiting_per_addr: one Count<0, 10_000_000> = "64";
    /// Subscriptions one listener connection may hold (a child relay's are bounded by the
    /// node's stream bounds instead: it carries what its own listeners ask for).
    max_subscriptions_per_conn: one Count<1, 10_000> = "16";
    /// Stream names (or prefixes ending in /) announced ahead: their waiting rooms are kept
    /// for waiting-room-secs and never count against max-waiting (repeat).
    announce: list Vec<Announce> = "";
    /// Seconds a subscription may wait for an announced stream that has not started.
    waiting_room_secs: one Secs<0, 604_800> = "3600";
    /// Seconds a subscription may wait for a name nobody announced.
    unannounced_wait_secs: one Secs<0, 604_800> = "30";
    /// A publisher or source that sends no audio for this many ms is lost: its grace
    /// period starts.
    source_timeout_ms: one Millis<100, 600_000> = "3000" for origin;
    /// How far ahead of real time an Icecast source may send, in ms (origin): its audio is
    /// taken no faster than the wall clock since it began plus this much (an encoder's
    /// start-up burst, a network's hiccup); beyond, it is not read until due (TCP holds it
    /// back), never dropped. 0: not ahead at all.
    source_burst_ms: one Millis<0, 600_000> = "5000" for origin;
    /// Seconds a relay keeps an upstream subscription after its last subscriber left.
    linger_secs: one Secs<0, 3600> = "5" for relay;
    /// Seconds an origin waits for a lost publisher to come back before ending the stream.
    publisher_grace_secs: one Secs<0, 3600> = "10" for origin;
    /// Most connections served at once, QUIC and HTTP together.
    max_connections: one Count<1, 10_000_000> = "100000";
    /// QUIC connections one IP address may hold with nothing to do (no subscription, no
    /// publish) for longer than `hello-timeout`: past this, such a connection is closed.
    /// Newcomers are never refused for it (a crowd behind one NAT arrives together), and
    /// listeners each hold a subscription, so they are not counted; a stranger cannot take
    /// the node's connection slots by holding idle ones.
    max_idle_per_addr: one Count<1, 10_000_000> = "64";
    /// Most HTTP connections served at once (each holds a file descriptor) [default: as
    /// many as the process's descriptor limit leaves room for].
    max_http_connections: opt Count<0, 10_000_000> = "";
    /// Longest a listener is asked to delay its ACKs, in ms (QUIC ACK-frequency extension):
    /// one ACK per 10 packets or this long, instead of one per packet. 0 asks nothing.
    ack_delay_ms: one Millis<0, 10_000> = "1000";
    /// Refuse new connections while the node's tasks run this many ms late (CPU overload),
    /// to keep serving the listeners it has. 0 never refuses.
    overload_lag_ms: one Millis<0, 60_000> = "1000";
    /// Above this many new QUIC connections a second, a client must prove its address (a
    /// QUIC Retry: one more round trip) before the node spends a handshake on it, so spoofed
    /// floods cost it one small packet each. 0: always.
    retry_above_per_sec: one Count<0, 10_000_000> = "2000";
    /// How long a new QUIC client may expect to wait for its handshake in the queue of
    /// newcomers, in ms, at the rate the node measures it takes them up. A crowd within it
    /// waits; past it, a newcomer's first packet goes unanswered and its client sends it
    /// again after QUIC's retransmission timer (deferred, never refused for the queue).
    join_queue_ms: one Millis<1, 60_000> = "4000";
    /// QUIC server threads, each with its own socket on the port (SO_REUSEPORT) and the
    /// connections that live on it; the kernel steers each packet to its connection's
    /// thread by connection ID [default: one per core the process may run on].
    quic_threads: opt Count<1, 255> = "";
    /// How long a relay waits for a parent's handshake before trying the next, in ms.
    connect_timeout_ms: one Millis<100, 60_000> = "3000" for relay;
    /// How long a client may take to open its control stream and say hello, in ms.
    hello_timeout_ms: one Millis<100, 60_000> = "10000";
    /// How long a relay's parent has to say a name is live before the relay counts it as
    /// a waiting room, in ms.
    probe_ms: one Millis<0, 60_000> = "2000" for relay;
    /// Seconds a relay remembers that its parent refused a name (not found, overloaded).
    refusal_memory_secs: one Secs<0, 3600> = "5" for relay;
    /// How a relay picks each stream's parent: `hash` (rendezvous hashing of the stream's
    /// name over the parents: every relay with the same parents picks the same one for a
    /// stream, the same fallbacks after it, and a tier's streams spread over its nodes),
    /// `ordered` (the first parent listed that is up), or `auto` (hash with two parents or
    /// more).
    parent_choice: one ParentChoice = "auto" for relay;
    /// Keep a standby subscription on each stream's second parent, merged by position, so
    /// that losing a parent costs no stall (one more upstream subscription per stream):
    /// `on`, `off`, or `auto` (on with two parents or more).
    hedge: one Switch = "auto" for relay;
    /// A parent that sends nothing (no audio, no keep-alive) for this long is lost, in ms.
    parent_timeout_ms: one Millis<50, 60_000> = "300" for relay;
    /// On SIGTERM: how long to wait for listeners and child relays to move (told to go away,
    /// and to the alternates) before closing, in seconds.
    drain_secs: one Secs<0, 3600> = "10";
    /// Nodes a draining node names to those it tells to go away, quic://HOST:PORT (repeat).
    alternates: list Vec<QuicUrl> = "";
}

impl NodeArgs {
    /// The file named by `--config` (if any), overridden by the flags given; a key the role
    /// (`relay` or an origin) does not take is refused, as a flag or in the file.
    pub fn load(self, relay: bool) -> Result<NodeArgs, ConfigError> {
        self.check_role(relay, None)?;
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e,
        })?;
        let file = NodeArgs::from_toml(&text, &path)?;
        file.check_role(relay, Some(&path))?;
        Ok(file.overridden_by(self))
    }

    /// Refuses a key given that only the other role takes, naming it as it was given: the
    /// flag (`file` None), or the key in `file`.
    pub fn check_role(&self, relay: bool, file: Option<&Path>) -> Result<(), ConfigError> {
        for field in self.given() {
            let role = ROLES
                .iter()
                .find(|(k, _)| *k == field)
                .map_or(Role::Any, |(_, r)| *r);
            if role.takes(relay) {
                continue;
            }
            let key = field.replace('_', "-");
            let (name, place) = match file {
                None => (format!("--{key}"), String::new()),
                Some(p) => (key, format!(" (in {})", p.display())),
            };
            let why = if relay {
                "only an origin takes this; a relay takes no publishers or sources, its streams come from its parents (see `quicast relay --help`)"
            } else {
                "only a relay takes this; an origin has no parents (did you mean `quicast relay`? see `quicast origin --help`)"
            };
            return Err(invalid(&name, format!("{why}{place}")));
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Whether this node takes its streams from parents.
    pub fn is_relay(&self) -> bool {
        !self.upstream.is_empty()
    }

    /// What a relay without token keys will refuse, said at start and by `check-config`:
    /// the streams its parents protect reach it with their rule, and with no key to check a
    /// token with it turns their listeners away (it fails closed).
    pub fn fails_closed(&self) -> Option<String> {
        (self.is_relay() && self.token_key.is_empty()).then(|| {
            "this relay has no token-key: listeners of streams its parents protect with a \
             token are refused here (give it the tree's listen keys: see README, Securing a tree)"
                .to_string()
        })
    }

    /// The node's name: as configured, or its role's.
    pub fn name(&self) -> &str {
        match &self.name {
            Some(n) => &n.0,
            None if self.is_relay() => "relay",
            None => "origin",
        }
    }

    /// Checks what only the keys together can say, for the role `relay` says.
    pub fn check(&self, relay: bool) -> Result<(), ConfigError> {
        if relay && self.upstream.is_empty() {
            return Err(invalid(
                "upstream",
                "a relay needs at least one --upstream quic://HOST:PORT",
            ));
        }
        if self.admin.is_some_and(|a| a.port() != 0) && self.admin == self.http {
            return Err(invalid(
                "admin",
                "the admin port must not be the public HTTP address (metrics are not for everyone)",
            ));
        }
        if !relay && !self.upstream.is_empty() {
            return Err(invalid(
                "upstream",
                "an origin takes no upstream (did you mean `quicast relay`?)",
            ));
        }
        if let Some(u) = self.upstream.iter().find(|u| !u.path.is_empty()) {
            return Err(invalid(
                "upstream",
                format!("{u}: a parent is quic://HOST:PORT, with no stream path"),
            ));
        }
        if relay && self.publish_token.is_some() {
            return Err(invalid("publish-token", "a relay takes no publishers"));
        }
        if !relay && self.relay_token.is_some() {
            return Err(invalid(
                "relay-token",
                "an origin has no parents to present it to",
            ));
        }
        if let Some(f) = &self.relay_token {
            read_relay_token(f)?;
        }
        if relay && self.source_password.is_some() {
            return Err(invalid("source-password", "a relay takes no sources"));
        }
        if relay {
            match (&self.ca, self.fingerprint.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid("ca", "give --ca or --fingerprint, not both"))
                }
                (None, true) => return Err(invalid(
                    "ca",
                    "no way to trust the parents: give --ca PEM, or --fingerprint HEX (printed in the parent's log)",
                )),
                _ => {}
            }
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(invalid("key", "--cert needs --key")),
            (None, Some(_)) => return Err(invalid("cert", "--key needs --cert")),
            _ => {}
        }
        // Key files are read, and the policy checked against them.
        super::access::Access::from_config(self).map(|_| ())
    }
}

/// The relay token in `file`: its one line, bounded; refused naming `relay-token`.
pub fn read_relay_token(file: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read(file).map_err(|e| {
        invalid(
            "relay-token",
            format!(
                "{}: cannot read it ({})",
                file.display(),
                crate::error::io_reason(&e)
            ),
        )
    })?;
    let t = String::from_utf8_lossy(&text).trim().to_string();
    if t.is_empty() || t.len() > super::token::MAX_TOKEN || t.contains(char::is_whitespace) {
        return Err(invalid(
            "relay-token",
            format!(
                "{}: expected one token of at most {} bytes",
                file.display(),
                super::token::MAX_TOKEN
            ),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(s: &str) -> Result<NodeArgs, ConfigError> {
        NodeArgs::from_toml(s, Path::new("node.toml"))
    }

    #[test]
    fn every_default_parses() {
        let d = NodeConfig::default();
        assert_eq!(d.segment_ms.get(), Duration::from_secs(1));
        assert_eq!(d.listen.port(), 4433);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("lisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = parse("segment_ms = 500\n").unwrap_err().to_string();
        assert!(e.starts_with("segment_ms"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = parse("listen = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("listen"), "{e}");
        let e = parse("segment-ms = 5\n").unwrap_err().to_string();
        assert!(
            e.starts_with("segment-ms") && e.contains("outside 20..=10000"),
            "{e}"
        );
        let e = parse("segment-ms = -5\n").unwrap_err().to_string();
        assert!(e.starts_with("segment-ms"), "{e}");
        let e = parse("upstream = [\"http://x:1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("upstream"), "{e}");
        let e = parse(&format!("fingerprint = [\"{}\"]\n", "é".repeat(32)))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("fingerprint"), "{e}");
        let e = parse("announce = [\"a/../b\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("announce"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_the_file_line_column_and_key() {
        let e = parse("listen = \"127.0.0.1:1\"\nsegment-ms = 500\nhttp = \"127.0.0.1:80\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("node.toml:3:"), "{e}");
        assert!(e.contains("at key `http`"), "{e}");
        let e = parse("segment-ms = 500\nsegment-ms 600\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("node.toml:2:"), "{e}");
        let e = parse("segment-ms = 500\n[oops\n").unwrap_err().to_string();
        assert!(e.starts_with("node.toml:2:"), "{e}");
        // A bad value: the key first, and where it is.
        let e = parse("listen = \"127.0.0.1:1\"\nsegment-ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("segment-ms: ") && e.ends_with("(node.toml:2:14)"),
            "{e}"
        );
        let e = parse("segment-ms = \"500\"\n").unwrap_err().to_string();
        assert!(e.contains("expected a whole number"), "{e}");
        assert!(!e.contains("i64"), "{e}");
        let e = parse("upstream = \"quic://a:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("upstream: a list"), "{e}");
        assert!(!e.contains("sequence"), "{e}");
    }

    #[test]
    fn a_key_of_the_other_role_is_refused_as_a_flag_and_in_a_file() {
        let file = parse("hedge = \"on\"\nsegment-ms = 500\n").unwrap();
        let e = file
            .check_role(false, Some(Path::new("node.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hedge: only a relay takes this"), "{e}");
        assert!(e.contains("node.toml"), "{e}");
        file.check_role(true, Some(Path::new("node.toml"))).unwrap();
        let flags = NodeArgs {
            publisher_grace_secs: Some(Secs::new(5)),
            ..Default::default()
        };
        let e = flags.check_role(true, None).unwrap_err().to_string();
        assert!(
            e.starts_with("--publisher-grace-secs: only an origin takes this"),
            "{e}"
        );
        flags.check_role(false, None).unwrap();
        // Keys of every node pass both.
        let both = parse("listen = \"127.0.0.1:1\"\ncache-mib = 64\n").unwrap();
        both.check_role(true, None).unwrap();
        both.check_role(false, None).unwrap();
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
        let m = file.overridden_by(flags).resolve();
        assert_eq!(m.listen.port(), 2000);
        assert_eq!(m.segment_ms.value(), 500);
        assert_eq!(m.upstream, vec![QuicUrl::parse("quic://a:1").unwrap()]);
    }

    #[test]
    fn relay_needs_upstream_and_trust() {
        let c = NodeArgs::default().resolve();
        assert!(c
            .check(true)
            .unwrap_err()
            .to_string()
            .starts_with("upstream"));
        c.check(false).unwrap();
        let c = NodeArgs {
            upstream: Some(vec![QuicUrl::parse("quic://127.0.0.1:1").unwrap()]),
            ..Default::default()
        }
        .resolve();
        assert!(c.check(true).unwrap_err().to_string().starts_with("ca"));
        assert!(c.check(false).is_err());
        let c = NodeArgs {
            upstream: Some(vec![QuicUrl::parse("quic://127.0.0.1:1/live").unwrap()]),
            fingerprint: Some(vec!["ab".repeat(32).parse().unwrap()]),
            ..Default::default()
        }
        .resolve();
        assert!(c
            .check(true)
            .unwrap_err()
            .to_string()
            .contains("no stream path"));
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.extend(
            std::fs::read_dir(dir.join("redundant"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
        // The token files the secured examples name (check() reads them), made here; the
        // certificates are read by the CLI's check (tests/cli.rs), not here.
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("tokens-2026-12.key"), "k".repeat(48)).unwrap();
        std::fs::write(files.path().join("relay.token"), "a.b.c\n").unwrap();
        let etc = format!("{}/", files.path().display());
        let mut admins = std::collections::HashSet::new();
        for p in paths {
            if p.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("/etc/quicast/", &etc);
                let a = NodeArgs::from_toml(&text, &p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let c = a.clone().resolve();
                a.check_role(c.is_relay(), Some(&p))
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                c.check(c.is_relay())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                // A shared publish secret beside token keys is a second way in: the
                // walkthrough's secured tree must not ship one.
                assert!(
                    c.token_key.is_empty() || c.publish_token.is_none(),
                    "{}: publish-token beside token-key",
                    p.display()
                );
                // The walkthrough scrapes every node of the redundant tree: each has an
                // admin port of its own.
                if p.parent().is_some_and(|d| d.ends_with("redundant")) {
                    let a = c
                        .admin
                        .unwrap_or_else(|| panic!("{}: no admin", p.display()));
                    assert!(a.ip().is_loopback(), "{}: admin {a}", p.display());
                    assert!(admins.insert(a.port()), "{}: admin {a} taken", p.display());
                }
                n += 1;
            }
        }
        assert_eq!(
            admins.len(),
            7,
            "the redundant tree's nodes each name an admin port"
        );
        assert!(
            n >= 10,
            "expected the example configs in config/ and config/redundant/"
        );
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        for (key, _) in KEYS {
            let key = key.replace('_', "-");
            assert!(
                readme.contains(&format!("`{key}`")),
                "README's configuration table lacks `{key}`"
            );
        }
    }
}
