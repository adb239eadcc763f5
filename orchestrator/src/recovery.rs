//! Recovering from what workers and the broker cannot report: jobs whose result is overdue
//! (a hung or vanished worker), live deadlines, and jobs the broker dead-lettered.

use castwork_protocol::{Disposition, SegmentFailed, SegmentJob};
use tracing::warn;
use uuid::Uuid;

use crate::metrics;
use crate::service::{HandleError, Orchestrator};
use crate::state::now_unix_ms;

impl Orchestrator {
    /// Gives up started jobs whose result is overdue (a hung or vanished worker) and retries
    /// them as new attempts; a late result of a given-up attempt is ignored.
    pub async fn sweep_overdue(&self) -> Result<(), HandleError> {
        for (stream, seq, attempt, worker) in self.state.take_overdue(now_unix_ms()).await? {
            let Some(seg) = self.state.segment(&stream, seq).await? else {
                continue;
            };
            if seg.state != "pending" || seg.attempt != attempt {
                continue;
            }
            warn!(
                stream,
                seq, attempt, worker, "worker gave no result in time: retrying elsewhere"
            );
            metrics::SEGMENTS.with_label_values(&["overdue"]).inc();
            self.segment_failed(SegmentFailed {
                job_id: Uuid::nil(),
                stream,
                seq,
                attempt,
                worker_id: worker.clone(),
                disposition: Disposition::Transient,
                message: format!("worker {worker} gave no result in time (hung or lost)"),
            })
            .await?;
        }
        // Live deadlines and segments that never arrived; one stream's trouble does not
        // hold up the others.
        for stream in self.state.live_streams().await? {
            if let Err(e) = self.after_change(&stream).await {
                warn!(stream, error = %e, "live stream sweep failed");
            }
        }
        Ok(())
    }

    /// A job the broker dead-lettered: past its delivery limit (workers kept dying on it) or
    /// refused as unreadable. The segment fails with that reason, and the letter is kept in
    /// Redis for operators.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        deliveries: Option<i64>,
        expired: bool,
    ) -> Result<(), HandleError> {
        metrics::DEAD_LETTERS.inc();
        let record = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_string();
        self.state.record_dead_letter(&record).await?;
        let job: SegmentJob = match castwork_protocol::decode(body) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "unreadable dead letter recorded");
                return Ok(());
            }
        };
        if expired {
            // A live job no worker took before its deadline.
            return self
                .skip_segment(
                    &job.stream,
                    job.seq,
                    "no worker took it before its deadline",
                )
                .await;
        }
        let message = match deliveries {
            Some(n) => {
                format!("dead-lettered after {n} deliveries: workers kept failing to finish it")
            }
            None => "dead-lettered by the broker".to_string(),
        };
        warn!(
            stream = job.stream,
            seq = job.seq,
            attempt = job.attempt,
            message,
            "dead letter"
        );
        self.segment_failed(SegmentFailed {
            job_id: job.job_id,
            stream: job.stream,
            seq: job.seq,
            attempt: job.attempt,
            worker_id: "broker".into(),
            disposition: Disposition::Permanent,
            message,
        })
        .await
    }
}
