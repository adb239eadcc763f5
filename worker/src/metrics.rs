//! The worker's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, Histogram, IntCounterVec,
    IntGauge,
};

pub static SEGMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_worker_segments_total",
        "Segment jobs handled, by outcome (done, failed_transient, failed_permanent)",
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
