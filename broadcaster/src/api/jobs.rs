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
    /// Where the job is POSTed when it ends, and how that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_result: Option<String>,
    /// How far a job that is transcoding (or has) is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::push::PushProgress>,
    /// The webhook's HMAC key (the SHA-256 of the account's API key): kept, never shown.
    #[serde(default)]
    pub signing_key: String,
}

impl Job {
    /// The job as the API shows it: no signing key, and where to play it (under `base`,
    /// this server's URL) once it has output.
    pub fn shown(&self, base: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("signing_key");
        }
        if matches!(self.state.as_str(), "complete" | "incomplete") {
            v["playback_url"] = format!("{base}/streams/{}/index.m3u8", self.stream).into();
        }
        v
    }
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
}

/// What running a job needs: where it pushes, and the limits of its input.
#[derive(Clone)]
pub struct Runner {
    pub jobs: Jobs,
    pub amqp_url: String,
    /// Over HTTP instead of `amqp_url`: the orchestrators a job chooses among.
    pub orchestrators: Option<Arc<Orchestrators>>,
    pub storage: Storage,
    pub fetch: FetchLimits,
    /// Jobs that fetch and push at once; the others wait their turn (`queued`).
    pub slots: Arc<tokio::sync::Semaphore>,
    pub admit_timeout: Duration,
    pub shutdown: CancellationToken,
    /// This server's URL, for the playback URL a webhook carries.
    pub public_url: String,
    /// The jobs this server runs, each with the token that deletes it (cancels it, and
    /// removes its outputs once it has stopped).
    pub running: Arc<std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>>,
}

/// The orchestrators an API server's jobs choose among over HTTP (`--api-orch-addr`).
#[derive(Debug)]
pub struct Orchestrators {
    pub targets: Vec<crate::select::Target>,
    /// This server's key at each target.
    pub keys: Vec<String>,
    /// The most a job pays.
    pub max: castwork_protocol::Price,
}

/// Whether a job in `state` has ended (whatever else happens to it, it does no more work).
pub fn ended(state: &str) -> bool {
    matches!(state, "complete" | "incomplete" | "failed" | "deleted")
}

impl Runner {
    /// Jobs this server runs or has queued, across accounts (what bounds its work; kept in
    /// memory, so a server that crashed counts none of its old jobs).
    pub fn pending(&self) -> usize {
        self.running_jobs().len()
    }

