//! A relay's way to its parents over QUIC: the node's `Parents`, made of this client's
//! sessions and subscriptions.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::session::{Event, Session, Subscription};
use super::Client;
use crate::error::{Error, Kind, Result};
use crate::model::WireFrame;
use crate::node::config::read_relay_token;
use crate::node::{
    NodeConfig, ParentEvent, ParentLink, ParentSubscription, Parents, SegmentRead, SegmentReader,
};
use crate::proto::{CatalogEntry, ErrorCode, QuicUrl, Role, Start};
use crate::transport::{self, FrameReader, Trust};

/// The parents of `NodeConfig::upstream`, trusted by its `ca` or `fingerprint`.
pub struct QuicParents {
    parents: Vec<QuicUrl>,
    client: Client,
    connect_timeout: Duration,
    /// The file holding the relay token presented to parents (read at each connection).
    relay_token: Option<std::path::PathBuf>,
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
        Ok(QuicParents {
            parents: cfg.upstream.clone(),
            client: Client::with_config(
                bind,
                transport::upstream_config(&trust, streams, cfg.parent_timeout_ms.get())?,
            )?,
            connect_timeout: cfg.connect_timeout_ms.get(),
            relay_token: cfg.relay_token.clone(),
        })
    }
}

impl Parents for QuicParents {
    fn count(&self) -> usize {
        self.parents.len()
    }

    fn describe(&self, i: usize) -> String {
        self.parents
            .get(i)
            .map(|p| p.authority())
            .unwrap_or_default()
    }

    fn weight(&self, i: usize) -> u32 {
        self.parents.get(i).map_or(1, |p| p.weight)
    }

    fn connect(&self, i: usize) -> BoxFuture<'_, Result<Arc<dyn ParentLink>>> {
        async move {
            let url = self
                .parents
                .get(i)
                .ok_or_else(|| Error::local("no such parent"))?;
            let token = match &self.relay_token {
                Some(f) => read_relay_token(f).map_err(|e| Error::local(e.to_string()))?,
                None => String::new(),
            };
            let s = tokio::time::timeout(
                self.connect_timeout,
                self.client.connect(url, Role::Relay, &token),
            )
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
                Event::Segment { seq, frames } => ParentEvent::Segment {
                    seq,
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
