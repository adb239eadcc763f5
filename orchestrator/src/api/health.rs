//! Health for operators and Kubernetes: `/livez` (the process answers: restart it only when
//! this fails), `/readyz` (it can serve: Redis answers and the broker session consumes;
//! take it out of rotation while this fails), and `/healthz`, the same check as `/readyz`
//! with its older body, kept for probes set up before.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::{
    extract::State as AxumState,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use castwork_cluster::redact_url;
use serde_json::json;

use super::ApiState;

/// How long a readiness check waits for Redis to answer a PING.
pub const READY_PING: Duration = Duration::from_secs(1);

/// What `/readyz` names when something is not reachable: where each service is, and why the
/// broker session is not consuming.
#[derive(Clone)]
pub struct Readiness {
    redis_url: String,
    amqp_url: String,
    broker_error: Arc<RwLock<String>>,
}

impl Readiness {
    /// Passwords in the URLs are redacted.
    pub fn new(redis_url: &str, amqp_url: &str) -> Readiness {
        Readiness {
            redis_url: redact_url(redis_url),
            amqp_url: redact_url(amqp_url),
            broker_error: Arc::new(RwLock::new("not connected yet".into())),
        }
    }

    /// Why the broker session is not consuming (its last failure, or what it waits for).
    pub fn set_broker_error(&self, error: &str) {
        if let Ok(mut e) = self.broker_error.write() {
            *e = error.to_string();
        }
    }

    fn broker_error(&self) -> String {
        self.broker_error
            .read()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

/// Whether Redis answers a PING within [`READY_PING`] (the error if not), and whether the
/// broker session consumes.
async fn check(api: &ApiState) -> (Result<(), String>, bool) {
    let redis = match tokio::time::timeout(READY_PING, api.state.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", READY_PING.as_millis())),
    };
    (redis, api.consuming.load(Ordering::Relaxed))
}

/// `GET /livez`: 200 while the process answers HTTP, whatever its services do.
pub(super) async fn livez() -> Response {
    Json(json!({ "alive": true, "version": castwork_cluster::telemetry::VERSION })).into_response()
}

/// `GET /readyz`: 200 when Redis answers and the broker session consumes; otherwise 503
/// with what it waits for: `{"ready": false, "waiting_for": ["redis"], "redis": false,
/// "broker": false, "details": {"redis": {"url", "error"}, "broker": {"url", "error"}}}`.
pub(super) async fn readyz(AxumState(api): AxumState<ApiState>) -> Response {
    let (redis, broker) = check(&api).await;
    let mut waiting = Vec::new();
    let mut details = serde_json::Map::new();
    if let Err(e) = &redis {
        waiting.push("redis");
        details.insert(
            "redis".into(),
            json!({ "url": api.readiness.redis_url, "error": e }),
        );
    }
    if !broker {
        waiting.push("broker");
        details.insert(
            "broker".into(),
            json!({ "url": api.readiness.amqp_url, "error": api.readiness.broker_error() }),
        );
    }
    let code = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": waiting.is_empty(),
        "redis": redis.is_ok(),
        "broker": broker,
        "waiting_for": waiting,
        "details": details,
    });
    (code, Json(body)).into_response()
}

/// `GET /healthz`: the check of `/readyz`, answered as before (`{"redis", "broker"}`).
pub(super) async fn healthz(AxumState(api): AxumState<ApiState>) -> Response {
    let (redis, broker) = check(&api).await;
    let code = if redis.is_ok() && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "redis": redis.is_ok(), "broker": broker })),
    )
        .into_response()
}
