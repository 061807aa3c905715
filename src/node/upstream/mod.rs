//! A relay's source of segments: its parents. One upstream subscription per stream per
//! parent it uses, however many subscribe below: the first subscriber starts the stream's
//! fetch (its leader), and every later one waits on the same slot (the followers), like a
//! CDN's cache lock.
//!
//! Each stream has its own order of parents: the list as given (`ordered`), or the list
//! sorted by rendezvous hashing of the stream's name (`hash`), so that every relay with the
//! same parents sends a stream to the same parent, and a tier's streams spread over its
//! nodes. The fetch runs a *leg* (a subscription) on the first parent of that order that is
//! up, and with hedging on the second too; legs are merged by position (segment number and
//! frame index): what one leg delivers first, the other skips. A parent that is lost (its
//! link silent for `parent-timeout-ms`) or draining (it said GOAWAY) is left; its streams go
//! to the next parent in their order, resuming from the next frame needed. A leg is only
//! stopped for another once the other has caught up, so a parent that comes back takes its
//! streams back without a frame lost.
//!
//! The node knows nothing of the transport: a relay's way to its parents is the `Parents`
//! trait, which the QUIC client implements (`client::QuicParents`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use super::merge::Merge;
use super::parents::{ParentEvent, ParentLink, Parents};
use super::rendezvous::hash_order;
use super::{inc, Node};
use crate::error::{Error, Kind, Result};
use crate::model::Slot;
use crate::proto::{ErrorCode, Start};

/// What a parent is now, as every stream sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Its link failed, and no new one could be made yet.
    down: bool,
    /// It said it is going away.
    draining: bool,
    /// A task is trying to connect to it again.
    probing: bool,
    /// A link to it was made at least once (until then it is not counted up: a relay whose
    /// parents never answered is not ready).
    reached: bool,
}

struct Parent {
    /// The one connection to it, shared by every stream it carries.
    link: tokio::sync::Mutex<Option<Arc<dyn ParentLink>>>,
    health: Mutex<Health>,
    /// Its name, and its hash identity.
    name: String,
    weight: u32,
    /// Legs on it now, across streams (a draining parent's link is closed when none is left).
    users: watch::Sender<usize>,
}

pub(super) struct Upstream {
    parents: Arc<dyn Parents>,
    each: Vec<Parent>,
    /// Bumped whenever a parent goes down, comes back or starts draining.
    changed: watch::Sender<u64>,
    hash: bool,
    hedge: bool,
    /// Parents lost (closed or silent) or draining, each moving its streams elsewhere.
    failovers: std::sync::atomic::AtomicU64,
}

/// Backoff between a stream's attempts on one parent.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

impl Upstream {
    pub(super) fn new(parents: Arc<dyn Parents>, hash: bool, hedge: bool) -> Arc<Upstream> {
        let each = (0..parents.count())
            .map(|i| Parent {
                link: tokio::sync::Mutex::new(None),
                health: Mutex::default(),
                name: parents.describe(i),
                weight: parents.weight(i).max(1),
                users: watch::Sender::new(0),
            })
            .collect();
        Arc::new(Upstream {
            parents,
            each,
            changed: watch::Sender::new(0),
            hash,
            hedge,
            failovers: Default::default(),
        })
    }

    /// Parents reached, and neither down since nor draining, of how many.
    pub(super) fn parents_up(&self) -> (usize, usize) {
        let up = (0..self.each.len())
            .filter(|&i| {
                let h = self.health(i);
                h.reached && !h.down && !h.draining
            })
            .count();
        (up, self.each.len())
    }

