//! The admin port (`--admin ADDR`): metrics and health for the operator's tools, never on
//! the public port. Plain HTTP/1.1; a few connections at once (scrapers and load-balancer
//! probes), each request answered from the node's state at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, Instrument};

use crate::admin::metrics;
use crate::error::{Error, Result};
use crate::node::Node;

/// Admin connections served at once; more wait in the kernel's backlog.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// The admin port, serving until dropped.
pub struct AdminServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AdminServer {
    pub async fn start(node: Arc<Node>, addr: SocketAddr) -> Result<AdminServer> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::local(format!("cannot serve the admin port on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        info!(%addr, node = %node.name(), "listening (admin)");
        let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, remote) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let node = node.clone();
                tokio::spawn(
                    async move {
                        let service = hyper::service::service_fn(move |req| {
                            let node = node.clone();
                            async move { Ok::<_, Infallible>(route(&node, req)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .max_buf_size(16 * 1024)
                            .serve_connection(TokioIo::new(tcp), service);
                        if let Err(e) = conn.await {
                            debug!("admin connection ended: {e}");
                        }
                        drop(permit);
                    }
                    .instrument(info_span!("admin", %remote)),
                );
            }
        });
        Ok(AdminServer { addr, task })
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn route<B>(node: &Arc<Node>, req: Request<B>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n");
    }
    match req.uri().path() {
        // OpenMetrics to those who ask for it (Prometheus does), the classic text format
        // to everyone else.
        "/metrics" => {
            let open = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if open {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics::text(node),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::prometheus_text(node),
                )
            }
        }
        // The process is alive and answering.
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => match metrics::ready(node) {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n"),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, TEXT, "/metrics, /healthz, /readyz\n"),
    }
}
