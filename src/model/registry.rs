//! Every stream a node holds, by name: live streams and waiting rooms, bounded apart, and
//! who publishes and subscribes to each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::{Broadcast, SegmentCache, StoreConfig};
use crate::error::{Error, Result};
use crate::proto::ErrorCode;

/// What a stream name on a node is now.
#[derive(Clone)]
pub enum SlotState {
    /// Nothing is published under it yet: subscribers wait (the waiting room).
    Waiting,
    Live(Arc<Broadcast>),
    /// Refused for good (its parent says it does not exist, or a bound was reached): every
    /// subscriber waiting on it gets this, and the name leaves the registry.
    Failed {
        code: ErrorCode,
        reason: String,
    },
}

/// Who publishes to a stream, and how a newer publisher with the same credentials tells it
/// to go.
struct PublisherHold {
    id: u64,
    credential: Option<[u8; 32]>,
    displaced: Arc<tokio::sync::Notify>,
}

/// Proof of a publisher's right to a stream: what it took over with. Given when the node
/// checked a credential (a publish token, a source password); two publishers holding the
/// same one are the same publisher, so the newer takes the stream over (a restarted encoder
/// gets its broadcast back at once). Publishers of an open node (no credential) cannot.
#[derive(Debug, Clone)]
pub struct PublisherClaim {
    pub id: u64,
    pub displaced: Arc<tokio::sync::Notify>,
    /// A publisher with the same credential held the stream and was told to go.
    pub took_over: bool,
}

/// How a subscriber is served, for the counts by kind (`Slot::subscribers_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// A QUIC listener.
    Quic,
    /// A child relay (over QUIC).
    Relay,
    /// An HTTP progressive Ogg listener.
    HttpOgg,
    /// An HLS request, while it is served.
    Hls,
}

impl Egress {
    pub const ALL: [Egress; 4] = [Egress::Quic, Egress::Relay, Egress::HttpOgg, Egress::Hls];

    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Egress::Quic => "quic",
            Egress::Relay => "relay",
            Egress::HttpOgg => "http_ogg",
            Egress::Hls => "hls",
        }
    }
}

/// A stream name on a node: what is behind it (nothing yet, for a waiting room), and who is
/// using it.
pub struct Slot {
    pub path: String,
    state: watch::Sender<SlotState>,
    subscribers: watch::Sender<usize>,
    /// Subscribers now by how they are served (`Egress` order); those that said
    /// (`SubscriberGuard::count_as`).
    by_egress: [AtomicUsize; 4],
    publisher: Mutex<Option<PublisherHold>>,
    /// Subscriptions this node has served for this stream, ever (child relays included).
    pub subscriptions_total: AtomicU64,
    pub created: Instant,
    /// Announced ahead by the operator: its waiting room is always kept.
    pub announced: bool,
    /// Counted among the node's unannounced waiting rooms (see `Registry::count_waiting`).
    counted: AtomicBool,
    waiting: Arc<AtomicU64>,
    /// Where a relay takes this stream from now (its parents, for operators).
    parents: Mutex<Vec<String>>,
    /// The broadcast that ended last, until the next one goes live: HLS clients polling
    /// the name after the end are told it ended (the playlist's ENDLIST), not left to wait.
    ended: Mutex<Option<Arc<Broadcast>>>,
    /// A title given before the broadcast it names began (an encoder sends its first
    /// update as it connects, before its first frame): the next broadcast starts with it.
    pending_title: Mutex<Option<Option<bytes::Bytes>>>,
}

impl Slot {
    /// Keeps `title` for the next broadcast to begin here.
    pub fn set_pending_title(&self, title: Option<bytes::Bytes>) {
        *self.pending_title.lock().unwrap_or_else(|e| e.into_inner()) = Some(title);
    }

