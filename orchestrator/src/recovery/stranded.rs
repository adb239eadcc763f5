//! Jobs waiting in a class's queue that nobody reads: routed there while that class had
//! workers, which then went away (a GPU host lost, GPU workers scaled to zero), or routed
//! there when no class had any. When a job queue holds ready jobs and has no consumer on two
//! looks at least [`LOOK_EVERY`] apart, and the routing would now send its jobs to another
//! class (one with workers), its jobs are moved to that class's queue.

use std::collections::HashSet;
use std::time::Duration;

use castwork_cluster::broker::CLASSES;
use castwork_protocol::{job_queue, StreamMode};
use tracing::{info, warn};

use crate::metrics;
use crate::service::{HandleError, Orchestrator};
use crate::state::now_unix_ms;

/// How often the job queues are looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Jobs moved from one queue in one sweep (the rest go at the next).
const MOVE_AT_MOST: usize = 500;

/// What the last look found.
#[derive(Debug, Default)]
pub struct Stranded {
    last_ms: u64,
    /// Queues that had ready jobs and no consumer.
    queues: HashSet<String>,
}

impl Orchestrator {
    /// Moves the jobs of queues nobody reads to a class with workers (at most every
    /// [`LOOK_EVERY`]).
    pub async fn sweep_stranded(&self) -> Result<(), HandleError> {
        let now = now_unix_ms();
        if !super::due(
            &mut self.stranded.lock().expect("stranded lock").last_ms,
            now,
            LOOK_EVERY,
        ) {
            return Ok(());
        }
        let depths = self.broker.queue_depths().await?;
        let idle: HashSet<String> = depths
            .iter()
            .filter(|d| d.queue.starts_with("jobs.") && d.messages > 0 && d.consumers == 0)
            .map(|d| d.queue.clone())
            .collect();
        let previous = std::mem::replace(
            &mut self.stranded.lock().expect("stranded lock").queues,
            idle.clone(),
        );
        if idle.is_empty() {
            return Ok(());
        }
        let capacity = self.routing.capacity(&self.state).await;
        for mode in [StreamMode::Live, StreamMode::Vod] {
            let target = self.routing.choose(mode, &capacity);
            if capacity.get(target).is_none_or(|c| c.workers == 0) {
                // No worker anywhere: moving helps no job.
                continue;
            }
            let to = job_queue(mode, target);
            for class in CLASSES {
                let from = job_queue(mode, class);
                if from == to || !idle.contains(&from) || !previous.contains(&from) {
                    continue;
                }
                let moved = self.broker.move_ready(&from, &to, MOVE_AT_MOST).await?;
                if moved > 0 {
                    warn!(
                        from,
                        to,
                        moved,
                        "jobs waited in a queue nobody reads: moved to a class with workers"
                    );
                    metrics::JOBS_MOVED
                        .with_label_values(&[class, target])
                        .inc_by(moved as u64);
                } else {
                    info!(from, "the jobs of an unread queue were taken meanwhile");
                }
            }
        }
        Ok(())
    }
}
