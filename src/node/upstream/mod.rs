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
//! The parents are a set that may change while streams flow (a name whose DNS records list
//! a tier's nodes, see `set`): each stream's order is made again from the new set, and a
//! stream whose wanted parents changed moves the same way, by the same merge, with no gap.
//!
//! The node knows nothing of the transport: a relay's way to its parents is the `Parents`
//! trait, which the QUIC client implements (`client::QuicParents`).

mod set;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use super::config::{ParentChoice, Switch};
use super::merge::Merge;
use super::parents::{ParentEvent, Parents};
use super::{inc, Node};
use crate::error::{Error, Kind};
use crate::model::Slot;
use crate::proto::{ErrorCode, Start};

pub(super) struct Upstream {
    parents: Arc<dyn Parents>,
    set: set::Parents,
    /// Bumped whenever a parent goes down, comes back, starts draining, joins or leaves.
    changed: watch::Sender<u64>,
    /// Parents lost (closed or silent) or draining, each moving its streams elsewhere.
    failovers: std::sync::atomic::AtomicU64,
}

/// Backoff between a stream's attempts on one parent.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

impl Upstream {
    /// A relay's way to `parents`, each stream's parents chosen by `choice` and hedged as
    /// `hedge` says (both decided again whenever the number of parents changes).
    pub(super) fn new(
        parents: Arc<dyn Parents>,
        choice: ParentChoice,
        hedge: Switch,
    ) -> Arc<Upstream> {
        Arc::new(Upstream {
            parents,
            set: set::Parents::new(choice, hedge),
            changed: watch::Sender::new(0),
            failovers: Default::default(),
        })
    }

    pub(super) fn failovers(&self) -> u64 {
        self.failovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolutions of a parent's DNS name that failed.
    pub(super) fn resolve_failures(&self) -> u64 {
        self.parents.resolve_failures()
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
        // The stream's order of parents, made again whenever the set changes.
        let mut set = self.set();
        let mut order = self.order(&set, &slot.path);
        // Legs and rests by parent name (a parent that leaves the set and comes back is the
        // same one).
        let mut legs: HashMap<String, Leg> = HashMap::new();
        let mut running: FuturesUnordered<tokio::task::JoinHandle<(String, LegEnd)>> =
            FuturesUnordered::new();
        let mut retry: HashMap<String, (Instant, Duration)> = HashMap::new();
        let mut health = self.changed.subscribe();
        let mut subs = slot.watch_subscribers();
        let linger = node.cfg.linger_secs.get();
        // The parent has this long to say the name is live before it counts as a waiting
        // room here (bounded apart from live streams; see `Registry`).
        let probe = tokio::time::sleep(node.cfg.probe_ms.get());
        tokio::pin!(probe);
        let mut probing = true;
        let mut shown: Vec<String> = Vec::new();
        loop {
            health.borrow_and_update();
            let now_set = self.set();
            if !Arc::ptr_eq(&now_set, &set) {
                set = now_set;
                order = self.order(&set, &slot.path);
                // Rests of parents that left are forgotten (bounded by the set).
                retry.retain(|name, _| set.iter().any(|p| p.name() == name));
            }
            let now = Instant::now();
            let wanted = self.wanted(&order);
            let is_wanted = |name: &str| wanted.iter().any(|p| p.name() == name);
            // Start a leg on each wanted parent that has none (and is not resting).
            for p in &wanted {
                let name = p.name();
                if legs.contains_key(name) || retry.get(name).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let (caught_tx, caught) = watch::channel(false);
                let task = tokio::spawn(
                    self.clone()
                        .leg(merge.clone(), p.clone(), caught_tx)
                        .instrument(info_span!("leg", parent = %name)),
                );
                legs.insert(
                    name.to_string(),
                    Leg {
                        parent: p.clone(),
                        caught,
                        abort: task.abort_handle(),
                    },
                );
                running.push(task);
            }
            // Stop a leg nobody wants any more (its parent is no longer among the stream's
            // first, or left the set), once a wanted one has caught up (or at once if its
            // parent is gone anyway): never a gap for the change of parent.
            // (Each leg's catching up is marked seen here, so that only a change wakes us.)
            let mut ready = false;
            for (p, l) in legs.iter_mut() {
                let caught = *l.caught.borrow_and_update();
                ready |= caught && is_wanted(p);
            }
            legs.retain(|p, leg| {
                let keep = is_wanted(p) || (!ready && !leg.parent.health().down);
                if !keep {
                    info!(parent = %p, "leaving parent: another one carries the stream");
                    leg.abort.abort();
                }
                keep
            });
            // Shown in the stream's order: the first is the one it prefers now.
            let rank = |name: &str| order.iter().position(|p| p.name() == name);
            let mut names: Vec<String> = legs.keys().cloned().collect();
            names.sort_by_key(|n| (rank(n).unwrap_or(usize::MAX), n.clone()));
            if names != shown {
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
                slot.set_parents(names.clone());
                shown = names;
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
                        self.forget_link(&leg.parent).await;
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
                            warn!(side = "upstream", parent = %p, code = %e.code(), "parent refused this relay: {}", e.reason());
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
                            retry.insert(p.clone(), (Instant::now() + wait, wait));
                            match end {
                                LegEnd::Lost(e) => warn!(side = "upstream", parent = %p, code = %e.code(), "upstream subscription lost: {e}"),
                                LegEnd::Refused(e) => warn!(side = "upstream", parent = %p, code = %e.code(), "parent refused the stream: {e}"),
                                LegEnd::Rejected(e) => warn!(side = "upstream", parent = %p, code = %e.code(), "parent refused this relay: {e}"),
                                LegEnd::Mismatch(why) => warn!(side = "upstream", parent = %p, "parent serves another broadcast: {why}"),
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
        p: Arc<set::Parent>,
        caught: watch::Sender<bool>,
    ) -> (String, LegEnd) {
        let _user = User::new(&p.users);
        let end = async {
            let link = match self.link(&p).await {
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
                        ParentEvent::Subscribed {
                            instance: i,
                            codec,
                            info,
                        } => {
                            if let Err(why) = merge.subscribed(i, codec, &info) {
                                return LegEnd::Mismatch(why);
                            }
                            instance = Some(i);
                        }
                        ParentEvent::Segment {
                            seq,
                            title,
                            mut frames,
                        } => {
                            let Some(i) = instance else {
                                frames.stop(ErrorCode::Cancelled);
                                continue;
                            };
                            if let Err(e) = merge.read_segment(i, seq, title, frames, &caught).await
                            {
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
        (p.name().to_string(), end.await)
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
    parent: Arc<set::Parent>,
    caught: watch::Receiver<bool>,
    abort: tokio::task::AbortHandle,
}

fn stop(legs: &HashMap<String, Leg>) {
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
