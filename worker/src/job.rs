//! Handling one segment job: fetch, transcode off the async executor, upload, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use castwork_cluster::{Storage, StorageError};
use castwork_media::{MediaError, TranscodeOptions};
use castwork_protocol::{
    validate_stream_name, Disposition, RenditionOutput, SegmentFailed, SegmentJob, SegmentResult,
    WorkerReport,
};

use crate::slots::{Priority, Slots};
use castwork_cluster::telemetry::Span;

/// What a worker needs to run jobs.
pub struct JobContext {
    /// An object store of its own, only for jobs that carry no object URLs (from an older
    /// orchestrator); workers get none.
    pub storage: Option<Storage>,
    /// Reads and writes jobs' objects through their signed URLs.
    pub http: reqwest::Client,
    pub worker_id: String,
    pub options: TranscodeOptions,
    pub max_segment_bytes: u64,
    pub tmp_dir: Option<PathBuf>,
    /// Bounds concurrent CPU-heavy transcodes to the worker's slots, live jobs first.
    pub slots: Slots,
    /// Fixed transcode timeout in seconds; 0 scales it with the segment.
    pub job_timeout_secs: u64,
    /// How long a job runs before its start notice goes out (see `--start-notice-ms`).
    pub start_notice_after: Duration,
    /// How long a retry this worker is excluded from is put back for others.
    pub excluded_retry: Duration,
    /// Woken when a slot is taken or freed, so the heartbeat reports it at once.
    pub slots_changed: Arc<tokio::sync::Notify>,
    /// Benchmark only: renditions are copies of the source (see `--noop-transcode`).
    pub noop_transcode: bool,
    /// TEST ONLY: report every job as failing for good (see `--test-only-lie-permanent`).
    pub test_only_lie_permanent: bool,
    /// Who the orchestrator knows this worker as, and whether it banned it (from the
    /// answers to heartbeats).
    pub standing: Arc<std::sync::Mutex<crate::heartbeat::Standing>>,
    /// The NVIDIA devices jobs run on (a GPU class); `None` transcodes on the CPU.
    pub gpus: Option<Arc<crate::gpu::Gpus>>,
}

impl JobContext {
    /// Whether `names` (a job's excluded workers) names this worker: by the identity the
    /// orchestrator gave it, or by its own id.
    pub fn named_in(&self, names: &[String]) -> bool {
        let standing = self.standing.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .any(|n| *n == self.worker_id || standing.identity.as_deref() == Some(n.as_str()))
    }

    /// How long a job's transcode may take before this worker counts as hung.
    pub fn timeout_secs(&self, job: &SegmentJob) -> u64 {
        if self.job_timeout_secs > 0 {
            return self.job_timeout_secs;
        }
        let secs = u64::try_from(job.duration_us.max(0) / 1_000_000).unwrap_or(0);
        60 + 20 * secs.min(3600)
    }
}

/// A job failure with its disposition.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub disposition: Disposition,
    pub message: String,
}

impl JobError {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        JobError {
            disposition: Disposition::Permanent,
            message: message.into(),
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        JobError {
            disposition: Disposition::Transient,
            message: message.into(),
        }
    }

    fn expired(job: &SegmentJob) -> Self {
        JobError {
            disposition: Disposition::Expired,
            message: format!(
                "live segment {} of {} missed its deadline before a worker could start it",
                job.seq, job.stream
            ),
        }
    }
}

impl From<StorageError> for JobError {
    fn from(e: StorageError) -> Self {
        JobError::transient(e.to_string())
    }
}

impl From<MediaError> for JobError {
    fn from(e: MediaError) -> Self {
        if e.is_permanent() {
            JobError::permanent(e.to_string())
        } else {
            JobError::transient(e.to_string())
        }
    }
}

/// A transcode's failure as this job's: a source segment that does not decode cleanly is a
/// permanent failure that names the segment, never a concealed result.
pub fn media_failure(job: &SegmentJob, e: MediaError) -> JobError {
    match e {
        MediaError::Undecodable { errors, first } => JobError::permanent(format!(
            "source segment {} does not decode cleanly: decoder errors: {errors} (first: {first})",
            job.seq
        )),
        e => e.into(),
    }
}

pub use castwork_protocol::time::now_unix_ms;

