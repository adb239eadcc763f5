//! HLS playback over HTTP from the object store, with the content types and CORS headers a
//! web player on any origin needs; and live ingest of segments pushed over HTTP, as
//! go-livepeer's broadcaster takes them (`PUT`/`POST /live/STREAM/SEQ.ts`). Every error is
//! answered in JSON, `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, put},
    Router,
};
use castwork_cluster::http::{error, json_errors};
use castwork_cluster::{Storage, StorageError};

use crate::live::Live;

mod push;
pub mod ready;

pub use ready::AmqpLink;

/// HTTP push settings.
#[derive(Clone)]
pub struct HttpPush {
    pub live: Arc<Live>,
    /// Largest pushed segment, in bytes.
    pub max_bytes: usize,
    /// How long a push waits for its renditions.
    pub wait: Duration,
    /// How long a pushed body may take to arrive.
    pub body_timeout: Duration,
}

#[derive(Clone)]
struct Served {
    storage: Storage,
    /// What a viewer must show (none: playback is public).
    playback_token: Option<String>,
}

/// What the HTTP push route works with.
#[derive(Clone)]
struct Pushing {
    storage: Storage,
    push: HttpPush,
}

/// `/livez`, `/readyz` (the AMQP link when live ingest is on: `link`) and `/healthz`
/// (alive, kept for probes set up before).
fn health_routes<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    link: Option<Arc<AmqpLink>>,
) -> Router<S> {
    router
        .route("/livez", get(ready::livez))
        .route("/readyz", get(move || ready::readyz(link.clone())))
        .route("/healthz", get(|| async { "ok" }))
}

/// Playback (`GET /streams/...`, public unless `playback_token` is given) plus health
/// and metrics.
pub fn playback_router(
    storage: Storage,
    playback_token: Option<String>,
    link: Option<Arc<AmqpLink>>,
) -> Router {
    crate::metrics::register();
    health_routes(Router::new(), link)
        .route("/streams/{*path}", get(get_object).options(preflight))
        .route("/metrics", get(castwork_cluster::http::metrics_handler))
        .with_state(Served {
            storage,
            playback_token,
        })
}

/// The HTTP push route (`PUT`/`POST /live/STREAM/SEQ.ts`).
fn push_route(storage: Storage, push: HttpPush) -> Router {
    Router::new()
        .route(
            "/live/{stream}/{file}",
            // The handler streams the body to disk under its own limit.
            put(push::push_segment)
                .post(push::push_segment)
                .layer(DefaultBodyLimit::disable()),
        )
        .with_state(Pushing { storage, push })
}

/// HTTP push plus health, for a listener of its own.
pub fn push_router(storage: Storage, push: HttpPush, link: Option<Arc<AmqpLink>>) -> Router {
    crate::metrics::register();
    json_errors(health_routes(push_route(storage, push), link))
}

/// What a push to an address without HTTP push is told.
pub const LIVE_INPUT_OFF: &str = "live input is off on this address: `broadcaster serve` \
     runs with --no-live, or takes HTTP push on its --push-addr";

/// Playback routes, plus the HTTP push route when `push` is given and the job API when
/// `api` is, on one listener.
pub fn router(
    storage: Storage,
    push: Option<HttpPush>,
    playback_token: Option<String>,
    link: Option<Arc<AmqpLink>>,
    api: Option<crate::api::Api>,
) -> Router {
    let mut playback = playback_router(storage.clone(), playback_token, link);
    if let Some(api) = api {
        playback = playback.merge(crate::api::routes(api));
    }
    json_errors(match push {
        Some(p) => playback.merge(push_route(storage, p)),
        None => {
            // Any request under /live/, whatever its method, size or path.
            let off = || async { error(StatusCode::NOT_FOUND, LIVE_INPUT_OFF) };
            playback.route("/live/{*path}", any(off))
        }
    })
}

/// The cookie that carries the playback token after a request with `?token=`.
const PLAYBACK_COOKIE: &str = "castwork_playback";

#[derive(Debug, serde::Deserialize, Default)]
struct TokenQuery {
    token: Option<String>,
}

/// Whether a viewer shows the playback token: `Authorization: Bearer T`, `?token=T`, or
/// the cookie a `?token=` request set (so a player's relative requests carry it).
fn shows_token(want: &str, headers: &HeaderMap, query: &TokenQuery) -> bool {
    let bearer = castwork_cluster::http::bearer(headers);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(PLAYBACK_COOKIE)?.strip_prefix('='))
        .next();
    [bearer, query.token.as_deref(), cookie]
        .into_iter()
        .flatten()
        .any(|t| castwork_protocol::secret::same_secret(want, t))
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
        HeaderValue::from_static("Range, Content-Type, Authorization"),
    );
    // A player on another origin reads partial answers' sizes.
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Range, Content-Length, Accept-Ranges"),
    );
    r
}

async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

async fn get_object(
    State(Served {
        storage,
        playback_token,
        ..
    }): State<Served>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(want) = &playback_token {
        if !shows_token(want, &headers, &query) {
            return cors(error(
                StatusCode::UNAUTHORIZED,
                "playback needs the token: ?token=T or Authorization: Bearer T",
            ));
        }
    }
    let key = format!("streams/{path}");
    // Playlists and renditions only: a stream's source segments are not for viewers.
    let allowed =
        matches!(key.rsplit('.').next(), Some("m3u8" | "ts")) && !key.contains("/source/");
    if !allowed || path.split('/').any(|p| p.is_empty() || p == "..") {
        return cors(error(
            StatusCode::NOT_FOUND,
            "not found: playback serves playlists (.m3u8) and renditions (.ts) only",
        ));
    }
    // As a bucket serves it: playlists change, renditions never do.
    let (content_type, cache) = castwork_cluster::storage::object_headers(&key);
    // The whole object, or the one byte range a `Range` header asks for.
    let r = match castwork_cluster::ranges::read(&storage, &key, &headers).await {
        Ok(object) => {
            if method != Method::HEAD {
                crate::metrics::BYTES
                    .with_label_values(&["out"])
                    .inc_by(object.body_len());
            }
            let r = object.into_response(&[
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, cache),
            ]);
            if method == Method::HEAD {
                let (parts, _) = r.into_parts();
                Response::from_parts(parts, Default::default())
            } else {
                r
            }
        }
        Err(StorageError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, format!("not found: /{key}"))
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "object store error");
            error(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    };
    let mut r = cors(r);
    if let (Some(t), Some(_)) = (&query.token, &playback_token) {
        // The player's next (relative) requests carry the token as a cookie.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{PLAYBACK_COOKIE}={t}; Path=/streams/; HttpOnly; SameSite=Lax"
        )) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}
