//! Live stream state: the in-order listing of a live stream's segments, skipping segments
//! past their deadline, and the lock that serialises each stream's playlist writes across
//! orchestrators.

use super::{segment_key, stream_key, LuaScript, State};

/// The order in which a live stream's segments were listed in its playlists: `SEQ` for a
/// listed segment, `SEQ d` for one that follows a publisher's reconnect, `-SEQ` for a
/// segment left out (failed, skipped or never received).
pub fn listed_key(stream: &str) -> String {
    format!("cw:stream:{stream}:listed")
}

/// Live streams that are not complete yet.
pub const LIVE_SET: &str = "cw:live";

impl State {
    /// How many live streams are not complete yet.
    pub async fn live_stream_count(&self) -> redis::RedisResult<u64> {
        redis::cmd("SCARD")
            .arg(LIVE_SET)
            .query_async(&mut self.redis.clone())
            .await
    }
}

/// Skips a pending live segment (its deadline passed). Returns 1 when skipped, 0 when it
/// was already resolved.
static SKIP_SEGMENT: LuaScript = LuaScript::new(concat!(
    super::release_lua!(),
    include_str!("lua/skip_segment.lua")
));

/// Lists a live stream's resolved segments in order from its cursor: a transcoded segment
/// is listed, a failed or skipped one becomes a gap. A pending segment past its deadline is
/// skipped; a segment never received holds back later ones for ARGV[2] ms, then it and the
/// segments missing right after it are skipped.
/// Returns the newly listed and the newly skipped sequence numbers.
static ADVANCE_LIVE: LuaScript = LuaScript::new(concat!(
    super::release_lua!(),
    include_str!("lua/advance_live.lua")
));

/// Renews a lock only if this holder still has it.
static RENEW: LuaScript = LuaScript::new(include_str!("lua/renew_lock.lua"));

/// Steps of one call of the live listing script.
pub const ADVANCE_STEPS: u32 = 500;

/// Releases a lock only if this holder still has it.
static UNLOCK: LuaScript = LuaScript::new(include_str!("lua/unlock.lua"));

impl State {
    /// Forgets the state of an ended live stream of session `session` (its recording
    /// stays in the object store); true when done.
    pub async fn forget_stream(&self, stream: &str, session: &str) -> redis::RedisResult<bool> {
        Ok(self.delete_stream(stream, false, session).await? == super::Deleted::Yes)
    }

    /// Skips a pending segment; true when this call skipped it.
    pub async fn skip(&self, stream: &str, seq: u64, message: &str) -> redis::RedisResult<bool> {
        let r: i64 = SKIP_SEGMENT
            .get()
            .key(segment_key(stream, seq))
            .key(stream_key(stream))
            .arg(message)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(r == 1)
    }

    /// Lists what can be listed of a live stream: returns (newly listed, newly skipped; a
    /// run of segments that never arrived is skipped as one, named by its first). Each
    /// script call takes at most [`ADVANCE_STEPS`] steps, so Redis answers others between.
    pub async fn advance_live(
        &self,
        stream: &str,
        now_ms: u64,
        hold_ms: u64,
    ) -> redis::RedisResult<(Vec<u64>, Vec<u64>)> {
        let (mut listed, mut skipped) = (Vec::new(), Vec::new());
        loop {
            let (l, s, more): (Vec<u64>, Vec<u64>, i64) = ADVANCE_LIVE
                .get()
                .key(stream_key(stream))
                .key(listed_key(stream))
                .key(super::seqs_key(stream))
                .arg(now_ms)
                .arg(hold_ms)
                .arg(format!("{}:seg:", stream_key(stream)))
                .arg(ADVANCE_STEPS)
                .invoke_async(&mut self.redis.clone())
                .await?;
            listed.extend(l);
            skipped.extend(s);
            if more == 0 {
                return Ok((listed, skipped));
            }
        }
    }

    /// What a live stream's playlists have committed to: their target duration (which
    /// may only grow) and the first media sequence number shown (which may only move on).
    pub async fn live_playlist_marks(
        &self,
        stream: &str,
    ) -> redis::RedisResult<(Option<u64>, Option<u64>)> {
        redis::cmd("HMGET")
            .arg(stream_key(stream))
            .arg("live_target")
            .arg("live_first")
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Records [`State::live_playlist_marks`] (written under the stream's playlist lock).
    pub async fn set_live_playlist_marks(
        &self,
        stream: &str,
        target: u64,
        first: u64,
    ) -> redis::RedisResult<()> {
        redis::cmd("HSET")
            .arg(stream_key(stream))
            .arg("live_target")
            .arg(target)
            .arg("live_first")
            .arg(first)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// The whole listing of a live stream (see [`listed_key`]).
    pub async fn listed(&self, stream: &str) -> redis::RedisResult<Vec<String>> {
        redis::cmd("LRANGE")
            .arg(listed_key(stream))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Takes a lock shared by every orchestrator on this Redis, waiting up to `wait` for
    /// it; it expires after `ttl_ms` if its holder dies. Returns the token to release it
    /// with, or `None` if it stayed taken.
    pub async fn lock(
        &self,
        name: &str,
        ttl_ms: u64,
        wait: std::time::Duration,
    ) -> redis::RedisResult<Option<String>> {
        let token = uuid::Uuid::now_v7().to_string();
        let key = format!("cw:lock:{name}");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut self.redis.clone())
                .await?;
            if got.is_some() {
                return Ok(Some(token));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Renews a lock for `ttl_ms` if this holder (`token`) still has it: false when it
    /// expired and maybe went to another holder (the fence a writer checks before it
    /// writes).
    pub async fn renew_lock(
        &self,
        name: &str,
        token: &str,
        ttl_ms: u64,
    ) -> redis::RedisResult<bool> {
        let r: i64 = RENEW
            .get()
            .key(format!("cw:lock:{name}"))
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(r == 1)
    }

    pub async fn unlock(&self, name: &str, token: &str) -> redis::RedisResult<()> {
        UNLOCK
            .get()
            .key(format!("cw:lock:{name}"))
            .arg(token)
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    /// Live streams not complete yet.
    pub async fn live_streams(&self) -> redis::RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(LIVE_SET)
            .query_async(&mut self.redis.clone())
            .await
    }

    pub async fn forget_live(&self, stream: &str) -> redis::RedisResult<()> {
        redis::cmd("SREM")
            .arg(LIVE_SET)
            .arg(stream)
            .query_async::<i64>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }
}
