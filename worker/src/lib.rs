//! Castwork's worker (transcoder): consumes segment jobs with manual acks and a prefetch of
//! its slots, transcodes each segment's whole ladder from one decode, uploads the renditions
//! under keys unique to the attempt, reports the result, and only then acks.

pub mod config;
pub mod gpu;
pub mod heartbeat;
pub mod job;
pub mod metrics;
pub mod objects;
pub mod slots;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use castwork_cluster::{supervise, Broker, Storage};
use castwork_media::TranscodeOptions;
use castwork_protocol::{
    decode, encode, job_queue, SegmentJob, StreamMode, WorkerReport, RESULTS_EXCHANGE,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument as _};

pub use config::WorkerArgs;
pub use job::{run_job, JobContext};
pub use slots::{Priority, Slots};

/// The `worker` process's exit status when the orchestrator banned it for bad output (a
/// hung transcode exits 3, any other error 1, a second signal 130).
pub const EXIT_BANNED: u8 = 4;

/// Why a pool stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for (a signal, or the process that runs the pool is stopping).
    Shutdown,
    /// The orchestrator banned this worker for bad output; the reason it gave.
    Banned(String),
}

/// A pool of transcode slots consuming one broker's job queue.
pub struct WorkerPool {
    pub amqp_url: String,
    /// An object store for jobs that carry no object URLs (none: such jobs fail, transient).
    pub storage: Option<Storage>,
    pub args: WorkerArgs,
    pub slots: usize,
    /// How long in-flight segments may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// Whether the pool is connected and consuming (for health checks).
    pub consuming: Arc<AtomicBool>,
}

impl WorkerPool {
    /// Consumes until `shutdown`, or until the orchestrator bans this worker, reconnecting
    /// with backoff; then drains in-flight jobs.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<Stopped> {
        // Its own token: a ban stops this pool, not a process it shares (combined mode).
        let shutdown = shutdown.child_token();
        self.args.validate().map_err(anyhow::Error::msg)?;
        let slots = self.slots.max(1);
        let live_slots = self.args.live_slots;
        let worker_id = self.args.id();
        let gpus = detect_gpus(&self.args, slots + live_slots).await?;
        let ctx = Arc::new(JobContext {
            storage: self.storage.clone(),
            http: objects::client(self.args.work_ca_file.as_deref()).map_err(anyhow::Error::msg)?,
            worker_id: worker_id.clone(),
            options: TranscodeOptions {
                preset: self.args.preset.clone(),
                threads: self.args.threads_for(slots),
                test_only_black_after_us: match self.args.test_only_cheat_black_after {
                    _ if self.args.test_only_cheat_black => Some(0),
                    Some(secs) => Some((secs.max(0.0) * 1e6) as i64),
                    None => None,
                },
                ..TranscodeOptions::default()
            },
            max_segment_bytes: self.args.max_segment_mb * 1024 * 1024,
            tmp_dir: self.args.tmp_dir.clone(),
            slots: Slots::new(slots + live_slots),
            job_timeout_secs: self.args.job_timeout_secs,
            start_notice_after: Duration::from_millis(self.args.start_notice_ms),
            excluded_retry: Duration::from_secs(self.args.excluded_retry_secs),
            slots_changed: Arc::new(tokio::sync::Notify::new()),
            noop_transcode: self.args.noop_transcode,
            test_only_lie_permanent: self.args.test_only_lie_permanent,
            standing: Arc::default(),
            gpus,
        });
        if self.args.test_only_cheat_black || self.args.test_only_cheat_black_after.is_some() {
            warn!("--test-only-cheat-black: TEST ONLY, this worker encodes black pictures");
        }
        if self.args.noop_transcode {
            warn!("--noop-transcode: BENCHMARK ONLY, renditions are copies of the source");
        }
        let queues = [
            job_queue(StreamMode::Live, &self.args.class),
            job_queue(StreamMode::Vod, &self.args.class),
        ];
        info!(
            worker_id,
            slots,
            live_slots,
            queues = queues.join(","),
            threads = ctx.options.threads,
            preset = ctx.options.preset,
            "worker starting"
        );
        let tracker = TaskTracker::new();
        supervise("worker", &shutdown, || {
            consume(&self, ctx.clone(), &queues, slots, &tracker, &shutdown)
        })
        .await;
        self.consuming.store(false, Ordering::Relaxed);
        ctx.slots.close();
        tracker.close();
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("drain timeout: unfinished segments go back to the queue");
        }
        let banned = ctx
            .standing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .banned
            .clone();
        info!(worker_id, banned = banned.is_some(), "worker stopped");
        Ok(banned.map_or(Stopped::Shutdown, Stopped::Banned))
    }
}

