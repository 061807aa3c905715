//! A relay's way to its parents, as the node sees it: traits the transport implements
//! (`client::QuicParents` over QUIC), so the node holds no transport of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::model::{SegmentRead, WireFrame};
use crate::proto::{CatalogEntry, Codec, ErrorCode, QuicUrl, Start, StreamInfo};

/// One parent, as the transport names it: a listed `quic://HOST:PORT`, or one address of a
/// listed name that resolves to several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// How it is named in logs and in the hash that spreads streams (every relay must name a
    /// parent alike): `HOST:PORT` as listed, or `IP:PORT` for each address of a name with
    /// several.
    pub name: String,
    /// How many streams it takes, relative to the others (its URL's `weight`).
    pub weight: u32,
    /// The listed parent it comes from (its host is the TLS server name).
    pub url: QuicUrl,
    /// The address to connect to; `None`: the URL's host, resolved as the connection is made.
    pub addr: Option<SocketAddr>,
}

impl Member {
    /// A listed parent as it is (a literal address, or a name taken as one parent).
    pub fn listed(url: &QuicUrl) -> Member {
        Member {
            name: url.authority(),
            weight: url.weight.max(1),
            url: url.clone(),
            addr: None,
        }
    }
}

/// A relay's way to its parents.
pub trait Parents: Send + Sync + 'static {
    /// The parents now, in priority order (as listed; a name's addresses in address order),
    /// and every change of them (their DNS records changed).
    fn members(&self) -> watch::Receiver<Arc<Vec<Member>>>;
    /// DNS resolutions of a parent's name that failed (the last good addresses kept).
    fn resolve_failures(&self) -> u64 {
        0
    }
    /// A new connection to `parent`.
    fn connect(&self, parent: &Member) -> BoxFuture<'_, Result<Arc<dyn ParentLink>>>;
}

/// One connection to a parent.
pub trait ParentLink: Send + Sync {
    /// The parent's node name, as its hello says.
    fn name(&self) -> &str;
    fn is_closed(&self) -> bool;
    /// Why the connection ended (waits until it has).
    fn closed(&self) -> BoxFuture<'_, Error>;
    /// Resolves when the parent says it is going away (draining).
    fn going_away(&self) -> BoxFuture<'_, ()>;
    fn subscribe(
        &self,
        path: &str,
        start: Start,
    ) -> BoxFuture<'_, Result<Box<dyn ParentSubscription>>>;
    /// A page of the parent's catalog after `after`, and whether more follow.
    fn catalog(&self, after: &str) -> BoxFuture<'_, Result<(Vec<CatalogEntry>, bool)>>;
}

/// What a subscription on a parent hears, in the order the parent sent it.
pub enum ParentEvent {
    Subscribed {
        instance: u64,
        codec: Codec,
        /// Its start at the origin, and who may listen.
        info: StreamInfo,
    },
    /// A segment, read frame by frame as it arrives.
    Segment {
        seq: u64,
        /// The stream's now-playing title from this segment's start.
        title: Option<bytes::Bytes>,
        frames: Box<dyn SegmentReader>,
    },
    /// The broadcast ended with segment `last_seq`.
    End { last_seq: u64 },
    /// The parent refused the subscription, or reported an error.
    Refused(Error),
}

/// One subscription on a parent; dropping it unsubscribes.
pub trait ParentSubscription: Send {
    /// The next event; None once the connection is gone (see `ParentLink::closed`).
    fn next(&mut self) -> BoxFuture<'_, Option<ParentEvent>>;
}

/// A segment's frames as they arrive.
pub trait SegmentReader: Send {
    /// Appends the frames that have arrived, waiting for at least one.
    fn read<'a>(&'a mut self, out: &'a mut Vec<WireFrame>) -> BoxFuture<'a, SegmentRead>;
    /// Tells the parent we do not want the rest.
    fn stop(&mut self, code: ErrorCode);
}
