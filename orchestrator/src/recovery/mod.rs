//! Recovering from what workers and the broker cannot report: jobs whose result is overdue
//! (a hung or vanished worker), live deadlines, dead letters (`dead_letters`) and jobs that
//! left their queue unstarted (`lost`).

mod dead_letters;
pub mod lost;
pub mod stranded;

pub use dead_letters::DeadLetter;

use castwork_protocol::{Disposition, SegmentFailed};
use tracing::warn;
use uuid::Uuid;

use crate::metrics;
use crate::service::{HandleError, Orchestrator};
use crate::state::now_unix_ms;

/// Whether a look last made at `last_ms` is due again at `now_ms`, `every` apart; when it is,
/// `last_ms` becomes now.
fn due(last_ms: &mut u64, now_ms: u64, every: std::time::Duration) -> bool {
    if now_ms < last_ms.saturating_add(every.as_millis() as u64) {
        return false;
    }
    *last_ms = now_ms;
    true
}

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
        if let Err(e) = self.sweep_lost().await {
            warn!(error = %e, "lost-job sweep failed");
        }
        if let Err(e) = self.sweep_stranded().await {
            warn!(error = %e, "stranded-job sweep failed");
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
}
