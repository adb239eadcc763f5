//! The orchestrator's HTTP API: health, metrics and stream status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::{
    extract::{Path, State as AxumState},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use castwork_cluster::broker::QueueDepth;
use castwork_cluster::http::metrics_handler;
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
    /// On-chain mode: ticket parameters and the active set, advertised at `/price` too.
    pub payments: Option<Arc<crate::payments::Payments>>,
    /// Off-chain: this orchestrator's name (its stake's name in the ledger).
    pub orchestrator_id: String,
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
    pub streams: Vec<StreamSummary>,
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
}

/// `GET /price`: the price, and on-chain the ticket parameters to sign under.
async fn price(api: ApiState) -> Response {
    let mut offer = castwork_protocol::payment::PriceOffer {
        price: api.price,
        orchestrator: Some(match &api.payments {
            Some(p) => p.recipient().to_string(),
            None => api.orchestrator_id.clone(),
        }),
        ticket_params: None,
        active: None,
    };
    if let Some(p) = &api.payments {
        offer.ticket_params = Some(p.params());
        match p.check_active().await {
            Ok(a) => offer.active = Some(a.is_ok()),
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the active set: {e}"),
                )
                    .into_response()
            }
        }
    }
    Json(offer).into_response()
}

pub fn router(api: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .route("/streams", get(list_streams))
        .route("/workers", get(list_workers))
        .route("/queues", get(list_queues))
        .route(
            "/price",
            get(|AxumState(api): AxumState<ApiState>| async move { price(api).await }),
        )
        .route("/status", get(cluster_status))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/dashboard") }),
        )
        .route("/dashboard", get(|| async { Html(DASHBOARD) }))
        .route("/player", get(|| async { Html(PLAYER) }))
        .route("/assets/hls.light.min.js", get(hls_js))
        .route("/hls/{*key}", get(hls_object))
        .route("/streams/{name}", get(stream_status))
        .with_state(api)
}

async fn healthz(AxumState(api): AxumState<ApiState>) -> Response {
    let redis = api.state.ping().await.is_ok();
    let broker = api.consuming.load(Ordering::Relaxed);
    let code = if redis && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "redis": redis, "broker": broker }))).into_response()
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

const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const PLAYER: &str = include_str!("../assets/player.html");
const HLS_JS: &[u8] = include_bytes!("../assets/hls.light.min.js");

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

/// A playlist or rendition from the object store, for the player page. Only stream
/// outputs are served: no source segments, nothing outside `streams/`.
async fn hls_object(AxumState(api): AxumState<ApiState>, Path(key): Path<String>) -> Response {
    let content_type = if key.ends_with(".m3u8") {
        "application/vnd.apple.mpegurl"
    } else if key.ends_with(".ts") {
        "video/mp2t"
    } else {
        return (
            StatusCode::NOT_FOUND,
            "only playlists and segments are served",
        )
            .into_response();
    };
    let allowed = key.starts_with("streams/")
        && !key.contains("/source/")
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !allowed {
        return (StatusCode::NOT_FOUND, "not a stream output").into_response();
    }
    match api.storage.get(&key).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                // Live playlists change every segment; renditions never change.
                (
                    header::CACHE_CONTROL,
                    if content_type == "video/mp2t" {
                        "max-age=86400"
                    } else {
                        "no-cache"
                    },
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(StorageError::NotFound(_)) => (StatusCode::NOT_FOUND, "no such object").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
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

async fn cluster_status(AxumState(api): AxumState<ApiState>) -> Response {
    let (streams, workers, (recent, failures)) = match (
        api.state.stream_summaries().await,
        api.state.workers().await,
        api.state.recent().await,
    ) {
        (Ok(s), Ok(w), Ok(r)) => (s, w, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return unavailable(e),
    };
    let q = queue_snapshot(&api);
    Json(ClusterStatus {
        streams,
        workers,
        queues_as_of_unix_ms: q.as_ref().map(|q| q.as_of_unix_ms),
        queues: q.map(|q| q.queues).unwrap_or_default(),
        recent,
        failures,
    })
    .into_response()
}

async fn list_streams(AxumState(api): AxumState<ApiState>) -> Response {
    match api.state.stream_names().await {
        Ok(names) => Json(json!({ "streams": names })).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn stream_status(AxumState(api): AxumState<ApiState>, Path(name): Path<String>) -> Response {
    let rec = match api.state.stream(&name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": format!("no stream {name}") })),
            )
                .into_response()
        }
        Err(e) => return unavailable(e),
    };
    let failures = match api.state.failures(&name).await {
        Ok(f) => f,
        Err(e) => return unavailable(e),
    };
    let latency = if rec.mode == castwork_protocol::StreamMode::Live {
        match live_latency(&api.state, &rec).await {
            Ok(l) => l,
            Err(e) => return unavailable(e),
        }
    } else {
        serde_json::Value::Null
    };
    let renditions: Vec<_> = rec
        .plan
        .rungs
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "width": r.width, "height": r.height, "bitrate": r.bitrate,
                "max_fps": r.max_fps.as_f64(), "segments_done": rec.done,
                "segments_failed": rec.failed,
            })
        })
        .collect();
    Json(json!({
        "stream": rec.stream,
        "session": rec.session,
        "state": rec.state,
        "mode": rec.mode,
        "segments": {
            "total": rec.total,
            "received": rec.received,
            "done": rec.done,
            "failed": rec.failed,
            "skipped": rec.skipped,
            "pending": rec.received.saturating_sub(rec.done + rec.failed + rec.skipped),
        },
        "target_duration_secs": rec.target_duration_secs,
        "latency": latency,
        "renditions": renditions,
        "skipped": rec.plan.skipped,
        "failures": failures.into_iter().map(|(seq, message)| json!({"seq": seq, "message": message})).collect::<Vec<_>>(),
        "source": rec.source,
        "master_playlist": rec.master_playlist,
        "playback": playback(&rec),
        "billing": {
            "broadcaster": rec.broadcaster,
            "pixels": rec.pixels,
            "fee_wei": rec.fee,
        },
    }))
    .into_response()
}

