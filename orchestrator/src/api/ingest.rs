//! Ingest over HTTP, for broadcasters on other machines: with this orchestrator's URL and
//! a broadcaster key (`orchestrator broadcasters add NAME`) a broadcaster pushes a stream
//! without RabbitMQ or object-store credentials of its own. The orchestrator turns each
//! request into what a broadcaster on the broker would do: it stores the source segments,
//! publishes the ingest messages, and keeps the push's events in a queue of its own that
//! the broadcaster reads with long polls.
//!
//! - `POST /ingest/messages`: an ingest message (JSON, as on the broker); a `stream_started`
//!   opens the push's session, and every later message of the session must carry the
//!   publisher secret it opened with.
//! - `PUT /ingest/source/{session}/{seq}.{ext}`: a source segment, answered with the object
//!   (key, size, SHA-256) to name in the segment's `segment_ready`.
//! - `GET /ingest/events/{session}?after=N&wait=SECS`: the push's events from the `N`th
//!   on, waiting up to `wait` seconds (at most [`MAX_WAIT`]) for one; they stay readable
//!   by index, so an answer lost on the way is read again.
//! - `GET /ingest/output/{session}/{key}`: a rendition of the push's stream (a key its
//!   `segment_transcoded` events name), so the broadcaster can keep its own copy: a push
//!   that moves to another orchestrator mid-stream plays from that copy.
//! - `DELETE /ingest/events/{session}`: the push is over; its events and session go.
//!
//! Every request carries the key (`Authorization: Bearer NAME:SECRET`); those about a
//! session also its publisher secret (`X-Castwork-Secret`). Off-chain, a stream is charged
//! to the broadcaster whose key started it, whatever account the message names.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{Path, Query, State as AxumState},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use castwork_cluster::broker::INGEST_KEY;
use castwork_cluster::http::error;
use castwork_protocol::{
    decode, encode, source_key, IngestMessage, ObjectRef, INGEST_EXCHANGE, MAX_MESSAGE_BYTES,
};
use lapin::options::BasicGetOptions;
use serde::Deserialize;

use super::ApiState;
use crate::state::IngestSession;

/// The header that carries a push's publisher secret.
pub const SECRET_HEADER: &str = "x-castwork-secret";
/// The longest a poll for events waits.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// The most events one poll answers.
const MAX_EVENTS: usize = 256;
/// Source file extensions a push may store (the containers the cutter writes).
const SOURCE_EXTENSIONS: &[&str] = &["ts", "mp4", "m4s", "mkv", "webm", "flv", "mov"];

/// The queue that keeps session `session`'s events for its broadcaster.
pub fn event_queue(session: &str) -> String {
    format!("castwork.http.{session}")
}

/// A refusal: its status and message (answered as `{"error": ...}`).
pub(super) struct Refused(StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The broadcaster the request's key belongs to, or the refusal.
async fn broadcaster(api: &ApiState, headers: &HeaderMap) -> Result<String, Refused> {
    let Some(key) = castwork_cluster::http::bearer(headers) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "send your broadcaster key as Authorization: Bearer NAME:SECRET (the operator \
             makes one with `orchestrator broadcasters add NAME`)",
        ));
    };
    match api.state.broadcaster_with_key(key).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "this broadcaster key is not one of this orchestrator's",
        )),
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis: {e}"),
        )),
    }
}

/// The publisher secret a request carries in [`SECRET_HEADER`].
fn header_secret(headers: &HeaderMap) -> &str {
    headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Session `session` of `broadcaster`, when `secret` is its publisher secret.
async fn session_of(
    api: &ApiState,
    secret: &str,
    broadcaster: &str,
    session: &str,
) -> Result<IngestSession, Refused> {
    match api.state.ingest_session(session).await {
        Ok(Some(s)) if s.broadcaster == broadcaster && s.proves(secret) => Ok(s),
        Ok(_) => Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "no push session {session} of yours with that publisher secret (send it as \
                 {SECRET_HEADER})"
            ),
        )),
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("redis: {e}"),
        )),
    }
}

fn broker(api: &ApiState) -> Result<std::sync::Arc<castwork_cluster::Broker>, Refused> {
    api.broker
        .read()
        .ok()
        .and_then(|b| b.clone())
        .ok_or_else(|| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "not connected to RabbitMQ yet (see /readyz): try again",
            )
        })
}

