//! Job objects for workers, on the orchestrator's HTTP: a worker reads its source segment
//! and writes its renditions through the signed URLs its job carries
//! ([`crate::workers::tokens`]), so it holds no object-store credentials. Each URL is good
//! for one job's objects alone: a source URL reads that segment, an upload URL writes
//! renditions of that attempt, under keys the orchestrator makes from the bytes it
//! received, up to the rung's size cap.

use axum::{
    body::Body,
    extract::{Query, State as AxumState},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use castwork_cluster::http::error;
use castwork_cluster::StorageError;
use castwork_protocol::{rendition_key, ObjectRef};
use serde::Deserialize;

use super::ApiState;
use crate::verify::rendition_cap;
use crate::workers::tokens::Grant;

/// Uploads an attempt may make per rung of its ladder (one per run of the job).
const UPLOADS_PER_RUNG: u64 = 4;

#[derive(Deserialize)]
pub(super) struct SourceQuery {
    t: String,
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    t: String,
    rung: String,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `token` grants, or the status and message to refuse it with.
fn granted(api: &ApiState, token: &str) -> Result<Grant, (StatusCode, String)> {
    let tokens = api.tokens.get().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "starting: object URLs are checked once Redis answers (see /readyz)".to_string(),
    ))?;
    tokens
        .check(token, now_unix())
        .map_err(|e| (StatusCode::FORBIDDEN, e.to_string()))
}

/// `GET /work/source?t=TOKEN`: the source segment the token names.
pub(super) async fn source(
    AxumState(api): AxumState<ApiState>,
    Query(q): Query<SourceQuery>,
) -> Response {
    let key = match granted(&api, &q.t) {
        Ok(Grant::Source { key }) => key,
        Ok(_) => return error(StatusCode::FORBIDDEN, "this token does not read a source"),
        Err((status, why)) => return error(status, why),
    };
    match api.storage.get(&key).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(StorageError::NotFound(_)) => error(StatusCode::NOT_FOUND, "no such source segment"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `PUT /work/rendition?t=TOKEN&rung=NAME`: stores the body as that rung's rendition of
/// the token's attempt, under the key its bytes give, and answers the object stored. The
/// rung must be in the stream's ladder and the body under its cap; the attempt must still
/// be the segment's current one.
pub(super) async fn rendition(
    AxumState(api): AxumState<ApiState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (stream, seq, attempt) = match granted(&api, &q.t) {
        Ok(Grant::Renditions {
            stream,
            seq,
            attempt,
        }) => (stream, seq, attempt),
        Ok(_) => {
            return error(
                StatusCode::FORBIDDEN,
                "this token does not write renditions",
            )
        }
        Err((status, why)) => return error(status, why),
    };
    if let Err(e) = castwork_protocol::profile::validate_name(&q.rung) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let (rec, seg) = match api.state.stream_and_segment(&stream, seq).await {
        Ok((Some(rec), Some(seg))) => (rec, seg),
        Ok(_) => return error(StatusCode::NOT_FOUND, "no such stream or segment"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
    };
    if rec.state == "failed" {
        return error(
            StatusCode::GONE,
            "the stream failed: its outputs are not wanted",
        );
    }
    if seg.state != "pending" || seg.attempt != attempt {
        return error(
            StatusCode::CONFLICT,
            format!(
                "attempt {attempt} of segment {seq} is no longer wanted (the segment is {}, at \
                 attempt {})",
                seg.state, seg.attempt
            ),
        );
    }
    let Some(rung) = rec.plan.rungs.iter().find(|r| r.name == q.rung) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the stream's ladder has no rung {:?}", q.rung),
        );
    };
    // Each run of an attempt uploads each rung once; a few runs (redeliveries) are
    // allowed, and no more, so one URL cannot fill the store.
    let most = UPLOADS_PER_RUNG * rec.plan.rungs.len() as u64;
    match api
        .state
        .count_upload(&stream, seq, attempt, crate::workers::tokens::VOD_URL_SECS)
        .await
    {
        Ok(n) if n > most => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("attempt {attempt} of segment {seq} has made its {most} uploads"),
            )
        }
        Ok(_) => {}
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
    }
    let cap = rendition_cap(rung.bitrate, seg.duration_us);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |n: String| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a rendition of {n} bytes is over rung {}'s cap of {cap} bytes",
                rung.name
            ),
        )
    };
    if let Some(n) = declared.filter(|n| *n > cap) {
        return too_large(n.to_string());
    }
    let limit = usize::try_from(cap).unwrap_or(usize::MAX);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) if e.to_string().contains("length limit") => {
            return too_large(format!("more than {cap}"))
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    // Hashed once: the key names the hash.
    let sha256 = castwork_protocol::secret::sha256_hex(&bytes);
    let object = ObjectRef {
        key: rendition_key(&stream, &rung.name, seq, attempt, &sha256),
        size: bytes.len() as u64,
        sha256,
    };
    match api.storage.put(&object.key, bytes).await {
        Ok(()) => Json(object).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
