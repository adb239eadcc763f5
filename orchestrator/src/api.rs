//! The orchestrator's HTTP API: health, metrics and stream status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::{
    extract::{Path, State as AxumState},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use castwork_cluster::http::metrics_handler;
use serde_json::json;

use crate::state::State;

#[derive(Clone)]
pub struct ApiState {
    pub state: State,
    /// Whether the broker session is up and consuming.
    pub consuming: Arc<AtomicBool>,
}

pub fn router(api: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_handler))
        .route("/streams", get(list_streams))
        .route("/workers", get(list_workers))
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
        "state": rec.state,
        "mode": rec.mode,
        "segments": {
            "total": rec.total,
            "received": rec.received,
            "done": rec.done,
            "failed": rec.failed,
            "pending": rec.received.saturating_sub(rec.done + rec.failed),
        },
        "renditions": renditions,
        "skipped": rec.plan.skipped,
        "failures": failures.into_iter().map(|(seq, message)| json!({"seq": seq, "message": message})).collect::<Vec<_>>(),
        "source": rec.source,
        "master_playlist": rec.master_playlist,
    }))
    .into_response()
}
