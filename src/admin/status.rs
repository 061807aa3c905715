//! What a node shows of itself: the live streams of its tree (those it carries now, and on
//! a relay those its parents say are live: see `node::catalog`), as a page with a player for
//! each and as JSON (`/streams`).

use crate::model::Egress;
use crate::node::Node;
use crate::proto::StreamAccess;

#[derive(serde::Serialize)]
struct StreamInfo {
    name: String,
    /// Whether this node carries it now (else its parents say it is live: a listener who
    /// asks is served as quickly, the node fetches it).
    carried: bool,
    /// Listeners here: QUIC listeners, child relays, HTTP Ogg listeners and HLS clients
    /// (those seen within their hold: see `node::audience`).
    listeners: usize,
    /// The same by egress (`quic`, `relay`, `http_ogg`, `hls`).
    by_egress: std::collections::BTreeMap<&'static str, usize>,
    /// When the broadcast began at its origin: Unix time in seconds (the same on every node).
    started_at: u64,
    /// Who may listen: `public`, or `token` (a listen token is needed here).
    access: &'static str,
    /// The broadcast's instance (the same on every node).
    instance: u64,
    /// What only a node that carries it knows (zeros and no parents where it does not: every
    /// entry has every field, for the scripts that read them).
    #[serde(flatten)]
    here: Carried,
    /// Whether this node carries it (`carried`, for the page).
    #[serde(skip)]
    carried_here: bool,
    /// The rule, for the page.
    #[serde(skip)]
    rule: StreamAccess,
}

#[derive(serde::Serialize, Default)]
struct Carried {
    /// `opus`, `mp3` or `aac`; empty where the node does not carry the stream (the catalog
    /// names streams, not their codecs).
    codec: &'static str,
    /// The now-playing title as of the live edge (null: none, or not carried here).
    title: Option<String>,
    sample_rate: u32,
    channels: u8,
    /// Bits per second over the segments held.
    bitrate: u64,
    /// How often its listeners are sent new frames now, in ms (see `model::pacing`; on a
    /// relay, the spacing of its parent's batches, which it passes on).
    delivery_interval_ms: u64,
    /// Where a relay takes the stream from now (`HOST:PORT` of its parents); empty on an origin.
    parents: Vec<String>,
}

fn live_streams(node: &Node) -> Vec<StreamInfo> {
    node.catalog()
        .values()
        .cloned()
        .map(|e| {
            let slot = node.registry.get(&e.path);
            let b = slot.as_ref().and_then(|s| s.broadcast());
            let count = |eg: Egress| slot.as_ref().map_or(0, |s| s.subscribers_by(eg));
            StreamInfo {
                name: e.path.clone(),
                carried: b.is_some(),
                listeners: Egress::ALL.iter().map(|eg| count(*eg)).sum(),
                by_egress: Egress::ALL
                    .iter()
                    .map(|eg| (eg.label(), count(*eg)))
                    .collect(),
                started_at: e.info.started_ms / 1000,
                access: if e.info.access.is_public() {
                    "public"
                } else {
                    "token"
                },
                instance: e.instance,
                carried_here: b.is_some(),
                here: match b {
                    Some(b) => Carried {
                        codec: b.codec.name(),
                        title: b.title().map(|t| String::from_utf8_lossy(&t).into_owned()),
                        sample_rate: b.codec.sample_rate,
                        channels: b.codec.channels,
                        bitrate: b.bitrate(),
                        delivery_interval_ms: b.delivery_interval().as_millis() as u64,
                        parents: slot.as_ref().map(|s| s.parents()).unwrap_or_default(),
                    },
                    None => Carried::default(),
                },
                rule: e.info.access,
            }
        })
        .collect()
}

/// `/streams`: the live streams, as JSON.
pub(crate) fn streams_json(node: &Node) -> String {
    serde_json::to_string(&live_streams(node)).unwrap_or_else(|_| "[]".into())
}

/// The page's player: native HLS, or LL-HLS over Media Source Extensions, or Ogg (see the
/// file). Inlined into the page, so the page needs no route of its own for it.
const PLAYER_JS: &str = include_str!("player.js");
/// Its WebTransport + WebCodecs player, tried first where the browser has both.
const WEBTRANSPORT_JS: &str = include_str!("webtransport.js");

/// Whether `hay` contains `needle`, ASCII case-insensitively (in a const context).
const fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let mut i = 0;
    while i + n.len() <= h.len() {
        let mut j = 0;
        while j < n.len() && h[i + j].eq_ignore_ascii_case(&n[j]) {
            j += 1;
        }
        if j == n.len() {
            return true;
        }
        i += 1;
    }
    false
}

// Inside <script>, the first `</script` ends it.
const _: () = assert!(!contains_ignore_case(PLAYER_JS, "</script"));
const _: () = assert!(!contains_ignore_case(WEBTRANSPORT_JS, "</script"));

