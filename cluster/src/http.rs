//! Serving an axum router with graceful shutdown, plus the `/metrics` handler.

use std::net::SocketAddr;

use axum::{http::header, response::IntoResponse, Router};
use tokio_util::sync::CancellationToken;

/// Binds `addr` (port 0 picks a free one), serves `router` until `shutdown` is cancelled,
/// and returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let r = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(bound)
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}