/// Whether a live job's result would come too late to be used.
pub fn past_deadline(job: &SegmentJob) -> bool {
    job.deadline_unix_ms.is_some_and(|d| now_unix_ms() >= d)
}

pub use castwork_protocol::secret::sha256_hex;

/// Runs a job to the report the orchestrator gets: a result, or a failure saying whether
/// retrying can help.
pub async fn run_job(ctx: &JobContext, job: &SegmentJob, span: &Span) -> WorkerReport {
    match transcode_job(ctx, job, span).await {
        Ok(r) => WorkerReport::SegmentResult(r),
        Err(e) => failure(ctx, job, e),
    }
}

/// This worker's report that `job` failed with `e`.
pub fn failure(ctx: &JobContext, job: &SegmentJob, e: JobError) -> WorkerReport {
    WorkerReport::SegmentFailed(SegmentFailed {
        job_id: job.job_id,
        stream: job.stream.clone(),
        seq: job.seq,
        attempt: job.attempt,
        worker_id: ctx.worker_id.clone(),
        disposition: e.disposition,
        message: e.message,
    })
}

async fn transcode_job(
    ctx: &JobContext,
    job: &SegmentJob,
    span: &Span,
) -> Result<SegmentResult, JobError> {
    validate_stream_name(&job.stream).map_err(JobError::permanent)?;
    if job.rungs.is_empty() {
        return Err(JobError::permanent("the job has no rungs"));
    }
    if !job
        .source
        .key
        .starts_with(&format!("streams/{}/source/", job.stream))
    {
        return Err(JobError::permanent(format!(
            "source key {} is outside the stream",
            job.source.key
        )));
    }
    if past_deadline(job) {
        return Err(JobError::expired(job));
    }
    let fetch = span.child("fetch", &[("bytes", job.source.size.to_string())]);
    let fetch_started = Instant::now();
    let data = crate::objects::fetch_source(ctx, job).await?;
    crate::metrics::STAGE_SECONDS
        .with_label_values(&["fetch"])
        .observe(fetch_started.elapsed().as_secs_f64());
    crate::metrics::BYTES
        .with_label_values(&["in"])
        .inc_by(data.len() as u64);
    drop(fetch);
    if ctx.noop_transcode {
        return noop_result(ctx, job, data, span).await;
    }
    let tmp = match &ctx.tmp_dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| JobError::transient(format!("temp dir: {e}")))?;
    let (ext, _) = castwork_protocol::source_container(&job.source.key);
    let src_path = tmp.path().join(format!("source.{ext}"));
    tokio::fs::write(&src_path, &data)
        .await
        .map_err(|e| JobError::transient(format!("writing the source segment: {e}")))?;
    drop(data);

    let priority = match job.mode {
        castwork_protocol::StreamMode::Live => Priority::Live,
        castwork_protocol::StreamMode::Vod => Priority::Vod,
    };
    let permit = ctx
        .slots
        .acquire(priority)
        .await
        .ok_or_else(|| JobError::transient("worker is shutting down"))?;
    // Waiting for a slot may have taken a live job past its deadline.
    if past_deadline(job) {
        return Err(JobError::expired(job));
    }
    crate::metrics::BUSY_SLOTS.inc();
    ctx.slots_changed.notify_one();
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let (rungs, meta, opts, out_dir) = (
        job.rungs.clone(),
        job.metadata.clone(),
        ctx.options.clone(),
        tmp.path().to_path_buf(),
    );
    let timeout = Duration::from_secs(ctx.timeout_secs(job));
    // Where the source segment ends: audio that outlasts its pictures gets the last picture
    // held up to there.
    let end_us = (job.duration_us > 0).then(|| job.start_us.saturating_add(job.duration_us));
    let gpus = ctx.gpus.clone();
    let task = tokio::task::spawn_blocking(move || {
        crate::gpu::transcode(
            gpus.as_ref(),
            &crate::gpu::Segment {
                src: &src_path,
                rungs: &rungs,
                meta: &meta,
                end_us,
                out_dir: &out_dir,
            },
            &opts,
        )
    });
    // A blocking transcode cannot be cancelled: a hung one takes the process down, so the
    // broker returns this worker's deliveries to other workers.
    let outcome = match tokio::time::timeout(timeout, task).await {
        Ok(o) => o,
        Err(_) => {
            tracing::error!(
                stream = job.stream,
                seq = job.seq,
                attempt = job.attempt,
                timeout_secs = timeout.as_secs(),
                "transcode hung: exiting so the broker redelivers this worker's jobs"
            );
            std::process::exit(3);
        }
    };
    crate::metrics::BUSY_SLOTS.dec();
    drop(permit);
    ctx.slots_changed.notify_one();
    let files = outcome
        .map_err(|e| JobError::transient(format!("transcode task failed: {e}")))?
        .map_err(|e| media_failure(job, e))?;
    let transcode = started.elapsed();
    crate::metrics::TRANSCODE_SECONDS.observe(transcode.as_secs_f64());
    crate::metrics::STAGE_SECONDS
        .with_label_values(&["transcode"])
        .observe(transcode.as_secs_f64());
    if job.duration_us > 0 {
        crate::metrics::REALTIME_RATIO
            .observe(transcode.as_secs_f64() / (job.duration_us as f64 / 1e6));
    }
    // One decode feeds every rung: the transcode span holds one child per rung, each over
    // the whole transcode, with its encoder's busy time.
    let ended_at = std::time::SystemTime::now();
    let tspan = span.child_at(
        "transcode",
        started_at,
        &[("rungs", files.len().to_string())],
    );
    for f in &files {
        tspan.record(
            "encode rung",
            started_at,
            ended_at,
            &[
                ("rung", f.rung.clone()),
                ("size", format!("{}x{}", f.width, f.height)),
                ("frames", f.frames.to_string()),
                ("encode_busy_ms", f.encode_ms.to_string()),
            ],
        );
    }
    tspan.end_at(ended_at);

    let files = files.into_iter().map(|f| (f, None)).collect();
    upload_all(ctx, job, files, transcode.as_millis() as u64, span).await
}