/// `<body>`'s attributes that tell the player where this node takes WebTransport: its QUIC
/// port (on the page's own host), the hashes of the certificates it makes for browsers
/// (none where a CA signed its identity), and its alternates' addresses.
fn webtransport_attrs(node: &Node) -> String {
    let Some(door) = node.web.get() else {
        return String::new();
    };
    let hashes = door.hashes().join(",");
    // Hosts are names or addresses and ports numbers (`QuicUrl`): nothing to escape but
    // what a name could hold, which html_escape covers.
    let alternates: Vec<String> = node
        .cfg
        .alternates
        .iter()
        .map(|u| {
            let host = if u.host.contains(':') {
                format!("[{}]", u.host)
            } else {
                u.host.clone()
            };
            format!("https://{host}:{}/", u.port)
        })
        .collect();
    format!(
        " data-wt-port=\"{}\" data-wt-hashes=\"{}\" data-wt-alternates=\"{}\"",
        door.port,
        hashes,
        html_escape(&alternates.join(","))
    )
}

/// `/`: a page listing the live streams of the tree, a player for each the visitor may
/// play: a stream that needs a token plays with the page's `?token=` (checked here first),
/// else the page asks for one.
pub(crate) fn page(node: &Node, token: Option<&str>) -> String {
    let streams = live_streams(node);
    let access = node.access();
    let presented = access.present(token.unwrap_or("").as_bytes());
    let mut items = String::new();
    for s in &streams {
        // Stream names are restricted to [A-Za-z0-9._~-/] and tokens to base64url and '.'
        // (`auth::query_token`): nothing to escape. The `src` is for a browser without
        // scripts; the player sets the best one for the browser.
        let about = match s.carried_here {
            true => format!(
                "{} listening here &middot; {} kbit/s",
                s.listeners,
                s.here.bitrate / 1000
            ),
            false => "live in the tree".to_string(),
        };
        let may = access.may_listen_to(&presented, &s.name, false, &s.rule);
        // MP3 and AAC play as they are, progressive (every browser has both); Opus takes
        // the page's player (WebTransport, LL-HLS, Ogg). A stream not carried here yet
        // is taken for Opus until it is.
        let (ext, codec) = match s.here.codec {
            "mp3" => ("mp3", " data-codec=\"mp3\""),
            "aac" => ("aac", " data-codec=\"aac\""),
            _ => ("ogg", ""),
        };
        let player = match (&may, s.rule.is_public(), token) {
            (Ok(()), true, _) => format!(
                "<audio controls preload=\"none\" data-stream=\"{n}\"{codec} src=\"/{n}.{ext}\"></audio>",
                n = s.name
            ),
            (Ok(()), false, Some(t)) => format!(
                "<audio controls preload=\"none\" data-stream=\"{n}\"{codec} data-token=\"{t}\" src=\"/{n}.{ext}?token={t}\"></audio>",
                n = s.name
            ),
            // No token can help: say why (the operator's to mend).
            (Err(why @ crate::node::Refusal::CannotCheck { .. }), _, _) => format!(
                "<p class=\"refused\">{}</p>",
                html_escape(&why.to_string())
            ),
            (Err(why), _, given) => {
                let said = if given.is_some() {
                    format!("<span class=\"refused\">{}</span> ", html_escape(&why.to_string()))
                } else {
                    String::new()
                };
                format!(
                    "<form class=\"token\" method=\"get\" action=\"/\">{said}Needs a listen token: <input name=\"token\" size=\"24\" autocomplete=\"off\"> <button>Listen</button></form>"
                )
            }
            // A stream that needs a token, let in by the bearer header the page cannot pass
            // on to its player: ask for the token in the address.
            (Ok(()), false, None) => "<form class=\"token\" method=\"get\" action=\"/\">Needs a listen token: <input name=\"token\" size=\"24\" autocomplete=\"off\"> <button>Listen</button></form>".to_string(),
        };
        // The now-playing title (the source's: escaped), kept current by the player.
        let title = s.here.title.as_deref().map(html_escape).unwrap_or_default();
        items += &format!(
            "<li data-name=\"{n}\" data-access=\"{a}\"><h2>{n}</h2><p class=\"title\">{title}</p><p>{about}<span class=\"behind\"></span></p>{player}</li>\n",
            n = s.name,
            a = s.access,
        );
    }
    if streams.is_empty() {
        items = "<li>Nothing is live here right now.</li>".into();
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>quicast: {node}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}li{{list-style:none;margin:1em 0}}h2{{margin:0;font-size:1.1em}}audio{{width:100%}}.behind{{color:#666}}.refused{{color:#a00}}</style>
</head><body{wt}>
<h1>Live on {node}</h1>
<ul id="streams">
{items}</ul>
<p><small>Also as JSON: <a href="/streams">/streams</a>. Any player: <code>ffplay http://HOST:PORT/STREAM.ogg</code> or <code>http://HOST:PORT/STREAM.m3u8</code> (LL-HLS)</small></p>
<script>{WEBTRANSPORT_JS}</script>
<script>{PLAYER_JS}</script>
</body></html>
"#,
        node = html_escape(node.name()),
        wt = webtransport_attrs(node),
    )
}

/// `s` with HTML's special characters escaped (a refusal's reason quotes what it was given).
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
