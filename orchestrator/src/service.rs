//! The orchestrator's core: its state and settings, the errors its handlers return, its
//! events, and completing streams. Admitting streams and segments is in `ingest`,
//! checking and accepting results in `results`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castwork_cluster::{Broker, Storage};
use castwork_protocol::Price;
use castwork_protocol::{
    encode, event_routing_key, Disposition, FailedSegment, RenditionRef, SegmentFailed,
    SegmentResult, StreamEvent, StreamMode, EVENTS_EXCHANGE,
};
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics;
use crate::state::{AcceptedRendition, Completion, State, StreamRecord};

/// Seconds past a worker's own timeout before the orchestrator gives its attempt up.
pub(crate) const STUCK_GRACE_SECS: u64 = 30;

pub use crate::error::HandleError;

/// Everything a handler needs; cheap to share.
pub struct Orchestrator {
    pub state: State,
    pub storage: Storage,
    pub broker: Arc<Broker>,
    /// Attempts before a segment whose failures are all transient is given up.
    pub max_attempts: u32,
    /// Segments in a live media playlist.
    pub live_window: usize,
    /// How long after arriving a live segment may still be listed; a segment that never
    /// arrives holds back later ones this long.
    pub live_deadline: Duration,
    /// Serialises each live stream's playlist writes.
    pub live_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Benchmark only: accept results as reported, without checking them.
    pub trust_worker_output: bool,
    /// What this orchestrator charges (free by default).
    pub price: Price,
    /// How results' pictures are checked, and when a worker is banned.
    pub quality: QualityPolicy,
    /// On-chain mode: tickets, stake and the active set.
    pub payments: Option<Arc<crate::payments::Payments>>,
    /// How far ahead of a stream's highest received sequence number a segment (or its end)
    /// may be: anything further is refused, so no sequence number a client sends makes
    /// work.
    pub max_seq_ahead: u64,
    /// Live streams admitted at once.
    pub max_sessions: crate::ingest::MaxSessions,
    /// How long records are kept after their last change (ended streams, workers' counts
    /// of bad results).
    pub retain: Duration,
    /// Where viewers play the outputs: a stream's master playlist is at
    /// `BASE/streams/NAME/index.m3u8` (see [`crate::outputs`]).
    pub playback_base: String,
    /// Issues and checks job ids.
    pub job_ids: crate::workers::JobIds,
    /// Signs the object URLs jobs carry.
    pub work: crate::workers::tokens::WorkUrls,
    /// How long an on-demand job may go unstarted while its queue is empty before it is
    /// counted as lost (see [`crate::recovery::lost`]).
    pub lost_after: Duration,
    /// What the last look for lost jobs found.
    pub lost: Mutex<crate::recovery::lost::LostJobs>,
    /// The secret the quality sample is keyed with (shared by the replicas, in Redis).
    pub sample_secret: Vec<u8>,
    /// Which class's queue each job goes to.
    pub routing: crate::ingest::routing::Routing,
    /// The job queues that had ready jobs and no consumer at the last look.
    pub stranded: Mutex<crate::recovery::stranded::Stranded>,
}

/// The picture check of worker results and the ban of workers that fail checks.
#[derive(Debug, Clone, Copy)]
pub struct QualityPolicy {
    /// Fraction of results whose pictures are decoded and compared with the source.
    pub sample_rate: f64,
    /// Luma PSNR under which a rendition is refused.
    pub min_psnr_db: f64,
    /// Bad results after which a worker is banned.
    pub max_bad_results: u32,
}

impl QualityPolicy {
    /// Whether this result's pictures are checked: a fixed fraction of results, chosen by
    /// an HMAC of the segment and attempt under `secret` (the orchestrators' shared secret):
    /// the same answer on a redelivery, and no worker can tell beforehand.
    pub fn sampled(&self, secret: &[u8], r: &SegmentResult) -> bool {
        castwork_protocol::sample::in_keyed_sample(
            self.sample_rate,
            secret,
            &format!("{}/{}/{}", r.stream, r.seq, r.attempt),
        )
    }
}

pub(crate) fn rendition_refs(accepted: &[AcceptedRendition]) -> Vec<RenditionRef> {
    accepted
        .iter()
        .map(|a| RenditionRef {
            rung: a.rung.clone(),
            key: a.key.clone(),
            width: a.width,
            height: a.height,
        })
        .collect()
}

/// A failure of a segment's attempt that no retry can help (the orchestrator's own
/// refusal, such as an account that cannot pay).
pub(crate) fn permanent(stream: &str, seq: u64, attempt: u32, message: String) -> SegmentFailed {
    SegmentFailed {
        job_id: Uuid::nil(),
        stream: stream.to_string(),
        seq,
        attempt,
        worker_id: String::new(),
        disposition: Disposition::Permanent,
        message,
    }
}