/// Reads at most `limit` bytes of `body`, or the refusal.
async fn read_body(body: Body, limit: u64, what: &str) -> Result<bytes::Bytes, Refused> {
    match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(b) => Ok(b),
        Err(e) if e.to_string().contains("length limit") => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is over this orchestrator's limit of {limit} bytes"),
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

/// `POST /ingest/messages`: publishes an ingest message for the broadcaster.
pub(super) async fn message(
    AxumState(api): AxumState<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let name = broadcaster(&api, &headers).await?;
    let body = read_body(body, MAX_MESSAGE_BYTES as u64, "the message").await?;
    let mut msg: IngestMessage = match decode(&body) {
        Ok(m) => m,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let broker = broker(&api)?;
    let (_, stream, session, secret) = msg.about();
    if let Err(e) = castwork_protocol::validate_stream_name(stream) {
        return Err(refuse(StatusCode::BAD_REQUEST, e));
    }
    let (stream, session, secret) = (stream.to_string(), session.to_string(), secret.to_string());
    let opened = IngestSession {
        stream: stream.clone(),
        secret_hash: castwork_protocol::secret::sha256_hex(&secret),
        broadcaster: name.clone(),
    };
    if let IngestMessage::StreamStarted(s) = &mut msg {
        if !api.on_chain {
            // Charged to the key's holder, never to an account it names.
            s.broadcaster = Some(name.clone());
        }
        let redis =
            |e: redis::RedisError| refuse(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}"));
        // Each start makes an event queue: a key makes at most so many an hour.
        let starts = api.state.count_ingest_start(&name).await.map_err(redis)?;
        if starts > api.ingest_starts_per_hour {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "broadcaster {name} started {} pushes this hour, this orchestrator's most \
                     (--ingest-starts-per-hour): try again later",
                    api.ingest_starts_per_hour
                ),
            ));
        }
        // A retry of the same start is answered as the first was.
        if !api
            .state
            .start_ingest_session(&session, &opened)
            .await
            .map_err(redis)?
        {
            same_stream(session_of(&api, &secret, &name, &session).await?, &stream)?;
        }
        if let Err(e) = declare_event_queue(&broker, &session, &opened.stream).await {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("making the push's event queue: {e}"),
            ));
        }
    } else {
        same_stream(session_of(&api, &secret, &name, &session).await?, &stream)?;
    }
    match broker
        .publish(INGEST_EXCHANGE, INGEST_KEY, &encode(&msg), None)
        .await
    {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "session": session })),
        )
            .into_response()),
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("publishing: {e}"),
        )),
    }
}

/// Refuses a message about another stream than its session's.
fn same_stream(session: IngestSession, stream: &str) -> Result<(), Refused> {
    match session.stream == stream {
        true => Ok(()),
        false => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("the session is stream {}'s, not {stream}'s", session.stream),
        )),
    }
}

