//! HLS audiences: clients that poll (a playlist, then its segments, then the playlist
//! again) hold nothing between two requests, yet they are listening. A stream's audience
//! here is the clients seen within its hold: each distinct (address, User-Agent) that asked
//! for the stream's playlist or media within the last `hold`. While it has anyone, the
//! audience holds a subscription, so a relay keeps fetching the stream between polls (it
//! let go and came back at the live edge before: a hole in the client's audio), and its
//! clients are counted as the stream's HLS listeners (`quicast_listeners{egress="hls"}`,
//! `/streams`), not the requests in flight. A CDN in front of an edge counts as one client:
//! the edge cannot see past it.
//!
//! How long: `hold` is four target durations, at least six seconds. A client reloads a live
//! playlist every target duration (RFC 8216 6.3.4: half of one when it did not change);
//! one that asked nothing for four has missed three reloads and is gone. The floor covers a
//! player that buffers a few segments ahead between reloads.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::model::{Egress, Slot};

use super::{Node, Subscriber};

/// How often clients no longer seen are let go.
const SWEEP: Duration = Duration::from_millis(500);
/// Clients counted per stream at most (memory: a stranger cycling User-Agents).
const MAX_CLIENTS: usize = 100_000;

/// How long a polling client counts after its last request (see the module's comment).
pub fn hold_for(target_duration: Duration) -> Duration {
    (target_duration * 4).max(Duration::from_secs(6))
}

/// A client of the HLS egress: its address and User-Agent, hashed.
pub fn client_key(addr: IpAddr, user_agent: Option<&str>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    user_agent.hash(&mut h);
    h.finish()
}

#[derive(Default)]
pub struct Audiences {
    by_stream: Mutex<HashMap<String, Audience>>,
}

struct Audience {
    /// Keeps the stream fetched while anyone polls it.
    hold: Subscriber,
    slot: Arc<Slot>,
    /// Each client's last request.
    clients: HashMap<u64, Instant>,
    hold_for: Duration,
}

impl Audience {
    fn let_go(&mut self, now: Instant) {
        let before = self.clients.len();
        let hold = self.hold_for;
        self.clients
            .retain(|_, seen| now.duration_since(*seen) < hold);
        self.slot
            .uncount_clients(Egress::Hls, before - self.clients.len());
    }
}

impl Drop for Audience {
    fn drop(&mut self) {
        self.slot.uncount_clients(Egress::Hls, self.clients.len());
    }
}

impl Audiences {
    /// `client` asked for `name`, served from subscription `sub` (the request's: kept as
    /// the audience's hold if it has none, or if the broadcast changed).
    pub fn seen(
        &self,
        node: &Arc<Node>,
        name: &str,
        client: u64,
        sub: Subscriber,
        hold_for: Duration,
        now: Instant,
    ) {
        let mut map = self.by_stream.lock().unwrap_or_else(|e| e.into_inner());
        let start_sweeping = map.is_empty();
        let slot = sub.slot().clone();
        let a = match map.get_mut(name) {
            Some(a) => {
                if !Arc::ptr_eq(&a.slot, &slot) {
                    // The stream was let go and made again meanwhile: counted and held there.
                    a.slot.uncount_clients(Egress::Hls, a.clients.len());
                    slot.count_clients(Egress::Hls, a.clients.len());
                    a.slot = slot;
                    a.hold = sub;
                } else if !Arc::ptr_eq(a.hold.cursor.broadcast(), sub.cursor.broadcast()) {
                    // A new broadcast: the old one is not kept for the hold's sake.
                    a.hold = sub;
                }
                a
            }
            None => map.entry(name.to_string()).or_insert(Audience {
                slot,
                hold: sub,
                clients: HashMap::new(),
                hold_for,
            }),
        };
        a.hold_for = hold_for;
        if a.clients.insert(client, now).is_none() {
            if a.clients.len() > MAX_CLIENTS {
                a.clients.remove(&client);
            } else {
                a.slot.count_clients(Egress::Hls, 1);
            }
        }
        drop(map);
        if start_sweeping {
            let weak = Arc::downgrade(node);
            node.spawn(sweep(weak));
        }
    }

    /// HLS clients of `name` now.
    pub fn clients(&self, name: &str) -> usize {
        let map = self.by_stream.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).map_or(0, |a| a.clients.len())
    }

    /// Lets go of clients not seen within their hold, and of audiences left with none.
    /// Returns whether any audience is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut map = self.by_stream.lock().unwrap_or_else(|e| e.into_inner());
        for a in map.values_mut() {
            a.let_go(now);
        }
        map.retain(|_, a| !a.clients.is_empty());
        !map.is_empty()
    }
}

async fn sweep(node: Weak<Node>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(node) = node.upgrade() else { return };
        if !node.audiences.sweep(Instant::now()) {
            return;
        }
    }
}