/// Uploads the renditions (read from their files, or the bytes given) at once, so a slow
/// object store costs one round trip rather than one per rung, and makes the result.
async fn upload_all(
    ctx: &JobContext,
    job: &SegmentJob,
    files: Vec<(castwork_media::RenditionFile, Option<Bytes>)>,
    transcode_ms: u64,
    span: &Span,
) -> Result<SegmentResult, JobError> {
    let _upload = span.child("upload", &[("renditions", files.len().to_string())]);
    let upload_started = Instant::now();
    let renditions =
        futures_util::future::try_join_all(files.into_iter().map(|(f, bytes)| async move {
            let bytes = match bytes {
                Some(b) => b,
                None => Bytes::from(tokio::fs::read(&f.path).await.map_err(|e| {
                    JobError::transient(format!("reading {}: {e}", f.path.display()))
                })?),
            };
            let object = crate::objects::put_rendition(ctx, job, &f.rung, bytes).await?;
            crate::metrics::BYTES
                .with_label_values(&["out"])
                .inc_by(object.size);
            Ok::<_, JobError>(RenditionOutput {
                rung: f.rung,
                object,
                width: f.width,
                height: f.height,
                frames: f.frames,
                start_us: f.start_us,
                duration_us: f.duration_us,
            })
        }))
        .await?;
    crate::metrics::STAGE_SECONDS
        .with_label_values(&["upload"])
        .observe(upload_started.elapsed().as_secs_f64());
    Ok(SegmentResult {
        job_id: job.job_id,
        stream: job.stream.clone(),
        seq: job.seq,
        attempt: job.attempt,
        worker_id: ctx.worker_id.clone(),
        renditions,
        transcode_ms,
        started_unix_ms: None,
    })
}

/// Benchmark only: every rendition is a copy of the source segment, uploaded under its
/// rung's key, so a run measures fetching, uploading and the control plane alone.
async fn noop_result(
    ctx: &JobContext,
    job: &SegmentJob,
    data: Bytes,
    span: &Span,
) -> Result<SegmentResult, JobError> {
    let files = job
        .rungs
        .iter()
        .map(|rung| {
            let f = castwork_media::RenditionFile {
                rung: rung.name.clone(),
                path: PathBuf::new(),
                width: rung.width,
                height: rung.height,
                frames: job.frames,
                start_us: job.start_us,
                duration_us: job.duration_us,
                encode_ms: 0,
            };
            (f, Some(data.clone()))
        })
        .collect();
    upload_all(ctx, job, files, 0, span).await
}
