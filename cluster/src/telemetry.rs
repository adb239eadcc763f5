//! Logging setup: structured lines on stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; an invalid filter falls back to `info` with a warning.
pub fn init_logging(filter: &str) {
    let (env, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "invalid log filter, using info");
    }
}
