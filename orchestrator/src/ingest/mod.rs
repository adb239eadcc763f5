//! Admitting streams and segments: a stream's ladder, source and publisher are checked, its
//! account (priced mode) must cover it (`fees`), every segment is recorded once within the
//! sequence window and published as one job.

use castwork_cluster::telemetry::Span;
use castwork_protocol::{
    encode, job_queue, plan_ladder, profile, validate_stream_name, IngestMessage, SegmentJob,
    SegmentReady, StreamEvent, StreamMode, StreamStarted, JOBS_EXCHANGE,
};
use lapin::types::FieldTable;
use tracing::{info, warn, Instrument as _};

use crate::metrics;
use crate::service::{permanent, rendition_refs, seg_attrs, HandleError, Orchestrator};
use crate::state::{now_unix_ms, Recorded, Refusal, SegmentRecord, StreamRecord};
use crate::workers::tokens;

mod ending;
mod fees;
pub mod routing;

pub use fees::validate_account;

/// Whether a message about `rec` carries its publisher's secret.
pub(crate) fn carries_secret(rec: &StreamRecord, secret: &str) -> bool {
    !rec.secret_hash.is_empty() && secret_hash(secret) == rec.secret_hash
}

/// Refuses (counted, and dead-lettered with the reason) a message about `rec` that does
/// not carry its publisher's secret, whoever sent it.
fn from_publisher(rec: &StreamRecord, secret: &str) -> Result<(), HandleError> {
    if carries_secret(rec, secret) {
        return Ok(());
    }
    metrics::REJECTED_MESSAGES
        .with_label_values(&[castwork_protocol::INGEST_QUEUE, "not_publisher"])
        .inc();
    Err(HandleError::Refused(format!(
        "the message about stream {} does not carry the stream's publisher secret",
        rec.stream
    )))
}

/// What the orchestrator keeps of a publisher's secret.
fn secret_hash(secret: &str) -> String {
    castwork_protocol::secret::sha256_hex(secret)
}

/// A refusal of the message: it is dead-lettered with `why`.
fn refused(why: String) -> Result<(), HandleError> {
    Err(HandleError::Refused(why))
}

/// How many live streams an orchestrator admits at once (`--max-sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSessions {
    /// As many as the live workers' transcode slots (no limit while none has beaten).
    Auto,
    /// This many; 0 is no limit.
    Fixed(u64),
}

impl MaxSessions {
    /// The most live streams admitted at once now (0: no limit).
    pub async fn now(self, state: &crate::state::State) -> redis::RedisResult<u64> {
        Ok(match self {
            MaxSessions::Fixed(n) => n,
            MaxSessions::Auto => state
                .workers()
                .await?
                .iter()
                .map(|w| w["slots"].as_u64().unwrap_or(0))
                .sum(),
        })
    }
}

/// Reads `--max-sessions`: `auto` or a number.
pub fn parse_max_sessions(s: &str) -> Result<MaxSessions, String> {
    if s == "auto" {
        return Ok(MaxSessions::Auto);
    }
    s.parse()
        .map(MaxSessions::Fixed)
        .map_err(|_| format!("{s:?} is neither `auto` nor a number of live streams"))
}

