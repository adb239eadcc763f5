//! The orchestrator's HTTP API: health, metrics, cluster and stream status, the dashboard;
//! requests that change state need the API token. Every error is answered in JSON,
//! `{"error": "..."}`.

mod health;
pub mod ingest;
mod streams;
mod work;

pub use health::{Readiness, READY_PING};

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use axum::{
    extract::{Path, Query, State as AxumState},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use castwork_cluster::broker::QueueDepth;
use castwork_cluster::http::{error, json_errors, metrics_handler};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{RecentFailure, RecentSegment, State, StreamSummary};
use castwork_cluster::{Storage, StorageError};

#[derive(Clone)]
pub struct ApiState {
    pub state: State,
    /// Whether the broker session is up and consuming.
    pub consuming: Arc<AtomicBool>,
    /// The latest queue depths read from the broker.
    pub queues: Arc<RwLock<Option<QueueSnapshot>>>,
    /// Where the playlists and renditions are, for the player page.
    pub storage: Storage,
    /// What this orchestrator charges, advertised at `/price`.
    pub price: castwork_protocol::Price,
    /// On-chain mode: ticket parameters and the active set, advertised at `/price` too
    /// (set once Redis answers and the chain client has started).
    pub payments: Arc<std::sync::OnceLock<Arc<crate::payments::Payments>>>,
    /// Whether this orchestrator is paid on-chain (then `/price` waits for `payments`).
    pub on_chain: bool,
    /// Off-chain: this orchestrator's name (its stake's name in the ledger).
    pub orchestrator_id: String,
    /// What requests that change state must carry (`Authorization: Bearer TOKEN`); none:
    /// such requests are refused.
    pub api_token: Option<String>,
    /// What `/readyz` names when a service is not reachable.
    pub readiness: Readiness,
    /// Checks the signed object URLs of jobs (set once Redis has given the key).
    pub tokens: Arc<std::sync::OnceLock<crate::workers::tokens::Tokens>>,
    /// The broker of the current session, for ingest over HTTP (none while disconnected).
    pub broker: BrokerSlot,
    /// How far ahead of a stream's received segments a source upload may be.
    pub max_seq_ahead: u64,
    /// The largest source segment an HTTP upload may be, in bytes.
    pub max_source_bytes: u64,
    /// The most pushes one broadcaster key starts over HTTP in an hour.
    pub ingest_starts_per_hour: u64,
    /// Live streams admitted at once, advertised at `/offer`.
    pub max_sessions: crate::ingest::MaxSessions,
}

/// The broker the orchestrator's current session uses.
pub type BrokerSlot = Arc<RwLock<Option<Arc<castwork_cluster::Broker>>>>;

/// The refusal of a request that changes state and does not carry the API token; `None`
/// when it does.
fn unauthorized(api: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let refuse =
        |code: StatusCode, m: &str| Some((code, Json(json!({ "error": m }))).into_response());
    let Some(want) = &api.api_token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "requests that change state are off: start the orchestrator with --api-token",
        );
    };
    match castwork_cluster::http::bearer(headers) {
        Some(t) if castwork_protocol::secret::same_secret(want, t) => None,
        _ => refuse(
            StatusCode::UNAUTHORIZED,
            "send the orchestrator's API token as Authorization: Bearer TOKEN",
        ),
    }
}

/// Queue depths as read from the broker at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSnapshot {
    pub as_of_unix_ms: u64,
    pub queues: Vec<QueueDepth>,
}

/// The whole cluster at a glance: what `orchestrator status` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// One page of the streams (`/status?page=N`), active first.
    pub streams: Vec<StreamSummary>,
    /// Active and ended streams in all.
    #[serde(default)]
    pub streams_active: u64,
    #[serde(default)]
    pub streams_ended: u64,
    pub workers: Vec<serde_json::Value>,
    /// Empty until the orchestrator has read them from the broker.
    pub queues: Vec<QueueDepth>,
    pub queues_as_of_unix_ms: Option<u64>,
    /// The latest accepted segments, newest first.
    #[serde(default)]
    pub recent: Vec<RecentSegment>,
    /// The latest failed attempts with their messages, newest first.
    #[serde(default)]
    pub failures: Vec<RecentFailure>,
    /// The latest dead letters (messages no handler could take) with their reasons,
    /// newest first.
    #[serde(default)]
    pub dead_letters: Vec<crate::state::DeadLetterRecord>,
}

