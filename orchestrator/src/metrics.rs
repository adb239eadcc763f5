//! The orchestrator's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, Histogram, IntCounter,
    IntCounterVec,
};

pub static STREAMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_streams_total",
        "Streams by event (admitted, rejected, completed, failed)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static SEGMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_segments_total",
        "Segments by event (received, started, done, failed, retried, skipped, duplicate, \
         bad_output, overdue, lost)",
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

pub static JOBS_ROUTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_jobs_routed_total",
        "Segment jobs published, by the capability class whose queue they went to",
        &["class"]
    )
    .expect("metric registers once")
});

pub static JOBS_MOVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_jobs_moved_total",
        "Jobs moved from a class's queue nobody read to another class's",
        &["from", "to"]
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

pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_orchestrator_dead_letters_total",
        "Messages dead-lettered, by the queue they died in (jobs.* as `jobs`) and cause \
         (refused, retries_exhausted, expired, delivery_limit, rejected, other); each one's \
         reason is in /status",
        &["queue", "cause"]
    )
    .expect("metric registers once")
});

/// The queues dead letters are counted under.
pub const DEAD_LETTER_QUEUES: &[&str] = &[
    castwork_protocol::INGEST_QUEUE,
    castwork_protocol::RESULTS_QUEUE,
    "jobs",
    "other",
];
pub const DEAD_LETTER_CAUSES: &[&str] = &[
    "refused",
    "retries_exhausted",
    "expired",
    "delivery_limit",
    "rejected",
    "other",
];

/// The `queue` label of a dead letter from `queue`: every job queue counts as `jobs`, so
/// a forged queue name cannot add label sets.
pub fn dead_letter_queue(queue: &str) -> &'static str {
    if queue.starts_with("jobs.") {
        return "jobs";
    }
    DEAD_LETTER_QUEUES
        .iter()
        .find(|q| **q == queue)
        .copied()
        .unwrap_or("other")
}

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

pub static QUEUE_UNACKED: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "castwork_orchestrator_queue_unacked",
        "Messages delivered and not yet acknowledged in each queue, as last read from \
         RabbitMQ's management API (absent while it cannot be read)",
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

/// The label values each labelled metric starts with, at zero.
pub const STREAM_EVENTS: &[&str] = &["admitted", "rejected", "completed", "incomplete", "failed"];
pub const SEGMENT_EVENTS: &[&str] = &[
    "received",
    "started",
    "done",
    "failed",
    "retried",
    "skipped",
    "duplicate",
    "bad_output",
    "lost",
    "overdue",
];
pub const SEGMENT_STAGES: &[&str] = &["queue_wait", "end_to_end"];
pub const LIVE_LATENCY_PARTS: &[&str] = &["total", "transcode", "overhead"];
/// The queues the orchestrator consumes and settles through its message handler.
pub const CONSUMED_QUEUES: &[&str] = &[
    castwork_protocol::INGEST_QUEUE,
    castwork_protocol::RESULTS_QUEUE,
];
/// Why a message is dropped as unreadable (any consumed queue).
pub const UNREADABLE_REASONS: &[&str] = &["malformed", "version", "oversized"];
/// Why an ingest message is refused before it is handled.
pub const INGEST_REFUSALS: &[&str] = &["not_publisher", "seq_window"];
pub const TICKET_OUTCOMES: &[&str] = &["accepted", "won", "refused", "replayed"];
pub const REDEMPTION_OUTCOMES: &[&str] = &["redeemed", "already_redeemed", "expired", "failed"];

/// Registers every metric with every label set it is known to take, so `/metrics` shows
/// each from the start (at zero) and a dashboard's query never finds nothing.
pub fn register() {
    LazyLock::force(&JOBS_PUBLISHED);
    for class in castwork_cluster::broker::CLASSES {
        JOBS_ROUTED.with_label_values(&[class]);
    }
    for from in castwork_cluster::broker::CLASSES {
        for to in castwork_cluster::broker::CLASSES
            .iter()
            .filter(|t| *t != from)
        {
            JOBS_MOVED.with_label_values(&[from, to]);
        }
    }
    LazyLock::force(&TRANSCODE_SECONDS);
    for q in DEAD_LETTER_QUEUES {
        for c in DEAD_LETTER_CAUSES {
            DEAD_LETTERS.with_label_values(&[q, c]);
        }
    }
    LazyLock::force(&REDEMPTION_GAS);
    LazyLock::force(&CHAIN_ACTIVE);
    for e in STREAM_EVENTS {
        STREAMS.with_label_values(&[e]);
    }
    for e in SEGMENT_EVENTS {
        SEGMENTS.with_label_values(&[e]);
    }
    for s in SEGMENT_STAGES {
        SEGMENT_SECONDS.with_label_values(&[s]);
    }
    for p in LIVE_LATENCY_PARTS {
        LIVE_LATENCY.with_label_values(&[p]);
    }
    for q in castwork_cluster::broker::known_queues() {
        QUEUE_MESSAGES.with_label_values(&[&q]);
        QUEUE_CONSUMERS.with_label_values(&[&q]);
        QUEUE_UNACKED.with_label_values(&[&q]);
    }
    for q in CONSUMED_QUEUES {
        REDELIVERIES.with_label_values(&[q]);
        for r in UNREADABLE_REASONS {
            REJECTED_MESSAGES.with_label_values(&[q, r]);
        }
    }
    for r in INGEST_REFUSALS {
        REJECTED_MESSAGES.with_label_values(&[castwork_protocol::INGEST_QUEUE, r]);
    }
    for o in TICKET_OUTCOMES {
        TICKETS.with_label_values(&[o]);
    }
    for o in REDEMPTION_OUTCOMES {
        REDEMPTIONS.with_label_values(&[o]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_set_shows_at_zero_after_register() {
        register();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .unwrap();
        for line in [
            "castwork_orchestrator_streams_total{event=\"failed\"} 0",
            "castwork_orchestrator_segments_total{event=\"overdue\"} 0",
            "castwork_orchestrator_segment_seconds_count{stage=\"end_to_end\"} 0",
            "castwork_orchestrator_live_latency_seconds_count{part=\"overhead\"} 0",
            "castwork_orchestrator_queue_unacked{queue=\"jobs.vod.cpu\"} 0",
            "castwork_orchestrator_redeliveries_total{queue=\"orchestrator.results\"} 0",
            "castwork_orchestrator_rejected_messages_total{queue=\"orchestrator.ingest\",reason=\"seq_window\"} 0",
            "castwork_orchestrator_ticket_redemptions_total{outcome=\"expired\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
