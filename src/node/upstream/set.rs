//! A relay's parents as its fetches see them: the set now (a parent's DNS name may change
//! it), each parent's one link, its health, and the legs that use it.
//!
//! A parent that leaves the set (its address left its name's records: a tier scaled down)
//! is not dropped: it is marked gone, so every stream's order no longer holds it and its
//! streams move to their next choice the way they move off a draining parent (the new leg
//! starts, the merge takes over, then the old leg stops); once no leg uses it, its link is
//! closed. One that joins is connected to at once, and the streams that rank it first move
//! to it the same way.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

use super::Upstream;
use crate::error::Result;
use crate::node::config::{ParentChoice, Switch};
use crate::node::inc;
use crate::node::parents::{Member, ParentLink};
use crate::node::rendezvous::hash_order;

/// What a parent is now, as every stream sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Health {
    /// Its link failed, and no new one could be made yet.
    pub(super) down: bool,
    /// It said it is going away.
    pub(super) draining: bool,
    /// A task is trying to connect to it again.
    probing: bool,
    /// A link to it was made at least once (until then it is not counted up: a relay whose
    /// parents never answered is not ready).
    reached: bool,
}

pub(super) struct Parent {
    /// Its name (the hash's identity), weight and way in.
    pub(super) member: Member,
    /// The one connection to it, shared by every stream it carries.
    link: tokio::sync::Mutex<Option<Arc<dyn ParentLink>>>,
    health: Mutex<Health>,
    /// Legs on it now, across streams (a draining or departed parent's link is closed when
    /// none is left).
    pub(super) users: watch::Sender<usize>,
    /// Whether it is in the set now.
    present: watch::Sender<bool>,
}