/// Dead letters shown by `/status`.
const STATUS_DEAD_LETTERS: usize = 20;

/// `GET /price[?sender=ADDRESS]`: the price, and on-chain the ticket parameters for that
/// sender to sign its next payment under (fresh ones on every call; none without a sender).
/// `GET /offer` (`full`) adds the room for live streams, the limits of one stream and how
/// to submit work: what a broadcaster choosing among orchestrators reads.
async fn price(api: ApiState, sender: Option<String>, full: bool) -> Response {
    let sender = match sender.map(|s| s.parse::<castwork_chain::Address>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "sender must be an Ethereum address (0x and 40 hex digits)",
            )
        }
    };
    let payments = api.payments.get();
    if api.on_chain && payments.is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the ticket parameters come once Redis answers (see /readyz)",
        );
    }
    let mut offer = castwork_protocol::payment::PriceOffer {
        price: api.price,
        orchestrator: Some(match payments {
            Some(p) => p.recipient().to_string(),
            None => api.orchestrator_id.clone(),
        }),
        ticket_params: None,
        active: None,
        capacity: None,
        limits: None,
        ingest: Vec::new(),
    };
    if full {
        let (max, live) = match tokio::try_join!(
            api.max_sessions.now(&api.state),
            api.state.live_stream_count()
        ) {
            Ok(n) => n,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
        };
        offer.capacity = Some(castwork_protocol::payment::Capacity {
            max_sessions: max,
            live_sessions: live,
        });
        offer.limits = Some(castwork_protocol::payment::OfferLimits {
            max_rungs: castwork_protocol::profile::MAX_RUNGS as u32,
            max_source_segment_bytes: api.max_source_bytes,
        });
        offer.ingest = vec!["http".to_string()];
    }
    if let Some(p) = payments {
        offer.ticket_params = sender.map(|a| p.params_for(a));
        match p.check_active().await {
            Ok(a) => offer.active = Some(a.is_ok()),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the active set: {e}"),
                )
            }
        }
    }
    Json(offer).into_response()
}

/// What broadcasters on other machines use: the offer, and ingest over HTTP.
fn public_routes(api: ApiState) -> Router {
    Router::new()
        .route(
            "/price",
            get(
                |AxumState(api): AxumState<ApiState>,
                 Query(mut q): Query<std::collections::HashMap<String, String>>| async move {
                    price(api, q.remove("sender"), false).await
                },
            ),
        )
        .route(
            "/offer",
            get(
                |AxumState(api): AxumState<ApiState>,
                 Query(mut q): Query<std::collections::HashMap<String, String>>| async move {
                    price(api, q.remove("sender"), true).await
                },
            ),
        )
        .route("/ingest/messages", axum::routing::post(ingest::message))
        .route(
            "/ingest/source/{session}/{file}",
            axum::routing::put(ingest::source),
        )
        .route(
            "/ingest/events/{session}",
            get(ingest::events).delete(ingest::close),
        )
        .route("/ingest/output/{session}/{*key}", get(ingest::output))
        .with_state(api)
}

pub fn router(api: ApiState) -> Router {
    let routes = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics_handler))
        .route("/streams", get(streams::list_streams))
        .route("/workers", get(list_workers))
        .route("/queues", get(list_queues))
        .route("/status", get(cluster_status))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/dashboard") }),
        )
        .route("/dashboard", get(|| async { Html(DASHBOARD) }))
        .route("/player", get(|| async { Html(PLAYER) }))
        .route("/assets/hls.light.min.js", get(hls_js))
        .route("/hls/{*key}", get(hls_object))
        .route("/work/source", get(work::source))
        .route("/work/rendition", axum::routing::put(work::rendition))
        .route(
            "/streams/{name}",
            get(streams::stream_status).delete(streams::delete_stream),
        )
        .with_state(api.clone());
    json_errors(routes.merge(public_routes(api)))
}

