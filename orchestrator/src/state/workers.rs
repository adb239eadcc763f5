//! The worker registry in Redis: one record per worker process, written from the
//! heartbeats the orchestrator reads off the broker (workers never talk to Redis), with a
//! TTL so a silent worker is forgotten; bans keyed on a worker's identity; and the secret
//! that job ids are derived with.

use redis::AsyncCommands as _;

use super::{segment_key, LuaScript, State};

static PERMANENT_REPORT: LuaScript = LuaScript::new(include_str!("lua/permanent_report.lua"));

/// What to do with a worker's report that a segment cannot succeed anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermanentReport {
    /// Take it as final; the worker that reported it first, when another did.
    Final(Option<String>),
    /// Only this worker says so: retry on another, this one excluded.
    Doubted,
    /// The reporter was excluded from this retry and others may take it: publish it again.
    Bounce,
}

/// Set of worker record ids that have ever beaten (entries without a live record are
/// dead).
pub const WORKERS_SET: &str = "cw:workers";

/// The secret job ids are keyed with, shared by every orchestrator of one Redis.
const JOB_KEY: &str = "cw:job_key";

/// A worker process's record (see [`State::record_beat`]).
pub fn worker_key(id: &str) -> String {
    format!("cw:worker:{id}")
}

/// Set by the orchestrator, with its reason, when a worker identity's output failed its
/// checks too often: its results are refused, and its heartbeats are answered with the ban.
pub fn banned_key(identity: &str) -> String {
    format!("cw:worker_banned:{identity}")
}

impl State {
    /// Live workers from their records; records whose heartbeat expired are forgotten.
    pub async fn workers(&self) -> redis::RedisResult<Vec<serde_json::Value>> {
        let mut con = self.redis.clone();
        let mut ids: Vec<String> = con.smembers(WORKERS_SET).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| worker_key(i)).collect();
        let beats: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let mut live = Vec::new();
        for (id, beat) in ids.iter().zip(beats) {
            match beat.and_then(|b| serde_json::from_str(&b).ok()) {
                Some(v) => live.push(v),
                None => {
                    con.srem::<_, _, i64>(WORKERS_SET, id).await?;
                }
            }
        }
        Ok(live)
    }

    /// Weighs worker `identity`'s report that attempt `attempt` of a segment cannot succeed
    /// anywhere, `live` being the live workers' identities (see `permanent_report.lua`).
    pub async fn permanent_report(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        identity: &str,
        live: &[String],
    ) -> redis::RedisResult<PermanentReport> {
        let (code, first): (i64, String) = PERMANENT_REPORT
            .get()
            .key(segment_key(stream, seq))
            .arg(attempt)
            .arg(identity)
            .arg(live.join(","))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match code {
            1 => PermanentReport::Doubted,
            2 => PermanentReport::Bounce,
            _ => PermanentReport::Final((!first.is_empty()).then_some(first)),
        })
    }

    /// Writes a worker process's record for `ttl_secs` and returns its identity's ban, if
    /// any, in one round trip.
    pub async fn record_beat(
        &self,
        id: &str,
        identity: &str,
        record: &serde_json::Value,
        ttl_secs: u64,
    ) -> redis::RedisResult<Option<String>> {
        let (banned,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(worker_key(id))
            .arg(record.to_string())
            .arg("EX")
            .arg(ttl_secs.max(1))
            .ignore()
            .cmd("SADD")
            .arg(WORKERS_SET)
            .arg(id)
            .ignore()
            .cmd("GET")
            .arg(banned_key(identity))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(banned)
    }

    /// Lifts a worker identity's ban and forgets its bad results; whether it was banned.
    pub async fn unban(&self, identity: &str) -> redis::RedisResult<bool> {
        let (n, _): (i64, i64) = redis::pipe()
            .cmd("DEL")
            .arg(banned_key(identity))
            .cmd("DEL")
            .arg(format!("cw:worker_bad:{identity}"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n > 0)
    }

    /// Bans a worker identity with `reason` (an operator's ban; see also
    /// [`State::flag_worker`]).
    pub async fn ban(&self, identity: &str, reason: &str) -> redis::RedisResult<()> {
        self.redis
            .clone()
            .set::<_, _, ()>(banned_key(identity), reason)
            .await
    }

    /// Counts one rendition upload of a segment's attempt (through its signed URL) and
    /// returns how many it has made; the count goes after `ttl_secs`.
    pub async fn count_upload(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        ttl_secs: u64,
    ) -> redis::RedisResult<u64> {
        let key = format!("cw:uploads:{stream}:{seq}:{attempt}");
        let (n,): (u64,) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl_secs.max(1))
            .ignore()
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n)
    }

    /// Notes that a segment's attempt was published again for a report of an unkeyed job
    /// id; false when it already was.
    pub async fn mark_reissued(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
    ) -> redis::RedisResult<bool> {
        self.redis
            .clone()
            .hset_nx(
                super::segment_key(stream, seq),
                format!("reissued:{attempt}"),
                1,
            )
            .await
    }

    /// The secret job ids are keyed with: made once, by whichever orchestrator comes
    /// first, then shared through Redis.
    pub async fn job_key(&self) -> redis::RedisResult<Vec<u8>> {
        let fresh = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut con = self.redis.clone();
        let _: bool = con.set_nx(JOB_KEY, &fresh).await?;
        let key: String = con.get(JOB_KEY).await?;
        Ok(key.into_bytes())
    }
}
