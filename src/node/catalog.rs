//! What is live in the tree, as this node knows it: the streams it carries now, and on a
//! relay those its parents say are live (asked of every parent it is connected to, every
//! few seconds: one small exchange per parent, no subscription per stream). Listed on the
//! page and `/streams`, and told to child relays in turn.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::debug;

use super::Node;
use crate::proto::{CatalogEntry, StreamInfo, CATALOG_PAGE_BYTES, MAX_CATALOG_ENTRIES};

/// How often a relay asks its parents.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How long what the parents said is kept when none answers.
const KEEP: Duration = Duration::from_secs(10);
/// Streams a catalog holds at most (a node's default bound on live streams).
pub const MAX_STREAMS: usize = 10_000;
/// Pages asked of one parent at most in one refresh.
const MAX_PAGES: usize = MAX_STREAMS / 8;
/// Pages a child may ask for in one `REFRESH` (twice what a whole catalog takes).
pub const MAX_PAGES_PER_REFRESH: usize = 2 * MAX_PAGES;

/// What the parents last said, and the catalog as last built (a page, `/streams` and every
/// child's request read one snapshot, made again at most every `SNAPSHOT`).
#[derive(Default)]
pub struct Heard {
    inner: Mutex<(BTreeMap<String, CatalogEntry>, Option<Instant>)>,
    snapshot: Mutex<Option<(Instant, Snapshot)>>,
}

/// The catalog as built, by path.
pub type Snapshot = Arc<BTreeMap<String, CatalogEntry>>;

/// How long a built catalog is served before it is made again.
const SNAPSHOT: Duration = Duration::from_secs(1);

impl Node {
    /// The live streams of the tree as this node knows them, by path: its own over what its
    /// parents said, each with the rule this node passes on (the stricter of the stream's
    /// and its own policy). At most a second old.
    pub fn catalog(&self) -> Snapshot {
        let mut snap = self
            .heard
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, c)) = snap.as_ref() {
            if at.elapsed() < SNAPSHOT {
                return c.clone();
            }
        }
        let c = Arc::new(self.build_catalog());
        *snap = Some((Instant::now(), c.clone()));
        c
    }

    fn build_catalog(&self) -> BTreeMap<String, CatalogEntry> {
        let access = self.access();
        let mut all = BTreeMap::new();
        // Its own first: a catalog full of what parents said never hides what is here.
        for slot in self.registry.list() {
            if let Some(b) = slot.broadcast() {
                all.insert(
                    slot.path.clone(),
                    CatalogEntry {
                        path: slot.path.clone(),
                        instance: b.instance,
                        info: StreamInfo {
                            started_ms: b.started_ms(),
                            access: access.rule_for(&slot.path, &b.access()),
                        },
                    },
                );
            }
        }
        let heard = self.heard.inner.lock().unwrap_or_else(|e| e.into_inner());
        if heard.1.is_some_and(|at| at.elapsed() <= KEEP) {
            for (path, e) in heard.0.iter() {
                if all.len() >= MAX_STREAMS {
                    break;
                }
                if all.contains_key(path) {
                    continue;
                }
                let mut e = e.clone();
                e.info.access = access.rule_for(path, &e.info.access);
                all.insert(path.clone(), e);
            }
        }
        all
    }

    /// Who may listen to `path`, as far as the catalog knows before the stream is fetched
    /// (public if it does not know it): the door turns away a listener it would refuse
    /// anyway, before a relay fetches the stream for it.
    /// The rule is the one the stream brought (from its parent), not this node's own
    /// policy, which the check applies itself as it is now (a reload counts at once).
    pub fn known_rule(&self, path: &str) -> crate::proto::StreamAccess {
        if let Some(b) = self.registry.get(path).and_then(|s| s.broadcast()) {
            return b.access();
        }
        let heard = self.heard.inner.lock().unwrap_or_else(|e| e.into_inner());
        match heard.1 {
            Some(at) if at.elapsed() <= KEEP => heard
                .0
                .get(path)
                .map(|e| e.info.access.clone())
                .unwrap_or_default(),
            _ => Default::default(),
        }
    }

    /// A page of the catalog after `after` (in path order), within one message's bound;
    /// and whether more follow.
    pub fn catalog_page(&self, after: &str) -> (Vec<CatalogEntry>, bool) {
        let all = self.catalog();
        let range = if after.is_empty() {
            all.range::<String, _>(..)
        } else {
            all.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        };
        let (mut page, mut bytes) = (Vec::new(), 0);
        for (_, e) in range {
            let len = e.encoded_len();
            if page.len() == MAX_CATALOG_ENTRIES || bytes + len > CATALOG_PAGE_BYTES {
                return (page, true);
            }
            bytes += len;
            page.push(e.clone());
        }
        (page, false)
    }

    /// A parent's word on a broadcast this node carries: its rule holds too (a policy
    /// made stricter upstream reaches the relays that already carry the stream).
    fn heard_of(&self, e: &CatalogEntry) {
        if let Some(b) = self.registry.get(&e.path).and_then(|s| s.broadcast()) {
            if b.instance == e.instance {
                b.tighten(&e.info.access);
            }
        }
    }
}

/// A relay's refresh: asks every parent it is connected to, every `REFRESH`, while the
/// node lives.
pub(super) async fn refresh(node: Weak<Node>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let Some(up) = n.upstream.clone() else { return };
        let links = up.links();
        let mut heard = BTreeMap::new();
        let mut answered = false;
        for link in links {
            let mut after = String::new();
            for _ in 0..MAX_PAGES {
                match link.catalog(&after).await {
                    Ok((entries, more)) => {
                        answered = true;
                        let last = entries.last().map(|e| e.path.clone());
                        for e in entries {
                            n.heard_of(&e);
                            if heard.len() < MAX_STREAMS {
                                heard.entry(e.path.clone()).or_insert(e);
                            }
                        }
                        match last {
                            Some(l) if more && l > after && heard.len() < MAX_STREAMS => after = l,
                            _ => break,
                        }
                    }
                    Err(e) => {
                        debug!(side = "upstream", "catalog not had from a parent: {e}");
                        break;
                    }
                }
            }
        }
        if answered {
            *n.heard.inner.lock().unwrap_or_else(|e| e.into_inner()) =
                (heard, Some(Instant::now()));
        }
        drop(n);
        tokio::time::sleep(REFRESH).await;
    }
}