async fn declare_event_queue(
    broker: &castwork_cluster::Broker,
    session: &str,
    stream: &str,
) -> Result<(), anyhow::Error> {
    let ch = broker.channel().await?;
    castwork_cluster::broker::declare_event_queue(&ch, &event_queue(session), stream).await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// `PUT /ingest/source/{session}/{seq}.{ext}`: stores a source segment of the session's
/// stream, once the stream is admitted, and answers its object.
pub(super) async fn source(
    AxumState(api): AxumState<ApiState>,
    Path((session, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let name = broadcaster(&api, &headers).await?;
    let opened = session_of(&api, header_secret(&headers), &name, &session).await?;
    let parsed = file
        .split_once('.')
        .and_then(|(seq, ext)| Some((seq.parse::<u64>().ok()?, ext)))
        .filter(|(_, ext)| SOURCE_EXTENSIONS.contains(ext));
    let Some((seq, ext)) = parsed else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "name the segment SEQ.EXT, EXT one of {}",
                SOURCE_EXTENSIONS.join(", ")
            ),
        ));
    };
    let rec = match api.state.stream(&opened.stream).await {
        Ok(Some(rec)) if rec.session == session => rec,
        Ok(_) => {
            return Err(refuse(
                StatusCode::CONFLICT,
                "the stream is not admitted for this session (wait for stream_admitted)",
            ))
        }
        Err(e) => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("redis: {e}"),
            ))
        }
    };
    if rec.state != "active" {
        return Err(refuse(
            StatusCode::GONE,
            format!("the stream is {}: no more sources", rec.state),
        ));
    }
    // As far ahead as the ingest takes segments, so a key cannot fill the store.
    if seq > rec.received + api.max_seq_ahead {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "segment {seq} is more than {} ahead of the {} received",
                api.max_seq_ahead, rec.received
            ),
        ));
    }
    let limit = api.max_source_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the segment is over this orchestrator's limit of {limit} bytes"),
        ));
    }
    let bytes = read_body(body, limit, "the segment").await?;
    if bytes.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "the segment is empty"));
    }
    let object = ObjectRef::of(source_key(&opened.stream, seq, ext), &bytes);
    match api.storage.put(&object.key, bytes).await {
        Ok(()) => Ok(Json(object).into_response()),
        Err(e) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

#[derive(Deserialize)]
pub(super) struct Poll {
    #[serde(default)]
    wait: Option<f64>,
    /// How many of the session's events the broadcaster has already read.
    #[serde(default)]
    after: u64,
}

/// The broker, when the request's key and publisher secret are those of `session`.
async fn own_session(
    api: &ApiState,
    headers: &HeaderMap,
    session: &str,
) -> Result<std::sync::Arc<castwork_cluster::Broker>, Refused> {
    let name = broadcaster(api, headers).await?;
    session_of(api, header_secret(headers), &name, session).await?;
    broker(api)
}

/// Moves what the session's event queue holds into its list in Redis, where every event
/// stays readable by its index until the session expires.
async fn keep_events(api: &ApiState, ch: &lapin::Channel, session: &str) -> Result<(), Refused> {
    let queue = event_queue(session);
    let mut got = Vec::new();
    while got.len() < MAX_EVENTS {
        let next = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading the push's events: {e}"),
                )
            })?;
        let Some(m) = next else { break };
        got.push((
            m.delivery.delivery_tag,
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
        ));
    }
    let Some(&(last, _)) = got.last() else {
        return Ok(());
    };
    let texts: Vec<String> = got.into_iter().map(|(_, t)| t).collect();
    api.state
        .keep_ingest_events(session, &texts)
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")))?;
    // Acked once kept: a failure before this leaves them in the queue for the next poll.
    let _ = ch
        .basic_ack(last, lapin::options::BasicAckOptions { multiple: true })
        .await;
    Ok(())
}

/// `GET /ingest/events/{session}?after=N&wait=SECS`: the session's events from the
/// `N`th on, `{"events": [...], "next": M}`, waiting up to `wait` seconds for one. Events
/// stay readable by index (a poll whose answer was lost is simply made again), at most
/// [`MAX_EVENTS`] an answer.
pub(super) async fn events(
    AxumState(api): AxumState<ApiState>,
    Path(session): Path<String>,
    Query(q): Query<Poll>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let broker = own_session(&api, &headers, &session).await?;
    let wait = Duration::from_secs_f64(q.wait.unwrap_or(0.0).clamp(0.0, MAX_WAIT.as_secs_f64()));
    let until = tokio::time::Instant::now() + wait;
    let ch = broker
        .channel()
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let read = async {
        loop {
            keep_events(&api, &ch, &session).await?;
            let events = api
                .state
                .ingest_events(&session, q.after, MAX_EVENTS)
                .await
                .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")))?;
            if !events.is_empty() || tokio::time::Instant::now() >= until {
                return Ok::<_, Refused>(events);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let events = read.await;
    let _ = ch.close(200, "read".into()).await;
    let events: Vec<serde_json::Value> = events?
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let next = q.after + events.len() as u64;
    Ok(Json(serde_json::json!({ "events": events, "next": next })).into_response())
}

/// `DELETE /ingest/events/{session}`: the broadcaster is done with the session's events.
pub(super) async fn close(
    AxumState(api): AxumState<ApiState>,
    Path(session): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let broker = own_session(&api, &headers, &session).await?;
    let deleted = async {
        let ch = broker.channel().await?;
        ch.queue_delete(event_queue(&session).as_str().into(), Default::default())
            .await?;
        let _ = ch.close(200, "deleted".into()).await;
        api.state.end_ingest_session(&session).await?;
        Ok::<_, anyhow::Error>(())
    };
    match deleted.await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))),
    }
}

/// `GET /ingest/output/{session}/{key}`: an output of the session's stream (a rendition or
/// playlist under `streams/STREAM/`), for the broadcaster that pushed it.
pub(super) async fn output(
    AxumState(api): AxumState<ApiState>,
    Path((session, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let name = broadcaster(&api, &headers).await?;
    let s = session_of(&api, header_secret(&headers), &name, &session).await?;
    if !key.starts_with(&format!("streams/{}/", s.stream)) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("{key} is not an output of stream {}", s.stream),
        ));
    }
    Ok(super::stream_output(&api, &key, &headers).await)
}
