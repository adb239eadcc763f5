//! What the orchestrator keeps of streams and segments, as read back from Redis hashes.

use std::collections::HashMap;

use castwork_protocol::{LadderPlan, ObjectRef, SourceMetadata, StreamMode};
use serde::{Deserialize, Serialize};

/// One rendition of an accepted segment, as checked by the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedRendition {
    pub rung: String,
    pub key: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    /// RFC 6381 codecs read from the bitstream.
    pub codecs: String,
}

/// A registered stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamRecord {
    pub stream: String,
    pub session: String,
    pub mode: StreamMode,
    pub plan: LadderPlan,
    pub source: SourceMetadata,
    pub state: String,
    pub total: Option<u64>,
    pub received: u64,
    pub done: u64,
    pub failed: u64,
    pub master_playlist: Option<String>,
    /// Whether `StreamCompleted` went out after the stream completed.
    pub announced: bool,
    /// Live: segments skipped for missing their deadline.
    pub skipped: u64,
    /// Live: the fixed target duration of the live playlists.
    pub target_duration_secs: Option<u64>,
    /// The account that pays for the stream (priced orchestrators only).
    pub broadcaster: Option<String>,
    /// Output pixels of the accepted segments, and what they were charged (wei).
    pub pixels: u64,
    pub fee: i64,
    /// SHA-256 (hex) of the publisher's secret: its segments and end must carry the
    /// secret. Never shown.
    #[serde(skip)]
    pub secret_hash: String,
    /// Why the stream failed or ended incomplete.
    pub reason: Option<String>,
}

/// An accepted segment, as the dashboard charts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentSegment {
    pub unix_ms: u64,
    pub stream: String,
    pub seq: u64,
    /// From being recorded to being accepted.
    pub latency_ms: i64,
    pub transcode_ms: u64,
}

/// A failed attempt and its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentFailure {
    pub unix_ms: u64,
    pub stream: String,
    pub seq: u64,
    pub attempt: u32,
    pub message: String,
    /// The segment failed for good (no retry follows).
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A registered segment.
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    pub seq: u64,
    pub start_us: i64,
    pub duration_us: i64,
    pub frames: u64,
    pub has_audio: bool,
    pub last_pts_us: i64,
    pub source: ObjectRef,
    pub attempt: u32,
    pub state: String,
    pub accepted: Option<Vec<AcceptedRendition>>,
    /// Live: first segment after a publisher reconnect.
    pub discontinuity: bool,
    /// Live: when the segment's last byte reached the broadcaster (Unix ms).
    pub arrived_ms: Option<u64>,
    /// When a worker first started it (Unix ms).
    pub started_ms: Option<u64>,
    /// Live: when it was listed in the playlists (Unix ms).
    pub listed_ms: Option<u64>,
    /// Transcode time the accepted attempt's worker reported.
    pub transcode_ms: Option<u64>,
    /// Live: after this (Unix ms) the segment is skipped rather than waited for.
    pub deadline_ms: Option<u64>,
    /// When the orchestrator recorded it (Unix ms).
    pub ready_ms: Option<u64>,
    /// When the accepted result reached the orchestrator (Unix ms).
    pub result_ms: Option<u64>,
    /// Workers whose output for this segment failed the check.
    pub bad_workers: Vec<String>,
}

/// Segments of sorted sequence numbers `seqs`, with one `None` before each run of missing
/// numbers (including one before a first segment that is not 0).
pub(super) fn with_gaps(
    seqs: &[u64],
    found: Vec<Option<SegmentRecord>>,
) -> Vec<Option<SegmentRecord>> {
    let mut out = Vec::with_capacity(found.len());
    let mut next = 0;
    for (seq, rec) in seqs.iter().zip(found) {
        if *seq != next {
            out.push(None);
        }
        out.push(rec);
        next = seq + 1;
    }
    out
}

/// The entries of a JSON list that parse; a stray one is skipped.
pub(super) fn parse_all<T: serde::de::DeserializeOwned>(items: &[String]) -> Vec<T> {
    items
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

pub(super) fn parse_stream(
    stream: &str,
    h: &HashMap<String, String>,
) -> redis::RedisResult<Option<StreamRecord>> {
    if h.is_empty() {
        return Ok(None);
    }
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    let parse = |k: &str| h.get(k).map(String::as_str).unwrap_or("null");
    Ok(Some(StreamRecord {
        stream: stream.to_string(),
        session: h.get("session").cloned().unwrap_or_default(),
        mode: if h.get("mode").map(String::as_str) == Some("live") {
            StreamMode::Live
        } else {
            StreamMode::Vod
        },
        plan: serde_json::from_str(parse("plan")).unwrap_or_default(),
        source: match serde_json::from_str(parse("source")) {
            Ok(s) => s,
            Err(e) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "corrupt stream source metadata",
                    e.to_string(),
                )))
            }
        },
        state: h.get("state").cloned().unwrap_or_default(),
        total: num("total"),
        received: num("received").unwrap_or(0),
        done: num("done").unwrap_or(0),
        failed: num("failed").unwrap_or(0),
        master_playlist: h.get("master").cloned(),
        announced: h.contains_key("announced"),
        skipped: num("skipped").unwrap_or(0),
        target_duration_secs: num("target_duration"),
        broadcaster: h.get("broadcaster").cloned(),
        pixels: num("pixels").unwrap_or(0),
        fee: h.get("fee").and_then(|v| v.parse().ok()).unwrap_or(0),
        secret_hash: h.get("secret").cloned().unwrap_or_default(),
        reason: h.get("reason").cloned(),
    }))
}

pub(super) fn parse_segment(seq: u64, h: &HashMap<String, String>) -> Option<SegmentRecord> {
    if h.is_empty() {
        return None;
    }
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let opt = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(SegmentRecord {
        seq,
        start_us: num("start_us"),
        duration_us: num("duration_us"),
        frames: num("frames") as u64,
        has_audio: h.get("has_audio").map(String::as_str) == Some("1"),
        last_pts_us: num("last_pts_us"),
        source: serde_json::from_str(h.get("source")?).ok()?,
        attempt: num("attempt") as u32,
        state: h.get("state").cloned().unwrap_or_default(),
        accepted: h.get("accepted").and_then(|a| serde_json::from_str(a).ok()),
        discontinuity: h.get("disc").map(String::as_str) == Some("1"),
        arrived_ms: opt("arrived_ms"),
        started_ms: opt("started_ms"),
        listed_ms: opt("listed_ms"),
        transcode_ms: opt("transcode_ms"),
        deadline_ms: opt("deadline_ms"),
        ready_ms: opt("ready_ms"),
        result_ms: opt("result_ms"),
        bad_workers: h
            .get("bad_workers")
            .map(|w| {
                w.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    })
}
