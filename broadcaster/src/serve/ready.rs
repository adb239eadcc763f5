//! The broadcaster's health: `/livez` (the process answers) and `/readyz` (it can take live
//! streams: its link to RabbitMQ is up). A background task holds one AMQP connection as
//! the broadcaster's role and checks it every second, reconnecting with backoff, so a
//! broker outage shows as not ready within a second or two, and a restart as ready again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use castwork_cluster::{broker::Role, redact_url, Backoff, Broker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How often the held connection is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether the AMQP link is up, and why not.
pub struct AmqpLink {
    url: String,
    up: AtomicBool,
    error: RwLock<String>,
}

impl AmqpLink {
    fn set(&self, up: bool, error: &str) {
        self.up.store(up, Ordering::Relaxed);
        if let Ok(mut e) = self.error.write() {
            *e = error.to_string();
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Holds a connection to `amqp_url` until `shutdown`, reconnecting with backoff.
    pub fn watch(amqp_url: &str, shutdown: CancellationToken) -> Arc<AmqpLink> {
        let link = Arc::new(AmqpLink {
            url: amqp_url.to_string(),
            up: AtomicBool::new(false),
            error: RwLock::new("not connected yet".into()),
        });
        let watched = link.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::default();
            while !shutdown.is_cancelled() {
                let connect = Broker::connect(
                    &watched.url,
                    "castwork-broadcaster readiness",
                    Role::Broadcaster,
                );
                let broker = tokio::select! {
                    b = connect => b,
                    () = shutdown.cancelled() => break,
                };
                match broker {
                    Ok(broker) => {
                        backoff.reset();
                        watched.set(true, "");
                        tracing::info!(amqp = redact_url(&watched.url), "AMQP link up: ready");
                        while broker.is_connected() {
                            tokio::select! {
                                () = tokio::time::sleep(CHECK_EVERY) => {}
                                () = shutdown.cancelled() => {
                                    broker.close().await;
                                    return;
                                }
                            }
                        }
                        watched.set(false, "the connection to RabbitMQ was lost");
                        tracing::warn!(
                            amqp = redact_url(&watched.url),
                            "AMQP link lost: not ready (/readyz answers 503) until it is back"
                        );
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        watched.set(false, &e.to_string());
                        tracing::warn!(
                            amqp = redact_url(&watched.url),
                            error = %e,
                            retry_in_ms = d.as_millis() as u64,
                            "waiting for RabbitMQ: not ready (/readyz answers 503)"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(d) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
            }
        });
        link
    }
}

/// `GET /livez`: 200 while the process answers HTTP.
pub async fn livez() -> Response {
    Json(json!({ "alive": true, "version": castwork_cluster::telemetry::VERSION })).into_response()
}

/// `GET /readyz`: 200 when live ingest can reach RabbitMQ (always, with `--no-live`, when
/// `link` is `None`); otherwise 503 naming the broker and why.
pub async fn readyz(link: Option<Arc<AmqpLink>>) -> Response {
    match link {
        Some(l) if !l.is_up() => {
            let error = l.error.read().map(|e| e.clone()).unwrap_or_default();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "ready": false,
                    "broker": false,
                    "waiting_for": ["broker"],
                    "details": { "broker": { "url": redact_url(&l.url), "error": error } },
                })),
            )
                .into_response()
        }
        Some(_) => Json(json!({ "ready": true, "broker": true })).into_response(),
        None => Json(json!({ "ready": true, "broker": null })).into_response(),
    }
}