/// The attributes that name a segment on its spans.
pub(crate) fn seg_attrs(stream: &str, seq: u64) -> [(&'static str, String); 2] {
    [("stream", stream.to_string()), ("seq", seq.to_string())]
}

pub use crate::ingest::validate_account;

impl Orchestrator {
    pub(crate) async fn event(&self, stream: &str, event: &StreamEvent) -> Result<(), HandleError> {
        self.send_event(stream, event).await?.wait().await?;
        Ok(())
    }

    /// Sends a stream's event without waiting for the broker's confirm.
    pub(crate) async fn send_event(
        &self,
        stream: &str,
        event: &StreamEvent,
    ) -> Result<castwork_cluster::broker::Confirm, HandleError> {
        Ok(self
            .broker
            .send(
                EVENTS_EXCHANGE,
                &event_routing_key(stream),
                &encode(event),
                None,
                None,
            )
            .await?)
    }

    /// Lists what a resolved segment unblocks (live) and completes the stream when done.
    pub(crate) async fn after_change(&self, stream: &str) -> Result<(), HandleError> {
        match self.state.stream(stream).await? {
            Some(rec) => self.after_change_of(rec).await,
            None => Ok(()),
        }
    }

    /// [`Orchestrator::after_change`] with the stream's record already read.
    pub(crate) async fn after_change_of(&self, rec: StreamRecord) -> Result<(), HandleError> {
        if rec.mode == StreamMode::Live && rec.state == "active" {
            self.advance_live(&rec.stream).await?;
            // The listing may have skipped segments: read the counts again.
            return self.try_complete(&rec.stream).await;
        }
        self.complete_if_done(rec).await
    }

    /// Leaves a pending live segment out (its deadline passed).
    pub(crate) async fn skip_segment(
        &self,
        stream: &str,
        seq: u64,
        reason: &str,
    ) -> Result<(), HandleError> {
        if self.state.skip(stream, seq, reason).await? {
            warn!(stream, seq, reason, "live segment skipped");
            metrics::SEGMENTS.with_label_values(&["skipped"]).inc();
            self.event(
                stream,
                &StreamEvent::SegmentSkipped {
                    stream: stream.to_string(),
                    seq,
                    reason: reason.to_string(),
                },
            )
            .await?;
        }
        self.after_change(stream).await
    }

    /// Writes the playlists and announces completion once every segment is resolved; a
    /// completion that was not announced (the orchestrator stopped in between) is announced
    /// again.
    async fn try_complete(&self, stream: &str) -> Result<(), HandleError> {
        match self.state.stream(stream).await? {
            Some(rec) => self.complete_if_done(rec).await,
            None => Ok(()),
        }
    }

    /// [`Orchestrator::try_complete`] with the stream's record already read.
    async fn complete_if_done(&self, rec: StreamRecord) -> Result<(), HandleError> {
        let stream = rec.stream.as_str();
        let Some(total) = rec.total else {
            return Ok(());
        };
        if let Some(ended) = Completion::of(&rec.state) {
            if !rec.announced {
                let master = rec.master_playlist.clone().unwrap_or_default();
                self.announce(&rec, ended, total, master).await?;
            }
            return Ok(());
        }
        if rec.state != "active" || rec.done + rec.failed + rec.skipped < total {
            return Ok(());
        }
        let master = if rec.mode == StreamMode::Live {
            self.finish_live(&rec).await?
        } else {
            let segments = self.state.segments(stream).await?;
            let spec = crate::playlists::Spec::vod("index");
            crate::playlists::write(&self.storage, &rec, &segments, &spec).await?
        };
        // Playlists list what was done; a stream with segments failed or skipped ends
        // `incomplete`, never `complete`.
        if let Some(ended) = self.state.complete(stream, &master).await? {
            let event = match ended {
                Completion::Complete => "completed",
                Completion::Incomplete => "incomplete",
            };
            metrics::STREAMS.with_label_values(&[event]).inc();
            self.announce(&rec, ended, total, master).await?;
        }
        if rec.mode == StreamMode::Live {
            self.state.forget_live(stream).await?;
            self.drop_live_lock(stream);
        }
        Ok(())
    }

    /// Tells the stream's publisher that it ended, with each failed segment and why (a
    /// push's `--wait` reports an incomplete stream from them).
    async fn announce(
        &self,
        rec: &StreamRecord,
        ended: Completion,
        total: u64,
        master: String,
    ) -> Result<(), HandleError> {
        let stream = rec.stream.as_str();
        let failed: Vec<FailedSegment> = self
            .state
            .failures(stream)
            .await?
            .into_iter()
            .map(|(seq, message)| FailedSegment { seq, message })
            .collect();
        match ended {
            Completion::Complete => info!(stream, segments = total, master, "stream complete"),
            Completion::Incomplete => warn!(
                stream,
                segments = total,
                failed = failed.len(),
                skipped = rec.skipped,
                master,
                "stream incomplete"
            ),
        }
        self.event(
            stream,
            &StreamEvent::StreamCompleted {
                stream: stream.to_string(),
                segments: total,
                master_playlist: master,
                failed,
            },
        )
        .await?;
        self.state.set_announced(stream).await?;
        Ok(())
    }
}
