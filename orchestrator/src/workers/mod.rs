//! Workers as the orchestrator knows them: who sent a report or a heartbeat (the broker
//! user RabbitMQ checked, never a name in the message), which job ids this orchestrator
//! issued, and the registry fed by heartbeats over the broker.

use castwork_protocol::{BeatReply, WorkerBeat, BEAT_TTL_MS};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::service::{HandleError, Orchestrator};

pub mod tokens;
pub mod users;

/// Longest identity or worker id accepted.
const MAX_NAME: usize = 128;
/// Devices of one worker that its record keeps (a beat may claim any number).
const MAX_DEVICES: usize = 16;

/// Who sent a worker's message. `sender` is the broker user RabbitMQ checked the message's
/// `user-id` against; `own_user` is this orchestrator's. A worker with a user of its own is
/// that user, whatever it claims. Processes sharing the orchestrator's own user (combined
/// mode, or a one-machine setup on one credential) hold every right that user has, so
/// their claimed `worker_id` is all that tells them apart.
pub fn identity(sender: Option<&str>, claimed: &str, own_user: &str) -> Result<String, String> {
    let Some(user) = sender else {
        return Err(format!(
            "a message from worker {claimed:?} without the AMQP user-id property: the sender \
             cannot be told, so it is refused (a worker older than this orchestrator?)"
        ));
    };
    let identity = if user == own_user { claimed } else { user };
    if !castwork_protocol::valid_worker_name(identity) {
        return Err(format!(
            "worker identity {identity:?} must be 1 to {MAX_NAME} letters, digits or . _ - @ :"
        ));
    }
    Ok(identity.to_string())
}

/// The id a worker process's record is kept under: its identity, and its own worker id
/// where that differs (several processes on one broker user).
fn record_id(identity: &str, claimed: &str) -> String {
    if identity == claimed {
        identity.to_string()
    } else {
        format!("{identity}/{claimed}")
    }
}

/// Job ids: a keyed hash of the segment and attempt under a secret only orchestrators
/// hold, so a report names a job this orchestrator really issued (a worker cannot make one
/// up for a segment it was not given), and republishing an attempt keeps its id.
#[derive(Clone)]
pub struct JobIds {
    key: Vec<u8>,
}

impl JobIds {
    pub fn new(key: Vec<u8>) -> Self {
        JobIds { key }
    }