impl Parent {
    fn new(member: Member) -> Parent {
        Parent {
            member,
            link: tokio::sync::Mutex::new(None),
            health: Mutex::default(),
            users: watch::Sender::new(0),
            present: watch::Sender::new(true),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.member.name
    }

    pub(super) fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_present(&self) -> bool {
        *self.present.borrow()
    }

    /// Resolves once the parent has left the set and no leg uses it.
    async fn left_and_unused(&self) {
        let mut present = self.present.subscribe();
        let mut users = self.users.subscribe();
        loop {
            if !*present.borrow_and_update() && *users.borrow_and_update() == 0 {
                return;
            }
            // The senders live in `self`: neither closes while this runs.
            tokio::select! {
                _ = present.changed() => {}
                _ = users.changed() => {}
            }
        }
    }
}

/// The parents now, in their priority order.
pub(super) type Set = Arc<Vec<Arc<Parent>>>;

/// Backoff between attempts to reach a lost parent.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The parents of a relay: the set now, and those that left it but still carry a leg.
pub(super) struct Parents {
    now: Mutex<Set>,
    /// Parents that left the set, while anything holds them (a leg, their link): one that
    /// comes back is the same parent, its link and health kept.
    gone: Mutex<Vec<Weak<Parent>>>,
    choice: ParentChoice,
    hedge: Switch,
}

impl Parents {
    pub(super) fn new(choice: ParentChoice, hedge: Switch) -> Parents {
        Parents {
            now: Mutex::default(),
            gone: Mutex::default(),
            choice,
            hedge,
        }
    }
}

impl Upstream {
    /// The parents now.
    pub(super) fn set(&self) -> Set {
        self.set
            .now
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The links to parents open now (for the catalog; a link being made is skipped).
    pub(in crate::node) fn links(&self) -> Vec<Arc<dyn ParentLink>> {
        self.set()
            .iter()
            .filter_map(|p| {
                let g = p.link.try_lock().ok()?;
                g.as_ref().filter(|l| !l.is_closed()).cloned()
            })
            .collect()
    }

    /// Parents reached, and neither down since nor draining, of how many.
    pub(in crate::node) fn parents_up(&self) -> (usize, usize) {
        let set = self.set();
        let up = set
            .iter()
            .filter(|p| {
                let h = p.health();
                h.reached && !h.down && !h.draining
            })
            .count();
        (up, set.len())
    }

    /// Whether streams are spread over `n` parents by hashing (`parent-choice`).
    fn hashing(&self, n: usize) -> bool {
        match self.set.choice {
            ParentChoice::Hash => true,
            ParentChoice::Ordered => false,
            ParentChoice::Auto => n > 1,
        }
    }

    /// Whether a stream keeps a standby leg, with `n` parents (`hedge`).
    fn hedging(&self, n: usize) -> bool {
        self.set.hedge != Switch::Off && n > 1
    }

    /// The parents of `path` in `set`, in the order it tries them.
    pub(super) fn order(&self, set: &Set, path: &str) -> Vec<Arc<Parent>> {
        if !self.hashing(set.len()) {
            return set.to_vec();
        }
        let named: Vec<(&str, u32)> = set.iter().map(|p| (p.name(), p.member.weight)).collect();
        hash_order(&named, path)
            .into_iter()
            .map(|i| set[i].clone())
            .collect()
    }

    /// The parents a stream with `order` is to take it from now: the first (with hedging,
    /// two) that are neither down nor draining; the first of its order if none is.
    pub(super) fn wanted(&self, order: &[Arc<Parent>]) -> Vec<Arc<Parent>> {
        let k = if self.hedging(order.len()) { 2 } else { 1 };
        let mut up: Vec<Arc<Parent>> = order
            .iter()
            .filter(|p| {
                let h = p.health();
                !h.down && !h.draining
            })
            .take(k)
            .cloned()
            .collect();
        if up.is_empty() {
            up.extend(order.first().cloned());
        }
        up
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn set_health(&self, p: &Parent, f: impl FnOnce(&mut Health)) {
        let changed = {
            let mut h = p.health.lock().unwrap_or_else(|e| e.into_inner());
            let before = (h.down, h.draining);
            f(&mut h);
            before != (h.down, h.draining)
        };
        if changed {
            self.bump();
        }
    }

    /// Takes the parents `members` say there are now: new ones are connected to at once,
    /// those no longer named leave (their streams move off them, see the module's doc).
    pub(super) fn take_members(self: &Arc<Self>, members: &[Member]) {
        let old = self.set();
        let mut gone = self.set.gone.lock().unwrap_or_else(|e| e.into_inner());
        gone.retain(|w| w.strong_count() > 0);
        let mut next: Vec<Arc<Parent>> = Vec::with_capacity(members.len());
        let mut joined = Vec::new();
        for m in members {
            if next.iter().any(|p| p.name() == m.name) {
                continue;
            }
            let known = old.iter().find(|p| p.member == *m).cloned().or_else(|| {
                gone.iter()
                    .filter_map(Weak::upgrade)
                    .find(|p| p.member == *m)
            });
            let p = known.unwrap_or_else(|| Arc::new(Parent::new(m.clone())));
            if !old.iter().any(|o| Arc::ptr_eq(o, &p)) {
                p.present.send_replace(true);
                joined.push(p.clone());
            }
            next.push(p);
        }
        let mut left = Vec::new();
        for p in old.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, p)) {
                p.present.send_replace(false);
                gone.push(Arc::downgrade(p));
                left.push(p.name().to_string());
            }
        }
        drop(gone);
        if joined.is_empty() && left.is_empty() {
            return;
        }
        *self.set.now.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        let joined_names: Vec<&str> = joined.iter().map(|p| p.name()).collect();
        info!(
            joined = ?joined_names,
            left = ?left,
            parents = members.len(),
            "parents changed: the streams whose first choice changed move, without a gap"
        );
        self.bump();
        for p in joined {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.link(&p).await;
            });
        }
    }

    /// Connects to every parent now, not when a stream is first asked for: the node's
    /// readiness and `quicast_parents_up` say from the start whether any answers. One that
    /// does not is tried again with backoff until it does (see `lost`). Then follows the
    /// set as it changes (DNS).
    pub(in crate::node) fn reach_all(self: &Arc<Self>) {
        let mut members = self.parents.members();
        let now = members.borrow_and_update().clone();
        self.take_members(&now);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let now = members.borrow_and_update().clone();
                let Some(me) = me.upgrade() else { return };
                me.take_members(&now);
            }
        });
    }

    /// Drops the connection to `p` (its next use connects again).
    pub(super) async fn forget_link(&self, p: &Parent) {
        *p.link.lock().await = None;
    }

    /// The connection to `p`: the one it has, or a new one. A parent that cannot be reached
    /// is marked down, and a task tries it again until it comes back.
    pub(super) async fn link(self: &Arc<Self>, p: &Arc<Parent>) -> Result<Arc<dyn ParentLink>> {
        let mut g = p.link.lock().await;
        if let Some(l) = g.as_ref() {
            if !l.is_closed() {
                return Ok(l.clone());
            }
            *g = None;
        }
        match self.parents.connect(&p.member).await {
            Ok(l) => {
                *g = Some(l.clone());
                drop(g);
                self.set_health(p, |h| {
                    *h = Health {
                        reached: true,
                        ..Health::default()
                    }
                });
                info!(parent = %p.name(), node = %l.name(), "connected to parent");
                self.clone().watch_link(p.clone(), l.clone());
                Ok(l)
            }
            Err(e) => {
                drop(g);
                warn!(side = "upstream", parent = %p.name(), "cannot connect: {e}");
                self.lost(p);
                Err(e.upstream())
            }
        }
    }

    /// Follows a link until it ends (the parent is lost), the parent says it is going away,
    /// or it has left the set and no stream uses it.
    fn watch_link(self: Arc<Self>, p: Arc<Parent>, link: Arc<dyn ParentLink>) {
        let span = info_span!("parent", parent = %p.name());
        tokio::spawn(
            async move {
                tokio::select! {
                    e = link.closed() => {
                        inc(&self.failovers);
                        self.lost(&p);
                        warn!(side = "upstream", "parent lost: {e}");
                    }
                    _ = link.going_away() => {
                        // Marked (and counted) before it is said, so what is said is true.
                        self.set_health(&p, |h| h.draining = true);
                        inc(&self.failovers);
                        info!("parent is draining: its streams move to other parents");
                        // Once every stream has moved, this relay leaves it too.
                        let mut users = p.users.subscribe();
                        tokio::select! {
                            _ = async { users.wait_for(|n| *n == 0).await.map(|_| ()) } => {
                                self.close_link(&p, link).await;
                                info!("every stream left the draining parent: link closed");
                            }
                            e = link.closed() => debug!("draining parent closed: {e}"),
                        }
                        self.lost(&p);
                    }
                    _ = p.left_and_unused() => {
                        self.close_link(&p, link).await;
                        info!("every stream left the parent that left the set: link closed");
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Closes `link`, `p`'s connection, if it is still the one it has.
    async fn close_link(&self, p: &Parent, link: Arc<dyn ParentLink>) {
        let mut g = p.link.lock().await;
        if g.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
            *g = None;
        }
        drop(g);
        drop(link);
    }

    /// `p` is lost: marked down, and tried again (with backoff) until it comes back or
    /// leaves the set.
    fn lost(self: &Arc<Self>, p: &Arc<Parent>) {
        let mut start = false;
        self.set_health(p, |h| {
            h.down = true;
            start = !h.probing;
            h.probing = true;
        });
        if !start {
            return;
        }
        let (me, p) = (self.clone(), p.clone());
        let span = info_span!("parent", parent = %p.name());
        tokio::spawn(
            async move {
                let mut wait = FIRST_RETRY;
                loop {
                    tokio::time::sleep(wait).await;
                    if !p.is_present() {
                        debug!("parent left the set: no longer tried");
                        me.set_health(&p, |h| h.probing = false);
                        return;
                    }
                    let g = p.link.lock().await;
                    let alive = g.as_ref().is_some_and(|l| !l.is_closed());
                    drop(g);
                    if alive || me.link(&p).await.is_ok() {
                        info!("parent is back");
                        me.set_health(&p, |h| h.probing = false);
                        return;
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
            .instrument(span),
        );
    }
}