/// Only the routes other machines need, for a listener of their own (`--work-addr`) that
/// workers and broadcasters can reach while the rest of the API stays private: the
/// job-object routes (`/work/...`), the offer (`/offer`, `/price`) and ingest over HTTP
/// (`/ingest/...`).
pub fn work_router(api: ApiState) -> Router {
    let routes = Router::new()
        .route("/work/source", get(work::source))
        .route("/work/rendition", axum::routing::put(work::rendition))
        .with_state(api.clone());
    json_errors(routes.merge(public_routes(api)))
}

fn unavailable(e: redis::RedisError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": format!("redis: {e}") })),
    )
        .into_response()
}

async fn list_workers(AxumState(api): AxumState<ApiState>) -> Response {
    match api.state.workers().await {
        Ok(workers) => Json(json!({ "workers": workers })).into_response(),
        Err(e) => unavailable(e),
    }
}

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");
const PLAYER: &str = include_str!("../../assets/player.html");
const HLS_JS: &[u8] = include_bytes!("../../assets/hls.light.min.js");

async fn hls_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/javascript"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        HLS_JS,
    )
        .into_response()
}

/// A playlist or rendition from the object store, for the player page, or the one byte
/// range a `Range` header asks for (206, or 416 past the end). Only stream outputs are
/// served: no source segments, nothing outside `streams/`.
async fn hls_object(
    AxumState(api): AxumState<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    stream_output(&api, &key, &headers).await
}

/// Object `key` if it is a stream output (a playlist or rendition under `streams/`, never
/// a source segment), whole or the byte range `headers` ask for.
pub(super) async fn stream_output(api: &ApiState, key: &str, headers: &HeaderMap) -> Response {
    if !(key.ends_with(".m3u8") || key.ends_with(".ts")) {
        return error(
            StatusCode::NOT_FOUND,
            "only playlists (.m3u8) and segments (.ts) are served",
        );
    }
    let allowed = key.starts_with("streams/")
        && !key.contains("/source/")
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !allowed {
        return error(StatusCode::NOT_FOUND, "not a stream output");
    }
    // As a bucket serves it: playlists change, renditions never do.
    let (content_type, cache) = castwork_cluster::storage::object_headers(key);
    match castwork_cluster::ranges::read(&api.storage, key, headers).await {
        Ok(object) => object.into_response(&[
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ]),
        Err(StorageError::NotFound(_)) => error(StatusCode::NOT_FOUND, "no such object"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn queue_snapshot(api: &ApiState) -> Option<QueueSnapshot> {
    api.queues.read().ok().and_then(|q| q.clone())
}

async fn list_queues(AxumState(api): AxumState<ApiState>) -> Response {
    match queue_snapshot(&api) {
        Some(q) => Json(q).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "queue depths not read from the broker yet" })),
        )
            .into_response(),
    }
}

async fn cluster_status(
    AxumState(api): AxumState<ApiState>,
    Query(q): Query<streams::PageQuery>,
) -> Response {
    let (offset, limit) = q.window();
    let (page, workers, (recent, failures), dead_letters) = match (
        api.state.stream_page(offset, limit).await,
        api.state.workers().await,
        api.state.recent().await,
        api.state.dead_letters(STATUS_DEAD_LETTERS).await,
    ) {
        (Ok(s), Ok(w), Ok(r), Ok(d)) => (s, w, r, d),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            return unavailable(e)
        }
    };
    let q = queue_snapshot(&api);
    Json(ClusterStatus {
        streams: page.streams,
        streams_active: page.active,
        streams_ended: page.ended,
        workers,
        queues_as_of_unix_ms: q.as_ref().map(|q| q.as_of_unix_ms),
        queues: q.map(|q| q.queues).unwrap_or_default(),
        recent,
        failures,
        dead_letters,
    })
    .into_response()
}
