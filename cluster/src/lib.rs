//! Adapters every Castwork role shares: configuration, the RabbitMQ topology and publisher,
//! the object store, Redis, HTTP, metrics, logging, shutdown and reconnect backoff.

pub mod broker;
pub mod config;
pub mod consume;
pub mod http;
pub mod metrics;
pub mod net;
pub mod ranges;
pub mod shutdown;
pub mod storage;
pub mod supervise;
pub mod telemetry;

pub use broker::{Broker, BrokerError};
pub mod config_file;
pub use config::{redact_url, LinkArgs, ServiceArgs};
pub use shutdown::shutdown_token;
pub use storage::{Storage, StorageError};
pub use supervise::{supervise, Backoff};

/// The certificate authority `rediss://` connections trust instead of the system's roots
/// (`--redis-ca-file`), once [`trust_redis_ca_file`] has read it.
static REDIS_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every later `rediss://` connection of this process trust the CA in `path` (PEM).
pub fn trust_redis_ca_file(path: Option<&std::path::Path>) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let _ = REDIS_CA.set(read_ca_file(path, "--redis-ca-file")?.into_bytes());
    Ok(())
}

/// The PEM text of the certificate authority file `path` that `flag` names; an error that
/// names both when it cannot be read or holds no certificate.
pub fn read_ca_file(path: &std::path::Path, flag: &str) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(pem)
}

/// A Redis client for `url`: `redis://[USER:PASSWORD@]HOST:PORT/[DB]`, or `rediss://` for
/// TLS (verified against the system's roots, or the `--redis-ca-file` CA).
fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    match REDIS_CA.get() {
        Some(pem) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        _ => redis::Client::open(url),
    }
}

/// Connects to Redis with a connection manager that reconnects on its own.
pub async fn redis_connect(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    redis::aio::ConnectionManager::new(redis_client(url)?).await
}

/// A Redis connection manager that connects on first use and reconnects on its own, so a
/// process can start (and say what it waits for) before Redis is up. Only a malformed URL
/// fails here.
pub fn redis_lazy(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    redis::aio::ConnectionManager::new_lazy_with_config(
        redis_client(url)?,
        redis::aio::ConnectionManagerConfig::new(),
    )
}
