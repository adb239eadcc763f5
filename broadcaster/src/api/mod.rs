//! The job API for app developers, on `broadcaster serve`: `POST /v1/jobs` transcodes a
//! video at a URL into an HLS ladder, `GET /v1/jobs/{id}` and `GET /v1/jobs` say how jobs
//! stand, `GET /v1/openapi.json` describes it all. Every request but the description needs
//! an API key (`broadcaster api-keys add NAME`, sent as `Authorization: Bearer KEY`), and an
//! account sees only its own jobs. Inputs are fetched within limits (see [`fetch`]).

pub mod cli;
pub mod fetch;
pub mod jobs;
pub mod webhook;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use castwork_cluster::http::error;
use castwork_protocol::profile::{parse_profiles, parse_transcoding_options};
use serde::Deserialize;

use crate::live::auth::KeyStore;
use jobs::{now_ms, Job, Jobs, Runner};

/// Jobs a server runs or has queued, across accounts, beyond which a new one is refused
/// (429).
pub const MAX_PENDING: usize = 100;

/// What the API routes work with.
#[derive(Clone)]
pub struct Api {
    pub keys: KeyStore,
    pub jobs: Jobs,
    pub runner: Runner,
    /// The ladder of a job that names none.
    pub default_ladder: Vec<castwork_protocol::Profile>,
}

/// The API's routes.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .with_state(api)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// The account an API key names, or the answer that refuses the request.
async fn account(api: &Api, headers: &HeaderMap) -> Result<String, Response> {
    let Some(key) = castwork_cluster::http::bearer(headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "send an API key: Authorization: Bearer KEY (`broadcaster api-keys add NAME` makes one)",
        ));
    };
    match api.keys.lookup(key).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(error(StatusCode::UNAUTHORIZED, "unknown API key")),
        Err(e) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot check the API key (Redis): {e}"),
        )),
    }
}

fn unavailable(e: redis::RedisError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the job records (Redis) cannot be reached: {e}"),
    )
}

/// A job as answered: its record, plus where to play it once complete.
fn shown(job: &Job, headers: &HeaderMap) -> serde_json::Value {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    job.shown(&format!("http://{host}"))
}

/// `POST /v1/jobs`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    /// An `http(s)://` URL of a video file.
    input: String,
    /// Preset names (a comma-separated string or a list), or Livepeer transcodingOptions
    /// profiles (objects).
    #[serde(default)]
    profiles: Option<serde_json::Value>,
    /// An `http(s)://` URL that gets the job, signed, when it ends.
    #[serde(default)]
    webhook: Option<String>,
}

fn ladder_of(
    profiles: &Option<serde_json::Value>,
    default: &[castwork_protocol::Profile],
) -> Result<Vec<castwork_protocol::Profile>, String> {
    match profiles {
        None | Some(serde_json::Value::Null) => Ok(default.to_vec()),
        Some(serde_json::Value::String(s)) => parse_profiles(s).map_err(|e| e.to_string()),
        Some(serde_json::Value::Array(items)) if items.iter().all(|i| i.is_string()) => {
            let names: Vec<&str> = items.iter().filter_map(|i| i.as_str()).collect();
            parse_profiles(&names.join(",")).map_err(|e| e.to_string())
        }
        Some(v) => parse_transcoding_options(&v.to_string()).map_err(|e| e.to_string()),
    }
}

