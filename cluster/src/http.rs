//! Serving an axum router with bounded cost per client (a connection cap, a deadline for
//! each request's head, a deadline for each handler) and graceful shutdown, plus the
//! `/metrics` handler.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{extract::ConnectInfo, http::header, response::IntoResponse, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

/// What one HTTP listener lets its clients cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; a client past it is disconnected at once (HTTP/1.1: one
    /// request at a time per connection, so this also bounds concurrent requests).
    pub max_connections: usize,
    /// Time a client has to send a request's whole head, counted from when the server
    /// starts waiting for it (an idle keep-alive connection included): a slow-loris client
    /// that sends a byte every few seconds is dropped.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds `addr` (port 0 picks a free one), serves `router` until `shutdown` is cancelled,
/// and returns the bound address. Handlers see the client's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, router, Limits::default(), shutdown).await
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    std::sync::LazyLock::force(&crate::metrics::HTTP_REFUSED);
    let gate = crate::net::Gate::new(listener, limits.max_connections, "http");
    tokio::spawn(async move {
        while let Some(arrival) = gate.next(&shutdown).await {
            let (stream, peer, permit) = match arrival {
                crate::net::Arrival::Admitted(s, p, permit) => (s, p, permit),
                crate::net::Arrival::Refused(_) => {
                    crate::metrics::HTTP_REFUSED.inc();
                    continue;
                }
            };
            let router = router.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move { router.call(req.map(axum::body::Body::new)).await }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "http connection ended");
                        }
                    }
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                    }
                }
                drop(permit);
            });
        }
    });
    Ok(bound)
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}
