//! Reading streams, segments, failures and the recent lists back from Redis.

use std::collections::HashMap;

use super::{
    banned_key, failures_key, parse_all, parse_segment, parse_stream, segment_key, seqs_key,
    stream_key, with_gaps, RecentFailure, RecentSegment, SegmentRecord, State, StreamRecord,
    RECENT_FAILURES_LIST, RECENT_LIST,
};

impl State {
    pub async fn stream(&self, stream: &str) -> redis::RedisResult<Option<StreamRecord>> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(stream_key(stream))
            .query_async(&mut self.redis.clone())
            .await?;
        parse_stream(stream, &h)
    }

    /// A stream and one of its segments in one round trip.
    pub async fn stream_and_segment(
        &self,
        stream: &str,
        seq: u64,
    ) -> redis::RedisResult<(Option<StreamRecord>, Option<SegmentRecord>)> {
        let (rec, seg): (HashMap<String, String>, HashMap<String, String>) =
            stream_and_segment_pipe(stream, seq)
                .query_async(&mut self.redis.clone())
                .await?;
        Ok((parse_stream(stream, &rec)?, parse_segment(seq, &seg)))
    }

    /// A stream, one of its segments and whether `worker` is banned (the reason), in one
    /// round trip: what handling a result needs.
    pub async fn result_context(
        &self,
        stream: &str,
        seq: u64,
        worker: &str,
    ) -> redis::RedisResult<(Option<StreamRecord>, Option<SegmentRecord>, Option<String>)> {
        let (rec, seg, banned): (
            HashMap<String, String>,
            HashMap<String, String>,
            Option<String>,
        ) = stream_and_segment_pipe(stream, seq)
            .cmd("GET")
            .arg(banned_key(worker))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((
            parse_stream(stream, &rec)?,
            parse_segment(seq, &seg),
            banned,
        ))
    }

    pub async fn segment(
        &self,
        stream: &str,
        seq: u64,
    ) -> redis::RedisResult<Option<SegmentRecord>> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(segment_key(stream, seq))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(parse_segment(seq, &h))
    }

    /// The segments that exist, in order, with one `None` where sequence numbers are
    /// missing (a gap), in two round trips.
    pub async fn segments(&self, stream: &str) -> redis::RedisResult<Vec<Option<SegmentRecord>>> {
        let seqs: Vec<u64> = redis::cmd("ZRANGE")
            .arg(seqs_key(stream))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis.clone())
            .await?;
        let found = self.segments_by_seq(stream, &seqs).await?;
        Ok(with_gaps(&seqs, found))
    }

    pub async fn failures(&self, stream: &str) -> redis::RedisResult<Vec<(u64, String)>> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(failures_key(stream))
            .query_async(&mut self.redis.clone())
            .await?;
        let mut v: Vec<(u64, String)> = h
            .into_iter()
            .filter_map(|(k, m)| k.parse().ok().map(|s| (s, m)))
            .collect();
        v.sort();
        Ok(v)
    }

    /// The latest accepted segments and failed attempts, newest first.
    pub async fn recent(&self) -> redis::RedisResult<(Vec<RecentSegment>, Vec<RecentFailure>)> {
        let (done, failed): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("LRANGE")
            .arg(RECENT_LIST)
            .arg(0)
            .arg(-1)
            .cmd("LRANGE")
            .arg(RECENT_FAILURES_LIST)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((parse_all(&done), parse_all(&failed)))
    }
}

/// Reads a stream's and one of its segments' hashes (more commands may follow).
fn stream_and_segment_pipe(stream: &str, seq: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL")
        .arg(stream_key(stream))
        .cmd("HGETALL")
        .arg(segment_key(stream, seq));
    pipe
}
