//! `worker`: a Castwork transcoder process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use castwork_cluster::{http, redact_url, shutdown_token, telemetry, LinkArgs};
use castwork_worker::{Stopped, WorkerArgs, WorkerPool, EXIT_BANNED};
use clap::Parser;

/// Castwork worker: consumes segment jobs from RabbitMQ and transcodes each segment into
/// its adaptive-bitrate ladder (one decode, every rung encoded with libx264).
#[derive(Parser, Debug)]
#[command(version, about, after_help = castwork_cluster::telemetry::ENV_HELP)]
struct Cli {
    #[command(flatten)]
    service: LinkArgs,

    #[command(flatten)]
    worker: WorkerArgs,

    /// Segments transcoded at once (the queue prefetch); cores are divided among them.
    #[arg(long, env = "WORKER_SLOTS", default_value_t = 1)]
    slots: usize,

    /// Seconds in-flight segments get to finish after SIGTERM before they are requeued.
    #[arg(long, env = "WORKER_DRAIN_SECS", default_value_t = 120)]
    drain_secs: u64,

    /// Address for /livez, /readyz, /healthz and /metrics (port 0 picks a free port).
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "127.0.0.1:0")]
    http_addr: SocketAddr,
}

/// `/readyz`: 200 while consuming jobs, else 503 naming what it waits for.
async fn readyz(consuming: bool) -> axum::response::Response {
    if consuming {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "ready": true, "broker": true })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ready": false,
                "broker": false,
                "waiting_for": ["broker"],
            })),
        )
            .into_response()
    }
}

fn main() -> anyhow::Result<ExitCode> {
    // Before the runtime's threads start: the config file sets environment variables.
    if let Err(e) = castwork_cluster::config_file::apply(&<Cli as clap::CommandFactory>::command())
    {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    start()
}

#[tokio::main]
async fn start() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    castwork_cluster::broker::trust_ca_file(cli.service.amqp_ca_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    let _telemetry = telemetry::init(&cli.service, "castwork-worker");
    cli.worker.validate().map_err(anyhow::Error::msg)?;
    tracing::info!(
        amqp = redact_url(&cli.service.amqp_url),
        slots = cli.slots,
        version = telemetry::VERSION,
        "effective config"
    );
    let shutdown = shutdown_token();
    let consuming = Arc::new(AtomicBool::new(false));
    let (health, ready) = (consuming.clone(), consuming.clone());
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || readyz(ready.load(Ordering::Relaxed))),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = health.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not consuming")
                    }
                }
            }),
        )
        .route("/metrics", get(http::metrics_handler));
    let addr = http::serve(cli.http_addr, router, shutdown.clone()).await?;
    tracing::info!(%addr, "serving /livez, /readyz, /healthz and /metrics");
    let stopped = WorkerPool {
        amqp_url: cli.service.amqp_url,
        storage: None,
        args: cli.worker,
        slots: cli.slots,
        drain_timeout: Duration::from_secs(cli.drain_secs),
        consuming,
    }
    .run(shutdown)
    .await?;
    Ok(match stopped {
        Stopped::Shutdown => ExitCode::SUCCESS,
        Stopped::Banned(_) => ExitCode::from(EXIT_BANNED),
    })
}
