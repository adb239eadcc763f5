//! The orchestrator's message handling: admitting streams, publishing one job per segment,
//! checking and accepting results, retrying or failing segments, and completing streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castwork_cluster::telemetry::Span;
use castwork_cluster::{broker::CLASSES, Broker, Storage};
use castwork_protocol::price::{estimated_pixels, rendition_pixels};
use castwork_protocol::Price;
use castwork_protocol::{
    encode, event_routing_key, job_queue, plan_ladder, profile, validate_stream_name, Disposition,
    FailedSegment, IngestMessage, RenditionRef, SegmentFailed, SegmentJob, SegmentReady,
    SegmentResult, StreamEnded, StreamEvent, StreamMode, StreamStarted, WorkerReport,
    EVENTS_EXCHANGE, JOBS_EXCHANGE,
};
use lapin::types::FieldTable;
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics;
use crate::state::{
    now_unix_ms, AcceptedRendition, Charge, FailOutcome, Recorded, Refusal, SegmentRecord, State,
    StreamRecord,
};
use crate::verify::{check_result, CheckError};

/// Seconds past a worker's own timeout before the orchestrator gives its attempt up.
const STUCK_GRACE_SECS: u64 = 30;

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A service is unavailable: requeue the message and try again.
    #[error("{0}")]
    Retry(String),
}

impl From<redis::RedisError> for HandleError {
    fn from(e: redis::RedisError) -> Self {
        HandleError::Retry(format!("redis: {e}"))
    }
}

impl From<castwork_cluster::BrokerError> for HandleError {
    fn from(e: castwork_cluster::BrokerError) -> Self {
        HandleError::Retry(e.to_string())
    }
}

impl From<castwork_cluster::StorageError> for HandleError {
    fn from(e: castwork_cluster::StorageError) -> Self {
        HandleError::Retry(e.to_string())
    }
}

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
    /// How long records are kept after their last change (ended streams, workers' counts
    /// of bad results).
    pub retain: Duration,
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
    /// a hash of the segment and attempt (the same answer on a redelivery).
    pub fn sampled(&self, r: &SegmentResult) -> bool {
        castwork_protocol::sample::in_sample(
            self.sample_rate,
            &format!("{}/{}/{}", r.stream, r.seq, r.attempt),
        )
    }
}

/// Account names a ledger accepts: letters, digits and `_.:-`, at most 100 (an Ethereum
/// address fits).
pub fn validate_account(account: &str) -> Result<(), String> {
    if account.is_empty()
        || account.len() > 100
        || !account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(format!(
            "account {account:?} must be 1-100 letters, digits or _.:-"
        ));
    }
    Ok(())
}

/// Benchmark only: a result's renditions as the worker reported them, unchecked.
fn unchecked(r: &SegmentResult) -> Vec<AcceptedRendition> {
    r.renditions
        .iter()
        .map(|o| AcceptedRendition {
            rung: o.rung.clone(),
            key: o.object.key.clone(),
            size: o.object.size,
            width: o.width,
            height: o.height,
            frames: o.frames,
            codecs: "avc1.640028".into(),
        })
        .collect()
}

