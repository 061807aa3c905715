//! The admin port (`--admin ADDR`): metrics and health for the operator's tools, never on
//! the public port. Answered on a thread of its own, so a probe or a scrape is never queued
//! behind the public work however busy the node is; each request answered from the node's
//! state at once. Connections that say nothing are let go quickly, and a full house makes
//! room for a newcomer by closing its oldest connection: no stranger can hold the port.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, Instrument};

use super::http::head::{self, Method, NoHead, RequestHead};
use super::http::Reply;
use crate::admin::metrics;
use crate::error::{Error, Result};
use crate::node::Node;

/// Admin connections served at once; a newcomer past this closes the oldest.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long a connection may take to send a whole request head.
const HEAD_WAIT: Duration = Duration::from_secs(2);
/// How long a kept connection may sit idle between requests.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// The admin port, serving until dropped.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl AdminServer {
    pub async fn start(node: Arc<Node>, addr: SocketAddr) -> Result<AdminServer> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::local(format!("cannot serve the admin port on {addr}: {e}")))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        info!(%addr, node = %node.name(), "listening (admin)");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::local(format!("cannot start the admin thread: {e}")))?;
        std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => return debug!("admin port: {e}"),
                    };
                    tokio::select! {
                        _ = accept_loop(node, listener) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| Error::local(format!("cannot start the admin thread: {e}")))?;
        Ok(AdminServer {
            addr,
            stop: Some(stop),
        })
    }
}

async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    // Oldest first; finished ones are pruned as newcomers arrive.
    let mut open: VecDeque<tokio::task::JoinHandle<()>> = VecDeque::new();
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|t| !t.is_finished());
        if open.len() >= MAX_ADMIN_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let node = node.clone();
        open.push_back(tokio::spawn(
            serve(node, tcp).instrument(info_span!("admin", %remote)),
        ));
    }
}

async fn serve(node: Arc<Node>, mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::new();
    let mut idle = HEAD_WAIT;
    loop {
        let req = match head::read(&tcp, &mut buf, idle, HEAD_WAIT).await {
            Ok(r) => r,
            Err(NoHead::Refused(r)) => {
                let _ = Reply::text(r.status, r.reason)
                    .send(&mut tcp, false, false, false)
                    .await;
                return;
            }
            Err(NoHead::Closed | NoHead::Timeout) => return,
        };
        idle = IDLE_WAIT;
        // No request here has a body: one that comes is not read, and the connection ends.
        let keep = req.keep_alive && !req.chunked && req.content_length.unwrap_or(0) == 0;
        let r = route(&node, &req);
        if r.send(&mut tcp, req.method == Method::Head, keep, req.http10)
            .await
            .is_err()
            || !keep
        {
            return;
        }
    }
}

fn reply(status: u16, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Reply {
    Reply::new(status, content_type, body).with("Cache-Control", "no-store")
}

fn route(node: &Arc<Node>, req: &RequestHead) -> Reply {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method != Method::Get && req.method != Method::Head {
        return reply(405, TEXT, "GET only\n");
    }
    match req.path.as_str() {
        // OpenMetrics to those who ask for it (Prometheus does), the classic text format
        // to everyone else.
        "/metrics" => {
            let open = req
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if open {
                reply(
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics::text(node),
                )
            } else {
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::prometheus_text(node),
                )
            }
        }
        // The process is alive and answering.
        "/healthz" => reply(200, TEXT, "ok\n"),
        "/readyz" => match metrics::ready(node) {
            Ok(()) => reply(200, TEXT, "ready\n"),
            Err(why) => reply(503, TEXT, format!("{why}\n")),
        },
        _ => reply(404, TEXT, "/metrics, /healthz, /readyz\n"),
    }
}
