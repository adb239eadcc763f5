//! Stream and segment state in Redis. Every change that must be atomic is a Lua script, so
//! any number of orchestrators can share one Redis without double-counting a segment.

use std::collections::HashMap;

use castwork_protocol::{LadderPlan, SegmentReady, SourceMetadata, StreamMode};
use redis::aio::ConnectionManager;
use serde::Serialize;

mod broadcasters;
mod failures;
mod ledger;
mod live;
mod queued;
mod reads;
mod records;
mod streams;
mod workers;

pub use broadcasters::{IngestSession, BROADCASTERS};
pub use failures::{DeadLetterRecord, DEAD_LETTERS_LIST};
pub use ledger::{balance_key, reserved_key};
pub use live::{listed_key, LIVE_SET};
use records::{parse_all, parse_segment, parse_stream, with_gaps};
pub use records::{AcceptedRendition, RecentFailure, RecentSegment, SegmentRecord, StreamRecord};
pub use streams::{Deleted, StreamPage, StreamSummary, ACTIVE_STREAMS, DONE_STREAMS};
pub use workers::{banned_key, worker_key, PermanentReport, WORKERS_SET};

pub fn stream_key(stream: &str) -> String {
    format!("cw:stream:{stream}")
}

pub fn segment_key(stream: &str, seq: u64) -> String {
    format!("cw:stream:{stream}:seg:{seq}")
}

pub fn failures_key(stream: &str) -> String {
    format!("cw:stream:{stream}:failures")
}

/// The sequence numbers of a stream's received segments (a sorted set scored by them):
/// what loops over a stream's segments walk, so their work is bounded by the segments that
/// exist, never by a number a client sent.
pub fn seqs_key(stream: &str) -> String {
    format!("cw:stream:{stream}:seqs")
}

/// How a stream whose segments were all resolved ended (its `state`; playlists are written
/// for what was done either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every segment was transcoded: `complete`.
    Complete,
    /// Some segments failed or were skipped: `incomplete`.
    Incomplete,
}

impl Completion {
    /// The completion a stream's `state` records, if it is one.
    pub fn of(state: &str) -> Option<Completion> {
        match state {
            "complete" => Some(Completion::Complete),
            "incomplete" => Some(Completion::Incomplete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Completion::Complete => "complete",
            Completion::Incomplete => "incomplete",
        }
    }
}

/// Why a segment was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than the window ahead of the highest sequence number received.
    TooFarAhead,
    /// At or past the end the stream announced.
    PastTheEnd,
}

/// What recording a segment did.
#[derive(Debug)]
pub enum Recorded {
    /// The attempt to publish (a redelivery of a pending segment republishes its current one).
    Publish(u32, SegmentRecord),
    /// Already resolved (or, live, passed over as never arrived).
    Resolved(Option<SegmentRecord>),
    Refused(Refusal),
}

/// Lua: `release(seg, stream)` gives back what admitting a segment reserved from its
/// stream's account, once (a resolved segment holds no reservation).
macro_rules! release_lua {
    () => {
        include_str!("lua/release.lua")
    };
}
pub(crate) use release_lua;

/// Notes that a worker's output for a segment failed the check: the segment's retries
/// avoid it, and after ARGV[3] bad results in all the worker is banned (it stops taking
/// jobs when it sees `cw:worker_banned:ID`). Returns {bad results, banned (0/1)}.
static FLAG_WORKER: LuaScript = LuaScript::new(include_str!("lua/flag_worker.lua"));

/// A Lua script whose SHA-1 is computed once, on first use, not on every call.
pub(crate) struct LuaScript {
    source: &'static str,
    script: std::sync::OnceLock<redis::Script>,
}

