//! What a node shows of itself: the live streams, as a page with a player for each and as
//! JSON (`/streams`).


use crate::model::Egress;
use crate::node::Node;

#[derive(serde::Serialize)]
struct StreamInfo {
    name: String,
    /// Listeners here: QUIC listeners, child relays, HTTP Ogg listeners and HLS clients
    /// (those seen within their hold: see `node::audience`).
    listeners: usize,
    /// The same by egress (`quic`, `relay`, `http_ogg`, `hls`).
    by_egress: std::collections::BTreeMap<&'static str, usize>,
    /// When the broadcast began at its origin: Unix time in seconds (the same on every node).
    started_at: u64,
    /// Who may listen: `public`, or `token` (a listen token is needed here).
    access: &'static str,
    codec: &'static str,
    sample_rate: u32,
    channels: u8,
    /// Bits per second over the segments held.
    bitrate: u64,
    /// The broadcast's instance (the same on every node).
    instance: u64,
    /// How often its listeners are sent new frames now, in ms (see `model::pacing`).
    delivery_interval_ms: u64,
    /// Where a relay takes the stream from now (`HOST:PORT` of its parents); empty on an origin.
    parents: Vec<String>,
}

fn live_streams(node: &Node) -> Vec<StreamInfo> {
    node.registry
        .list()
        .into_iter()
        .filter_map(|slot| {
            let b = slot.broadcast()?;
            Some(StreamInfo {
                name: slot.path.clone(),
                listeners: Egress::ALL.iter().map(|e| slot.subscribers_by(*e)).sum(),
                by_egress: Egress::ALL
                    .iter()
                    .map(|e| (e.label(), slot.subscribers_by(*e)))
                    .collect(),
                started_at: b.started_ms() / 1000,
                access: if node.access().rule_for(&slot.path, &b.access).is_public() {
                    "public"
                } else {
                    "token"
                },
                codec: "opus",
                sample_rate: b.codec.sample_rate,
                channels: b.codec.channels,
                bitrate: b.bitrate(),
                instance: b.instance,
                delivery_interval_ms: b.delivery_interval().as_millis() as u64,
                parents: slot.parents(),
            })
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

/// `/`: a page listing the live streams, a player for each.
pub(crate) fn page(node: &Node) -> String {
    let streams = live_streams(node);
    let mut items = String::new();
    for s in &streams {
        // Stream names are restricted to [A-Za-z0-9._~-/]: nothing to escape. The `src` is
        // for a browser without scripts; the player sets the best one for the browser.
        items += &format!(
            "<li><h2>{n}</h2><p>{l} listening here &middot; {k} kbit/s<span class=\"behind\"></span></p><audio controls preload=\"none\" data-stream=\"{n}\" src=\"/{n}.ogg\"></audio></li>\n",
            n = s.name,
            l = s.listeners,
            k = s.bitrate / 1000
        );
    }
    if streams.is_empty() {
        items = "<li>Nothing is live here right now.</li>".into();
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>quicast: {node}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}li{{list-style:none;margin:1em 0}}h2{{margin:0;font-size:1.1em}}audio{{width:100%}}.behind{{color:#666}}</style>
</head><body>
<h1>Live on {node}</h1>
<ul id="streams">
{items}</ul>
<p><small>Also as JSON: <a href="/streams">/streams</a>. Any player: <code>ffplay http://HOST:PORT/STREAM.ogg</code> or <code>http://HOST:PORT/STREAM.m3u8</code> (LL-HLS)</small></p>
<script>{PLAYER_JS}</script>
</body></html>
"#,
        node = node.name()
    )
}
