//! Broadcasters that submit work over HTTP (`/ingest/...`): each has a key the operator
//! made with `orchestrator broadcasters add NAME`, kept in Redis as its SHA-256 only; and
//! each HTTP push session's record, which ties the session to its stream and publisher
//! secret so only that push reads its events and writes its sources.

use castwork_protocol::secret::{random_hex, same_secret, sha256_hex};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use super::State;

/// Hash of broadcaster name → SHA-256 (hex) of its secret.
pub const BROADCASTERS: &str = "cw:broadcasters";

/// How long an HTTP push session is known after it started: longer than any push.
const SESSION_TTL_SECS: u64 = 7 * 24 * 3600;

fn session_key(session: &str) -> String {
    format!("cw:ingest_session:{session}")
}

/// The events of an HTTP push session, in order (a list).
fn events_key(session: &str) -> String {
    format!("cw:ingest_events:{session}")
}

/// An HTTP push session: whose it is and what proves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestSession {
    pub stream: String,
    /// SHA-256 of the push's publisher secret.
    pub secret_hash: String,
    /// The broadcaster whose key started it.
    pub broadcaster: String,
}

impl IngestSession {
    /// Whether `secret` is this session's publisher secret.
    pub fn proves(&self, secret: &str) -> bool {
        same_secret(&self.secret_hash, &sha256_hex(secret))
    }
}

impl State {
    /// Makes (or replaces) broadcaster `name`'s key and returns it: `NAME:SECRET`.
    pub async fn add_broadcaster(&self, name: &str) -> anyhow::Result<String> {
        castwork_protocol::validate_stream_name(name)
            .map_err(|e| anyhow::anyhow!("broadcaster name: {e}"))?;
        let secret = random_hex(24)?;
        self.redis
            .clone()
            .hset::<_, _, _, ()>(BROADCASTERS, name, sha256_hex(&secret))
            .await?;
        Ok(format!("{name}:{secret}"))
    }

    /// Forgets broadcaster `name`'s key; whether it had one.
    pub async fn remove_broadcaster(&self, name: &str) -> redis::RedisResult<bool> {
        let n: i64 = self.redis.clone().hdel(BROADCASTERS, name).await?;
        Ok(n > 0)
    }

    /// The broadcasters with keys, by name.
    pub async fn broadcasters(&self) -> redis::RedisResult<Vec<String>> {
        let mut names: Vec<String> = self.redis.clone().hkeys(BROADCASTERS).await?;
        names.sort();
        Ok(names)
    }

    /// The broadcaster `key` (`NAME:SECRET`) belongs to, if it is a current key.
    pub async fn broadcaster_with_key(&self, key: &str) -> redis::RedisResult<Option<String>> {
        let Some((name, secret)) = key.split_once(':') else {
            return Ok(None);
        };
        if name.is_empty() || name.len() > 128 || secret.len() > 256 {
            return Ok(None);
        }
        let want: Option<String> = self.redis.clone().hget(BROADCASTERS, name).await?;
        Ok(want
            .filter(|w| same_secret(w, &sha256_hex(secret)))
            .map(|_| name.to_string()))
    }

    /// Records HTTP push session `session`, unless it exists: whether it is new.
    pub async fn start_ingest_session(
        &self,
        session: &str,
        rec: &IngestSession,
    ) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(session_key(session))
            .arg(serde_json::to_string(rec).unwrap_or_default())
            .arg("NX")
            .arg("EX")
            .arg(SESSION_TTL_SECS)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(set.is_some())
    }

    /// HTTP push session `session`, if it is known.
    pub async fn ingest_session(&self, session: &str) -> redis::RedisResult<Option<IngestSession>> {
        let v: Option<String> = self.redis.clone().get(session_key(session)).await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Counts one push started by `broadcaster` this hour (a window that starts on the
    /// hour), and answers how many it started in it.
    pub async fn count_ingest_start(&self, broadcaster: &str) -> redis::RedisResult<u64> {
        let hour = castwork_protocol::time::now_unix_ms() / 3_600_000;
        let key = format!("cw:ingest_starts:{broadcaster}:{hour}");
        let (n, _): (u64, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 3600)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n)
    }

    /// Appends `events` (JSON texts) to HTTP push session `session`'s event list.
    pub async fn keep_ingest_events(
        &self,
        session: &str,
        events: &[String],
    ) -> redis::RedisResult<()> {
        let key = events_key(session);
        redis::pipe()
            .atomic()
            .rpush(&key, events)
            .ignore()
            .expire(&key, SESSION_TTL_SECS as i64)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await
    }

    /// At most `count` of session `session`'s events, from index `from` on.
    pub async fn ingest_events(
        &self,
        session: &str,
        from: u64,
        count: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let from = i64::try_from(from).unwrap_or(i64::MAX - count as i64);
        self.redis
            .clone()
            .lrange(
                events_key(session),
                from as isize,
                (from + count as i64 - 1) as isize,
            )
            .await
    }

    /// Forgets HTTP push session `session` and its events.
    pub async fn end_ingest_session(&self, session: &str) -> redis::RedisResult<()> {
        self.redis
            .clone()
            .del(&[session_key(session), events_key(session)])
            .await
    }
}
