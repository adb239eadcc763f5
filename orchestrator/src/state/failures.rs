//! What went wrong where an operator looks: the dead letters (messages no handler could
//! take, each with its reason) and streams failed for good.

use serde::{Deserialize, Serialize};

use super::{
    now_unix_ms, parse_all, seqs_key, stream_key, LuaScript, State, ACTIVE_STREAMS, DONE_STREAMS,
    LIVE_SET,
};

/// The latest dead letters, newest first.
pub const DEAD_LETTERS_LIST: &str = "cw:dead_letters";
/// Dead letters kept.
const DEAD_LETTERS_KEEP: i64 = 1000;

static FAIL_STREAM: LuaScript = LuaScript::new(concat!(
    super::release_lua!(),
    include_str!("lua/fail_stream.lua")
));

/// One dead letter as operators see it: never the message itself, which may carry a
/// publisher's secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub at_unix_ms: u64,
    /// The queue it was taken from.
    pub queue: String,
    /// What it was (`stream_ended`, `segment_result`, a job, or `unreadable`).
    pub kind: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    /// Whether its stream failed because of it (only its own publisher's messages can fail
    /// a stream).
    #[serde(default)]
    pub stream_failed: bool,
}

impl State {
    /// Keeps a dead letter's record (the latest [`DEAD_LETTERS_KEEP`]).
    pub async fn record_dead_letter(&self, record: &DeadLetterRecord) -> redis::RedisResult<()> {
        let json = serde_json::to_string(record).unwrap_or_default();
        redis::pipe()
            .cmd("LPUSH")
            .arg(DEAD_LETTERS_LIST)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(DEAD_LETTERS_LIST)
            .arg(0)
            .arg(DEAD_LETTERS_KEEP - 1)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// The latest `n` dead letters, newest first.
    pub async fn dead_letters(&self, n: usize) -> redis::RedisResult<Vec<DeadLetterRecord>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(DEAD_LETTERS_LIST)
            .arg(0)
            .arg(n as i64 - 1)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(parse_all(&items))
    }

    /// Fails an active stream of `session` for good with `reason` (see fail_stream.lua).
    /// Returns whether it did.
    pub async fn fail_stream(
        &self,
        stream: &str,
        session: &str,
        reason: &str,
    ) -> redis::RedisResult<bool> {
        let r: i64 = FAIL_STREAM
            .get()
            .key(stream_key(stream))
            .key(seqs_key(stream))
            .key(ACTIVE_STREAMS)
            .key(DONE_STREAMS)
            .key(LIVE_SET)
            .arg(format!("{}:seg:", stream_key(stream)))
            .arg(stream)
            .arg(session)
            .arg(reason)
            .arg(now_unix_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(r == 1)
    }
}