    pub(super) fn failovers(&self) -> u64 {
        self.failovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn health(&self, i: usize) -> Health {
        *self.each[i]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_health(&self, i: usize, f: impl FnOnce(&mut Health)) {
        let changed = {
            let mut h = self.each[i]
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = (h.down, h.draining);
            f(&mut h);
            before != (h.down, h.draining)
        };
        if changed {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The parents of `path`, in the order it tries them.
    pub(super) fn order(&self, path: &str) -> Vec<usize> {
        if !self.hash {
            return (0..self.each.len()).collect();
        }
        let named: Vec<(&str, u32)> = self.each.iter().map(|p| (&*p.name, p.weight)).collect();
        hash_order(&named, path)
    }

    /// The parents a stream with `order` is to take it from now: the first (with hedging,
    /// two) that are neither down nor draining; the first of its order if none is.
    fn wanted(&self, order: &[usize]) -> Vec<usize> {
        let k = if self.hedge { 2 } else { 1 };
        let mut up: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| {
                let h = self.health(*i);
                !h.down && !h.draining
            })
            .take(k)
            .collect();
        if up.is_empty() {
            up.extend(order.first());
        }
        up
    }

    /// The connection to parent `i`: the one it has, or a new one. A parent that cannot be
    /// reached is marked down, and a task tries it again until it comes back.
    /// Drops the connection to parent `i` (its next use connects again).
    async fn forget_link(&self, i: usize) {
        if let Some(e) = self.each.get(i) {
            *e.link.lock().await = None;
        }
    }

    async fn link(self: &Arc<Self>, i: usize) -> Result<Arc<dyn ParentLink>> {
        let mut g = self.each[i].link.lock().await;
        if let Some(l) = g.as_ref() {
            if !l.is_closed() {
                return Ok(l.clone());
            }
            *g = None;
        }
        match self.parents.connect(i).await {
            Ok(l) => {
                *g = Some(l.clone());
                drop(g);
                self.set_health(i, |h| {
                    *h = Health {
                        reached: true,
                        ..Health::default()
                    }
                });
                info!(parent = %self.each[i].name, node = %l.name(), "connected to parent");
                self.clone().watch_link(i, l.clone());
                Ok(l)
            }
            Err(e) => {
                drop(g);
                warn!(side = "upstream", parent = %self.each[i].name, "cannot connect: {e}");
                self.lost(i);
                Err(e.upstream())
            }
        }
    }

    /// Connects to every parent now, not when a stream is first asked for: the node's
    /// readiness and `quicast_parents_up` say from the start whether any answers. One that
    /// does not is tried again with backoff until it does (see `lost`).
    pub(super) fn reach_all(self: &Arc<Self>) {
        for i in 0..self.each.len() {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.link(i).await;
            });
        }
    }

    /// Follows a link until it ends (the parent is lost) or the parent says it is going away.
    fn watch_link(self: Arc<Self>, i: usize, link: Arc<dyn ParentLink>) {
        let span = info_span!("parent", parent = %self.each[i].name);
        tokio::spawn(
            async move {
                tokio::select! {
                    e = link.closed() => {
                        inc(&self.failovers);
                        self.lost(i);
                        warn!(side = "upstream", "parent lost: {e}");
                    }
                    _ = link.going_away() => {
                        // Marked (and counted) before it is said, so what is said is true.
                        self.set_health(i, |h| h.draining = true);
                        inc(&self.failovers);
                        info!("parent is draining: its streams move to other parents");
                        // Once every stream has moved, this relay leaves it too.
                        let mut users = self.each[i].users.subscribe();
                        tokio::select! {
                            _ = async { users.wait_for(|n| *n == 0).await.map(|_| ()) } => {
                                let mut g = self.each[i].link.lock().await;
                                if g.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
                                    *g = None;
                                }
                                drop(g);
                                drop(link);
                                info!("every stream left the draining parent: link closed");
                            }
                            e = link.closed() => debug!("draining parent closed: {e}"),
                        }
                        self.lost(i);
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Parent `i` is lost: marked down, and tried again (with backoff) until it comes back.
    fn lost(self: &Arc<Self>, i: usize) {
        let mut start = false;
        self.set_health(i, |h| {
            h.down = true;
            start = !h.probing;
            h.probing = true;
        });
        if !start {
            return;
        }
        let me = self.clone();
        let span = info_span!("parent", parent = %self.each[i].name);
        tokio::spawn(
            async move {
                let mut wait = FIRST_RETRY;
                loop {
                    tokio::time::sleep(wait).await;
                    let g = me.each[i].link.lock().await;
                    let alive = g.as_ref().is_some_and(|l| !l.is_closed());
                    drop(g);
                    if alive || me.link(i).await.is_ok() {
                        info!("parent is back");
                        me.set_health(i, |h| h.probing = false);
                        return;
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
            .instrument(span),
        );
    }

    /// Starts the stream's one fetch from the parents (its leader; later subscribers follow
    /// it through the slot).
    pub(super) fn lead(self: &Arc<Self>, node: Arc<Node>, slot: Arc<Slot>, start: Start) {
        // Its own root span: the fetch outlives the subscriber that happened to start it.
        let span = info_span!(parent: None, "fetch", node = %node.name(), path = %slot.path);
        node.clone()
            .spawn(self.clone().fetch(node, slot, start).instrument(span));
    }

    /// The stream's fetch: keeps a leg on each parent it wants, merges them, and ends when
    /// the stream has had no subscriber for `linger-secs`.
    async fn fetch(self: Arc<Self>, node: Arc<Node>, slot: Arc<Slot>, start: Start) {
        let merge = Arc::new(Merge::new(node.clone(), slot.clone(), start));
        let order = self.order(&slot.path);
        let mut legs: HashMap<usize, Leg> = HashMap::new();
        let mut running: FuturesUnordered<tokio::task::JoinHandle<(usize, LegEnd)>> =
            FuturesUnordered::new();
        let mut retry: HashMap<usize, (Instant, Duration)> = HashMap::new();
        let mut health = self.changed.subscribe();
        let mut subs = slot.watch_subscribers();
        let linger = node.cfg.linger_secs.get();
        // The parent has this long to say the name is live before it counts as a waiting
        // room here (bounded apart from live streams; see `Registry`).
        let probe = tokio::time::sleep(node.cfg.probe_ms.get());
        tokio::pin!(probe);
        let mut probing = true;
        let mut shown: Vec<usize> = Vec::new();
        loop {
            health.borrow_and_update();
            let now = Instant::now();
            let wanted = self.wanted(&order);
            // Start a leg on each wanted parent that has none (and is not resting).
            for &p in &wanted {
                if legs.contains_key(&p) || retry.get(&p).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let (caught_tx, caught) = watch::channel(false);
                let task = tokio::spawn(
                    self.clone()
                        .leg(merge.clone(), p, caught_tx)
                        .instrument(info_span!("leg", parent = %self.each[p].name)),
                );
                legs.insert(
                    p,
                    Leg {
                        caught,
                        abort: task.abort_handle(),
                    },
                );
                running.push(task);
            }
            // Stop a leg nobody wants any more, once a wanted one has caught up (or at once if
            // its parent is gone anyway): never a gap for the change of parent.
            // (Each leg's catching up is marked seen here, so that only a change wakes us.)
            let mut ready = false;
            for (p, l) in legs.iter_mut() {
                let caught = *l.caught.borrow_and_update();
                ready |= caught && wanted.contains(p);
            }
            legs.retain(|p, leg| {
                let keep = wanted.contains(p) || (!ready && !self.health(*p).down);
                if !keep {
                    info!(parent = %self.each[*p].name, "leaving parent: another one carries the stream");
                    leg.abort.abort();
                }
                keep
            });
            let mut now_from: Vec<usize> = legs.keys().copied().collect();
            now_from.sort();
            if now_from != shown {
                let names: Vec<String> = now_from
                    .iter()
                    .map(|p| self.each[*p].name.clone())
                    .collect();
                if names.is_empty() {
                    // Between a parent's loss and its successor's leg (or while every parent
                    // rests after failures): `/streams` shows no parent too.
                    warn!(
                        side = "upstream",
                        "stream comes from parents=[] (none up now)"
                    );
                } else {
                    info!(parents = ?names, "stream comes from");
                }
                slot.set_parents(names);
                shown = now_from;
            }
            let next_retry = retry
                .values()
                .map(|(at, _)| *at)
                .filter(|at| *at > now)
                .min();
            let caught_changes = legs
                .values()
                .map(|l| {
                    let mut c = l.caught.clone();
                    async move {
                        let _ = c.changed().await;
                    }
                })
                .collect::<FuturesUnordered<_>>();
            tokio::select! {
                _ = health.changed() => {}
                _ = async {
                    let mut c = caught_changes;
                    if c.is_empty() { std::future::pending::<()>().await }
                    c.next().await;
                } => {}
                _ = sleep_until(next_retry) => {}
                Some(done) = running.next(), if !running.is_empty() => {
                    let Ok((p, end)) = done else { continue };
                    let Some(leg) = legs.remove(&p) else { continue };
                    let was_caught = *leg.caught.borrow();
                    // The parent no longer takes this connection's relay token (it expired, or
                    // the parent's keys changed): connect again, presenting the token file's
                    // current one; the subscription is tried again as after a loss.
                    if matches!(&end, LegEnd::Refused(e) if e.kind() == Kind::Unauthorized) {
                        self.forget_link(p).await;
                    }
                    match end {
                        LegEnd::Refused(e) if merge.is_waiting() && refusal_is_final(e.kind()) => {
                            // The parent says no to the name itself: everyone waiting here
                            // hears it, the name is remembered for a while, and nothing is
                            // held for it.
                            info!(code = %e.code(), "parent refused the stream: {}", e.reason());
                            if matches!(e.kind(), Kind::NotFound | Kind::Overloaded) {
                                node.remember_refusal(&slot.path, e.code(), e.reason());
                            }
                            slot.fail(e.code(), e.reason().to_string());
                            node.registry.remove(&slot);
                            stop(&legs);
                            return;
                        }
                        LegEnd::Rejected(e) if merge.is_waiting() && legs.is_empty() && self.parents_up().0 == 0 => {
                            // No parent takes this relay: nothing can come for the listeners
                            // waiting here, and they hear why at once (502, the wire's
                            // `upstream` code) rather than at the end of their wait. (With
                            // another parent up, it is tried first.) The name is not
                            // remembered: the next listener asks again.
                            warn!(side = "upstream", parent = %self.each[p].name, code = %e.code(), "parent refused this relay: {}", e.reason());
                            slot.fail(
                                ErrorCode::Upstream,
                                format!("the parent refused this relay: {}", e.reason()),
                            );
                            node.registry.remove(&slot);
                            stop(&legs);
                            return;
                        }
                        end => {
                            // Rest before trying this parent again: a little if the leg had
                            // been delivering, more each time it fails at once.
                            let wait = match retry.get(&p) {
                                Some((_, w)) if !was_caught => (*w * 2).min(LAST_RETRY),
                                _ => FIRST_RETRY,
                            };
                            retry.insert(p, (Instant::now() + wait, wait));
                            match end {
                                LegEnd::Lost(e) => warn!(side = "upstream", parent = %self.each[p].name, code = %e.code(), "upstream subscription lost: {e}"),
                                LegEnd::Refused(e) => warn!(side = "upstream", parent = %self.each[p].name, code = %e.code(), "parent refused the stream: {e}"),
                                LegEnd::Rejected(e) => warn!(side = "upstream", parent = %self.each[p].name, code = %e.code(), "parent refused this relay: {e}"),
                                LegEnd::Mismatch(why) => warn!(side = "upstream", parent = %self.each[p].name, "parent serves another broadcast: {why}"),
                            }
                        }
                    }
                }
                _ = idle(&mut subs, linger) => {
                    if node.registry.remove_if_idle(&slot) {
                        stop(&legs);
                        merge.rest();
                        info!("no subscribers left: upstream subscriptions closed");
                        return;
                    }
                }
                _ = &mut probe, if probing => {
                    probing = false;
                    if let Err(e) = node.registry.count_waiting(&slot) {
                        info!("{e}");
                        slot.fail(e.code(), e.reason());
                        node.registry.remove(&slot);
                        stop(&legs);
                        return;
                    }
                }
            }
        }
    }

    /// One leg: the stream from parent `p`, merged into the stream's position, for as long as
    /// the parent serves it (across broadcasts: after one ends it waits for the next).
    async fn leg(
        self: Arc<Self>,
        merge: Arc<Merge>,
        p: usize,
        caught: watch::Sender<bool>,
    ) -> (usize, LegEnd) {
        let _user = User::new(&self.each[p].users);
        let end = async {
            let link = match self.link(p).await {
                Ok(l) => l,
                Err(e) if matches!(e.kind(), Kind::Unauthorized | Kind::NotAllowed) => {
                    return LegEnd::Rejected(e)
                }
                Err(e) => return LegEnd::Lost(e),
            };
            loop {
                let start = merge.resume_point();
                let mut sub = match link.subscribe(&merge.slot.path, start).await {
                    Ok(s) => s,
                    Err(e) => return LegEnd::Lost(e.upstream()),
                };
                inc(&merge.node.stats.upstream_subscriptions_total);
                debug!(start = ?start, "subscribed upstream");
                // The broadcast this subscription is on (its parent's Subscribed says).
                let mut instance = None;
                loop {
                    let ev = match sub.next().await {
                        Some(ev) => ev,
                        None => return LegEnd::Lost(link.closed().await.upstream()),
                    };
                    match ev {
                        ParentEvent::Subscribed { instance: i, codec } => {
                            if let Err(why) = merge.subscribed(i, codec) {
                                return LegEnd::Mismatch(why);
                            }
                            instance = Some(i);
                        }
                        ParentEvent::Segment { seq, mut frames } => {
                            let Some(i) = instance else {
                                frames.stop(ErrorCode::Cancelled);
                                continue;
                            };
                            if let Err(e) = merge.read_segment(i, seq, frames, &caught).await {
                                if let Some(why) = e.mismatch {
                                    return LegEnd::Mismatch(why);
                                }
                                return LegEnd::Lost(e.error);
                            }
                        }
                        ParentEvent::End { last_seq } => {
                            if let Some(i) = instance {
                                if merge.end(i, last_seq) {
                                    info!("broadcast ended upstream");
                                }
                            }
                            break;
                        }
                        ParentEvent::Refused(e) => return LegEnd::Refused(e.upstream()),
                    }
                }
                // The broadcast ended: wait (in the parent's waiting room) for the next.
                let _ = caught.send(false);
            }
        };
        (p, end.await)
    }
}

/// A leg's place in its parent's count of users, given back when it ends (or is aborted).
struct User<'a>(&'a watch::Sender<usize>);

impl<'a> User<'a> {
    fn new(users: &'a watch::Sender<usize>) -> User<'a> {
        users.send_modify(|n| *n += 1);
        User(users)
    }
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A leg the fetch runs: whether it has caught up with the stream's position, and how to
/// stop it.
struct Leg {
    caught: watch::Receiver<bool>,
    abort: tokio::task::AbortHandle,
}

fn stop(legs: &HashMap<usize, Leg>) {
    for l in legs.values() {
        l.abort.abort();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a leg ended.
enum LegEnd {
    /// Its parent or link was lost.
    Lost(Error),
    /// The parent refused the stream.
    Refused(Error),
    /// The parent refused this relay itself (its relay token: missing, expired, not signed by
    /// a key the parent takes) as it connected.
    Rejected(Error),
    /// The parent serves another broadcast than the stream's, or other frames in it.
    Mismatch(String),
}

/// Whether a parent's refusal of a stream it is asked for stands (not worth asking another).
fn refusal_is_final(kind: Kind) -> bool {
    // Unauthorized is not: a relay token that expired on a live connection is renewed by
    // connecting again (`forget_link`); a token the parent refuses at once fails the
    // connection, which is retried like a lost parent.
    matches!(kind, Kind::NotFound | Kind::Overloaded | Kind::NotAllowed)
}

/// Resolves once the slot has had no subscriber for `linger`.
async fn idle(rx: &mut watch::Receiver<usize>, linger: Duration) {
    loop {
        while *rx.borrow_and_update() > 0 {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        let came_back = tokio::time::timeout(linger, async {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending::<()>().await;
                }
                if *rx.borrow_and_update() > 0 {
                    return;
                }
            }
        })
        .await;
        if came_back.is_err() {
            return;
        }
    }
}