/// The devices of a GPU-class worker, tested (none for the CPU class, or with
/// `--no-gpu-pipeline`). A GPU class with no device that passes is an error: the worker would
/// take GPU jobs it can only do slowly.
async fn detect_gpus(args: &WorkerArgs, slots: usize) -> anyhow::Result<Option<Arc<gpu::Gpus>>> {
    if args.class == "cpu" {
        return Ok(None);
    }
    if args.no_gpu_pipeline {
        warn!(
            class = args.class,
            "--no-gpu-pipeline: this worker reads the GPU class's queues and transcodes on the CPU"
        );
        return Ok(None);
    }
    let which = gpu::parse_nvidia(&args.nvidia).map_err(anyhow::Error::msg)?;
    let sessions = if args.gpu_sessions == 0 {
        slots
    } else {
        args.gpu_sessions
    };
    let nvenc = args.class == "nvenc";
    let dir = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let found = tokio::task::spawn_blocking(move || {
        gpu::Gpus::detect(which.as_deref(), sessions, nvenc, &dir)
    })
    .await?;
    if found.is_empty() {
        anyhow::bail!(
            "--class {}: no NVIDIA device passed the self-test (the log above says why): run \
             --class cpu, or add --no-gpu-pipeline to read this class's queues on the CPU",
            args.class
        );
    }
    Ok(Some(Arc::new(found)))
}

/// Consumes the live and on-demand queues of the class. On-demand jobs are prefetched one
/// per general slot, live jobs one per slot of either kind, so live work always has a job
/// waiting for the next free slot (and the reserved live slots stay free of on-demand work).
async fn consume(
    pool: &WorkerPool,
    ctx: Arc<JobContext>,
    queues: &[String; 2],
    slots: usize,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let broker = Arc::new(
        Broker::connect(
            &pool.amqp_url,
            &format!("castwork-worker {}", ctx.worker_id),
            castwork_cluster::broker::Role::Worker,
        )
        .await
        .context("connecting to RabbitMQ")?,
    );
    let prefetch = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    metrics::register();
    metrics::SLOTS.set(i64::try_from(ctx.slots.total()).unwrap_or(i64::MAX));
    let live_tag = format!("worker-{}-live", ctx.worker_id);
    let vod_tag = format!("worker-{}-vod", ctx.worker_id);
    let (live_ch, mut live) = broker
        .consume(&queues[0], &live_tag, prefetch(ctx.slots.total()))
        .await?;
    let (vod_ch, mut vod) = broker
        .consume(&queues[1], &vod_tag, prefetch(slots))
        .await?;
    pool.consuming.store(true, Ordering::Relaxed);
    info!(live = queues[0], vod = queues[1], "consuming jobs");
    // Heartbeats on this connection; a ban they hear of cancels `shutdown`.
    let beats = {
        let beat = heartbeat::beat(&ctx.worker_id, &pool.args.class, ctx.slots.total());
        let (b, c, s) = (broker.clone(), ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = heartbeat::run(
                b,
                beat,
                c.slots.clone(),
                c.slots_changed.clone(),
                c.standing.clone(),
                c.gpus.clone(),
                s,
            )
            .await
            {
                warn!(error = %e, "heartbeats stopped until the next connection");
            }
        })
    };
    let result = loop {
        // `biased`: when both queues have a delivery ready, the live one starts first.
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = live_ch.basic_cancel(live_tag.as_str().into(), BasicCancelOptions::default()).await;
                let _ = vod_ch.basic_cancel(vod_tag.as_str().into(), BasicCancelOptions::default()).await;
                break Ok(());
            }
            next = live.next() => next,
            next = vod.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                tracker.spawn(handle_delivery(ctx.clone(), broker.clone(), delivery));
            }
            Some(Err(e)) => break Err(anyhow::Error::new(e).context("consumer failed")),
            None => break Err(anyhow::anyhow!("the broker closed a job consumer")),
        }
    };
    pool.consuming.store(false, Ordering::Relaxed);
    beats.abort();
    if result.is_ok() {
        // Let in-flight jobs report and ack on this connection before it closes.
        tracker.close();
        if tokio::time::timeout(pool.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("drain timeout: unfinished segments go back to the queue");
        }
        broker.close().await;
    }
    result
}

