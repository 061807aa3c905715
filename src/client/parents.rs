//! A relay's way to its parents over QUIC: the node's `Parents`, made of this client's
//! sessions and subscriptions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

use super::resolve::{Dns, MembersTx};
use super::session::{Event, Session, Subscription};
use super::Client;
use crate::error::{Error, Kind, Result};
use crate::model::{SegmentRead, WireFrame};
use crate::node::config::read_relay_token;
use crate::node::{
    Member, NodeConfig, ParentEvent, ParentLink, ParentSubscription, Parents, SegmentReader,
};
use crate::proto::{CatalogEntry, ErrorCode, Role, Start};
use crate::transport::{self, FrameReader, Trust};

/// The parents of `NodeConfig::upstream`, trusted by its `ca` or `fingerprint`; a name with
/// several addresses is a parent per address (see `resolve`).
pub struct QuicParents {
    members: MembersTx,
    client: Client,
    connect_timeout: Duration,
    /// The file holding the relay token presented to parents (read at each connection).
    relay_token: Option<std::path::PathBuf>,
    resolve_failures: Arc<AtomicU64>,
    /// The names' resolution (its tasks end with it).
    _dns: Option<Dns>,
}

impl QuicParents {
    pub fn new(cfg: &NodeConfig) -> Result<QuicParents> {
        let trust = match &cfg.ca {
            Some(ca) => Trust::from_ca_file(ca)?,
            None => Trust::pinned(&cfg.fingerprint),
        };
        // A parent sends every stream this relay carries over one connection: room for all.
        let streams = (cfg.max_streams.get() + cfg.max_waiting.get()) as u64;
        let bind = transport::unspecified_for_host(cfg.upstream.first().map_or("", |p| &p.host));
        let resolve_failures = Arc::new(AtomicU64::new(0));
        let (members, dns) = Dns::start(&cfg.upstream, resolve_failures.clone());
        Ok(QuicParents {
            members,
            client: Client::with_config(
                bind,
                transport::upstream_config(&trust, streams, cfg.parent_timeout_ms.get())?,
            )?,
            connect_timeout: cfg.connect_timeout_ms.get(),
            relay_token: cfg.relay_token.clone(),
            resolve_failures,
            _dns: dns,
        })
    }
}

impl Parents for QuicParents {
    fn members(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.subscribe()
    }

    fn resolve_failures(&self) -> u64 {
        self.resolve_failures.load(Ordering::Relaxed)
    }

    fn connect(&self, parent: &Member) -> BoxFuture<'_, Result<Arc<dyn ParentLink>>> {
        let parent = parent.clone();
        async move {
            let token = match &self.relay_token {
                Some(f) => read_relay_token(f).map_err(|e| Error::local(e.to_string()))?,
                None => String::new(),
            };
            let connect = async {
                match parent.addr {
                    Some(addr) => {
                        self.client
                            .connect_to(&parent.url, addr, Role::Relay, &token)
                            .await
                    }
                    None => self.client.connect(&parent.url, Role::Relay, &token).await,
                }
            };
            let s = tokio::time::timeout(self.connect_timeout, connect)
                .await
                .map_err(|_| Error::timeout("connecting to parent"))??;
            Ok(Arc::new(Link(s)) as Arc<dyn ParentLink>)
        }
        .boxed()
    }
}

struct Link(Arc<Session>);

impl ParentLink for Link {
    fn name(&self) -> &str {
        &self.0.node
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn closed(&self) -> BoxFuture<'_, Error> {
        self.0.closed().boxed()
    }

    fn going_away(&self) -> BoxFuture<'_, ()> {
        async move {
            self.0.going_away().await;
        }
        .boxed()
    }

    fn subscribe(
        &self,
        path: &str,
        start: Start,
    ) -> BoxFuture<'_, Result<Box<dyn ParentSubscription>>> {
        let path = path.to_string();
        async move {
            let sub = self.0.subscribe(&path, start).await?;
            Ok(Box::new(Sub(sub)) as Box<dyn ParentSubscription>)
        }
        .boxed()
    }

    fn catalog(&self, after: &str) -> BoxFuture<'_, Result<(Vec<CatalogEntry>, bool)>> {
        let after = after.to_string();
        async move { self.0.catalog(&after).await.map_err(|e| e.upstream()) }.boxed()
    }
}

struct Sub(Subscription);

impl ParentSubscription for Sub {
    fn next(&mut self) -> BoxFuture<'_, Option<ParentEvent>> {
        async move {
            Some(match self.0.next().await? {
                Event::Subscribed {
                    instance,
                    codec,
                    info: Some(info),
                } => ParentEvent::Subscribed {
                    instance,
                    codec,
                    info,
                },
                // A relay enforces who may listen: a parent that does not say is refused.
                Event::Subscribed { info: None, .. } => ParentEvent::Refused(Error::new(
                    Kind::Upstream,
                    "the parent did not say who may listen to the stream (it speaks protocol \
                     version 1; relays need version 2)",
                )),
                Event::Segment { seq, title, frames } => ParentEvent::Segment {
                    seq,
                    title,
                    frames: Box::new(Segment(frames)),
                },
                Event::End { last_seq } => ParentEvent::End { last_seq },
                Event::Error { code, reason } => {
                    ParentEvent::Refused(Error::remote(ErrorCode::from_wire(code), reason))
                }
                Event::PublishOk { .. } | Event::Catalog { .. } => ParentEvent::Refused(
                    Error::protocol("another request's answer on a subscription"),
                ),
            })
        }
        .boxed()
    }
}

struct Segment(FrameReader);

impl SegmentReader for Segment {
    fn read<'a>(&'a mut self, out: &'a mut Vec<WireFrame>) -> BoxFuture<'a, SegmentRead> {
        self.0.frames(out).boxed()
    }

    fn stop(&mut self, code: ErrorCode) {
        self.0.stop(code)
    }
}