impl Orchestrator {
    pub async fn handle_ingest(
        &self,
        msg: IngestMessage,
        headers: Option<&FieldTable>,
    ) -> Result<(), HandleError> {
        match msg {
            IngestMessage::StreamStarted(s) => self.stream_started(s).await,
            IngestMessage::SegmentReady(s) => {
                let span = Span::continued("admit segment", headers, &seg_attrs(&s.stream, s.seq));
                let logs = span.in_logs();
                let r = self.segment_ready(s, &span).instrument(logs).await;
                if let Err(e) = &r {
                    span.fail(format!("{e:?}"));
                }
                r
            }
            IngestMessage::StreamEnded(s) => self.stream_ended(s).await,
            IngestMessage::StreamAborted(s) => self.stream_aborted(s).await,
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
        max_live: u64,
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
                max_live,
            )
            .await?)
    }

    /// The most live streams admitted at once now (0: no limit).
    async fn max_live(&self) -> Result<u64, HandleError> {
        Ok(self.max_sessions.now(&self.state).await?)
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
        // A priced orchestrator admits an on-demand stream whose account covers all of it,
        // a live one whose account covers its first segment (a redelivered start of a
        // stream already admitted is not checked again).
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
                None if s.mode == StreamMode::Vod => {
                    self.covers_stream(s.broadcaster.as_deref(), &plan.rungs, &s.source)
                        .await?
                }
                None => {
                    self.affordable(s.broadcaster.as_deref(), &plan.rungs, frames, fps, None)
                        .await?
                }
            };
            if let Err(m) = admissible {
                return self.reject(&s, m).await;
            }
        }
        let max_live = if s.mode == StreamMode::Live {
            self.max_live().await?
        } else {
            0
        };
        let mut registered = self.register(&s, &plan, max_live).await?;
        if registered == 3 {
            // The same key broadcasting again after its last broadcast ended.
            if let Some(old) = self.state.stream(&s.stream).await? {
                self.archive_live(&old).await?;
            }
            registered = self.register(&s, &plan, max_live).await?;
        } else if registered == 4 {
            // A push again under the name of one that failed: its record goes.
            crate::cleanup::delete_stream(&self.state, &self.storage, &s.stream, false)
                .await
                .map_err(|e| {
                    HandleError::Retry(format!("forgetting failed stream {}: {e}", s.stream))
                })?;
            info!(stream = s.stream, "a failed stream's name used again");
            registered = self.register(&s, &plan, max_live).await?;
        }
        if registered == 5 {
            return self
                .reject(
                    &s,
                    format!(
                        "at capacity: this orchestrator admits {max_live} live stream(s) at once \
                         (--max-sessions), all taken; try again later or another orchestrator"
                    ),
                )
                .await;
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
                playback_url: Some(self.playback_url(&s.stream)),
                store: self.store_identity().await,
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
            return refused(format!(
                "segment {} of stream {}, which does not exist (it was never started, or \
                 was deleted)",
                s.seq, s.stream
            ));
        };
        from_publisher(&rec, &s.secret)?;
        let prefix = format!("streams/{}/source/", s.stream);
        let invalid = if rec.state != "active" {
            Some(format!("the stream is {}", rec.state))
        } else if rec.session != s.session.to_string() {
            Some("it belongs to another push of that name".to_string())
        } else if !s.object.key.starts_with(&prefix) {
            Some(format!("its object is not under {prefix}"))
        } else if s.duration_us <= 0 || s.frames == 0 {
            Some("it has no frames or no duration".to_string())
        } else {
            None
        };
        if let Some(why) = invalid {
            return refused(format!(
                "segment {} of stream {} refused: {why}",
                s.seq, s.stream
            ));
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
                        // Signed when the segment was accepted, and not kept.
                        claim: None,
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
        self.publish_job(&rec, &seg, attempt, span, 0).await
    }

    /// Publishes the job of a segment's attempt; `bounces` counts how often excluded
    /// workers handed it back (see [`castwork_protocol::BOUNCES_HEADER`]).
    pub(crate) async fn publish_job(
        &self,
        rec: &StreamRecord,
        seg: &SegmentRecord,
        attempt: u32,
        parent: &Span,
        bounces: u32,
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
            job_id: self.job_ids.id(&rec.stream, seg.seq, attempt),
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
            objects: Some(self.work.job_objects(
                &rec.stream,
                seg.seq,
                attempt,
                &seg.source.key,
                match seg.deadline_ms {
                    Some(d) => d / 1000 + tokens::LIVE_URL_GRACE_SECS,
                    None => now_unix_ms() / 1000 + tokens::VOD_URL_SECS,
                },
            )),
        };
        let capacity = self.routing.capacity(&self.state).await;
        let class = self.routing.choose(rec.mode, &capacity);
        let queue = job_queue(rec.mode, class);
        let span = parent.child("publish job", &[("attempt", attempt.to_string())]);
        let mut headers = span.headers();
        if bounces > 0 {
            headers.get_or_insert_with(Default::default).insert(
                castwork_protocol::BOUNCES_HEADER.into(),
                lapin::types::AMQPValue::LongUInt(bounces),
            );
        }
        self.broker
            .send(JOBS_EXCHANGE, &queue, &encode(&job), headers, ttl)
            .await?
            .wait()
            .await?;
        metrics::JOBS_PUBLISHED.inc();
        metrics::JOBS_ROUTED.with_label_values(&[class]).inc();
        if rec.mode == StreamMode::Vod {
            self.state
                .track_queued(&rec.stream, seg.seq, attempt, now_unix_ms())
                .await?;
        }
        Ok(())
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
}
