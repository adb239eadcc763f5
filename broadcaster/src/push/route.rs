//! Reaching one orchestrator for a push: starting the stream there and waiting for its
//! admission, leaving it, and sending it a segment.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use bytes::Bytes;
use castwork_cluster::telemetry::Span;
use castwork_cluster::Storage;
use castwork_media::CutSegment;
use castwork_protocol::{
    IngestMessage, ObjectRef, Rung, SegmentReady, SkippedRung, StoreIdentity, StreamEvent,
    StreamStarted,
};
use uuid::Uuid;

use super::ending::abort;
use crate::link::{Link, HTTP_RETRY_FOR};
use crate::payer::Payer;

/// An orchestrator a push may go to over HTTP: its address, this broadcaster's key there
/// and, on-chain, the payer of its tickets.
#[derive(Debug, Clone)]
pub struct Route {
    pub url: String,
    pub key: String,
    pub payer: Option<Arc<Payer>>,
}

/// When a push with a copy leaves its orchestrator for a spare, besides a failure it is
/// told of.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The orchestrator stays unreachable this long (`--failover-after`).
    pub unreachable: Duration,
    /// None of the push's segments there is transcoded or failed for this long while some
    /// wait (`--stall-after`; `None`: never), as when its workers are gone.
    pub stalled: Option<Duration>,
}

/// What an orchestrator answered when it admitted the stream.
pub(super) struct Admission {
    pub rungs: Vec<Rung>,
    pub skipped: Vec<SkippedRung>,
    pub playback_url: Option<String>,
    pub store: Option<StoreIdentity>,
}

/// How long a request to an orchestrator is retried: the push's `--failover-after` while it
/// can move on from there, else long.
pub(super) fn retry_for(copy: bool, spares: &VecDeque<Route>, failover: &Failover) -> Duration {
    match copy && !spares.is_empty() {
        true => failover.unreachable,
        false => HTTP_RETRY_FOR,
    }
}

/// Starts the stream at `route` under a new session: its link, session and admission.
pub(super) async fn open_route(
    route: &Route,
    start: &StreamStarted,
    retry: Duration,
    admit_timeout: Duration,
) -> anyhow::Result<(Link, Uuid, Admission)> {
    let session = Uuid::now_v7();
    let mut link = Link::open_http(&route.url, &route.key, session, retry)?;
    // The start's own request is retried too: all of it within the admission's time.
    let admitted = tokio::time::timeout(
        admit_timeout,
        admit_at(&mut link, start, session, admit_timeout),
    )
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "it did not admit the stream within {} s",
            admit_timeout.as_secs()
        ))
    });
    match admitted {
        Ok(a) => Ok((link, session, a)),
        Err(e) => {
            retire(link, &start.stream, session, &format!("{e:#}"));
            Err(e)
        }
    }
}

/// Aborts the stream at an orchestrator the push leaves, and closes the link, in the
/// background (one that does not answer is not waited for).
pub(super) fn retire(mut link: Link, stream: &str, session: Uuid, reason: &str) {
    let (stream, reason) = (stream.to_string(), reason.to_string());
    tokio::spawn(async move {
        abort(&mut link, &stream, session, &reason).await;
        link.close().await;
    });
}

/// Publishes `start` (under `session`) and waits for the orchestrator's answer.
pub(super) async fn admit_at(
    link: &mut Link,
    start: &StreamStarted,
    session: Uuid,
    timeout: Duration,
) -> anyhow::Result<Admission> {
    let mut start = start.clone();
    start.session = session;
    link.publish(&IngestMessage::StreamStarted(start)).await?;
    let admitted = tokio::time::timeout(timeout, async {
        loop {
            match link.next_event().await? {
                // Events of another push under the same name are not ours.
                StreamEvent::StreamAdmitted {
                    rungs,
                    skipped,
                    session: s,
                    playback_url,
                    store,
                    ..
                } if s == session => {
                    return Ok(Admission {
                        rungs,
                        skipped,
                        playback_url,
                        store,
                    })
                }
                StreamEvent::StreamRejected {
                    message,
                    session: s,
                    ..
                } if s == session => {
                    bail!("the orchestrator refused the stream: {message}")
                }
                _ => {}
            }
        }
    })
    .await;
    admitted.map_err(|_| {
        anyhow::anyhow!(
            "no orchestrator answered within {} s: is one running on this broker?",
            timeout.as_secs()
        )
    })?
}

/// What pays for a segment, and (tests only) whether to submit it twice.
pub(super) struct Pay {
    pub payment: Option<castwork_protocol::payment::Payment>,
    pub twice: bool,
}

/// Stores segment `seg` (its bytes `data`) as number `seq` of the stream at the
/// orchestrator, and publishes its `segment_ready`; answers its source object.
pub(super) async fn upload_segment(
    link: &mut Link,
    storage: Option<&Storage>,
    (stream, session): (&str, Uuid),
    (seq, ext): (u64, &str),
    (seg, data): (&CutSegment, Bytes),
    (cut_from, cut_to): (SystemTime, SystemTime),
    pay: Pay,
) -> anyhow::Result<ObjectRef> {
    // The segment's trace starts with its cut; its spans continue in the orchestrator and
    // the worker through the message headers.
    let span = Span::root(
        "segment",
        Some(cut_from),
        &[("stream", stream.to_string()), ("seq", seq.to_string())],
    );
    span.record(
        "cut",
        cut_from,
        cut_to,
        &[("frames", seg.frames.to_string())],
    );
    let upload = span.child("upload source", &[]);
    let object = link.store_source(storage, stream, (seq, ext), data).await?;
    upload.set("bytes", object.size.to_string());
    drop(upload);
    let publish = span.child("publish segment", &[]);
    let msg = IngestMessage::SegmentReady(SegmentReady {
        stream: stream.to_string(),
        session,
        seq,
        start_us: seg.start_us,
        duration_us: seg.duration_us,
        last_pts_us: seg.last_pts_us,
        frames: seg.frames,
        has_audio: seg.audio_packets > 0,
        object: object.clone(),
        arrived_unix_ms: None,
        discontinuity: false,
        payment: pay.payment,
        secret: String::new(),
    });
    link.publish_in(&msg, &publish).await?;
    if pay.twice {
        // Tests only: the same submission twice, as a broker redelivery would.
        link.publish_in(&msg, &publish).await?;
    }
    Ok(object)
}
