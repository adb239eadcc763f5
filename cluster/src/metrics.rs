//! Prometheus metrics: one registry per process, rendered at `/metrics`.

use prometheus::{Encoder, TextEncoder};

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
