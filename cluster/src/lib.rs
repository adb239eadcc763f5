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

/// Connects to Redis with a connection manager that reconnects on its own.
pub async fn redis_connect(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    redis::aio::ConnectionManager::new(client).await
}

/// A Redis connection manager that connects on first use and reconnects on its own, so a
/// process can start (and say what it waits for) before Redis is up. Only a malformed URL
/// fails here.
pub fn redis_lazy(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
}
