//! Heartbeats over the broker: every [`BEAT_INTERVAL_SECS`] (and at once when a job starts
//! or ends) the worker publishes a [`WorkerBeat`] to the workers exchange, on a channel
//! that also reads the orchestrator's answers through RabbitMQ's direct reply-to. The
//! worker needs no Redis: the orchestrator records the beats, and its answer says who it
//! knows the worker as and whether that identity is banned.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use castwork_cluster::broker::BrokerError;
use castwork_cluster::Broker;
use castwork_protocol::{
    decode, encode, BeatReply, WorkerBeat, BEAT_INTERVAL_SECS, BEAT_KEY, WORKERS_EXCHANGE,
};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::slots::Slots;

/// RabbitMQ's pseudo-queue for answers to the channel that asks.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What the orchestrator told this worker.
#[derive(Debug, Default)]
pub struct Standing {
    /// The identity the orchestrator knows this worker by (its broker user, or its
    /// `--worker-id` where it shares the orchestrator's own user).
    pub identity: Option<String>,
    /// Why the orchestrator banned that identity, once it has.
    pub banned: Option<String>,
}

/// Beats until `shutdown` or a ban (which cancels `shutdown`). Returns when the channel
/// fails, for the caller to beat again on its next connection.
pub async fn run(
    broker: Arc<Broker>,
    mut beat: WorkerBeat,
    slots: Slots,
    changed: Arc<Notify>,
    standing: Arc<Mutex<Standing>>,
    gpus: Option<Arc<crate::gpu::Gpus>>,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    let ch = broker.channel().await?;
    let mut replies = ch
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "beat-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    loop {
        beat.busy_slots = beat.slots.saturating_sub(slots.available());
        if let Some(g) = &gpus {
            beat.devices = g.beat();
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id(broker.user().into())
            .with_reply_to(DIRECT_REPLY_TO.into());
        ch.basic_publish(
            WORKERS_EXCHANGE.into(),
            BEAT_KEY.into(),
            BasicPublishOptions::default(),
            &encode(&beat),
            props,
        )
        .await?;
        let deadline = tokio::time::sleep(Duration::from_secs(BEAT_INTERVAL_SECS));
        tokio::pin!(deadline);
        // Answers until it is time for the next beat.
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                // A job started or ended: say so at once.
                _ = changed.notified() => break,
                _ = shutdown.cancelled() => return Ok(()),
                reply = replies.next() => match reply {
                    Some(Ok(d)) => {
                        if answered(&d.data, &standing) {
                            shutdown.cancel();
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Takes in an answer; true when it bans this worker.
fn answered(body: &[u8], standing: &Mutex<Standing>) -> bool {
    let reply: BeatReply = match decode(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable answer to a heartbeat");
            return false;
        }
    };
    let mut standing = standing.lock().unwrap_or_else(|e| e.into_inner());
    if standing.identity.as_deref() != Some(reply.identity.as_str()) {
        tracing::info!(
            identity = reply.identity,
            "the orchestrator knows this worker by its identity"
        );
        standing.identity = Some(reply.identity.clone());
    }
    let Some(reason) = reply.banned else {
        return false;
    };
    tracing::error!(
        reason,
        identity = reply.identity,
        "the orchestrator banned this worker for bad output: it stops taking jobs (fix it, \
         then lift the ban with `orchestrator workers unban {}`)",
        reply.identity
    );
    standing.banned = Some(reason);
    true
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new heartbeat body for this process.
pub fn beat(id: &str, class: &str, slots: usize) -> WorkerBeat {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    WorkerBeat {
        worker_id: id.to_string(),
        host,
        pid: std::process::id(),
        class: class.to_string(),
        slots,
        busy_slots: 0,
        capabilities: vec!["libx264".into(), "h264".into()],
        software: env!("CARGO_PKG_VERSION").to_string(),
        started_unix: now_unix(),
        devices: Vec::new(),
    }
}
