//! Jobs of the HTTP API: their records in Redis (one JSON value per job, kept
//! [`RETAIN`], and a per-account index by creation time) and the task that runs each one:
//! fetch the input within limits, push it as an on-demand stream, wait for it, record how it
//! ended.

use std::sync::Arc;
use std::time::Duration;

use castwork_cluster::Storage;
use castwork_protocol::Profile;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::fetch::{fetch, FetchLimits};
use crate::push::{push, PushRequest};

/// How long a job's record is kept after its last change.
pub const RETAIN: Duration = Duration::from_secs(7 * 86_400);

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    /// The API key's name that made it: only that account sees it.
    pub account: String,
    pub input: String,
    pub stream: String,
    /// The rungs asked for, by name.
    pub profiles: Vec<String>,
    /// `queued`, `fetching`, `transcoding`, then `complete`, `incomplete` (some segments
    /// failed: `failed_segments` says which and why) or `failed` (`error` says why).
    pub state: String,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_segments: Vec<FailedSegment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedSegment {
    pub seq: u64,
    pub message: String,
}

fn job_key(id: &str) -> String {
    format!("cw:api_job:{id}")
}

fn index_key(account: &str) -> String {
    format!("cw:api_jobs:{account}")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The job records.
#[derive(Clone)]
pub struct Jobs {
    redis: ConnectionManager,
}

impl Jobs {
    pub fn new(redis: ConnectionManager) -> Self {
        Jobs { redis }
    }

    /// Writes a job's record (and indexes it under its account).
    pub async fn save(&self, job: &Job) -> redis::RedisResult<()> {
        let json = serde_json::to_string(job).unwrap_or_default();
        redis::pipe()
            .cmd("SET")
            .arg(job_key(&job.id))
            .arg(json)
            .arg("EX")
            .arg(RETAIN.as_secs())
            .ignore()
            .cmd("ZADD")
            .arg(index_key(&job.account))
            .arg(job.created_unix_ms)
            .arg(&job.id)
            .ignore()
            .cmd("EXPIRE")
            .arg(index_key(&job.account))
            .arg(RETAIN.as_secs())
            .ignore()
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Account `account`'s job `id`; `None` for a job of another account or none at all.
    pub async fn get(&self, account: &str, id: &str) -> redis::RedisResult<Option<Job>> {
        if id.len() > 64 {
            return Ok(None);
        }
        let json: Option<String> = redis::cmd("GET")
            .arg(job_key(id))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(json
            .and_then(|j| serde_json::from_str::<Job>(&j).ok())
            .filter(|j| j.account == account))
    }

    /// Account `account`'s jobs, newest first: `limit` of them made before `before` (Unix
    /// ms; the first page without it).
    pub async fn list(
        &self,
        account: &str,
        before: Option<u64>,
        limit: usize,
    ) -> redis::RedisResult<Vec<Job>> {
        let max = before.map_or("+inf".to_string(), |b| format!("({b}"));
        let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(index_key(account))
            .arg(max)
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut jobs = Vec::new();
        for id in ids {
            if let Some(j) = self.get(account, &id).await? {
                jobs.push(j);
            }
        }
        Ok(jobs)
    }

    /// Jobs of every account not yet ended.
    pub async fn running(&self) -> usize {
        self.running_count().await.unwrap_or(0)
    }

    async fn running_count(&self) -> redis::RedisResult<usize> {
        redis::cmd("SCARD")
            .arg(RUNNING_SET)
            .query_async(&mut self.redis.clone())
            .await
    }
}

/// Ids of the jobs not yet ended, across accounts (what bounds the work queued).
const RUNNING_SET: &str = "cw:api_jobs_running";

/// What running a job needs: where it pushes, and the limits of its input.
#[derive(Clone)]
pub struct Runner {
    pub jobs: Jobs,
    pub amqp_url: String,
    pub storage: Storage,
    pub fetch: FetchLimits,
    /// Jobs that fetch and push at once; the others wait their turn (`queued`).
    pub slots: Arc<tokio::sync::Semaphore>,
    pub admit_timeout: Duration,
    pub shutdown: CancellationToken,
}

impl Runner {
    /// Starts job `job` (already saved as `queued`) in the background.
    pub async fn start(&self, mut job: Job, ladder: Vec<Profile>) -> redis::RedisResult<()> {
        redis::cmd("SADD")
            .arg(RUNNING_SET)
            .arg(&job.id)
            .query_async::<()>(&mut self.jobs.redis.clone())
            .await?;
        let this = self.clone();
        tokio::spawn(async move {
            let ended = this.run(&mut job, ladder).await;
            job.updated_unix_ms = now_ms();
            match ended {
                Ok(()) => {}
                Err(e) => {
                    job.state = "failed".into();
                    job.error = Some(e);
                }
            }
            tracing::info!(
                job = job.id,
                state = job.state,
                error = job.error,
                "API job ended"
            );
            if let Err(e) = this.jobs.save(&job).await {
                tracing::warn!(job = job.id, error = %e, "cannot record how an API job ended");
            }
            let _ = redis::cmd("SREM")
                .arg(RUNNING_SET)
                .arg(&job.id)
                .query_async::<()>(&mut this.jobs.redis.clone())
                .await;
        });
        Ok(())
    }

    async fn set_state(&self, job: &mut Job, state: &str) {
        job.state = state.into();
        job.updated_unix_ms = now_ms();
        if let Err(e) = self.jobs.save(job).await {
            tracing::warn!(job = job.id, error = %e, "cannot record an API job's state");
        }
    }

    async fn run(&self, job: &mut Job, ladder: Vec<Profile>) -> Result<(), String> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "the server is stopping".to_string())?;
        self.set_state(job, "fetching").await;
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let input = dir.path().join("input");
        let bytes = tokio::select! {
            r = fetch(&job.input, &input, self.fetch) => r?,
            _ = self.shutdown.cancelled() => return Err("the server stopped".into()),
        };
        tracing::info!(job = job.id, bytes, "API job's input fetched");
        self.set_state(job, "transcoding").await;
        let outcome = push(
            PushRequest {
                input,
                stream: job.stream.clone(),
                ladder,
                segment_secs: 2.0,
                wait: true,
                amqp_url: self.amqp_url.clone(),
                storage: self.storage.clone(),
                playback_url: None,
                local_dir: None,
                admit_timeout: self.admit_timeout,
                broadcaster: Some(format!("api:{}", job.account)),
                payer: None,
                verify: None,
                wait_timeout: None,
                orchestrator_url: None,
                formats: Some(castwork_media::NETWORK_INPUT_FORMATS),
            },
            self.shutdown.child_token(),
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
        job.segments = Some(outcome.segments);
        job.failed_segments = outcome
            .failed
            .iter()
            .map(|(seq, message)| FailedSegment {
                seq: *seq,
                message: message.clone(),
            })
            .collect();
        job.state = if outcome.is_incomplete() {
            "incomplete".into()
        } else {
            "complete".into()
        };
        Ok(())
    }
}
