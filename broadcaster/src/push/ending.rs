//! How a push ends: checking the orchestrator's store, the playback URL to print, the
//! stream's completion as the orchestrator reports it, and closing or aborting the stream
//! when the push cannot go on.

use std::time::Duration;

use anyhow::{bail, Context as _};
use castwork_cluster::Storage;
use castwork_protocol::{IngestMessage, StreamAborted, StreamEnded, StreamEvent};
use uuid::Uuid;

use crate::link::Link;
use crate::progress::Progress;

/// Refuses to push into an object store that is not the orchestrator's (`theirs`, from its
/// admission): it would find none of the segments. An orchestrator that names no store
/// (an older one) is not checked.
pub(super) async fn check_store(
    ours: &Storage,
    theirs: Option<&castwork_protocol::StoreIdentity>,
) -> anyhow::Result<()> {
    let Some(theirs) = theirs else {
        return Ok(());
    };
    let id = ours
        .id()
        .await
        .with_context(|| format!("reading this push's object store {ours}"))?;
    if id.as_deref() == Some(theirs.id.as_str()) {
        return Ok(());
    }
    let what = match id {
        Some(id) => format!(
            "a different store (id {id}, the orchestrator's is {})",
            theirs.id
        ),
        None => "a store no orchestrator has used".to_string(),
    };
    bail!(
        "this push writes to object store {ours}, which is {what}; the orchestrator reads \
         from {theirs_url}, so it would find none of the segments. Push into the \
         orchestrator's store: `broadcaster --storage-url {theirs_url} push ...` (or env \
         STORAGE_URL={theirs_url}); nothing was sent",
        theirs_url = theirs.url,
    )
}

/// The URL to print for the stream's master playlist: under `base` when given
/// (`--playback-url`), else the one the orchestrator named.
pub(super) fn playback_url(
    base: Option<&str>,
    cluster: Option<String>,
    stream: &str,
) -> Option<String> {
    match base {
        Some(b) => Some(format!(
            "{}/{}",
            b.trim_end_matches('/'),
            castwork_protocol::master_playlist_key(stream)
        )),
        None => cluster,
    }
}

/// How often `--wait` reads the stream's state from the orchestrator, when it knows where.
pub(super) const STATUS_POLL: Duration = Duration::from_secs(10);

/// Sleeps until `at`; never wakes without one.
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The master playlist and failed segments of this push's stream, if the orchestrator at
/// `url` says it ended (complete, or incomplete with segments failed).
pub(super) async fn completed_at(
    url: &str,
    stream: &str,
    session: Uuid,
) -> Option<(String, Vec<(u64, String)>)> {
    let resp = reqwest::Client::new()
        .get(format!("{}/streams/{stream}", url.trim_end_matches('/')))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    let ended = v["state"] == "complete" || v["state"] == "incomplete";
    if !ended || v["session"] != session.to_string() {
        return None;
    }
    let failed = v["failures"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| Some((x["seq"].as_u64()?, x["message"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((v["master_playlist"].as_str()?.to_string(), failed))
}

/// Closes a stream whose push failed half-way with the segments already sent, so the
/// orchestrator finishes those instead of waiting for more forever.
pub(super) async fn end_early(link: &mut Link, stream: &str, session: Uuid, segments: u64) {
    let msg = IngestMessage::StreamEnded(StreamEnded {
        stream: stream.to_string(),
        session,
        segments,
        secret: String::new(),
    });
    if let Err(e) = link.publish(&msg).await {
        tracing::warn!(error = %e, "could not close the stream after the failure");
    }
}

/// Aborts a stream whose push failed, so the orchestrator marks it failed with `reason`
/// and deletes its objects. A broker that cannot be reached leaves it to the
/// orchestrator's overdue sweep.
pub(super) async fn abort(link: &mut Link, stream: &str, session: Uuid, reason: &str) {
    let msg = IngestMessage::StreamAborted(StreamAborted {
        stream: stream.to_string(),
        session,
        reason: reason.to_string(),
        secret: String::new(),
    });
    if let Err(e) = link.publish(&msg).await {
        tracing::warn!(error = %e, "could not abort the stream after the failure");
    }
}

/// Aborts the stream after `e`, closes the link (its event queue goes) and says what
/// became of the stream.
pub(super) async fn aborted(
    mut link: Link,
    stream: &str,
    session: Uuid,
    uploaded: u64,
    e: anyhow::Error,
) -> anyhow::Error {
    abort(&mut link, stream, session, &format!("{e:#}")).await;
    link.close().await;
    e.context(format!(
        "push failed: stream {stream} was marked failed, and the {uploaded} segments already \
         sent are being deleted"
    ))
}

/// Why cutting stopped, in the user's words: a file whose readable part is well short of
/// the duration its header gives was cut off (an interrupted download, a full disk).
pub(super) fn cut_failure(
    input: &str,
    error: &str,
    read_us: i64,
    duration_us: Option<i64>,
) -> String {
    match duration_us {
        Some(total) if total > 0 && read_us < total - total / 20 => format!(
            "the file ends early: {:.1} s of its {:.1} s could be read (truncated download?); \
             cutting {input} stopped with: {error}",
            read_us as f64 / 1e6,
            total as f64 / 1e6
        ),
        _ => format!("cannot cut {input}: {error}"),
    }
}

/// Follows one event: progress, failures, and completion (whose list of failures is the
/// orchestrator's final word).
pub(super) fn note_event(
    e: &StreamEvent,
    progress: &mut Progress,
    failed: &mut Vec<(u64, String)>,
    completed: &mut Option<String>,
    outputs: &mut crate::verify::Outputs,
) {
    match e {
        StreamEvent::SegmentTranscoded {
            seq,
            renditions,
            claim,
            ..
        } => {
            if let Some(o) = outputs.get_mut(seq) {
                o.1 = renditions.clone();
                o.2 = claim.clone();
            }
            progress.transcoded(*seq, false)
        }
        StreamEvent::SegmentFailed { seq, message, .. } => {
            failed.push((*seq, message.clone()));
            progress.transcoded(*seq, true);
        }
        StreamEvent::StreamCompleted {
            master_playlist,
            failed: all,
            ..
        } => {
            *failed = all.iter().map(|f| (f.seq, f.message.clone())).collect();
            *completed = Some(master_playlist.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_cut_off_early_is_called_truncated() {
        let m = cut_failure("t.mp4", "Invalid data", 1_200_000, Some(8_300_000));
        assert!(
            m.starts_with(
                "the file ends early: 1.2 s of its 8.3 s could be read (truncated download?)"
            ),
            "{m}"
        );
        // Read to (near) the end, or no duration to compare with: the plain error.
        assert_eq!(
            cut_failure("t.mp4", "Invalid data", 8_200_000, Some(8_300_000)),
            "cannot cut t.mp4: Invalid data"
        );
        assert_eq!(
            cut_failure("t.mp4", "Invalid data", 0, None),
            "cannot cut t.mp4: Invalid data"
        );
    }
}
