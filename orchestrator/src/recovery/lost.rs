//! On-demand jobs that left their queue with no worker starting them: purged (a worker's
//! broker user may purge the queue it reads: RabbitMQ grants purge with read), or taken by
//! a consumer that acknowledged them and never reported. Nothing would ever report such a
//! job, so its stream would wait forever.
//!
//! Every on-demand job is noted when published and un-noted by its start notice
//! (`State::track_queued`). A job is lost when, on two looks at least [`LOOK_EVERY`] apart,
//! no class's on-demand queue holds a ready job at all and the job, published more than `--lost-job-secs`
//! ago, has neither started nor ended: a job still in the queue would make it non-empty,
//! and one a worker holds sends its start notice within a second (`--start-notice-ms`),
//! well inside the two looks. A lost job's attempt fails as transient, so it is retried as
//! a new attempt and counts against `--max-attempts` like any failure: purging the queue
//! again and again ends the stream failed, with the reason, instead of looping.

use std::collections::HashSet;
use std::time::Duration;

use castwork_cluster::broker::CLASSES;
use castwork_protocol::{job_queue, Disposition, SegmentFailed, StreamMode};
use tracing::warn;
use uuid::Uuid;

use crate::metrics;
use crate::service::{HandleError, Orchestrator};
use crate::state::now_unix_ms;

/// How often the queue is looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// What the last look found.
#[derive(Debug, Default)]
pub struct LostJobs {
    /// When the last look was (Unix ms).
    last_ms: u64,
    /// The jobs that looked lost then.
    suspects: HashSet<(String, u64, u32)>,
}

impl Orchestrator {
    /// Looks for lost on-demand jobs (at most every [`LOOK_EVERY`]) and retries them.
    pub async fn sweep_lost(&self) -> Result<(), HandleError> {
        let now = now_unix_ms();
        if !super::due(
            &mut self.lost.lock().expect("lost-jobs lock").last_ms,
            now,
            LOOK_EVERY,
        ) {
            return Ok(());
        }
        // A job may be in any class's queue (and moved between them): lost only when all
        // are empty.
        let mut ready = 0;
        for class in CLASSES {
            ready += self
                .broker
                .ready(&job_queue(StreamMode::Vod, class))
                .await?;
        }
        let previous = std::mem::take(&mut self.lost.lock().expect("lost-jobs lock").suspects);
        if ready > 0 {
            return Ok(());
        }
        let queue = "the on-demand job queues";
        let before = now.saturating_sub(self.lost_after.as_millis() as u64);
        let mut suspects = HashSet::new();
        for (stream, seq, attempt) in self.state.queued_before(before).await? {
            if self.wanted_attempt(&stream, seq, attempt).await?.is_none() {
                // Done, failed or retried since: nothing to watch.
                self.state.claim_queued(&stream, seq, attempt).await?;
                continue;
            }
            let job = (stream, seq, attempt);
            if !previous.contains(&job) {
                suspects.insert(job);
                continue;
            }
            let (stream, seq, attempt) = job;
            // One replica takes it.
            if !self.state.claim_queued(&stream, seq, attempt).await? {
                continue;
            }
            warn!(
                stream,
                seq,
                attempt,
                queue,
                "job left the queue with no worker starting it (purged, or taken by a consumer \
                 that never reported): retrying"
            );
            metrics::SEGMENTS.with_label_values(&["lost"]).inc();
            self.segment_failed(SegmentFailed {
                job_id: Uuid::nil(),
                stream,
                seq,
                attempt,
                worker_id: "queue".into(),
                disposition: Disposition::Transient,
                message: format!(
                    "its job left {queue} with no worker starting it (purged, or taken by a \
                     consumer that never reported)"
                ),
            })
            .await?;
        }
        self.lost.lock().expect("lost-jobs lock").suspects = suspects;
        Ok(())
    }
}
