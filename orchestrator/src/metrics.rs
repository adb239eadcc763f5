//! The orchestrator's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, Histogram, IntCounter,
    IntCounterVec,
};

pub static STREAMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_streams_total",
        "Streams by event (admitted, rejected, completed)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static SEGMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_segments_total",
        "Segments by event (received, done, failed, retried, skipped, duplicate, bad_output)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static JOBS_PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "castwork_orchestrator_jobs_published_total",
        "Segment jobs published, retries included"
    )
    .expect("metric registers once")
});

pub static TRANSCODE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "castwork_orchestrator_transcode_seconds",
        "Transcode time of accepted segments, as reported by workers",
        vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    )
    .expect("metric registers once")
});

pub static REJECTED_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_rejected_messages_total",
        "Messages dropped as unreadable, by queue and reason (malformed, version, oversized)",
        &["queue", "reason"]
    )
    .expect("metric registers once")
});

pub static DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "castwork_orchestrator_dead_letters_total",
        "Jobs the broker dead-lettered (past its delivery limit, or refused by a worker)"
    )
    .expect("metric registers once")
});

pub static LIVE_LATENCY: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    prometheus::register_histogram_vec!(
        "castwork_orchestrator_live_latency_seconds",
        "Live segments: time from the segment's last byte reaching the broadcaster to all of \
         its renditions being listed in the playlists (part=total), split into the worker's \
         transcode (part=transcode) and everything else (part=overhead)",
        &["part"],
        vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0]
    )
    .expect("metric registers once")
});

pub static QUEUE_MESSAGES: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "castwork_orchestrator_queue_messages",
        "Messages waiting in each queue, as last read from the broker",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static QUEUE_CONSUMERS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "castwork_orchestrator_queue_consumers",
        "Consumers of each queue, as last read from the broker",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static REDELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_redeliveries_total",
        "Messages the broker delivered again, by queue",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static SEGMENT_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    prometheus::register_histogram_vec!(
        "castwork_orchestrator_segment_seconds",
        "Accepted segments: queue_wait (recorded to a worker receiving the job) and \
         end_to_end (recorded to the result being accepted)",
        &["stage"],
        vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    )
    .expect("metric registers once")
});

pub static TICKETS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_tickets_total",
        "On-chain mode: payment tickets by outcome (accepted, won, refused, replayed)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static REDEMPTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_ticket_redemptions_total",
        "On-chain mode: winning tickets by outcome (redeemed, already_redeemed, expired, failed)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static REDEMPTION_GAS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "castwork_orchestrator_redemption_gas_used",
        "On-chain mode: gas used per winning-ticket redemption",
        vec![50_000.0, 75_000.0, 100_000.0, 150_000.0, 200_000.0, 300_000.0]
    )
    .expect("metric registers once")
});

pub static CHAIN_ACTIVE: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "castwork_orchestrator_active",
        "On-chain mode: 1 while this orchestrator is in the staking contract's active set"
    )
    .expect("metric registers once")
});

/// Registers every metric, so `/metrics` shows each from the start (at zero).
pub fn register() {
    LazyLock::force(&STREAMS);
    LazyLock::force(&SEGMENTS);
    LazyLock::force(&JOBS_PUBLISHED);
    LazyLock::force(&TRANSCODE_SECONDS);
    LazyLock::force(&REJECTED_MESSAGES);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&LIVE_LATENCY);
    LazyLock::force(&QUEUE_MESSAGES);
    LazyLock::force(&QUEUE_CONSUMERS);
    LazyLock::force(&REDELIVERIES);
    LazyLock::force(&SEGMENT_SECONDS);
    LazyLock::force(&TICKETS);
    LazyLock::force(&REDEMPTIONS);
    LazyLock::force(&REDEMPTION_GAS);
    LazyLock::force(&CHAIN_ACTIVE);
}