impl LuaScript {
    pub(crate) const fn new(source: &'static str) -> Self {
        LuaScript {
            source,
            script: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn get(&self) -> &redis::Script {
        self.script.get_or_init(|| redis::Script::new(self.source))
    }
}

/// The latest accepted segments, newest first (for the dashboard's chart).
pub const RECENT_LIST: &str = "cw:recent";
/// The latest failed attempts with their messages, newest first.
pub const RECENT_FAILURES_LIST: &str = "cw:recent_failures";
const RECENT_KEEP: i64 = 500;
const RECENT_FAILURES_KEEP: i64 = 100;
/// Jobs a worker has started, scored by the time by which their result is due.
pub const INFLIGHT_ZSET: &str = "cw:inflight";
pub use queued::QUEUED_ZSET;

/// Takes the started jobs whose result is overdue.
static TAKE_OVERDUE: LuaScript = LuaScript::new(include_str!("lua/take_overdue.lua"));

/// What accepting a result charges, and to whom (the debit happens with the acceptance,
/// so a redelivered result is never charged twice).
#[derive(Debug, Clone, Copy, Default)]
pub struct Charge<'a> {
    pub account: Option<&'a str>,
    pub pixels: u64,
    pub fee: i64,
}

/// Registers a stream unless one with that name exists. Returns 1 when new, 2 when it is
/// the same push again (a redelivery), 3 when the name belongs to a live stream that has
/// ended and the new one is live too (the same key broadcasting again: the old one can be
/// archived), 4 when the name belongs to a stream that failed (it can be forgotten), 0
/// when the name is taken by another push.
static REGISTER_STREAM: LuaScript = LuaScript::new(include_str!("lua/register_stream.lua"));

/// Records a segment. Returns the attempt to publish, or 0 when the segment is already
/// resolved, with the segment as it now is. A redelivered `SegmentReady` for a pending segment republishes its current
/// attempt (its job may never have been published); rendition keys are content-addressed,
/// so two runs of one attempt cannot overwrite each other.
static RECORD_SEGMENT: LuaScript = LuaScript::new(include_str!("lua/record_segment.lua"));

/// Accepts a checked result of the current attempt while the segment is pending. Returns 1
/// when accepted, 0 when the segment was already resolved, -1 for an older attempt's late
/// result (that attempt was given up, e.g. as hung), with the stream as it now is. The
/// worker's start time fills in `started_ms` when no start notice came first.
static ACCEPT_RESULT: LuaScript = LuaScript::new(concat!(
    release_lua!(),
    include_str!("lua/accept_result.lua")
));

/// Applies a failed attempt. Returns -1 for a stale attempt (a newer one is running), 0 when
/// already resolved, 1 when the segment is now failed, or 1000 + the attempt to publish. The
/// failure that started the current attempt, seen again, republishes it: the orchestrator
/// may have stopped before its job was published.
static FAIL_ATTEMPT: LuaScript = LuaScript::new(concat!(
    release_lua!(),
    include_str!("lua/fail_attempt.lua")
));

/// Ends a stream once, when every one of its segments is resolved: 1 (complete) or 2
/// (incomplete) to the single caller that ended it, else 0.
static COMPLETE_STREAM: LuaScript = LuaScript::new(include_str!("lua/complete_stream.lua"));

static SET_TOTAL: LuaScript = LuaScript::new(include_str!("lua/set_total.lua"));

/// What applying a failure did.
#[derive(Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// No such segment.
    Unknown,
    Stale,
    AlreadyResolved,
    Failed,
    Retry(u32),
}

/// Redis operations of the orchestrator.
#[derive(Clone)]
pub struct State {
    redis: ConnectionManager,
}