async fn create_job(
    State(api): State<Api>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account(&api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // The webhook's signing key: the key's SHA-256, which the account can compute too.
    let signing_key = castwork_cluster::http::bearer(&headers)
        .map(castwork_protocol::secret::sha256_hex)
        .unwrap_or_default();
    if body.len() > 64 * 1024 {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a job is at most 64 KiB of JSON",
        );
    }
    let new: NewJob = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("a job is JSON: {{\"input\": \"https://...\", \"profiles\": ...}}: {e}"),
            )
        }
    };
    for (what, url) in [
        ("input", Some(&new.input)),
        ("webhook", new.webhook.as_ref()),
    ] {
        let Some(url) = url else { continue };
        if url.len() > 2048 {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{what}: at most 2048 characters"),
            );
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{what}: only http:// and https:// URLs"),
            );
        }
    }
    let ladder = match ladder_of(&new.profiles, &api.default_ladder) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "profiles: name at least one"),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("profiles: {e}")),
    };
    if api.runner.pending() >= MAX_PENDING {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_PENDING} jobs are already waiting or running: try again later"),
        );
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let now = now_ms();
    let job = Job {
        stream: format!("job-{id}"),
        id,
        account,
        input: new.input,
        profiles: ladder.iter().map(|p| p.name.clone()).collect(),
        state: "queued".into(),
        created_unix_ms: now,
        updated_unix_ms: now,
        error: None,
        segments: None,
        failed_segments: Vec::new(),
        progress: None,
        webhook: new.webhook,
        webhook_result: None,
        signing_key,
    };
    if let Err(e) = api.jobs.save(&job).await {
        return unavailable(e);
    }
    api.runner.start(job.clone(), ladder);
    (StatusCode::CREATED, Json(shown(&job, &headers))).into_response()
}

async fn get_job(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let account = match account(&api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match api.jobs.get(&account, &id).await {
        Ok(Some(job)) => Json(shown(&job, &headers)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no job {id} of this account"),
        ),
        Err(e) => unavailable(e),
    }
}

/// `DELETE /v1/jobs/{id}`: 200 with the job once its outputs are gone; 202 while a running
/// job stops (its stream aborted) before they go.
async fn delete_job(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let account = match account(&api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut job = match api.jobs.get(&account, &id).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no job {id} of this account"),
            )
        }
        Err(e) => return unavailable(e),
    };
    match api.runner.delete(&mut job).await {
        Ok(true) => Json(shown(&job, &headers)).into_response(),
        Ok(false) => (StatusCode::ACCEPTED, Json(shown(&job, &headers))).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    before: Option<u64>,
}

async fn list_jobs(
    State(api): State<Api>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let account = match account(&api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit: 1 to 100 jobs a page");
    }
    if page.before.is_some_and(|b| b > i64::MAX as u64) {
        return error(StatusCode::BAD_REQUEST, "before: a previous page's `next`");
    }
    match api.jobs.list(&account, page.before, limit).await {
        Ok(jobs) => {
            let next = (jobs.len() == limit)
                .then(|| jobs.last().map(|j| j.created_unix_ms))
                .flatten();
            let list: Vec<_> = jobs.iter().map(|j| shown(j, &headers)).collect();
            Json(serde_json::json!({ "jobs": list, "next": next })).into_response()
        }
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_names_its_ladder_by_presets_or_profiles() {
        let default = parse_profiles("P360p30fps16x9").unwrap();
        let names = |v: Option<serde_json::Value>| {
            ladder_of(&v, &default).map(|l| l.into_iter().map(|p| p.name).collect::<Vec<_>>())
        };
        assert_eq!(names(None).unwrap(), ["P360p30fps16x9"]);
        assert_eq!(
            names(Some("P144p30fps16x9,P240p30fps16x9".into())).unwrap(),
            ["P144p30fps16x9", "P240p30fps16x9"]
        );
        assert_eq!(
            names(Some(serde_json::json!(["P144p30fps16x9"]))).unwrap(),
            ["P144p30fps16x9"]
        );
        assert_eq!(
            names(Some(
                serde_json::json!([{"name": "small", "width": 320, "height": 180,
                "bitrate": 300000, "fps": 30}])
            ))
            .unwrap(),
            ["small"]
        );
        assert!(names(Some("nope".into())).is_err());
        assert!(names(Some(serde_json::json!(7))).is_err());
    }

    #[test]
    fn the_description_is_json_and_names_every_route() {
        let v: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        assert_eq!(v["openapi"], "3.0.3");
        for path in ["/v1/jobs", "/v1/jobs/{id}"] {
            assert!(v["paths"][path].is_object(), "{path}");
        }
    }
}
