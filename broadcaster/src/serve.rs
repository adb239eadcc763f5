//! HLS playback over HTTP from the object store, with the content types and CORS headers a
//! web player on any origin needs.

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use castwork_cluster::{Storage, StorageError};

/// Content type of an object, from its extension.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mkv") => "video/x-matroska",
        _ => "application/octet-stream",
    }
}

pub fn router(storage: Storage) -> Router {
    Router::new()
        .route("/streams/{*path}", get(get_object).options(preflight))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(storage)
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, Content-Type"),
    );
    r
}

async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

async fn get_object(
    State(storage): State<Storage>,
    method: Method,
    Path(path): Path<String>,
) -> Response {
    let key = format!("streams/{path}");
    let allowed = matches!(key.rsplit('.').next(), Some("m3u8" | "ts"));
    if !allowed || path.split('/').any(|p| p.is_empty() || p == "..") {
        return cors((StatusCode::NOT_FOUND, "not found\n").into_response());
    }
    let r = match storage.get(&key).await {
        Ok(data) => {
            let cache = if key.ends_with(".m3u8") {
                "no-cache"
            } else {
                "public, max-age=31536000, immutable"
            };
            let body = if method == Method::HEAD {
                Default::default()
            } else {
                data
            };
            (
                [
                    (header::CONTENT_TYPE, content_type(&key)),
                    (header::CACHE_CONTROL, cache),
                ],
                body,
            )
                .into_response()
        }
        Err(StorageError::NotFound(_)) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(e) => {
            tracing::warn!(key, error = %e, "object store error");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response()
        }
    };
    cors(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type("a/index.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type("a/r/0.1.ts"), "video/mp2t");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