pub use castwork_protocol::time::now_unix_ms;

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl State {
    pub fn new(redis: ConnectionManager) -> Self {
        State { redis }
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn register_stream(
        &self,
        stream: &str,
        session: &str,
        mode: StreamMode,
        plan: &LadderPlan,
        source: &SourceMetadata,
        target_duration_secs: Option<u32>,
        broadcaster: Option<&str>,
        secret_hash: &str,
        max_live: u64,
    ) -> redis::RedisResult<i64> {
        REGISTER_STREAM
            .get()
            .key(stream_key(stream))
            .key(ACTIVE_STREAMS)
            .key(LIVE_SET)
            .arg(session)
            .arg(mode.as_str())
            .arg(json(plan))
            .arg(json(source))
            .arg(stream)
            .arg(target_duration_secs.map_or(String::new(), |t| t.to_string()))
            .arg(broadcaster.unwrap_or_default())
            .arg(secret_hash)
            .arg(now_unix_ms())
            .arg(max_live)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// Records a segment; a live one gets `deadline_ms`. A sequence number more than
    /// `window` ahead of the highest received is refused.
    pub async fn record_segment(
        &self,
        seg: &SegmentReady,
        deadline_ms: Option<u64>,
        window: u64,
    ) -> redis::RedisResult<Recorded> {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let (attempt, h): (i64, HashMap<String, String>) = RECORD_SEGMENT
            .get()
            .key(segment_key(&seg.stream, seg.seq))
            .key(stream_key(&seg.stream))
            .key(seqs_key(&seg.stream))
            .arg(seg.start_us)
            .arg(seg.duration_us)
            .arg(seg.frames)
            .arg(json(&seg.object))
            .arg(if seg.has_audio { "1" } else { "0" })
            .arg(seg.last_pts_us)
            .arg(opt(seg.arrived_unix_ms))
            .arg(opt(deadline_ms))
            .arg(if seg.discontinuity { "1" } else { "0" })
            .arg(seg.seq)
            .arg(now_unix_ms())
            .arg(window)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let rec = parse_segment(seg.seq, &h);
        Ok(match (attempt, rec) {
            (-1, _) => Recorded::Refused(Refusal::TooFarAhead),
            (-2, _) => Recorded::Refused(Refusal::PastTheEnd),
            (0, rec) => Recorded::Resolved(rec),
            (a, Some(rec)) => Recorded::Publish(a.clamp(1, i64::from(u32::MAX)) as u32, rec),
            (_, None) => Recorded::Resolved(None),
        })
    }

    /// Accepts a result (see `ACCEPT_RESULT`): whether it was accepted, and the stream after.
    #[allow(clippy::too_many_arguments)]
    pub async fn accept(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        renditions: &[AcceptedRendition],
        transcode_ms: u64,
        result_ms: u64,
        started_ms: Option<u64>,
        charge: Charge<'_>,
    ) -> redis::RedisResult<(bool, Option<StreamRecord>)> {
        let (r, h): (i64, HashMap<String, String>) = ACCEPT_RESULT
            .get()
            .key(segment_key(stream, seq))
            .key(stream_key(stream))
            .key(RECENT_LIST)
            .key(balance_key(charge.account.unwrap_or_default()))
            .arg(json(&renditions))
            .arg(attempt)
            .arg(transcode_ms)
            .arg(result_ms)
            .arg(started_ms.map_or(String::new(), |v| v.to_string()))
            .arg(stream)
            .arg(seq)
            .arg(RECENT_KEEP)
            .arg(charge.pixels)
            .arg(charge.fee)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok((r == 1, parse_stream(stream, &h)?))
    }

    pub async fn fail_attempt(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        message: &str,
        permanent: bool,
        max_attempts: u32,
    ) -> redis::RedisResult<FailOutcome> {
        let r: i64 = FAIL_ATTEMPT
            .get()
            .key(segment_key(stream, seq))
            .key(stream_key(stream))
            .key(failures_key(stream))
            .key(RECENT_FAILURES_LIST)
            .arg(attempt)
            .arg(message)
            .arg(if permanent { "1" } else { "0" })
            .arg(max_attempts)
            .arg(seq)
            .arg(stream)
            .arg(now_unix_ms())
            .arg(RECENT_FAILURES_KEEP)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match r {
            -2 => FailOutcome::Unknown,
            -1 => FailOutcome::Stale,
            0 => FailOutcome::AlreadyResolved,
            1 => FailOutcome::Failed,
            n => FailOutcome::Retry((n - 1000) as u32),
        })
    }

    /// Segments by sequence number, in one round trip.
    pub async fn segments_by_seq(
        &self,
        stream: &str,
        seqs: &[u64],
    ) -> redis::RedisResult<Vec<Option<SegmentRecord>>> {
        // An empty pipeline is an error to the Redis client ("empty command").
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for seq in seqs {
            pipe.cmd("HGETALL").arg(segment_key(stream, *seq));
        }
        let all: Vec<HashMap<String, String>> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(seqs
            .iter()
            .zip(all.iter())
            .map(|(seq, h)| parse_segment(*seq, h))
            .collect())
    }

    /// Sets the segment count of a stream that ended: `Err(highest seq received)` when it
    /// is below that + 1 or more than `window` beyond it.
    pub async fn set_total(
        &self,
        stream: &str,
        total: u64,
        window: u64,
    ) -> redis::RedisResult<Result<(), i64>> {
        let (ok, max_seq): (i64, i64) = SET_TOTAL
            .get()
            .key(stream_key(stream))
            .arg(total)
            .arg(window)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(if ok == 1 { Ok(()) } else { Err(max_seq) })
    }

    /// Ends the stream if every segment is resolved, as [`Completion::Complete`] or, with
    /// segments failed or skipped, [`Completion::Incomplete`]; `Some` for the one caller
    /// that did it.
    pub async fn complete(
        &self,
        stream: &str,
        master: &str,
    ) -> redis::RedisResult<Option<Completion>> {
        let r: i64 = COMPLETE_STREAM
            .get()
            .key(stream_key(stream))
            .key(ACTIVE_STREAMS)
            .key(DONE_STREAMS)
            .arg(master)
            .arg(now_unix_ms())
            .arg(stream)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match r {
            1 => Some(Completion::Complete),
            2 => Some(Completion::Incomplete),
            _ => None,
        })
    }

    /// Notes that a worker started a job whose result is due by `due_unix_ms`.
    pub async fn track_started(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        worker: &str,
        due_unix_ms: u64,
    ) -> redis::RedisResult<()> {
        let member = serde_json::json!([stream, seq, attempt, worker]).to_string();
        redis::pipe()
            .cmd("ZADD")
            .arg(INFLIGHT_ZSET)
            .arg(due_unix_ms)
            .arg(member)
            .ignore()
            .cmd("HSETNX")
            .arg(segment_key(stream, seq))
            .arg("started_ms")
            .arg(now_unix_ms())
            .ignore()
            .cmd("ZREM")
            .arg(QUEUED_ZSET)
            .arg(queued::queued_member(stream, seq, attempt))
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    /// Started jobs whose result is overdue at `now_unix_ms`: (stream, seq, attempt, worker).
    pub async fn take_overdue(
        &self,
        now_unix_ms: u64,
    ) -> redis::RedisResult<Vec<(String, u64, u32, String)>> {
        let due: Vec<String> = TAKE_OVERDUE
            .get()
            .key(INFLIGHT_ZSET)
            .arg(now_unix_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(due
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }

    /// Notes that `StreamCompleted` was published.
    pub async fn set_announced(&self, stream: &str) -> redis::RedisResult<()> {
        redis::cmd("HSET")
            .arg(stream_key(stream))
            .arg("announced")
            .arg(1)
            .query_async::<i64>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    /// Records a bad result of `worker` for a segment (see `FLAG_WORKER`): its count of
    /// bad results, and whether it is now banned.
    pub async fn flag_worker(
        &self,
        stream: &str,
        seq: u64,
        worker: &str,
        reason: &str,
        max_bad: u32,
        retain: std::time::Duration,
    ) -> redis::RedisResult<(i64, bool)> {
        let (n, banned): (i64, i64) = FLAG_WORKER
            .get()
            .key(segment_key(stream, seq))
            .key(format!("cw:worker_bad:{worker}"))
            .key(banned_key(worker))
            .arg(worker)
            .arg(reason)
            .arg(max_bad.max(1))
            .arg(retain.as_secs().max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok((n, banned == 1))
    }
}
