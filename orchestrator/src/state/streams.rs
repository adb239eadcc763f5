//! The index of streams: the active ones (by start) and the ended ones (by end), read a
//! page at a time, never all at once; an ended stream's state is forgotten after the
//! retention, and any stream's on request.

use serde::{Deserialize, Serialize};

use super::{failures_key, listed_key, seqs_key, stream_key, LuaScript, State, LIVE_SET};

/// Active streams, scored by when they started (Unix ms).
pub const ACTIVE_STREAMS: &str = "cw:streams:active";
/// Ended streams, scored by when they ended (Unix ms): their retention counts from then.
pub const DONE_STREAMS: &str = "cw:streams:done";

static DELETE_STREAM: LuaScript = LuaScript::new(include_str!("lua/delete_stream.lua"));

/// A stream's counts, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub stream: String,
    pub mode: String,
    pub state: String,
    pub total: Option<u64>,
    pub received: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Why a failed (or incomplete) stream ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One page of the streams, active first (newest first), then ended (latest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StreamPage {
    pub streams: Vec<StreamSummary>,
    /// Active and ended streams in all.
    pub active: u64,
    pub ended: u64,
}

/// What deleting a stream's state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    /// No such stream (or not of the session asked for).
    NoSuchStream,
    /// It is still active, and deleting it was not forced.
    Active,
}

impl State {
    /// Names of the streams `offset..offset + limit` in the order of [`StreamPage`], and
    /// the counts.
    pub async fn stream_names_page(
        &self,
        offset: u64,
        limit: u64,
    ) -> redis::RedisResult<(Vec<String>, u64, u64)> {
        let mut con = self.redis.clone();
        let (active, ended): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(ACTIVE_STREAMS)
            .cmd("ZCARD")
            .arg(DONE_STREAMS)
            .query_async(&mut con)
            .await?;
        let mut names: Vec<String> = Vec::new();
        if limit == 0 {
            return Ok((names, active, ended));
        }
        if offset < active {
            let last = (offset + limit - 1).min(active - 1);
            names = redis::cmd("ZREVRANGE")
                .arg(ACTIVE_STREAMS)
                .arg(offset)
                .arg(last)
                .query_async(&mut con)
                .await?;
        }
        let left = limit - names.len() as u64;
        let from = offset.saturating_sub(active);
        if left > 0 && from < ended {
            let more: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(DONE_STREAMS)
                .arg(from)
                .arg(from + left - 1)
                .query_async(&mut con)
                .await?;
            names.extend(more);
        }
        Ok((names, active, ended))
    }

    /// A page of the streams with their counts, in two round trips.
    pub async fn stream_page(&self, offset: u64, limit: u64) -> redis::RedisResult<StreamPage> {
        let (names, active, ended) = self.stream_names_page(offset, limit).await?;
        if names.is_empty() {
            return Ok(StreamPage {
                streams: Vec::new(),
                active,
                ended,
            });
        }
        const FIELDS: [&str; 8] = [
            "mode", "state", "total", "received", "done", "failed", "skipped", "reason",
        ];
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET").arg(stream_key(name)).arg(&FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.redis.clone()).await?;
        let streams = names
            .into_iter()
            .zip(rows)
            .filter(|(_, row)| row.first().is_some_and(Option::is_some))
            .map(|(stream, row)| {
                let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let num = |i: usize| text(i).parse::<u64>().ok();
                StreamSummary {
                    stream,
                    mode: text(0),
                    state: text(1),
                    total: num(2),
                    received: num(3).unwrap_or(0),
                    done: num(4).unwrap_or(0),
                    failed: num(5).unwrap_or(0),
                    skipped: num(6).unwrap_or(0),
                    reason: row.get(7).cloned().flatten(),
                }
            })
            .collect();
        Ok(StreamPage {
            streams,
            active,
            ended,
        })
    }

    /// Deletes a stream's state in Redis (its segments, listing, failures and index
    /// entries); an active one only when `force`, and only of `session` unless that is
    /// empty. Objects are the caller's.
    pub async fn delete_stream(
        &self,
        stream: &str,
        force: bool,
        session: &str,
    ) -> redis::RedisResult<Deleted> {
        let r: i64 = DELETE_STREAM
            .get()
            .key(stream_key(stream))
            .key(seqs_key(stream))
            .key(listed_key(stream))
            .key(failures_key(stream))
            .key(ACTIVE_STREAMS)
            .key(DONE_STREAMS)
            .key(LIVE_SET)
            .arg(format!("{}:seg:", stream_key(stream)))
            .arg(stream)
            .arg(if force { "1" } else { "0" })
            .arg(session)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match r {
            1 => Deleted::Yes,
            -1 => Deleted::Active,
            _ => Deleted::NoSuchStream,
        })
    }

    /// Segments accepted for each of `rungs` (in that order), counted as results are
    /// accepted; `None` for a stream recorded before these counts were kept.
    pub async fn rendition_done(
        &self,
        stream: &str,
        rungs: &[&str],
    ) -> redis::RedisResult<Option<Vec<u64>>> {
        if rungs.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let fields: Vec<String> = rungs.iter().map(|r| format!("done:{r}")).collect();
        let counts: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(stream_key(stream))
            .arg(&fields)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(per_rendition(&counts))
    }

    /// Up to `limit` streams that ended before `before_unix_ms`, oldest first.
    pub async fn ended_before(
        &self,
        before_unix_ms: u64,
        limit: u64,
    ) -> redis::RedisResult<Vec<String>> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(DONE_STREAMS)
            .arg("-inf")
            .arg(format!("({before_unix_ms}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await
    }
}

/// Counts of `done:RUNG` fields: a missing one is 0, unless all are missing (a stream from
/// before these counts were kept: `None`).
fn per_rendition(counts: &[Option<u64>]) -> Option<Vec<u64>> {
    if counts.iter().all(Option::is_none) {
        return None;
    }
    Some(counts.iter().map(|c| c.unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::per_rendition;

    #[test]
    fn each_rendition_has_its_own_count_and_old_streams_have_none() {
        assert_eq!(
            per_rendition(&[Some(3), None, Some(1)]),
            Some(vec![3, 0, 1])
        );
        assert_eq!(per_rendition(&[None, None]), None);
        assert_eq!(per_rendition(&[]), None);
    }
}
