//! What is live in the tree, as this node knows it: the streams it carries now, and on a
//! relay those its parents say are live (asked of every parent it is connected to, every
//! few seconds: one small exchange per parent, no subscription per stream). Listed on the
//! page and `/streams`, and told to child relays in turn.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};
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

/// What the parents last said.
#[derive(Default)]
pub struct Heard {
    inner: Mutex<(BTreeMap<String, CatalogEntry>, Option<Instant>)>,
}

impl Node {
    /// The live streams of the tree as this node knows them, by path: its own (with the
    /// rule it passes on) over what its parents said.
    pub fn catalog(&self) -> BTreeMap<String, CatalogEntry> {
        let mut all = {
            let g = self.heard.inner.lock().unwrap_or_else(|e| e.into_inner());
            match g.1 {
                Some(at) if at.elapsed() <= KEEP => g.0.clone(),
                _ => BTreeMap::new(),
            }
        };
        let access = self.access();
        for slot in self.registry.list() {
            if let Some(b) = slot.broadcast() {
                if all.len() >= MAX_STREAMS && !all.contains_key(&slot.path) {
                    continue;
                }
                all.insert(
                    slot.path.clone(),
                    CatalogEntry {
                        path: slot.path.clone(),
                        instance: b.instance,
                        info: StreamInfo {
                            started_ms: b.started_ms(),
                            access: access.rule_for(&slot.path, &b.access),
                        },
                    },
                );
            }
        }
        all
    }

    /// A page of the catalog after `after` (in path order), within one message's bound;
    /// and whether more follow.
    pub fn catalog_page(&self, after: &str) -> (Vec<CatalogEntry>, bool) {
        let all = self.catalog();
        let from = std::ops::Bound::Excluded(after.to_string());
        let range = if after.is_empty() {
            all.range::<String, _>(..)
        } else {
            all.range((from, std::ops::Bound::Unbounded))
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
}

/// A relay's refresh: asks every parent it is connected to, every `REFRESH`, while the
/// node lives.
pub(super) async fn refresh(node: Weak<Node>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let Some(up) = n.upstream.clone() else { return };
        let links = up.links().await;
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
                            if heard.len() < MAX_STREAMS {
                                heard.entry(e.path.clone()).or_insert(e);
                            }
                        }
                        match last {
                            Some(l) if more && l > after => after = l,
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
