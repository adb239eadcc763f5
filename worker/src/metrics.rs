//! The worker's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Histogram, IntCounterVec, IntGauge, IntGaugeVec,
};

pub static GPU_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_worker_gpu_jobs_total",
        "Segments given to a GPU, by device index and outcome (done; fallback: the device \
         failed and the CPU did it; not_for_gpu: a source the device does not take)",
        &["device", "outcome"]
    )
    .expect("metric registers once")
});

pub static GPU_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "castwork_worker_gpu_sessions",
        "Segments running on each GPU now",
        &["device"]
    )
    .expect("metric registers once")
});

pub static GPU_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "castwork_worker_gpu_healthy",
        "1 while a GPU that passed its self-test still gets jobs, 0 once taken out of service",
        &["device"]
    )
    .expect("metric registers once")
});

pub static SEGMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_worker_segments_total",
        "Segment jobs handled, by outcome (done, failed_transient, failed_permanent, expired)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static TRANSCODE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "castwork_worker_transcode_seconds",
        "Decode + encode + mux time of one segment's whole ladder",
        vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    )
    .expect("metric registers once")
});

pub static BUSY_SLOTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("castwork_worker_busy_slots", "Transcode slots in use")
        .expect("metric registers once")
});

pub static REJECTED_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_worker_rejected_jobs_total",
        "Job messages dead-lettered as unreadable, by reason (malformed, version, oversized)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static SLOTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "castwork_worker_slots",
        "Transcode slots of this worker, live-only slots included"
    )
    .expect("metric registers once")
});

pub static STAGE_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    prometheus::register_histogram_vec!(
        "castwork_worker_stage_seconds",
        "Time of each stage of a job: fetch (source from the object store), transcode (decode \
         + encode + mux, waiting for a slot excluded), upload (every rendition)",
        &["stage"],
        vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    )
    .expect("metric registers once")
});

pub static REALTIME_RATIO: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "castwork_worker_transcode_realtime_ratio",
        "Transcode time over the segment's duration (below 1: faster than real time)",
        vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
    )
    .expect("metric registers once")
});

pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_worker_bytes_total",
        "Bytes fetched (direction=in: source segments) and uploaded (direction=out: renditions)",
        &["direction"]
    )
    .expect("metric registers once")
});

pub static REDELIVERIES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "castwork_worker_redeliveries_total",
        "Jobs the broker delivered again (their first worker died or gave them back)"
    )
    .expect("metric registers once")
});

/// The label values each labelled metric starts with, at zero.
pub const OUTCOMES: &[&str] = &["done", "failed_transient", "failed_permanent", "expired"];
pub const STAGES: &[&str] = &["fetch", "transcode", "upload"];
pub const DIRECTIONS: &[&str] = &["in", "out"];
pub const REJECT_REASONS: &[&str] = &["malformed", "version", "oversized"];

/// Registers every metric with every label set it is known to take, so `/metrics` shows
/// each from the start (at zero).
pub fn register() {
    LazyLock::force(&TRANSCODE_SECONDS);
    LazyLock::force(&GPU_JOBS);
    LazyLock::force(&GPU_SESSIONS);
    LazyLock::force(&GPU_HEALTHY);
    LazyLock::force(&BUSY_SLOTS);
    LazyLock::force(&SLOTS);
    LazyLock::force(&REALTIME_RATIO);
    LazyLock::force(&REDELIVERIES);
    for o in OUTCOMES {
        SEGMENTS.with_label_values(&[o]);
    }
    for s in STAGES {
        STAGE_SECONDS.with_label_values(&[s]);
    }
    for d in DIRECTIONS {
        BYTES.with_label_values(&[d]);
    }
    for r in REJECT_REASONS {
        REJECTED_JOBS.with_label_values(&[r]);
    }
}
