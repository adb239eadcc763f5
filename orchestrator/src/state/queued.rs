//! On-demand jobs published and not yet started: what the orchestrator checks against the
//! job queue to find jobs that left it with no worker starting them (see
//! `crate::recovery::lost`).

use redis::RedisResult;

use super::State;

/// Sorted set of (stream, seq, attempt) by when the job was published (Unix ms). A start
/// notice takes its member out; a member whose attempt is no longer pending is dropped when
/// next looked at.
pub const QUEUED_ZSET: &str = "cw:queued";

/// How many members one look reads, oldest first.
const LOOK_AT_MOST: usize = 1000;

pub(super) fn queued_member(stream: &str, seq: u64, attempt: u32) -> String {
    serde_json::json!([stream, seq, attempt]).to_string()
}

impl State {
    /// Notes that an on-demand job was published at `now_unix_ms`.
    pub async fn track_queued(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        now_unix_ms: u64,
    ) -> RedisResult<()> {
        redis::cmd("ZADD")
            .arg(QUEUED_ZSET)
            .arg(now_unix_ms)
            .arg(queued_member(stream, seq, attempt))
            .query_async::<i64>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    /// Jobs published before `before_unix_ms` that no start notice took out, oldest first.
    pub async fn queued_before(&self, before_unix_ms: u64) -> RedisResult<Vec<(String, u64, u32)>> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(QUEUED_ZSET)
            .arg("-inf")
            .arg(format!("({before_unix_ms}"))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(LOOK_AT_MOST)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }

    /// Takes a job out of the set: true for the one caller (of any replica) that took it.
    pub async fn claim_queued(&self, stream: &str, seq: u64, attempt: u32) -> RedisResult<bool> {
        redis::cmd("ZREM")
            .arg(QUEUED_ZSET)
            .arg(queued_member(stream, seq, attempt))
            .query_async::<i64>(&mut self.redis.clone())
            .await
            .map(|n| n == 1)
    }
}