/// Where a player finds the stream on this API: the master playlist of a complete stream
/// (a live one's recording), or the live playlist while a live stream runs.
fn playback(rec: &crate::state::StreamRecord) -> Option<String> {
    let key = match (&rec.master_playlist, rec.mode) {
        (Some(master), _) if rec.state == "complete" => master.clone(),
        (_, castwork_protocol::StreamMode::Live) if rec.state == "active" => {
            format!("streams/{}/index.m3u8", rec.stream)
        }
        _ => return None,
    };
    Some(format!("/hls/{key}"))
}

/// Live latency of a stream's listed segments: from the last byte reaching the broadcaster
/// to the playlists listing every rendition, split into the worker's transcode and the rest;
/// queue wait is from arrival to a worker starting it.
async fn live_latency(
    state: &State,
    rec: &crate::state::StreamRecord,
) -> redis::RedisResult<serde_json::Value> {
    let segments = state.segments(&rec.stream).await?;
    let (mut all, mut transcode, mut overhead, mut wait) = (vec![], vec![], vec![], vec![]);
    // Where the overhead goes: broadcaster to orchestrator (remux, store, publish), the
    // orchestrator to a worker starting (record, job publish, queue), the worker's own
    // non-transcode work (fetch, upload, report), and checking, accepting and listing.
    let (mut ingest, mut dispatch, mut worker, mut listing) = (vec![], vec![], vec![], vec![]);
    for s in segments.iter().flatten() {
        if let (Some(a), Some(r), Some(st), Some(res), Some(l), Some(t)) = (
            s.arrived_ms,
            s.ready_ms,
            s.started_ms,
            s.result_ms,
            s.listed_ms,
            s.transcode_ms,
        ) {
            ingest.push(r.saturating_sub(a));
            dispatch.push(st.saturating_sub(r));
            worker.push(res.saturating_sub(st).saturating_sub(t));
            listing.push(l.saturating_sub(res));
        }
        if let (Some(a), Some(l)) = (s.arrived_ms, s.listed_ms) {
            let t = l.saturating_sub(a);
            let tr = s.transcode_ms.unwrap_or(0).min(t);
            all.push(t);
            transcode.push(tr);
            overhead.push(t - tr);
        }
        if let (Some(a), Some(st)) = (s.arrived_ms, s.started_ms) {
            wait.push(st.saturating_sub(a));
        }
    }
    let p = |v: Vec<u64>| {
        crate::live::percentiles(v).map(|(m, p95)| json!({"median_ms": m, "p95_ms": p95}))
    };
    Ok(json!({
        "segments": all.len(),
        "total": p(all),
        "transcode": p(transcode),
        "overhead": p(overhead),
        "queue_wait": p(wait),
        "overhead_stages": {
            "ingest": p(ingest),
            "dispatch": p(dispatch),
            "worker_io": p(worker),
            "check_and_list": p(listing),
        },
    }))
}
