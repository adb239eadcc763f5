//! Castwork's orchestrator: admits streams, publishes one job per segment, checks every
//! result and accepts at most one attempt per segment, retries or fails segments from the
//! workers' reports, and writes the playlists when a stream completes. With transcode slots
//! it also runs an in-process worker pool (combined mode).

pub mod api;
pub mod chain_cli;
pub mod cleanup;
pub mod error;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod outputs;
pub mod payments;
pub mod playlists;
pub mod queues;
pub mod recovery;
pub mod results;
pub mod service;
mod session;
pub mod state;
pub mod status;
pub mod verify;
pub mod workers;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use castwork_cluster::{http, redact_url, supervise, Backoff, Storage};
use castwork_worker::{WorkerArgs, WorkerPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use session::{session, Parts, Queues};
use state::State;

/// Everything the orchestrator runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: String,
    pub redis_url: String,
    pub storage_url: String,
    pub http_addr: SocketAddr,
    pub max_attempts: u32,
    /// In-process worker slots (0: orchestrator only).
    pub transcode_slots: usize,
    pub worker: WorkerArgs,
    pub drain_timeout: Duration,
    /// Segments in a live media playlist.
    pub live_window: usize,
    /// How long a live segment may take from arrival to being listed before it is skipped.
    pub live_deadline: Duration,
    /// See `Orchestrator::lost_after`.
    pub lost_after: Duration,
    /// Orders of preference over the capability classes for live and on-demand jobs (see
    /// [`ingest::routing`]).
    pub route_live: Vec<&'static str>,
    pub route_vod: Vec<&'static str>,
    /// Benchmark only: accept worker results without checking them.
    pub trust_worker_output: bool,
    /// What this orchestrator charges per output pixel (free by default).
    pub price: castwork_protocol::Price,
    /// The picture check of results and the ban of bad workers.
    pub quality: service::QualityPolicy,
    /// On-chain mode: the account's client, the contracts, and the ticket policy.
    pub chain: Option<ChainConfig>,
    /// Off-chain: this orchestrator's name, advertised at /price (its stake's name in the
    /// ledger, which broadcasters' checks reduce).
    pub orchestrator_id: String,
    /// How far ahead of a stream's highest received segment a sequence number may be.
    pub max_seq_ahead: u64,
    /// The largest source segment a broadcaster may upload over HTTP, in bytes.
    pub max_source_bytes: u64,
    /// The most pushes one broadcaster key starts over HTTP in an hour.
    pub ingest_starts_per_hour: u64,
    /// Live streams admitted at once.
    pub max_sessions: ingest::MaxSessions,
    /// What HTTP requests that change state must carry (none: they are refused).
    pub api_token: Option<String>,
    /// How long an ended stream's state stays in Redis.
    pub retain: Duration,
    /// Base URL where viewers play the outputs (`BASE/streams/NAME/index.m3u8`), told to
    /// publishers; `None`: this orchestrator's own `/hls` on its bound address.
    pub playback_url: Option<String>,
    /// RabbitMQ's management API (`http://[USER:PASSWORD@]HOST:PORT`, or `off`), for the
    /// unacknowledged messages of `/queues`; `None`: derived from `amqp_url`.
    pub rabbitmq_management_url: Option<String>,
    /// A listener of its own for the job-object routes (`/work/...`), which workers must
    /// reach; `None`: they are on `http_addr` only.
    pub work_addr: Option<SocketAddr>,
    /// TLS for the `work_addr` listener (`--work-tls-cert`, `--work-tls-key`).
    pub work_tls: Option<castwork_cluster::http::TlsConfig>,
    /// The base URL workers reach the `/work/` routes at; `None`: the work listener's (or
    /// the HTTP listener's) bound address.
    pub work_url: Option<String>,
}

/// On-chain mode's settings.
#[derive(Clone)]
pub struct ChainConfig {
    pub chain: castwork_chain::Chain,
    pub deployment: castwork_chain::Deployment,
    pub policy: payments::TicketPolicy,
}

