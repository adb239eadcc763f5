//! The streams part of the HTTP API: pages of streams, one stream's state, and deleting a
//! stream (with the API token).

use axum::{
    extract::{Path, Query, State as AxumState},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{unavailable, ApiState};
use crate::state::State;

/// Most streams one page lists.
pub const MAX_PER_PAGE: u64 = 500;

/// `?page=N&per_page=M` (pages from 1; 100 a page unless asked, at most [`MAX_PER_PAGE`]).
#[derive(Debug, Deserialize, Default)]
pub struct PageQuery {
    pub page: Option<u64>,
    pub per_page: Option<u64>,
}

impl PageQuery {
    /// (offset, limit).
    pub fn window(&self) -> (u64, u64) {
        let per = self.per_page.unwrap_or(100).clamp(1, MAX_PER_PAGE);
        let page = self.page.unwrap_or(1).clamp(1, 1_000_000);
        ((page - 1) * per, per)
    }
}

/// `GET /streams?page=N&per_page=M`: stream names, active first, with the counts.
pub(super) async fn list_streams(
    AxumState(api): AxumState<ApiState>,
    Query(q): Query<PageQuery>,
) -> Response {
    let (offset, limit) = q.window();
    match api.state.stream_names_page(offset, limit).await {
        Ok((names, active, ended)) => Json(json!({
            "streams": names, "active": active, "ended": ended,
            "page": q.page.unwrap_or(1), "per_page": limit,
        }))
        .into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /streams/NAME[?force=true]` with `Authorization: Bearer API_TOKEN`: deletes a
/// stream's state and objects (an active one only with `force`).
pub(super) async fn delete_stream(
    AxumState(api): AxumState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = super::unauthorized(&api, &headers) {
        return refusal;
    }
    match crate::cleanup::delete_stream(&api.state, &api.storage, &name, q.force).await {
        Ok(msg) => Json(json!({ "deleted": name, "message": msg })).into_response(),
        Err(crate::cleanup::DeleteError::NotFound(m)) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": m }))).into_response()
        }
        Err(crate::cleanup::DeleteError::Active(m)) => {
            (StatusCode::CONFLICT, Json(json!({ "error": m }))).into_response()
        }
        Err(crate::cleanup::DeleteError::Unavailable(m)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": m }))).into_response()
        }
    }
}

pub(super) async fn stream_status(
    AxumState(api): AxumState<ApiState>,
    Path(name): Path<String>,
) -> Response {
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
    let rungs: Vec<&str> = rec.plan.rungs.iter().map(|r| r.name.as_str()).collect();
    let done = match api.state.rendition_done(&name, &rungs).await {
        // A stream recorded before per-rendition counts: every rung has the stream's.
        Ok(d) => d.unwrap_or_else(|| vec![rec.done; rungs.len()]),
        Err(e) => return unavailable(e),
    };
    let renditions: Vec<_> = rec
        .plan
        .rungs
        .iter()
        .zip(done)
        .map(|(r, done)| {
            json!({
                "name": r.name, "width": r.width, "height": r.height, "bitrate": r.bitrate,
                "max_fps": r.max_fps.as_f64(), "segments_done": done,
                "segments_failed": rec.failed,
            })
        })
        .collect();
    Json(json!({
        "stream": rec.stream,
        "session": rec.session,
        "state": rec.state,
        // Why it failed, or why it is incomplete.
        "reason": rec.reason,
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

/// Where a player finds the stream on this API: the master playlist of an ended stream
/// (complete, or incomplete with the segments that were done; a live one's recording), or
/// the live playlist while a live stream runs.
fn playback(rec: &crate::state::StreamRecord) -> Option<String> {
    let key = match (&rec.master_playlist, rec.mode) {
        (Some(master), _) if rec.state == "complete" || rec.state == "incomplete" => master.clone(),
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
