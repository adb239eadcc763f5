//! Serving an axum router with bounded cost per client (a connection cap, a deadline for
//! each request's head, a deadline for each handler) and graceful shutdown, plus the
//! `/metrics` handler and JSON error answers (`{"error": "..."}`) for every router.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{
    extract::ConnectInfo,
    http::{header, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
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
    serve_tls(addr, router, limits, None, shutdown).await
}

/// [`serve_with`] over TLS when `tls` is given: each connection's handshake must finish
/// within the limits' header timeout, holding its place in the connection cap meanwhile.
pub async fn serve_tls(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    std::sync::LazyLock::force(&crate::metrics::HTTP_REFUSED);
    let gate = crate::net::Gate::new(listener, limits.max_connections, "http");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Some(arrival) = gate.next(&shutdown).await {
            let (stream, peer, permit) = match arrival {
                crate::net::Arrival::Admitted(s, p, permit) => (s, p, permit),
                crate::net::Arrival::Refused(_) => {
                    crate::metrics::HTTP_REFUSED.inc();
                    continue;
                }
            };
            let (router, shutdown, acceptor) = (router.clone(), shutdown.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(stream, peer, router, limits, shutdown).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(tls)) => {
                                serve_connection(tls, peer, router, limits, shutdown).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    Ok(bound)
}

/// Serves one connection's requests until it ends or `shutdown` (then gracefully).
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
}

/// A listener's TLS settings (see [`tls_server_config`]).
pub type TlsConfig = std::sync::Arc<rustls::ServerConfig>;

/// A TLS server configuration from a PEM certificate chain and its PEM private key.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    Ok(std::sync::Arc::new(config))
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

/// An error answer: `{"error": message}` with `content-type: application/json`.
pub fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Most bytes of a plain-text error body carried over into its JSON form.
const MAX_ERROR_TEXT: usize = 4096;

/// `router` with every error answered in JSON, as [`error`] answers: a request no route
/// takes gets a 404 naming it, and the plain or empty error answers of handlers and of
/// axum itself (method not allowed, a bad path or query, a body over its limit) are
/// rewritten, their text kept as the message. Apply it to the whole router, last.
pub fn json_errors(router: Router) -> Router {
    router
        .fallback(no_route)
        .layer(axum::middleware::map_response(to_json_error))
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such resource: {method} {}", uri.path()),
    )
}

/// An error answer that is not JSON yet, as JSON; any other answer as it is.
pub async fn to_json_error(response: Response) -> Response {
    let code = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(code.is_client_error() || code.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut message = if text.is_empty() {
        code.canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    if let Some(allow) = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
    {
        message.push_str(&format!(" (allowed: {allow})"));
    }
    let mut answer = error(code, message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    async fn body_of(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn content_type(r: &Response) -> Option<HeaderValue> {
        r.headers().get(header::CONTENT_TYPE).cloned()
    }

    #[tokio::test]
    async fn plain_errors_become_json_with_their_text_and_headers() {
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            [("access-control-allow-origin", "*")],
            "Failed to buffer the request body: length limit exceeded",
        )
            .into_response();
        let r = to_json_error(plain).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            content_type(&r),
            Some(HeaderValue::from_static("application/json"))
        );
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            body_of(r).await["error"],
            "Failed to buffer the request body: length limit exceeded"
        );
    }

    #[tokio::test]
    async fn empty_errors_get_their_reason_and_the_allowed_methods() {
        let empty = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
        )
            .into_response();
        let r = to_json_error(empty).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(
            body_of(r).await["error"],
            "method not allowed (allowed: GET,HEAD)"
        );
    }

    #[tokio::test]
    async fn successes_and_json_errors_pass_unchanged() {
        let ok = to_json_error("fine".into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(ok.into_body(), 100).await.unwrap();
        assert_eq!(&bytes[..], b"fine");
        let json = to_json_error(error(StatusCode::CONFLICT, "busy")).await;
        assert_eq!(body_of(json).await, serde_json::json!({ "error": "busy" }));
    }
}