impl std::fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainConfig")
            .field("account", &self.chain.account())
            .field("deployment", &self.deployment)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Runs until `shutdown`; returns the HTTP address through `bound` as soon as it listens.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    metrics::register();
    let storage = Storage::from_url(&cfg.storage_url)?;
    match storage.ensure_id().await {
        Ok(id) => info!(storage = %storage, store_id = id, "object store"),
        Err(e) => warn!(storage = %storage, error = %e, "object store: cannot read its id yet"),
    }
    // The HTTP API comes up first, so /livez answers and /readyz says what is awaited.
    let redis = castwork_cluster::redis_lazy(&cfg.redis_url)
        .with_context(|| format!("bad --redis-url {}", redact_url(&cfg.redis_url)))?;
    let state = State::new(redis.clone());
    let consuming = Arc::new(AtomicBool::new(false));
    let queues: Queues = Default::default();
    let payments_slot: Arc<std::sync::OnceLock<Arc<payments::Payments>>> = Default::default();
    let readiness = api::Readiness::new(&cfg.redis_url, &cfg.amqp_url);
    let tokens_slot: Arc<std::sync::OnceLock<workers::tokens::Tokens>> = Default::default();
    let broker_slot: api::BrokerSlot = Default::default();
    let api_state = api::ApiState {
        state: state.clone(),
        consuming: consuming.clone(),
        queues: queues.clone(),
        storage: storage.clone(),
        price: cfg.price,
        payments: payments_slot.clone(),
        on_chain: cfg.chain.is_some(),
        orchestrator_id: cfg.orchestrator_id.clone(),
        api_token: cfg.api_token.clone(),
        readiness: readiness.clone(),
        tokens: tokens_slot.clone(),
        broker: broker_slot.clone(),
        max_seq_ahead: cfg.max_seq_ahead,
        max_source_bytes: cfg.max_source_bytes,
        max_sessions: cfg.max_sessions,
        ingest_starts_per_hour: cfg.ingest_starts_per_hour,
    };
    let work_bound = match cfg.work_addr {
        Some(a) => Some(
            http::serve_tls(
                a,
                api::work_router(api_state.clone()),
                http::Limits::default(),
                cfg.work_tls.clone(),
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("binding --work-addr {a}"))?,
        ),
        None => None,
    };
    let addr = http::serve(cfg.http_addr, api::router(api_state), shutdown.clone())
        .await
        .with_context(|| format!("binding {}", cfg.http_addr))?;
    let work_url = cfg.work_url.clone().unwrap_or_else(|| {
        let base = outputs::default_playback_base(work_bound.unwrap_or(addr));
        let base = base.trim_end_matches("/hls");
        match (&cfg.work_tls, work_bound) {
            (Some(_), Some(_)) => base.replacen("http://", "https://", 1),
            _ => base.to_string(),
        }
    });
    info!(
        work_url,
        "workers read and write their jobs' objects under WORK_URL/work/"
    );
    let playback = cfg
        .playback_url
        .clone()
        .unwrap_or_else(|| outputs::default_playback_base(addr));
    info!(
        %addr,
        %playback,
        "serving /livez, /readyz, /healthz, /metrics and /streams"
    );
    let cfg = Config {
        playback_url: Some(playback),
        ..cfg
    };
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    let mut backoff = Backoff::default();
    loop {
        match tokio::time::timeout(api::READY_PING, state.ping()).await {
            Ok(Ok(())) => break,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", api::READY_PING.as_millis()),
                };
                let d = backoff.next_delay();
                warn!(
                    redis = redact_url(&cfg.redis_url),
                    error,
                    retry_in_ms = d.as_millis() as u64,
                    "waiting for Redis: not consuming until it answers (/readyz answers 503)"
                );
                readiness.set_broker_error("not connected: waiting for Redis first");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }
    info!(redis = redact_url(&cfg.redis_url), "redis answers");
    let job_key = state
        .job_key()
        .await
        .context("reading the job key from Redis")?;
    let tokens = workers::tokens::Tokens::new(job_key.clone());
    let _ = tokens_slot.set(tokens.clone());
    let work = workers::tokens::WorkUrls {
        tokens,
        base: work_url,
    };
    readiness.set_broker_error("connecting");
    let payments = match &cfg.chain {
        Some(c) => {
            let p =
                payments::Payments::start(c.chain.clone(), c.deployment, redis.clone(), c.policy)
                    .await?;
            info!(
                account = %p.recipient(),
                broker = %c.deployment.broker,
                staking = %c.deployment.staking,
                "on-chain mode: paid with tickets"
            );
            let p = Arc::new(p);
            let (redeemer, token) = (p.clone(), shutdown.clone());
            tokio::spawn(async move { redeemer.run_redeemer(token).await });
            let _ = payments_slot.set(p.clone());
            Some(p)
        }
        None => None,
    };
    let (retained, retain, token) = (state.clone(), cfg.retain, shutdown.clone());
    tokio::spawn(async move {
        // Often enough that a stream is forgotten within a few percent of its retention.
        let every = (retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = cleanup::forget_expired(&retained, retain).await {
                        warn!(error = %e, "retention pass failed");
                    }
                }
            }
        }
    });
    let pool = (cfg.transcode_slots > 0).then(|| {
        let pool = WorkerPool {
            amqp_url: cfg.amqp_url.clone(),
            // The same protocol as any worker: objects through the jobs' signed URLs.
            storage: None,
            args: cfg.worker.clone(),
            slots: cfg.transcode_slots,
            drain_timeout: cfg.drain_timeout,
            consuming: Arc::new(AtomicBool::new(false)),
        };
        let token = shutdown.clone();
        tokio::spawn(async move { pool.run(token).await })
    });
    let parts = Parts {
        state: state.clone(),
        storage: storage.clone(),
        payments,
        job_ids: workers::JobIds::new(job_key.clone()),
        sample_secret: job_key.clone(),
        work,
        broker_slot,
    };
    supervise("orchestrator", &shutdown, || async {
        let r = session(&cfg, &parts, &consuming, &queues, &shutdown).await;
        if let Err(e) = &r {
            readiness.set_broker_error(&format!("{e:#}"));
        }
        r
    })
    .await;
    consuming.store(false, Ordering::Relaxed);
    if let Some(p) = pool {
        p.await??;
    }
    info!("orchestrator stopped");
    Ok(())
}
