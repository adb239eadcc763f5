//! Worker heartbeats in Redis: `cw:worker:<id>` with a TTL, so the orchestrator can list
//! live workers and forget dead ones.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::slots::Slots;
use tokio_util::sync::CancellationToken;

/// Seconds between heartbeats; a worker silent for three of them is dead.
pub const INTERVAL_SECS: u64 = 5;
pub const TTL_SECS: u64 = 3 * INTERVAL_SECS;

/// Set of worker ids that have ever beaten (entries without a live key are dead).
pub const WORKERS_SET: &str = "cw:workers";

pub fn worker_key(id: &str) -> String {
    format!("cw:worker:{id}")
}

/// What a heartbeat says.
#[derive(Debug, Clone, Serialize)]
pub struct Beat {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub class: String,
    pub slots: usize,
    pub busy_slots: usize,
    pub capabilities: Vec<String>,
    pub version: String,
    pub started_unix: u64,
    pub last_seen_unix: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Set by the orchestrator, with its reason, when this worker's output failed its checks
/// too often: the worker stops taking jobs.
pub fn banned_key(id: &str) -> String {
    format!("cw:worker_banned:{id}")
}

/// Beats until `shutdown`, then removes the key. Redis being away only delays beats. A ban
/// cancels `shutdown` and is returned with its reason.
pub async fn run(
    redis_url: String,
    mut beat: Beat,
    slots: Slots,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) -> Option<String> {
    let mut con = None;
    let mut banned = None;
    let key = worker_key(&beat.id);
    loop {
        if con.is_none() {
            con = castwork_cluster::redis_connect(&redis_url).await.ok();
        }
        if let Some(c) = con.as_mut() {
            beat.busy_slots = beat.slots.saturating_sub(slots.available());
            beat.last_seen_unix = now_unix();
            let body = serde_json::to_string(&beat).unwrap_or_default();
            let r = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(body)
                .arg("EX")
                .arg(TTL_SECS)
                .ignore()
                .cmd("SADD")
                .arg(WORKERS_SET)
                .arg(&beat.id)
                .ignore()
                .cmd("GET")
                .arg(banned_key(&beat.id))
                .query_async::<(Option<String>,)>(c)
                .await;
            match r {
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                Ok((Some(reason),)) => {
                    tracing::error!(
                        reason,
                        "the orchestrator banned this worker for bad output: it stops taking \
                         jobs (fix it, then delete the Redis key {} to let it back)",
                        banned_key(&beat.id)
                    );
                    banned = Some(reason);
                    shutdown.cancel();
                }
                Ok((None,)) => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(INTERVAL_SECS)) => {}
            // A job started or ended: say so at once.
            _ = changed.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(c) = con.as_mut() {
        let _ = redis::cmd("DEL").arg(&key).query_async::<()>(c).await;
    }
    banned
}

/// A new heartbeat body for this process.
pub fn beat(id: &str, class: &str, slots: usize) -> Beat {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Beat {
        id: id.to_string(),
        host,
        pid: std::process::id(),
        class: class.to_string(),
        slots,
        busy_slots: 0,
        capabilities: vec!["libx264".into(), "h264".into()],
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix: now_unix(),
        last_seen_unix: now_unix(),
    }
}
