//! A worker's failure report that says a segment cannot succeed anywhere is one worker's
//! word: it fails the segment only when a second worker says so too, or no other worker
//! could try.

use castwork_cluster::telemetry::Span;
use castwork_protocol::{Disposition, SegmentBounced, SegmentFailed};
use tracing::info;

use crate::service::{HandleError, Orchestrator};
use crate::state::PermanentReport;

impl Orchestrator {
    /// A worker's failure report. One that says the segment cannot succeed anywhere is
    /// taken at its word only when a second worker says so too, or no other worker could
    /// try: a worker that lies (or whose own limits are lower) cannot fail a segment alone.
    pub(super) async fn worker_failed(
        &self,
        f: SegmentFailed,
        span: &Span,
    ) -> Result<(), HandleError> {
        if f.disposition != Disposition::Permanent {
            return self.segment_failed_in(f, span).await;
        }
        // The workers that could take the retry: live ones of the reporter's class (a job
        // goes back to its class's queue; a worker of another class would never see it).
        let workers = self.state.workers().await?;
        let class = workers
            .iter()
            .find(|w| w["identity"].as_str() == Some(f.worker_id.as_str()))
            .and_then(|w| w["class"].as_str());
        let live: Vec<String> = workers
            .iter()
            .filter(|w| class.is_none() || w["class"].as_str() == class)
            .filter_map(|w| w["identity"].as_str().map(str::to_string))
            .collect();
        let weighed = self
            .state
            .permanent_report(&f.stream, f.seq, f.attempt, &f.worker_id, &live)
            .await?;
        match weighed {
            PermanentReport::Doubted => {
                info!(
                    stream = f.stream,
                    seq = f.seq,
                    attempt = f.attempt,
                    worker = f.worker_id,
                    error = f.message,
                    "a worker says the segment cannot succeed: another worker tries it to confirm"
                );
                let message = format!(
                    "worker {} reported: {}; another worker tries it, to confirm",
                    f.worker_id, f.message
                );
                let retry = SegmentFailed {
                    disposition: Disposition::Transient,
                    message,
                    ..f
                };
                self.segment_failed_in(retry, span).await
            }
            PermanentReport::Bounce => {
                let b = SegmentBounced {
                    job_id: f.job_id,
                    stream: f.stream,
                    seq: f.seq,
                    attempt: f.attempt,
                    worker_id: f.worker_id,
                    bounces: 0,
                };
                self.segment_bounced(b, span).await
            }
            PermanentReport::Final(first) => {
                let message = match first.filter(|w| *w != f.worker_id) {
                    Some(w) => format!("{} (worker {w} reported it first)", f.message),
                    None => f.message.clone(),
                };
                self.segment_failed_in(SegmentFailed { message, ..f }, span)
                    .await
            }
        }
    }
}
