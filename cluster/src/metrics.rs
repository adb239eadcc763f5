//! Prometheus metrics: one registry per process, rendered at `/metrics`.

use prometheus::{Encoder, TextEncoder};

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// HTTP connections closed at once because the listener was at its connection limit.
pub static HTTP_REFUSED: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        prometheus::register_int_counter!(
            "castwork_http_connections_refused_total",
            "HTTP connections closed at once: the listener was at its connection limit"
        )
        .expect("metric registers once")
    });