use castwork_protocol::BOUNCES_HEADER;
/// How long, at least, an excluded worker keeps a job it handed back before it acks it.
const BOUNCE_DELAY: Duration = Duration::from_millis(250);

/// How long an excluded worker holds a job it handed back: between one and four
/// [`BOUNCE_DELAY`]s, at random. Holding it keeps this worker's slot busy, so the copy the
/// orchestrator publishes goes to a worker with a free slot rather than straight back here.
/// The random part breaks the tie where two workers each hold the other's retry (each is
/// excluded from the one it holds): with equal holds, each frees its slot first after its own
/// bounce and gets its own job back, round after round, until the retries fail.
fn bounce_hold() -> Duration {
    let spread = BOUNCE_DELAY.as_millis() as u64 * 3;
    let random = (uuid::Uuid::new_v4().as_u128() as u64) % (spread + 1);
    BOUNCE_DELAY + Duration::from_millis(random)
}

/// How often the job was put back by excluded workers.
fn bounces(delivery: &Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(BOUNCES_HEADER))
        .and_then(|v| match v {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

async fn handle_delivery(ctx: Arc<JobContext>, broker: Arc<Broker>, delivery: Delivery) {
    if delivery.redelivered {
        metrics::REDELIVERIES.inc();
    }
    let job: SegmentJob = match decode(&delivery.data) {
        Ok(j) => j,
        Err(e) => {
            error!(error = %e, "unreadable job: dead-lettering it");
            metrics::REJECTED_JOBS
                .with_label_values(&[e.reason()])
                .inc();
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    if ctx.named_in(&job.exclude_workers) {
        // Our output for this segment failed its check: leave the retry to another worker.
        // The job goes back through the orchestrator, which publishes a copy, not as a
        // requeue: every requeue counts toward the queue's delivery limit, and the job
        // would be dead-lettered while the other workers are busy. The copies are counted,
        // so a retry that only excluded workers can see ends as a failure with its reason
        // instead of going round forever.
        let bounces = bounces(&delivery) + 1;
        // A hold averages 2.5 BOUNCE_DELAYs.
        let max_bounces =
            (ctx.excluded_retry.as_millis() * 2 / (BOUNCE_DELAY.as_millis() * 5)).max(1);
        if u128::from(bounces) > max_bounces {
            let why = job::JobError::permanent(format!(
                "no worker but those whose output for this segment failed its check took the \
                 retry within {} s: add a worker",
                ctx.excluded_retry.as_secs()
            ));
            warn!(
                stream = job.stream,
                seq = job.seq,
                "retry bounced too long between excluded workers: failing it"
            );
            return report_failure(&ctx, &broker, delivery, &job, why).await;
        }
        // The orchestrator publishes it again: workers never publish jobs.
        let bounced = WorkerReport::SegmentBounced(castwork_protocol::SegmentBounced {
            job_id: job.job_id,
            stream: job.stream.clone(),
            seq: job.seq,
            attempt: job.attempt,
            worker_id: ctx.worker_id.clone(),
            bounces,
        });
        report_then_ack(&broker, delivery, &job, &bounced, None, bounce_hold()).await;
        return;
    }
    if ctx.test_only_lie_permanent {
        let why =
            job::JobError::permanent("TEST ONLY: this worker says no worker can transcode it");
        return report_failure(&ctx, &broker, delivery, &job, why).await;
    }
    let received_ms = job::now_unix_ms();
    // The job continues the segment's trace; its result is published within this span.
    let span = castwork_cluster::telemetry::Span::continued(
        "transcode job",
        delivery.properties.headers().as_ref(),
        &[
            ("stream", job.stream.clone()),
            ("seq", job.seq.to_string()),
            ("attempt", job.attempt.to_string()),
            ("worker", ctx.worker_id.clone()),
        ],
    );
    // Every log line of the job carries the segment's trace id.
    let logs = span.in_logs();
    transcode_and_report(ctx, broker, delivery, job, span, received_ms)
        .instrument(logs)
        .await;
}

/// Reports `job` failed with `why`, then acks it.
async fn report_failure(
    ctx: &JobContext,
    broker: &Broker,
    delivery: Delivery,
    job: &SegmentJob,
    why: job::JobError,
) {
    report_then_ack(
        broker,
        delivery,
        job,
        &job::failure(ctx, job, why),
        None,
        Duration::ZERO,
    )
    .await
}

/// Runs a job in its trace's span, then publishes its report and acks.
async fn transcode_and_report(
    ctx: Arc<JobContext>,
    broker: Arc<Broker>,
    delivery: Delivery,
    job: SegmentJob,
    span: castwork_cluster::telemetry::Span,
    received_ms: u64,
) {
    let started = WorkerReport::SegmentStarted(castwork_protocol::SegmentStarted {
        job_id: job.job_id,
        stream: job.stream.clone(),
        seq: job.seq,
        attempt: job.attempt,
        worker_id: ctx.worker_id.clone(),
        timeout_secs: ctx.timeout_secs(&job),
    });
    // Lets the orchestrator notice a hung job. A job done sooner than this needs no notice
    // (its result carries its start time), which spares the broker a message per segment;
    // losing the notice only loses that check, so the transcode never waits for it.
    let (notice, delay) = (broker.clone(), ctx.start_notice_after);
    let notice = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Err(e) = notice
            .publish(
                RESULTS_EXCHANGE,
                castwork_cluster::broker::RESULTS_KEY,
                &encode(&started),
                None,
            )
            .await
        {
            warn!(error = %e, "could not announce the job start");
        }
    });
    let mut report = run_job(&ctx, &job, &span).await;
    notice.abort();
    if let WorkerReport::SegmentResult(r) = &mut report {
        r.started_unix_ms = Some(received_ms);
    }
    let outcome = match &report {
        WorkerReport::SegmentResult(r) => {
            info!(
                stream = job.stream,
                seq = job.seq,
                attempt = job.attempt,
                transcode_ms = r.transcode_ms,
                "segment done"
            );
            "done"
        }
        WorkerReport::SegmentStarted(_) => "started",
        WorkerReport::SegmentBounced(_) => "bounced",
        WorkerReport::SegmentFailed(f) => {
            warn!(stream = job.stream, seq = job.seq, attempt = job.attempt, disposition = ?f.disposition, error = f.message, "segment failed");
            span.fail(f.message.clone());
            match f.disposition {
                castwork_protocol::Disposition::Permanent => "failed_permanent",
                castwork_protocol::Disposition::Transient => "failed_transient",
                castwork_protocol::Disposition::Expired => "expired",
            }
        }
    };
    metrics::SEGMENTS.with_label_values(&[outcome]).inc();
    report_then_ack(
        &broker,
        delivery,
        &job,
        &report,
        span.headers(),
        Duration::ZERO,
    )
    .await;
}

/// Publishes a job's report and only then acks its delivery; a report that cannot be
/// published puts the job back.
async fn report_then_ack(
    broker: &Broker,
    delivery: Delivery,
    job: &SegmentJob,
    report: &WorkerReport,
    headers: Option<lapin::types::FieldTable>,
    hold: Duration,
) {
    let published = broker
        .publish(
            RESULTS_EXCHANGE,
            castwork_cluster::broker::RESULTS_KEY,
            &encode(report),
            headers,
        )
        .await;
    match published {
        // Ack only once the result is safely with the broker, and `hold` later.
        Ok(()) => {
            tokio::time::sleep(hold).await;
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                warn!(stream = job.stream, seq = job.seq, error = %e, "ack failed: the job will be redelivered");
            }
        }
        Err(e) => {
            warn!(stream = job.stream, seq = job.seq, error = %e, "could not publish the result: requeueing the job");
            castwork_cluster::broker::requeue(&delivery).await;
        }
    }
}