    pub fn id(&self, stream: &str, seq: u64, attempt: u32) -> Uuid {
        // Any key length is accepted by HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"castwork job id\0");
        mac.update(stream.as_bytes());
        mac.update(&[0]);
        mac.update(&seq.to_be_bytes());
        mac.update(&attempt.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// Refuses a report whose job id is not the one issued for its segment and attempt.
    pub fn check(
        &self,
        job_id: Uuid,
        stream: &str,
        seq: u64,
        attempt: u32,
        identity: &str,
    ) -> Result<(), HandleError> {
        if job_id == self.id(stream, seq, attempt) {
            return Ok(());
        }
        Err(HandleError::Refused(format!(
            "worker {identity} reported job {job_id} for attempt {attempt} of segment {seq} of \
             stream {stream}, but no such job was issued: refused"
        )))
    }
}

impl Orchestrator {
    /// Records a heartbeat under the identity of its sender and answers with that
    /// identity's ban, if any. `None` for a beat that cannot be recorded (a sender that
    /// cannot be told), which is dropped with a warning.
    pub async fn worker_beat(
        &self,
        beat: &WorkerBeat,
        sender: Option<&str>,
    ) -> Result<Option<BeatReply>, HandleError> {
        let identity = match identity(sender, &beat.worker_id, self.broker.user()) {
            Ok(i) => i,
            Err(why) => {
                tracing::warn!(why, "heartbeat dropped");
                return Ok(None);
            }
        };
        if !castwork_protocol::valid_worker_name(&beat.worker_id) {
            tracing::warn!(
                identity,
                "heartbeat dropped: its worker id is not a valid name"
            );
            return Ok(None);
        }
        let id = record_id(&identity, &beat.worker_id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let clip = |s: &str| s.chars().take(MAX_NAME).collect::<String>();
        let record = json!({
            "id": id,
            "identity": identity,
            "process": beat.worker_id,
            "user": sender,
            "host": clip(&beat.host),
            "pid": beat.pid,
            "class": clip(&beat.class),
            "slots": beat.slots,
            "busy_slots": beat.busy_slots.min(beat.slots),
            "capabilities": beat.capabilities.iter().take(32).map(|c| clip(c)).collect::<Vec<_>>(),
            "version": clip(&beat.software),
            "devices": beat.devices.iter().take(MAX_DEVICES).map(|d| json!({
                "index": d.index,
                "healthy": d.healthy,
                "sessions": d.sessions,
                "sessions_used": d.sessions_used.min(d.sessions),
                "decoders": d.decoders.iter().take(8).map(|c| clip(c)).collect::<Vec<_>>(),
                "nvenc": d.nvenc,
                "max_width": d.max_width,
                "max_height": d.max_height,
            })).collect::<Vec<_>>(),
            "started_unix": beat.started_unix,
            "last_seen_unix": now,
        });
        let banned = self
            .state
            .record_beat(&id, &identity, &record, BEAT_TTL_MS / 1000)
            .await?;
        Ok(Some(BeatReply { identity, banned }))
    }
}

/// Handles one heartbeat delivery: records it, answers its `reply-to`, acks it. A beat is
/// worth nothing later, so one that cannot be handled is dropped, never retried.
pub async fn answer_beat(
    orch: std::sync::Arc<Orchestrator>,
    broker: std::sync::Arc<castwork_cluster::Broker>,
    delivery: lapin::message::Delivery,
) {
    let sender = castwork_cluster::broker::sender(&delivery.properties);
    match castwork_protocol::decode::<WorkerBeat>(&delivery.data) {
        Err(e) => tracing::warn!(error = %e, sender, "unreadable heartbeat dropped"),
        Ok(beat) => match orch.worker_beat(&beat, sender.as_deref()).await {
            Err(e) => tracing::warn!(error = %e, "could not record a heartbeat"),
            Ok(None) => {}
            Ok(Some(reply)) => {
                if let Some(to) = delivery.properties.reply_to() {
                    let body = castwork_protocol::encode(&reply);
                    // No wait for the confirm: a worker gone since asking is no error.
                    if let Err(e) = broker.send("", to.as_str(), &body, None, None).await {
                        tracing::warn!(error = %e, "could not answer a heartbeat");
                    }
                }
            }
        },
    }
    let _ = delivery
        .acker
        .ack(lapin::options::BasicAckOptions::default())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_with_a_user_of_its_own_is_that_user_whatever_it_claims() {
        assert_eq!(
            identity(Some("worker-7"), "worker-3", "castwork-orchestrator").unwrap(),
            "worker-7"
        );
        // On the orchestrator's own credential, the claim is all there is.
        assert_eq!(
            identity(Some("guest"), "box-1234", "guest").unwrap(),
            "box-1234"
        );
        assert!(identity(None, "worker-7", "guest").is_err());
        assert!(identity(Some("a,b"), "x", "guest").is_err());
        assert!(identity(Some("guest"), "", "guest").is_err());
    }

    #[test]
    fn job_ids_are_keyed_by_segment_and_attempt() {
        let ids = JobIds::new(b"secret".to_vec());
        let id = ids.id("s", 3, 1);
        assert_eq!(id, ids.id("s", 3, 1));
        assert_ne!(id, ids.id("s", 3, 2));
        assert_ne!(id, ids.id("s", 4, 1));
        assert_ne!(id, JobIds::new(b"other".to_vec()).id("s", 3, 1));
        assert!(ids.check(id, "s", 3, 1, "w").is_ok());
        assert!(ids.check(id, "s", 3, 2, "w").is_err());
    }
}
