//! Checking and accepting results: a worker's result is checked (hashes, sizes, timing,
//! sampled pictures), at most one attempt per segment is accepted and charged, a bad one is
//! retried elsewhere with its worker flagged, and failures retry or fail the segment.

use castwork_cluster::telemetry::Span;
use castwork_protocol::price::rendition_pixels;
use castwork_protocol::{
    Disposition, SegmentBounced, SegmentFailed, SegmentResult, StreamEvent, WorkerReport,
};
use lapin::types::FieldTable;
use tracing::{info, warn, Instrument as _};

use crate::metrics;
use crate::service::{
    permanent, rendition_refs, seg_attrs, HandleError, Orchestrator, STUCK_GRACE_SECS,
};
use crate::state::{
    now_unix_ms, AcceptedRendition, Charge, FailOutcome, SegmentRecord, StreamRecord,
};
use crate::verify::{check_result, CheckError};

mod failed;

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

impl Orchestrator {
    /// Handles a worker's report. `sender` is the broker user that published it: the
    /// worker is who that says ([`crate::workers::identity`]), and the report must name a
    /// job this orchestrator issued.
    pub async fn handle_report(
        &self,
        mut report: WorkerReport,
        headers: Option<&FieldTable>,
        sender: Option<&str>,
    ) -> Result<(), HandleError> {
        let (job_id, stream, seq, attempt, claimed) = match &mut report {
            WorkerReport::SegmentStarted(s) => {
                (s.job_id, &s.stream, s.seq, s.attempt, &mut s.worker_id)
            }
            WorkerReport::SegmentResult(r) => {
                (r.job_id, &r.stream, r.seq, r.attempt, &mut r.worker_id)
            }
            WorkerReport::SegmentFailed(f) => {
                (f.job_id, &f.stream, f.seq, f.attempt, &mut f.worker_id)
            }
            WorkerReport::SegmentBounced(b) => {
                (b.job_id, &b.stream, b.seq, b.attempt, &mut b.worker_id)
            }
        };
        let identity = crate::workers::identity(sender, claimed, self.broker.user())
            .map_err(HandleError::Refused)?;
        if let Err(refused) = self.job_ids.check(job_id, stream, seq, attempt, &identity) {
            // A job an orchestrator issued before job ids were keyed (a random UUIDv7):
            // its attempt goes out once more under a keyed id, so an upgrade with jobs in
            // flight loses no segment. Once per attempt: a forger gains one job at most.
            if job_id.get_version() == Some(uuid::Version::SortRand) {
                let (stream, seq) = (stream.clone(), seq);
                self.reissue(&stream, seq, attempt).await?;
            }
            return Err(refused);
        }
        *claimed = identity;
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
                let logs = span.in_logs();
                self.segment_result(r, &span).instrument(logs).await
            }
            WorkerReport::SegmentBounced(b) => {
                let span = Span::continued("handle bounce", headers, &seg_attrs(&b.stream, b.seq));
                let logs = span.in_logs();
                self.segment_bounced(b, &span).instrument(logs).await
            }
            WorkerReport::SegmentFailed(f) => {
                let span = Span::continued("handle failure", headers, &seg_attrs(&f.stream, f.seq));
                span.fail(f.message.clone());
                let logs = span.in_logs();
                self.worker_failed(f, &span).instrument(logs).await
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
            // Only this attempt's own key for the rendition, never one a worker names.
            let own = castwork_protocol::rendition_key(
                &r.stream,
                &out.rung,
                r.seq,
                r.attempt,
                &out.object.sha256,
            );
            let named_right = castwork_protocol::profile::validate_name(&out.rung).is_ok()
                && out.object.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if kept.contains(key) || *key != own || !named_right {
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
            return Err(HandleError::Refused(format!(
                "result from worker {} for segment {} of stream {}, which was never published \
                 (no such stream or segment)",
                r.worker_id, r.seq, r.stream
            )));
        };
        if rec.state == "failed" {
            // The stream failed while this attempt ran: its output goes with the rest.
            self.collect_garbage(&r).await?;
            return Ok(());
        }
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
            let quality = self
                .quality
                .sampled(&self.sample_secret, &r)
                .then_some(self.quality.min_psnr_db);
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
                        claim: self.claim(&r, &accepted, fee),
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

    /// The stream and segment when `attempt` is still the segment's pending one in a stream
    /// that has not failed: the attempt whose job may go out again.
    pub(crate) async fn wanted_attempt(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
    ) -> Result<Option<(StreamRecord, SegmentRecord)>, HandleError> {
        Ok(match self.state.stream_and_segment(stream, seq).await? {
            (Some(rec), Some(seg))
                if seg.state == "pending" && seg.attempt == attempt && rec.state != "failed" =>
            {
                Some((rec, seg))
            }
            _ => None,
        })
    }

    /// Publishes a segment's pending attempt again, once per attempt (see
    /// `handle_report`).
    pub(crate) async fn reissue(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
    ) -> Result<(), HandleError> {
        let Some((rec, seg)) = self.wanted_attempt(stream, seq, attempt).await? else {
            return Ok(());
        };
        if self.state.mark_reissued(stream, seq, attempt).await? {
            info!(
                stream,
                seq, attempt, "a job issued before job ids were keyed: its attempt goes out again"
            );
            self.publish_job(&rec, &seg, attempt, &Span::none(), 0)
                .await?;
        }
        Ok(())
    }

    /// A job handed back by a worker excluded from it goes out again, for another worker,
    /// while its attempt is still the segment's current one.
    async fn segment_bounced(&self, b: SegmentBounced, span: &Span) -> Result<(), HandleError> {
        let Some((rec, seg)) = self.wanted_attempt(&b.stream, b.seq, b.attempt).await? else {
            return Ok(());
        };
        self.publish_job(&rec, &seg, b.attempt, span, b.bounces)
            .await
    }

    pub(crate) async fn segment_failed(&self, f: SegmentFailed) -> Result<(), HandleError> {
        self.segment_failed_in(f, &Span::none()).await
    }

    /// [`Orchestrator::segment_failed`] within a trace: a retry's job continues it.
    pub(crate) async fn segment_failed_in(
        &self,
        f: SegmentFailed,
        span: &Span,
    ) -> Result<(), HandleError> {
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
                self.publish_job(&rec, &seg, attempt, span, 0).await
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
            FailOutcome::Unknown => Err(HandleError::Refused(format!(
                "failure report from {} for segment {} of stream {}, which was never published \
                 (no such stream or segment)",
                f.worker_id, f.seq, f.stream
            ))),
            FailOutcome::Stale => Ok(()),
            // A redelivery may be the retry of a handler that stopped half-way.
            FailOutcome::AlreadyResolved => self.after_change(&f.stream).await,
        }
    }

    /// On-chain mode: our signed claim for an accepted result, its rendition hashes in the
    /// order of `accepted` (none off-chain; one that cannot be signed is logged, and the
    /// segment is delivered without it).
    fn claim(
        &self,
        r: &castwork_protocol::SegmentResult,
        accepted: &[crate::state::AcceptedRendition],
        fee: i64,
    ) -> Option<castwork_protocol::payment::SignedClaim> {
        let payments = self.payments.as_ref()?;
        let hashes: Vec<&str> = accepted
            .iter()
            .map(|a| {
                r.renditions
                    .iter()
                    .find(|o| o.rung == a.rung)
                    .map_or("", |o| o.object.sha256.as_str())
            })
            .collect();
        match payments.claim(&r.stream, r.seq, &hashes, fee) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(stream = r.stream, seq = r.seq, error = %e, "cannot sign the segment's claim");
                None
            }
        }
    }
}