    /// The title given before the broadcast began, once.
    pub fn take_pending_title(&self) -> Option<Option<bytes::Bytes>> {
        self.pending_title
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The broadcast that ended last, if no other has gone live since.
    pub fn last_ended(&self) -> Option<Arc<Broadcast>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The broadcast behind the name, if it is live.
    pub fn broadcast(&self) -> Option<Arc<Broadcast>> {
        match &*self.state.borrow() {
            SlotState::Live(b) => Some(b.clone()),
            _ => None,
        }
    }

    pub fn state(&self) -> SlotState {
        self.state.borrow().clone()
    }

    /// Puts a broadcast behind the name (a live stream is never a waiting room again), or
    /// takes it away (the broadcast ended: the name waits for the next one).
    pub fn set_broadcast(&self, b: Option<Arc<Broadcast>>) {
        if b.is_some() {
            self.uncount();
            *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.state.send_replace(match b {
            Some(b) => SlotState::Live(b),
            None => SlotState::Waiting,
        });
    }

    /// The broadcast `b` is over: it is finished, and the name waits for the next one (if
    /// `b` is still the one behind it).
    pub fn end_broadcast(&self, b: &Arc<Broadcast>) {
        b.finish();
        self.state.send_if_modified(|s| match s {
            SlotState::Live(cur) if Arc::ptr_eq(cur, b) => {
                *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                *s = SlotState::Waiting;
                true
            }
            _ => false,
        });
    }

    /// Refuses everyone waiting on this name with `code` (see `SlotState::Failed`).
    pub fn fail(&self, code: ErrorCode, reason: impl Into<String>) {
        self.uncount();
        self.state.send_replace(SlotState::Failed {
            code,
            reason: reason.into(),
        });
    }

    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until the stream is live (the waiting room), or refused.
    pub async fn wait_broadcast(&self) -> Result<Arc<Broadcast>> {
        let mut rx = self.state.subscribe();
        loop {
            match rx.borrow_and_update().clone() {
                SlotState::Live(b) => return Ok(b),
                SlotState::Failed { code, reason } => return Err(Error::refused(code, reason)),
                SlotState::Waiting => {}
            }
            // The slot owns the sender, and we hold the slot: this cannot fail.
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    pub fn subscribers(&self) -> usize {
        *self.subscribers.borrow()
    }

    /// Counts `n` more listeners served as `e` that hold no subscription of their own
    /// (polling HLS clients: see `node::audience`).
    pub fn count_clients(&self, e: Egress, n: usize) {
        self.by_egress[e as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` fewer of those.
    pub fn uncount_clients(&self, e: Egress, n: usize) {
        let _ =
            self.by_egress[e as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Subscribers now served as `e`.
    pub fn subscribers_by(&self, e: Egress) -> usize {
        self.by_egress[e as usize].load(Ordering::Relaxed)
    }

    /// Says where a relay takes the stream from now.
    pub fn set_parents(&self, parents: Vec<String>) {
        *self.parents.lock().unwrap_or_else(|e| e.into_inner()) = parents;
    }

    /// Where a relay takes the stream from now (empty on an origin).
    pub fn parents(&self) -> Vec<String> {
        self.parents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver that sees the subscriber count change.
    pub fn watch_subscribers(&self) -> watch::Receiver<usize> {
        self.subscribers.subscribe()
    }

    fn holder(&self) -> std::sync::MutexGuard<'_, Option<PublisherHold>> {
        self.publisher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the publisher role: free, or held by a publisher with the same `credential`
    /// (which is told to go). None if another publisher holds it.
    pub fn claim_publisher(&self, credential: Option<[u8; 32]>) -> Option<PublisherClaim> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let mut h = self.holder();
        let took_over = match h.as_ref() {
            None => false,
            Some(old) if credential.is_some() && old.credential == credential => {
                old.displaced.notify_one();
                true
            }
            Some(_) => return None,
        };
        let claim = PublisherClaim {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            displaced: Arc::new(tokio::sync::Notify::new()),
            took_over,
        };
        *h = Some(PublisherHold {
            id: claim.id,
            credential,
            displaced: claim.displaced.clone(),
        });
        Some(claim)
    }

    /// Gives the publisher role up, if `id` still holds it (a publisher that was taken over
    /// from has nothing to give up).
    pub fn release_publisher(&self, id: u64) {
        let mut h = self.holder();
        if h.as_ref().is_some_and(|p| p.id == id) {
            *h = None;
        }
    }

    pub fn has_publisher(&self) -> bool {
        self.holder().is_some()
    }

    /// Whether a publisher with `credential` may claim the stream now (see `claim_publisher`).
    pub fn may_claim(&self, credential: Option<[u8; 32]>) -> bool {
        match self.holder().as_ref() {
            None => true,
            Some(old) => credential.is_some() && old.credential == credential,
        }
    }

    /// Whether publisher `id` holds the stream now.
    pub fn is_publisher(&self, id: u64) -> bool {
        self.holder().as_ref().is_some_and(|p| p.id == id)
    }
}

/// Held by each subscription; the count drops when it does.
pub struct SubscriberGuard {
    pub slot: Arc<Slot>,
    changes: watch::Sender<u64>,
    egress: Option<Egress>,
}

impl SubscriberGuard {
    /// No longer counted by egress.
    pub fn uncount(&mut self) {
        if let Some(old) = self.egress.take() {
            self.slot.by_egress[old as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts this subscriber among those served as `e` (for as long as it is held).
    pub fn count_as(&mut self, e: Egress) {
        if let Some(old) = self.egress.replace(e) {
            self.slot.by_egress[old as usize].fetch_sub(1, Ordering::Relaxed);
        }
        self.slot.by_egress[e as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        if let Some(e) = self.egress {
            self.slot.by_egress[e as usize].fetch_sub(1, Ordering::Relaxed);
        }
        self.slot
            .subscribers
            .send_modify(|n| *n = n.saturating_sub(1));
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Names an operator announced ahead (scheduled streams): a name, or a prefix ending in `/`.
#[derive(Debug, Clone, Default)]
pub struct Announced(Vec<String>);

impl Announced {
    pub fn new(names: Vec<String>) -> Announced {
        Announced(names)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|a| crate::proto::path_covers(a, path))
    }
}

/// How a slot is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// By a publisher: a live stream, bounded by `max_streams`.
    Live,
    /// By a subscriber on a node that knows what it publishes (an origin): a waiting room,
    /// counted among the unannounced ones at once.
    Waiting,
    /// By a subscriber on a relay: not counted until the parent had its chance to say the
    /// stream is live (`count_waiting`).
    Asking,
}

/// Every stream on a node, by path.
///
/// Live streams (and announced names) are bounded by `max_streams`; waiting rooms for names
/// nobody announced are bounded apart, by `max_waiting`, so that strangers asking for
/// made-up names never keep a publisher from starting.
pub struct Registry {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Unannounced waiting rooms now.
    waiting: Arc<AtomicU64>,
    /// Bumped whenever a slot or a subscriber comes or goes (for whoever waits on that).
    changes: watch::Sender<u64>,
    pub cache: SegmentCache,
    pub cfg: StoreConfig,
    announced: Announced,
}

impl Registry {
    pub fn new(cfg: StoreConfig) -> Arc<Registry> {
        Registry::with_announced(cfg, Announced::default())
    }

    pub fn with_announced(cfg: StoreConfig, announced: Announced) -> Arc<Registry> {
        Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            waiting: Arc::new(AtomicU64::new(0)),
            changes: watch::Sender::new(0),
            cache: SegmentCache::new(&cfg),
            cfg,
            announced,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unannounced waiting rooms now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn is_announced(&self, path: &str) -> bool {
        self.announced.contains(path)
    }

    fn slot_locked(
        &self,
        map: &mut HashMap<String, Arc<Slot>>,
        path: &str,
        how: Create,
    ) -> Result<(Arc<Slot>, bool)> {
        if let Some(s) = map.get(path) {
            return Ok((s.clone(), false));
        }
        let announced = self.announced.contains(path);
        let waiting = self.waiting();
        let counted = how == Create::Waiting && !announced;
        if counted {
            // Every name costs a slot (and on a relay an upstream subscription): names asked
            // for and not live are bounded apart from live streams.
            if waiting >= self.cfg.max_waiting as u64 {
                return Err(self.waiting_full());
            }
        } else if how == Create::Asking && !announced {
            // A relay cannot tell a live name from a made-up one before its parent answers:
            // it asks (bounded per connection and address by the node), and counts the name
            // as a waiting room only if the parent has not said it is live (`count_waiting`).
        } else if map.len() as u64 - waiting >= self.cfg.max_streams as u64 {
            return Err(Error::refused(
                ErrorCode::Overloaded,
                format!(
                    "this node holds its maximum of {} streams",
                    self.cfg.max_streams
                ),
            ));
        }
        let s = Arc::new(Slot {
            path: path.to_string(),
            state: watch::Sender::new(SlotState::Waiting),
            subscribers: watch::Sender::new(0),
            by_egress: Default::default(),
            publisher: Mutex::new(None),
            subscriptions_total: AtomicU64::new(0),
            created: Instant::now(),
            announced,
            counted: AtomicBool::new(counted),
            waiting: self.waiting.clone(),
            parents: Mutex::default(),
            ended: Mutex::default(),
            pending_title: Mutex::default(),
        });
        if counted {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        map.insert(path.to_string(), s.clone());
        Ok((s, true))
    }

    fn waiting_full(&self) -> Error {
        Error::refused(
            ErrorCode::Overloaded,
            format!(
                "this node holds its maximum of {} waiting rooms for streams not announced",
                self.cfg.max_waiting
            ),
        )
    }

    /// Counts an asking slot (see `Create::Asking`) among the waiting rooms, now that its
    /// parent has not said it is live; refused if the node holds its maximum of them.
    pub fn count_waiting(&self, slot: &Slot) -> Result<()> {
        if slot.announced || slot.broadcast().is_some() || slot.counted.load(Ordering::Acquire) {
            return Ok(());
        }
        let _map = self.slots();
        if self.waiting() >= self.cfg.max_waiting as u64 {
            return Err(self.waiting_full());
        }
        slot.counted.store(true, Ordering::Release);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        drop(_map);
        self.bump();
        Ok(())
    }

    /// The slot for `path`, created as a live stream if new (the bool says so).
    pub fn slot(&self, path: &str) -> Result<(Arc<Slot>, bool)> {
        let r = self.slot_locked(&mut self.slots(), path, Create::Live)?;
        if r.1 {
            self.bump();
        }
        Ok(r)
    }

    /// Registers a subscriber on `path` (creating the slot `how`, if new). The count is
    /// raised under the registry lock, so `remove_if_idle` never removes a slot in use.
    pub fn subscribe(&self, path: &str, how: Create) -> Result<(SubscriberGuard, bool)> {
        let mut map = self.slots();
        let (slot, created) = self.slot_locked(&mut map, path, how)?;
        slot.subscribers.send_modify(|n| *n += 1);
        slot.subscriptions_total.fetch_add(1, Ordering::Relaxed);
        drop(map);
        self.bump();
        Ok((
            SubscriberGuard {
                slot,
                changes: self.changes.clone(),
                egress: None,
            },
            created,
        ))
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits until `pred` holds of the registry, re-checking whenever a slot or subscriber changes.
    pub async fn wait_until(&self, mut pred: impl FnMut(&Registry) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Subscribers now on `path` (0 if it has no slot).
    pub fn subscribers(&self, path: &str) -> usize {
        self.get(path).map(|s| s.subscribers()).unwrap_or(0)
    }

    pub fn get(&self, path: &str) -> Option<Arc<Slot>> {
        self.slots().get(path).cloned()
    }

    /// Removes `slot` if nobody subscribes or publishes to it; true if removed.
    pub fn remove_if_idle(&self, slot: &Arc<Slot>) -> bool {
        let mut map = self.slots();
        let same = map.get(&slot.path).is_some_and(|s| Arc::ptr_eq(s, slot));
        if same && slot.subscribers() == 0 && !slot.has_publisher() {
            map.remove(&slot.path);
            slot.uncount();
            drop(map);
            self.bump();
            return true;
        }
        false
    }

    /// Removes `slot` whoever uses it (it failed: see `Slot::fail`).
    pub fn remove(&self, slot: &Arc<Slot>) {
        let mut map = self.slots();
        if map.get(&slot.path).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(&slot.path);
        }
        slot.uncount();
        drop(map);
        self.bump();
    }

    pub fn list(&self) -> Vec<Arc<Slot>> {
        let mut v: Vec<_> = self.slots().values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}
