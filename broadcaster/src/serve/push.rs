//! Live ingest of segments pushed over HTTP, as go-livepeer's broadcaster takes them
//! (`PUT`/`POST /live/STREAM/SEQ.ts` or `SEQ.mp4`, with its `Livepeer-Transcode-Configuration`
//! header): admitted before the body is read, the body streamed to disk under limits,
//! answered with the renditions once transcoded.

use std::time::Duration;

use axum::{
    extract::{ConnectInfo, Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use castwork_cluster::Storage;
use castwork_protocol::RenditionRef;

use super::{error, Pushing};
use crate::live::auth::{header_config, TRANSCODE_CONFIG_HEADER};
use crate::live::{PushError, PushFormat, PUSH_TOKEN_HEADER};

/// The push token a request carries: `Castwork-Push-Token: T` or `Authorization: Bearer T`.
fn push_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get(PUSH_TOKEN_HEADER) {
        return t.to_str().ok();
    }
    castwork_cluster::http::bearer(headers)
}

fn push_error(e: &PushError) -> Response {
    let code = match e {
        PushError::BadRequest(_) => StatusCode::BAD_REQUEST,
        PushError::Forbidden(_) => StatusCode::FORBIDDEN,
        PushError::Conflict(_) => StatusCode::CONFLICT,
        PushError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        PushError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        PushError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PushError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, e.to_string())
}

/// `PUT`/`POST /live/STREAM/SEQ.ts` with an MPEG-TS segment (or `SEQ.mp4`, an MP4 one) and
/// `Content-Duration` (ms); a stream's first segment may carry `Livepeer-Transcode-Configuration`
/// (JSON, as go-livepeer reads it: `manifestID`, `presets`, `profiles`), which names the
/// stream and its ladder within what the publisher's credentials allow. It
/// answers once the segment is transcoded, with the renditions themselves
/// (`Accept: multipart/mixed`) or their URLs (JSON). The answer to a stream's first segment
/// carries its push token (header `Castwork-Push-Token`), which every later segment must
/// send back; with stream keys, STREAM is the key and authenticates each segment.
pub(super) async fn push_segment(
    State(Pushing { storage, push }): State<Pushing>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((path, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some((seq, format)) = PushFormat::of(&file)
        .and_then(|(s, f)| Some((s.parse::<u64>().ok()?, f)))
        .filter(|(s, _)| *s < 1_000_000_000)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "push segments to /live/STREAM/SEQ.ts (MPEG-TS) or /live/STREAM/SEQ.mp4 (MP4), SEQ \
             a number from 0",
        );
    };
    let config = match headers.get(TRANSCODE_CONFIG_HEADER) {
        None => None,
        Some(v) => match v
            .to_str()
            .map_err(|e| e.to_string())
            .and_then(header_config)
        {
            Ok(c) => Some(c),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > push.max_bytes as u64) {
        return push_error(&PushError::TooLarge(push.max_bytes));
    }
    let duration_us = match headers.get("content-duration") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<f64>().ok()) {
            Some(ms) if ms > 0.0 && ms <= 60_000.0 => Some((ms * 1000.0) as i64),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Content-Duration must be the segment's duration in milliseconds (0-60000)",
                )
            }
        },
    };
    // Who may push is decided first: not one byte of a stranger's body is read.
    let admitted = match push
        .live
        .admit_push(&path, push_token(&headers), Some(peer), config.as_ref())
        .await
    {
        Ok(a) => a,
        Err(e) => return push_error(&e),
    };
    let name = match format {
        PushFormat::Ts => "pushed.ts",
        PushFormat::Mp4 => "pushed.mp4",
    };
    let outcome = match receive(body, name, push.max_bytes, push.body_timeout).await {
        Ok((dir, path)) => {
            let file = (dir, path, format);
            push.live
                .send_pushed(&admitted, seq, file, duration_us, push.wait)
                .await
        }
        Err(e) => Err(e),
    };
    let mut answer = match outcome {
        Err(e) => push_error(&e),
        Ok(renditions) => {
            let multipart = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("multipart/mixed"));
            if multipart {
                multipart_response(&storage, seq, &renditions).await
            } else {
                json_response(&headers, &admitted.stream, seq, &renditions)
            }
        }
    };
    if let Some(t) = admitted
        .new_token
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        answer.headers_mut().insert(PUSH_TOKEN_HEADER, t);
    }
    answer
}

/// Longest wait for the next piece of a pushed body.
const BODY_IDLE: Duration = Duration::from_secs(10);

/// Streams a pushed body to file `name` in a new temporary directory, at most `max` bytes and
/// within `total` (and [`BODY_IDLE`] between pieces): a slow or endless body costs a
/// bounded time and disk, never memory.
async fn receive(
    body: axum::body::Body,
    name: &str,
    max: usize,
    total: Duration,
) -> Result<(tempfile::TempDir, std::path::PathBuf), PushError> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let unavailable = |e: std::io::Error| PushError::Unavailable(format!("storing the body: {e}"));
    let dir = tempfile::tempdir().map_err(unavailable)?;
    let path = dir.path().join(name);
    let mut file = tokio::fs::File::create(&path).await.map_err(unavailable)?;
    let mut stream = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + total;
    let mut size = 0usize;
    loop {
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(BODY_IDLE);
        let piece = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => {
                return Err(PushError::BadRequest(format!(
                    "the segment's body did not arrive in time (at most {} s, and {} s \
                     between pieces)",
                    total.as_secs(),
                    BODY_IDLE.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(PushError::BadRequest(format!("reading the body: {e}")))
            }
            Ok(Some(Ok(p))) => p,
        };
        size += piece.len();
        if size > max {
            return Err(PushError::TooLarge(max));
        }
        file.write_all(&piece).await.map_err(unavailable)?;
    }
    file.flush().await.map_err(unavailable)?;
    if size == 0 {
        return Err(PushError::BadRequest("the segment is empty".into()));
    }
    Ok((dir, path))
}

/// The renditions of a segment as JSON, with URLs on this server.
fn json_response(
    headers: &HeaderMap,
    stream: &str,
    seq: u64,
    renditions: &[RenditionRef],
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let list: Vec<_> = renditions
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.rung, "width": r.width, "height": r.height,
                "url": format!("http://{host}/{}", r.key),
            })
        })
        .collect();
    Json(serde_json::json!({ "stream": stream, "seq": seq, "renditions": list })).into_response()
}

/// The renditions of a segment as one `multipart/mixed` body, a part per rendition with
/// its `Rendition-Name`, as go-livepeer answers.
async fn multipart_response(storage: &Storage, seq: u64, renditions: &[RenditionRef]) -> Response {
    let boundary = format!("castwork-{}", uuid::Uuid::now_v7().simple());
    let mut body = Vec::new();
    for r in renditions {
        let data = match storage.get(&r.key).await {
            Ok(d) => d,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("storage: {e}")),
        };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\n\
                 Content-Disposition: attachment; filename=\"{}_{seq}.ts\"\r\n\
                 Rendition-Name: {}\r\n\r\n",
                data.len(),
                r.rung,
                r.rung
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        [(
            header::CONTENT_TYPE,
            format!("multipart/mixed; boundary={boundary}"),
        )],
        body,
    )
        .into_response()
}