    /// Starts job `job` (already saved as `queued`) in the background.
    pub fn start(&self, mut job: Job, ladder: Vec<Profile>) {
        let this = self.clone();
        let delete = CancellationToken::new();
        self.running_jobs().insert(job.id.clone(), delete.clone());
        tokio::spawn(async move {
            let ended = this.run(&mut job, ladder, &delete).await;
            this.running_jobs().remove(&job.id);
            job.updated_unix_ms = now_ms();
            match ended {
                Ok(()) => {}
                Err(e) => {
                    job.state = "failed".into();
                    job.error = Some(e);
                }
            }
            if delete.is_cancelled() {
                this.remove_outputs(&mut job).await;
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
            if let Some(url) = job.webhook.clone() {
                let body = job.shown(&this.public_url).to_string();
                let result = super::webhook::deliver(
                    &url,
                    &body,
                    &job.signing_key,
                    this.fetch.allow_private,
                )
                .await;
                tracing::info!(job = job.id, url, result, "API job webhook");
                job.webhook_result = Some(result);
                let _ = this.jobs.save(&job).await;
            }
        });
    }

    fn running_jobs(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes job `job`: a job running here is cancelled (its stream aborted) and its
    /// outputs removed once it has stopped, which `false` says is still to come; an ended
    /// job's outputs are removed now. A job that runs on another server is not touched
    /// (`Err`).
    pub async fn delete(&self, job: &mut Job) -> Result<bool, String> {
        if let Some(token) = self.running_jobs().get(&job.id) {
            token.cancel();
            return Ok(false);
        }
        if !ended(&job.state) {
            return Err(format!(
                "job {} is {} on another server of this API: delete it there, or once it ends",
                job.id, job.state
            ));
        }
        self.remove_outputs(job).await;
        self.jobs.save(job).await.map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Removes a job's outputs from the object store; the job becomes `deleted`.
    async fn remove_outputs(&self, job: &mut Job) {
        let prefix = format!("streams/{}/", job.stream);
        match self.storage.delete_prefix(&prefix).await {
            Ok(n) => tracing::info!(job = job.id, objects = n, "API job deleted"),
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "cannot delete an API job's outputs")
            }
        }
        job.state = "deleted".into();
        job.updated_unix_ms = now_ms();
    }

    async fn set_state(&self, job: &mut Job, state: &str) {
        job.state = state.into();
        job.updated_unix_ms = now_ms();
        if let Err(e) = self.jobs.save(job).await {
            tracing::warn!(job = job.id, error = %e, "cannot record an API job's state");
        }
    }

    async fn run(
        &self,
        job: &mut Job,
        ladder: Vec<Profile>,
        delete: &CancellationToken,
    ) -> Result<(), String> {
        let _slot = tokio::select! {
            s = self.slots.acquire() => s.map_err(|_| "the server is stopping".to_string())?,
            _ = delete.cancelled() => return Err("deleted".into()),
        };
        self.set_state(job, "fetching").await;
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let input = dir.path().join("input");
        let bytes = tokio::select! {
            r = fetch(&job.input, &input, self.fetch) => r?,
            _ = self.shutdown.cancelled() => return Err("the server stopped".into()),
            _ = delete.cancelled() => return Err("deleted".into()),
        };
        tracing::info!(job = job.id, bytes, "API job's input fetched");
        self.set_state(job, "transcoding").await;
        let over_http = match &self.orchestrators {
            Some(o) => Some(choose(o).await?),
            None => None,
        };
        // The job's record follows the push's progress, at most once a second.
        let (tx, mut rx) = tokio::sync::watch::channel(crate::push::PushProgress::default());
        let follower = {
            let (jobs, mut record) = (self.jobs.clone(), job.clone());
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    record.progress = Some(rx.borrow_and_update().clone());
                    record.updated_unix_ms = now_ms();
                    let _ = jobs.save(&record).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let outcome = push(
            PushRequest {
                input,
                stream: job.stream.clone(),
                ladder,
                segment_secs: 2.0,
                wait: true,
                amqp_url: self.amqp_url.clone(),
                // Over HTTP the renditions are copied into the store (the orchestrators
                // keep the sources).
                storage: over_http.is_none().then(|| self.storage.clone()),
                copy_to: over_http.is_some().then(|| self.storage.clone()),
                http_ingest: over_http.as_ref().map(|(first, _)| first.clone()),
                spares: over_http.map(|(_, spares)| spares).unwrap_or_default(),
                failover: crate::push::Failover {
                    unreachable: Duration::from_secs(20),
                    stalled: Some(Duration::from_secs(300)),
                },
                history: None,
                playback_url: None,
                local_dir: None,
                admit_timeout: self.admit_timeout,
                broadcaster: Some(format!("api:{}", job.account)),
                payer: None,
                verify: None,
                wait_timeout: None,
                orchestrator_url: None,
                formats: Some(castwork_media::NETWORK_INPUT_FORMATS),
                cancel: Some(delete.clone()),
                progress: Some(tx.clone()),
            },
            self.shutdown.child_token(),
        )
        .await;
        job.progress = Some(tx.borrow().clone());
        drop(tx);
        let _ = follower.await;
        let outcome = outcome.map_err(|e| format!("{e:#}"))?;
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

/// The orchestrator a job goes to among `o`'s (with this server's key there), and its
/// spares, as a push chooses them.
async fn choose(o: &Orchestrators) -> Result<((String, String), Vec<crate::push::Route>), String> {
    let ranked = crate::select::rank(&o.targets, &o.max, None, &Default::default())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let mut routes = ranked.into_iter().map(|(i, c)| crate::push::Route {
        url: c.target.url,
        key: o.keys[i].clone(),
        payer: None,
    });
    let first = routes.next().ok_or("no orchestrator to choose from")?;
    Ok(((first.url, first.key), routes.collect()))
}
