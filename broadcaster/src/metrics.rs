//! The broadcaster's Prometheus metrics (`broadcaster serve`'s `/metrics`).

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

pub static SEGMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_broadcaster_segments_total",
        "Live segments by event: sent (stored and enqueued), refused (unreadable, or the \
         stream was refused)",
        &["event"]
    )
    .expect("metric registers once")
});

pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "castwork_broadcaster_bytes_total",
        "Bytes of live source segments stored (direction=in) and of playlists and segments \
         served for playback (direction=out)",
        &["direction"]
    )
    .expect("metric registers once")
});

pub static RTMP_REFUSED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "castwork_broadcaster_rtmp_connections_refused_total",
        "RTMP connections closed at once: the server was at its connection limit"
    )
    .expect("metric registers once")
});

/// The label values each labelled metric starts with, at zero.
pub const SEGMENT_EVENTS: &[&str] = &["sent", "refused"];
pub const DIRECTIONS: &[&str] = &["in", "out"];

/// Registers every metric with every label set it is known to take, so `/metrics` shows
/// each from the start (at zero).
pub fn register() {
    LazyLock::force(&RTMP_REFUSED);
    for e in SEGMENT_EVENTS {
        SEGMENTS.with_label_values(&[e]);
    }
    for d in DIRECTIONS {
        BYTES.with_label_values(&[d]);
    }
}