fn rendition_refs(accepted: &[AcceptedRendition]) -> Vec<RenditionRef> {
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

impl Orchestrator {
    /// Whether `account` can pay for `frames` source frames through `rungs`: `Ok(Err(why))`
    /// when it cannot, with a message for the broadcaster's user. With `segment`, the
    /// estimated fee is reserved for that segment until it is resolved (so segments
    /// admitted at once cannot overdraw the account together).
    async fn affordable(
        &self,
        account: Option<&str>,
        rungs: &[castwork_protocol::Rung],
        frames: u64,
        fps: f64,
        segment: Option<(&str, u64)>,
    ) -> Result<Result<(), String>, HandleError> {
        let price = self.price;
        let Some(account) = account else {
            return Ok(Err(format!(
                "this orchestrator charges {} wei per {} pixels: push with --broadcaster-id \
                 ACCOUNT, an account credited with `orchestrator ledger credit ACCOUNT AMOUNT`",
                price.price_per_unit, price.pixels_per_unit
            )));
        };
        if let Err(m) = validate_account(account) {
            return Ok(Err(m));
        }
        let pixels = estimated_pixels(rungs, frames, fps);
        let needed = match price.fee(pixels) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let short = match segment {
            Some((stream, seq)) => self.state.reserve(account, stream, seq, needed).await?,
            None => {
                let (balance, reserved) = self.state.account(account).await?;
                if balance - reserved < needed {
                    Err((balance, reserved))
                } else {
                    Ok(())
                }
            }
        };
        let remedy = if self.payments.is_some() {
            "attach tickets whose expected value covers the segment (the broadcaster's \
             --eth-* flags do)"
                .to_string()
        } else {
            format!("credit it with `orchestrator ledger credit {account} AMOUNT`")
        };
        Ok(short.map_err(|(balance, reserved)| {
            format!(
                "insufficient balance: account {account} has {balance} wei ({reserved} of it \
                 reserved for segments in progress), a segment needs about {needed} wei \
                 ({pixels} output pixels at {} wei per {} pixels); {remedy}",
                price.price_per_unit, price.pixels_per_unit
            )
        }))
    }
}

/// Whether a message about `rec` carries its publisher's secret; a message that does not
/// is refused (logged and counted), whoever sent it.
fn is_from_publisher(rec: &StreamRecord, secret: &str, stream: &str) -> bool {
    if !rec.secret_hash.is_empty() && secret_hash(secret) == rec.secret_hash {
        return true;
    }
    warn!(
        stream,
        "message refused: it does not carry the stream's publisher secret"
    );
    metrics::REJECTED_MESSAGES
        .with_label_values(&[castwork_protocol::INGEST_QUEUE, "not_publisher"])
        .inc();
    false
}

/// What the orchestrator keeps of a publisher's secret.
fn secret_hash(secret: &str) -> String {
    castwork_protocol::secret::sha256_hex(secret)
}

/// A failure of a segment's attempt that no retry can help (the orchestrator's own
/// refusal, such as an account that cannot pay).
fn permanent(stream: &str, seq: u64, attempt: u32, message: String) -> SegmentFailed {
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

impl Orchestrator {
    pub(crate) async fn event(&self, stream: &str, event: &StreamEvent) -> Result<(), HandleError> {
        self.send_event(stream, event).await?.wait().await?;
        Ok(())
    }

    /// Sends a stream's event without waiting for the broker's confirm.
    async fn send_event(
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

    pub async fn handle_ingest(
        &self,
        msg: IngestMessage,
        headers: Option<&FieldTable>,
    ) -> Result<(), HandleError> {
        match msg {
            IngestMessage::StreamStarted(s) => self.stream_started(s).await,
            IngestMessage::SegmentReady(s) => {
                let span = Span::continued("admit segment", headers, &seg_attrs(&s.stream, s.seq));
                let r = self.segment_ready(s, &span).await;
                if let Err(e) = &r {
                    span.fail(format!("{e:?}"));
                }
                r
            }
            IngestMessage::StreamEnded(s) => self.stream_ended(s).await,
        }
    }

    async fn reject(&self, s: &StreamStarted, message: String) -> Result<(), HandleError> {
        warn!(stream = s.stream, message, "stream rejected");
        metrics::STREAMS.with_label_values(&["rejected"]).inc();
        self.event(
            &s.stream,
            &StreamEvent::StreamRejected {
                stream: s.stream.clone(),
                session: s.session,
                message,
            },
        )
        .await
    }

    async fn register(
        &self,
        s: &StreamStarted,
        plan: &castwork_protocol::LadderPlan,
    ) -> Result<i64, HandleError> {
        Ok(self
            .state
            .register_stream(
                &s.stream,
                &s.session.to_string(),
                s.mode,
                plan,
                &s.source,
                s.target_duration_secs
                    .filter(|_| s.mode == StreamMode::Live),
                s.broadcaster.as_deref().filter(|_| !self.price.is_free()),
                &secret_hash(&s.secret),
            )
            .await?)
    }

    async fn stream_started(&self, s: StreamStarted) -> Result<(), HandleError> {
        if let Err(m) = validate_stream_name(&s.stream) {
            return self.reject(&s, m).await;
        }
        if s.secret.len() < 16 || s.secret.len() > 256 {
            return self
                .reject(
                    &s,
                    "the stream has no publisher secret (16-256 characters): update the \
                     broadcaster"
                        .into(),
                )
                .await;
        }
        let ladder = match profile::validate(s.ladder.clone()) {
            Ok(l) => l,
            Err(e) => return self.reject(&s, e.to_string()).await,
        };
        if s.target_duration_secs
            .is_some_and(|t| !(1..=60).contains(&t))
        {
            return self
                .reject(&s, "the live target duration must be 1-60 s".into())
                .await;
        }
        if s.source.width == 0 || s.source.height == 0 {
            return self
                .reject(&s, "the source has no picture size".into())
                .await;
        }
        if let Err(m) = castwork_protocol::ladder::validate_source(&s.source) {
            return self.reject(&s, m).await;
        }
        let plan = plan_ladder(&ladder, &s.source);
        // A priced orchestrator admits a stream whose account covers its first segment (a
        // redelivered start of a stream already admitted is not checked again).
        let admitted = !self.price.is_free()
            && self
                .state
                .stream(&s.stream)
                .await?
                .is_some_and(|r| r.session == s.session.to_string());
        if !self.price.is_free() && !admitted {
            let secs = s.target_duration_secs.unwrap_or(2).max(1);
            let fps = s.source.frame_rate.as_f64();
            let frames = (fps.max(1.0) * f64::from(secs)).ceil() as u64;
            // On-chain, the ledger is credited by the tickets each segment carries: a stream
            // needs an active orchestrator and a funded sender.
            let admissible = match &self.payments {
                Some(p) => p.admit_stream(s.broadcaster.as_deref()).await?,
                None => {
                    self.affordable(s.broadcaster.as_deref(), &plan.rungs, frames, fps, None)
                        .await?
                }
            };
            if let Err(m) = admissible {
                return self.reject(&s, m).await;
            }
        }
        let mut registered = self.register(&s, &plan).await?;
        if registered == 3 {
            // The same key broadcasting again after its last broadcast ended.
            if let Some(old) = self.state.stream(&s.stream).await? {
                self.archive_live(&old).await?;
            }
            registered = self.register(&s, &plan).await?;
        }
        if registered != 1 && registered != 2 {
            return self
                .reject(
                    &s,
                    format!(
                        "stream {} already exists; push under another name",
                        s.stream
                    ),
                )
                .await;
        }
        if registered == 1 {
            metrics::STREAMS.with_label_values(&["admitted"]).inc();
            info!(
                stream = s.stream,
                rungs = plan.rungs.len(),
                skipped = plan.skipped.len(),
                "stream admitted"
            );
        }
        self.event(
            &s.stream,
            &StreamEvent::StreamAdmitted {
                stream: s.stream.clone(),
                session: s.session,
                rungs: plan.rungs,
                skipped: plan.skipped,
            },
        )
        .await
    }

    async fn segment_ready(&self, s: SegmentReady, span: &Span) -> Result<(), HandleError> {
        let Some(rec) = self.state.stream(&s.stream).await? else {
            warn!(
                stream = s.stream,
                seq = s.seq,
                "segment of an unknown stream dropped"
            );
            return Ok(());
        };
        if !is_from_publisher(&rec, &s.secret, &s.stream) {
            return Ok(());
        }
        let prefix = format!("streams/{}/source/", s.stream);
        if rec.state != "active"
            || rec.session != s.session.to_string()
            || !s.object.key.starts_with(&prefix)
            || s.duration_us <= 0
            || s.frames == 0
        {
            warn!(
                stream = s.stream,
                seq = s.seq,
                key = s.object.key,
                "invalid segment dropped"
            );
            return Ok(());
        }
        let deadline = (rec.mode == StreamMode::Live).then(|| {
            s.arrived_unix_ms.unwrap_or_else(now_unix_ms) + self.live_deadline.as_millis() as u64
        });
        let (attempt, seg) = match self
            .state
            .record_segment(&s, deadline, self.max_seq_ahead)
            .await?
        {
            Recorded::Publish(attempt, seg) => (attempt, Some(seg)),
            Recorded::Resolved(seg) => (0, seg),
            Recorded::Refused(why) => return self.refuse_segment(&s, why).await,
        };
        if attempt == 0 {
            // Already resolved: tell a live sender again how it went, for one that retried
            // because it missed the answer (an HTTP push whose client timed out).
            if let (StreamMode::Live, Some(accepted)) = (rec.mode, seg.and_then(|seg| seg.accepted))
            {
                self.event(
                    &s.stream,
                    &StreamEvent::SegmentTranscoded {
                        stream: s.stream.clone(),
                        seq: s.seq,
                        renditions: rendition_refs(&accepted),
                    },
                )
                .await?;
            }
            return Ok(());
        }
        metrics::SEGMENTS.with_label_values(&["received"]).inc();
        let Some(seg) = seg else {
            return Err(HandleError::Retry("segment vanished from redis".into()));
        };
        if let Some(p) = self.payments.as_ref().filter(|_| !self.price.is_free()) {
            if let Err(m) = p
                .accept(
                    rec.broadcaster.as_deref(),
                    s.payment.as_ref(),
                    &s.stream,
                    s.seq,
                )
                .await?
            {
                let f = permanent(&s.stream, s.seq, attempt, m);
                return self.segment_failed_in(f, span).await;
            }
        }
        if !self.price.is_free() {
            let fps = rec.source.frame_rate.as_f64();
            if let Err(m) = self
                .affordable(
                    rec.broadcaster.as_deref(),
                    &rec.plan.rungs,
                    seg.frames,
                    fps,
                    Some((&s.stream, s.seq)),
                )
                .await?
            {
                let f = permanent(&s.stream, s.seq, attempt, m);
                return self.segment_failed_in(f, span).await;
            }
        }
        self.publish_job(&rec, &seg, attempt, span).await
    }

    async fn publish_job(
        &self,
        rec: &StreamRecord,
        seg: &SegmentRecord,
        attempt: u32,
        parent: &Span,
    ) -> Result<(), HandleError> {
        // A live job carries its deadline as a message TTL: the broker drops it unstarted
        // once it is useless, and newer segments go first.
        let ttl = match (rec.mode, seg.deadline_ms) {
            (StreamMode::Live, Some(deadline)) => {
                let now = now_unix_ms();
                if deadline <= now {
                    return self
                        .skip_segment(
                            &rec.stream,
                            seg.seq,
                            "missed its deadline before a worker took it",
                        )
                        .await;
                }
                Some(deadline - now)
            }
            _ => None,
        };
        let job = SegmentJob {
            job_id: Uuid::now_v7(),
            stream: rec.stream.clone(),
            seq: seg.seq,
            attempt,
            mode: rec.mode,
            source: seg.source.clone(),
            start_us: seg.start_us,
            duration_us: seg.duration_us,
            frames: seg.frames,
            rungs: rec.plan.rungs.clone(),
            metadata: rec.source.clone(),
            deadline_unix_ms: seg.deadline_ms,
            exclude_workers: seg.bad_workers.clone(),
        };
        let queue = job_queue(rec.mode, CLASSES[0]);
        let span = parent.child("publish job", &[("attempt", attempt.to_string())]);
        self.broker
            .send(JOBS_EXCHANGE, &queue, &encode(&job), span.headers(), ttl)
            .await?
            .wait()
            .await?;
        metrics::JOBS_PUBLISHED.inc();
        Ok(())
    }

    async fn stream_ended(&self, s: StreamEnded) -> Result<(), HandleError> {
        match self.state.stream(&s.stream).await? {
            Some(rec) if rec.session == s.session.to_string() => {
                if !is_from_publisher(&rec, &s.secret, &s.stream) {
                    return Ok(());
                }
            }
            _ => {
                warn!(
                    stream = s.stream,
                    "end of an unknown stream or push dropped"
                );
                return Ok(());
            }
        }
        if let Err(max_seq) = self
            .state
            .set_total(&s.stream, s.segments, self.max_seq_ahead)
            .await?
        {
            warn!(
                stream = s.stream,
                segments = s.segments,
                highest_received = max_seq,
                window = self.max_seq_ahead,
                "end of stream refused: its segment count is below the segments received or \
                 too far beyond them"
            );
            metrics::REJECTED_MESSAGES
                .with_label_values(&[castwork_protocol::INGEST_QUEUE, "seq_window"])
                .inc();
            return Ok(());
        }
        self.after_change(&s.stream).await
    }

    /// Refuses a segment that was not recorded, telling its sender why.
    async fn refuse_segment(&self, s: &SegmentReady, why: Refusal) -> Result<(), HandleError> {
        let message = match why {
            Refusal::TooFarAhead => format!(
                "segment {} refused: more than {} ahead of the highest segment received; \
                 send segments in order",
                s.seq, self.max_seq_ahead
            ),
            Refusal::PastTheEnd => {
                format!("segment {} refused: the stream has ended before it", s.seq)
            }
        };
        warn!(stream = s.stream, seq = s.seq, message, "segment refused");
        metrics::REJECTED_MESSAGES
            .with_label_values(&[castwork_protocol::INGEST_QUEUE, "seq_window"])
            .inc();
        self.event(
            &s.stream,
            &StreamEvent::SegmentFailed {
                stream: s.stream.clone(),
                seq: s.seq,
                message,
            },
        )
        .await
    }

    /// Lists what a resolved segment unblocks (live) and completes the stream when done.
    pub(crate) async fn after_change(&self, stream: &str) -> Result<(), HandleError> {
        match self.state.stream(stream).await? {
            Some(rec) => self.after_change_of(rec).await,
            None => Ok(()),
        }
    }

    /// [`Orchestrator::after_change`] with the stream's record already read.
    async fn after_change_of(&self, rec: StreamRecord) -> Result<(), HandleError> {
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

    pub async fn handle_report(
        &self,
        report: WorkerReport,
        headers: Option<&FieldTable>,
    ) -> Result<(), HandleError> {
        match report {
            WorkerReport::SegmentStarted(s) => {
                // A hung worker stops itself after `timeout_secs`; the grace covers its
                // redelivered job finishing elsewhere before we give the attempt up.
                metrics::SEGMENTS.with_label_values(&["started"]).inc();
                let due = now_unix_ms() + (s.timeout_secs.min(86_400) + STUCK_GRACE_SECS) * 1000;
                self.state
                    .track_started(&s.stream, s.seq, s.attempt, &s.worker_id, due)
                    .await?;
                Ok(())
            }
            WorkerReport::SegmentResult(r) => {
                let span = Span::continued("handle result", headers, &seg_attrs(&r.stream, r.seq));
                self.segment_result(r, &span).await
            }
            WorkerReport::SegmentFailed(f) => {
                let span = Span::continued("handle failure", headers, &seg_attrs(&f.stream, f.seq));
                span.fail(f.message.clone());
                self.segment_failed_in(f, &span).await
            }
        }
    }

    /// Deletes the objects of a result that was not accepted, sparing any key the accepted
    /// result uses (two runs of one attempt can produce the same bytes, hence the same key).
    async fn collect_garbage(&self, r: &SegmentResult) -> Result<(), HandleError> {
        let kept: Vec<String> = self
            .state
            .segment(&r.stream, r.seq)
            .await?
            .and_then(|s| s.accepted)
            .map(|a| a.into_iter().map(|x| x.key).collect())
            .unwrap_or_default();
        for out in &r.renditions {
            let key = &out.object.key;
            if kept.contains(key) || !key.starts_with(&format!("streams/{}/", r.stream)) {
                continue;
            }
            if let Err(e) = self.storage.delete(key).await {
                warn!(key, error = %e, "could not delete a lost result's rendition");
            }
        }
        Ok(())
    }

    async fn segment_result(&self, r: SegmentResult, span: &Span) -> Result<(), HandleError> {
        let received_ms = now_unix_ms();
        let (rec, seg, banned) = self
            .state
            .result_context(&r.stream, r.seq, &r.worker_id)
            .await?;
        let (Some(rec), Some(seg)) = (rec, seg) else {
            warn!(
                stream = r.stream,
                seq = r.seq,
                "result for an unknown segment dropped"
            );
            return Ok(());
        };
        if seg.state != "pending" || seg.attempt != r.attempt {
            info!(
                stream = r.stream,
                seq = r.seq,
                attempt = r.attempt,
                current = seg.attempt,
                "duplicate or late result ignored"
            );
            metrics::SEGMENTS.with_label_values(&["duplicate"]).inc();
            self.collect_garbage(&r).await?;
            // A redelivery may be the retry of a handler that stopped half-way.
            return self.after_change(&r.stream).await;
        }
        let check = span.child("check output", &[]);
        let checked = if let Some(why) = banned {
            // A banned worker's late results are refused whatever they hold.
            Err(CheckError::Bad(format!(
                "worker {} is banned: {why}",
                r.worker_id
            )))
        } else if self.trust_worker_output {
            Ok(unchecked(&r))
        } else {
            let quality = self.quality.sampled(&r).then_some(self.quality.min_psnr_db);
            check_result(&self.storage, &seg, &rec.plan, &rec.source, &r, quality).await
        };
        if let Err(e) = &checked {
            check.fail(e.to_string());
        }
        drop(check);
        match checked {
            Ok(accepted) => {
                let pixels = accepted
                    .iter()
                    .map(|a| rendition_pixels(a.width, a.height, a.frames))
                    .fold(0u64, u64::saturating_add);
                let fee = match self.price.fee(pixels) {
                    Ok(fee) => fee,
                    Err(e) => {
                        let f = permanent(&r.stream, r.seq, r.attempt, e.to_string());
                        return self.segment_failed_in(f, span).await;
                    }
                };
                let charge = Charge {
                    account: rec.broadcaster.as_deref(),
                    pixels,
                    fee,
                };
                let accept = span.child("accept", &[]);
                let (fresh, after) = self
                    .state
                    .accept(
                        &r.stream,
                        r.seq,
                        r.attempt,
                        &accepted,
                        r.transcode_ms,
                        received_ms,
                        r.started_unix_ms,
                        charge,
                    )
                    .await?;
                drop(accept);
                let mut confirm = None;
                if fresh {
                    metrics::SEGMENTS.with_label_values(&["done"]).inc();
                    metrics::TRANSCODE_SECONDS.observe(r.transcode_ms as f64 / 1000.0);
                    if let Some(ready) = seg.ready_ms {
                        let secs = |ms: u64| ms.saturating_sub(ready) as f64 / 1000.0;
                        if let Some(started) = r.started_unix_ms.or(seg.started_ms) {
                            metrics::SEGMENT_SECONDS
                                .with_label_values(&["queue_wait"])
                                .observe(secs(started));
                        }
                        metrics::SEGMENT_SECONDS
                            .with_label_values(&["end_to_end"])
                            .observe(secs(received_ms));
                    }
                    info!(
                        stream = r.stream,
                        seq = r.seq,
                        attempt = r.attempt,
                        worker = r.worker_id,
                        "segment accepted"
                    );
                    let event = StreamEvent::SegmentTranscoded {
                        stream: r.stream.clone(),
                        seq: r.seq,
                        renditions: rendition_refs(&accepted),
                    };
                    // Listed while the broker confirms the event; the result is acked
                    // only once both are done.
                    confirm = Some(self.send_event(&r.stream, &event).await?);
                } else {
                    self.collect_garbage(&r).await?;
                }
                if let Some(rec) = after {
                    let _list = span.child("list", &[]);
                    self.after_change_of(rec).await?;
                }
                if let Some(confirm) = confirm {
                    confirm.wait().await?;
                }
                Ok(())
            }
            Err(CheckError::Unavailable(m)) => Err(HandleError::Retry(m)),
            Err(CheckError::Bad(m)) => {
                warn!(
                    stream = r.stream,
                    seq = r.seq,
                    attempt = r.attempt,
                    worker = r.worker_id,
                    problem = m,
                    "worker produced bad output"
                );
                metrics::SEGMENTS.with_label_values(&["bad_output"]).inc();
                let (bad, banned) = self
                    .state
                    .flag_worker(
                        &r.stream,
                        r.seq,
                        &r.worker_id,
                        &m,
                        self.quality.max_bad_results,
                        self.retain,
                    )
                    .await?;
                if banned {
                    warn!(
                        worker = r.worker_id,
                        bad_results = bad,
                        "worker banned for bad output: it stops taking jobs"
                    );
                }
                self.collect_garbage(&r).await?;
                self.segment_failed_in(
                    SegmentFailed {
                        job_id: r.job_id,
                        stream: r.stream.clone(),
                        seq: r.seq,
                        attempt: r.attempt,
                        worker_id: r.worker_id.clone(),
                        disposition: Disposition::Transient,
                        message: format!("output check failed: {m}"),
                    },
                    span,
                )
                .await
            }
        }
    }

    pub(crate) async fn segment_failed(&self, f: SegmentFailed) -> Result<(), HandleError> {
        self.segment_failed_in(f, &Span::none()).await
    }

    /// [`Orchestrator::segment_failed`] within a trace: a retry's job continues it.
    async fn segment_failed_in(&self, f: SegmentFailed, span: &Span) -> Result<(), HandleError> {
        if f.disposition == Disposition::Expired {
            return self.skip_segment(&f.stream, f.seq, &f.message).await;
        }
        let permanent = f.disposition == Disposition::Permanent;
        let outcome = self
            .state
            .fail_attempt(
                &f.stream,
                f.seq,
                f.attempt,
                &f.message,
                permanent,
                self.max_attempts,
            )
            .await?;
        match outcome {
            FailOutcome::Retry(attempt) => {
                info!(
                    stream = f.stream,
                    seq = f.seq,
                    attempt,
                    error = f.message,
                    "retrying segment"
                );
                metrics::SEGMENTS.with_label_values(&["retried"]).inc();
                let (Some(rec), Some(seg)) =
                    self.state.stream_and_segment(&f.stream, f.seq).await?
                else {
                    return Ok(());
                };
                self.publish_job(&rec, &seg, attempt, span).await
            }
            FailOutcome::Failed => {
                warn!(
                    stream = f.stream,
                    seq = f.seq,
                    error = f.message,
                    "segment failed"
                );
                metrics::SEGMENTS.with_label_values(&["failed"]).inc();
                self.event(
                    &f.stream,
                    &StreamEvent::SegmentFailed {
                        stream: f.stream.clone(),
                        seq: f.seq,
                        message: f.message.clone(),
                    },
                )
                .await?;
                self.after_change(&f.stream).await
            }
            FailOutcome::Stale => Ok(()),
            // A redelivery may be the retry of a handler that stopped half-way.
            FailOutcome::AlreadyResolved => self.after_change(&f.stream).await,
        }
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
        if rec.state == "complete" {
            if !rec.announced {
                self.announce(stream, total, rec.master_playlist.unwrap_or_default())
                    .await?;
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
        if self.state.complete(stream, &master).await? {
            metrics::STREAMS.with_label_values(&["completed"]).inc();
            self.announce(stream, total, master).await?;
        }
        if rec.mode == StreamMode::Live {
            self.state.forget_live(stream).await?;
            self.drop_live_lock(stream);
        }
        Ok(())
    }

    async fn announce(&self, stream: &str, total: u64, master: String) -> Result<(), HandleError> {
        let failed: Vec<FailedSegment> = self
            .state
            .failures(stream)
            .await?
            .into_iter()
            .map(|(seq, message)| FailedSegment { seq, message })
            .collect();
        info!(
            stream,
            segments = total,
            failed = failed.len(),
            master,
            "stream complete"
        );
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
