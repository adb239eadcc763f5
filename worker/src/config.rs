//! Worker settings: every flag has an environment variable.

use std::path::PathBuf;

use clap::Args;

/// How a worker transcodes; shared by the `worker` binary and the orchestrator's combined
/// mode.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// libx264 preset: ultrafast, superfast, veryfast, faster, fast, medium, slow.
    #[arg(long, env = "X264_PRESET", default_value = "veryfast")]
    pub preset: String,

    /// Threads per encoder and decoder; 0 divides the machine's cores among the slots.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Transcode slots reserved for live segments, on top of the general slots (live jobs
    /// also take the next free general slot before any waiting on-demand job).
    #[arg(long, env = "LIVE_SLOTS", default_value_t = 0)]
    pub live_slots: usize,

    /// Capability class whose queues this worker consumes (`jobs.live.<class>` first, then
    /// `jobs.vod.<class>`): `cpu` (all on the CPU), `nvdec` (NVIDIA decode and scaling,
    /// libx264 on the CPU: cards without encoders, such as H100 or A100) or `nvenc` (all on
    /// an NVIDIA card with encoders). A GPU class needs a device that passes the self-test
    /// at start (see --nvidia), unless --no-gpu-pipeline.
    #[arg(long, env = "WORKER_CLASS", default_value = "cpu", value_parser = clap::builder::PossibleValuesParser::new(castwork_cluster::broker::CLASSES))]
    pub class: String,

    /// NVIDIA devices a GPU-class worker uses: `all` (every device that opens) or CUDA
    /// indexes such as `0,1`. Each is tested at start (H.264 and HEVC decode, scaling,
    /// 4096x2160, NVENC) and only those that pass are used.
    #[arg(long, env = "NVIDIA", default_value = "all")]
    pub nvidia: String,

    /// Segments each device runs at once (consumer cards cap NVENC sessions: 8 on current
    /// drivers); 0 allows as many as the worker has slots. A job that finds every device
    /// busy runs on the CPU.
    #[arg(long, env = "GPU_SESSIONS", default_value_t = 0)]
    pub gpu_sessions: usize,

    /// Transcode on the CPU even in a GPU class: to take the cards out of service without
    /// moving the worker to other queues, or to test a GPU class's queues and routing on a
    /// machine without a GPU.
    #[arg(long, env = "NO_GPU_PIPELINE")]
    pub no_gpu_pipeline: bool,

    /// Largest source segment accepted, in MiB; larger ones fail permanently.
    #[arg(long, env = "MAX_SEGMENT_MB", default_value_t = 256)]
    pub max_segment_mb: u64,

    /// Directory for segments being transcoded (the system temp directory if unset).
    #[arg(long, env = "WORKER_TMP_DIR")]
    pub tmp_dir: Option<PathBuf>,

    /// Seconds a segment's transcode may take before the worker declares itself hung and
    /// exits, so the broker hands its jobs to other workers (run it under a supervisor that
    /// restarts it); 0 allows 60 s plus 20 times the segment's duration.
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 0)]
    pub job_timeout_secs: u64,

    /// Milliseconds a job runs before the worker tells the orchestrator it has it, which
    /// lets the orchestrator give up a job whose worker froze (after the job timeout plus
    /// a grace). A job done sooner sends no notice, since its result carries its start
    /// time: one broker message less per segment. 0 sends it at once.
    #[arg(long, env = "START_NOTICE_MS", default_value_t = 1000)]
    pub start_notice_ms: u64,

    /// PEM file of the certificate authority that signed the orchestrator's /work/
    /// certificate (its --work-tls-cert), for https:// job URLs the system's roots do not
    /// vouch for (a private CA, as scripts/dev-tls.sh makes).
    #[arg(long, env = "WORK_CA_FILE", value_name = "FILE")]
    pub work_ca_file: Option<std::path::PathBuf>,

    /// Seconds a retry this worker must not do (its output for that segment failed the
    /// orchestrator's check) goes back to the queue for another worker; when no other
    /// takes it in that time, the segment fails saying so.
    #[arg(long, env = "EXCLUDED_RETRY_SECS", default_value_t = 60)]
    pub excluded_retry_secs: u64,

    /// BENCHMARK ONLY (never in production): skip decoding and encoding and upload a copy of
    /// the source segment as every rendition, to measure the control plane alone. Pair it
    /// with the orchestrator's --trust-worker-output, or every result fails its check.
    #[arg(long, env = "CASTWORK_BENCH_NOOP_TRANSCODE")]
    pub noop_transcode: bool,

    /// TEST ONLY (never in production): encode black pictures instead of the video, to
    /// test that the orchestrator's quality check catches a cheating worker.
    #[arg(long, env = "CASTWORK_TEST_ONLY_CHEAT_BLACK", hide = true)]
    pub test_only_cheat_black: bool,

    /// TEST ONLY (never in production): encode each rendition right for its first SECS
    /// seconds and black after them, to test that the quality check looks at the whole
    /// segment, not only its first pictures.
    #[arg(long, env = "CASTWORK_TEST_ONLY_CHEAT_BLACK_AFTER", hide = true)]
    pub test_only_cheat_black_after: Option<f64>,

    /// TEST ONLY (never in production): report every job as failing for good without
    /// trying it, to test that one worker's word does not fail a segment.
    #[arg(long, env = "CASTWORK_TEST_ONLY_LIE_PERMANENT", hide = true)]
    pub test_only_lie_permanent: bool,

    /// Stable name of this worker in results and logs (host name and process id if unset).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
}

impl WorkerArgs {
    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> Result<(), String> {
        const PRESETS: &[&str] = &[
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        ];
        let mut problems = Vec::new();
        if !PRESETS.contains(&self.preset.as_str()) {
            problems.push(format!(
                "--preset {:?} is not an x264 preset ({})",
                self.preset,
                PRESETS.join(", ")
            ));
        }
        if !castwork_cluster::broker::CLASSES.contains(&self.class.as_str()) {
            problems.push(format!(
                "--class {:?} is not a class ({})",
                self.class,
                castwork_cluster::broker::CLASSES.join(", ")
            ));
        }
        if let Err(e) = crate::gpu::parse_nvidia(&self.nvidia) {
            problems.push(e);
        }
        if self.max_segment_mb == 0 {
            problems.push("--max-segment-mb must be at least 1".into());
        }
        if let Some(id) = &self.worker_id {
            // The orchestrator refuses reports under any other name.
            if !castwork_protocol::valid_worker_name(id) {
                problems.push(format!(
                    "--worker-id {id:?} must be 1 to 128 letters, digits or . _ - @ :"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Encoder threads for a worker with `slots` concurrent jobs.
    pub fn threads_for(&self, slots: usize) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / slots.max(1)).max(1)
    }

    pub fn id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host: String = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
                .chars()
                .take(100)
                .map(|c| {
                    if castwork_protocol::valid_worker_name(&c.to_string()) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let host = if host.is_empty() {
                "worker".into()
            } else {
                host
            };
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn a_worker_id_the_orchestrator_would_refuse_is_refused_at_start() {
        let args = |id: &str| Cli::parse_from(["worker", "--worker-id", id]).worker;
        assert!(args("box-1:gpu0").validate().is_ok());
        for bad in ["a,b", "w/1", "", &"x".repeat(129)] {
            let e = args(bad).validate().unwrap_err();
            assert!(e.contains("--worker-id"), "{bad}: {e}");
        }
        // The default is always one it takes.
        let id = Cli::parse_from(["worker"]).worker.id();
        assert!(castwork_protocol::valid_worker_name(&id), "{id}");
    }
}
