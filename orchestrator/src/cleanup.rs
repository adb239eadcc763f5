//! Nothing grows forever: an ended stream's state in Redis is forgotten after the
//! retention (its playlists and renditions stay in the object store for playback), and
//! an operator can delete any stream's state and objects at once.

use std::time::Duration;

use castwork_cluster::Storage;
use tracing::{info, warn};

use crate::state::{now_unix_ms, Deleted, State};

/// Streams forgotten per retention pass (the next pass takes the rest).
const RETENTION_BATCH: u64 = 100;

/// Why a stream was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Active(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Deletes stream `name`'s state in Redis and every object under `streams/NAME/` (an
/// active stream only when `force`); says what it did.
pub async fn delete_stream(
    state: &State,
    storage: &Storage,
    name: &str,
    force: bool,
) -> Result<String, DeleteError> {
    castwork_protocol::validate_stream_name(name).map_err(DeleteError::NotFound)?;
    let unavailable = |e: &dyn std::fmt::Display| DeleteError::Unavailable(e.to_string());
    let deleted = state
        .delete_stream(name, force, "")
        .await
        .map_err(|e| unavailable(&e))?;
    if deleted == Deleted::Active {
        return Err(DeleteError::Active(format!(
            "stream {name} is still active: delete it with force to cut it off"
        )));
    }
    let objects = storage
        .delete_prefix(&format!("streams/{name}/"))
        .await
        .map_err(|e| unavailable(&e))?;
    if deleted == Deleted::NoSuchStream && objects == 0 {
        return Err(DeleteError::NotFound(format!("no stream {name}")));
    }
    info!(stream = name, objects, "stream deleted");
    Ok(format!(
        "deleted stream {name}: {} and {objects} objects",
        if deleted == Deleted::Yes {
            "its state"
        } else {
            "no state"
        }
    ))
}

/// Forgets the Redis state of streams that ended more than `retain` ago; returns how
/// many.
pub async fn forget_expired(state: &State, retain: Duration) -> redis::RedisResult<usize> {
    let before = now_unix_ms().saturating_sub(retain.as_millis() as u64);
    let names = state.ended_before(before, RETENTION_BATCH).await?;
    let mut n = 0;
    for name in names {
        match state.delete_stream(&name, false, "").await {
            Ok(Deleted::Yes) => {
                n += 1;
                info!(stream = name, "ended stream forgotten after the retention");
            }
            Ok(_) => {}
            Err(e) => warn!(stream = name, error = %e, "could not forget an ended stream"),
        }
    }
    Ok(n)
}
