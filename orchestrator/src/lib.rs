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
pub mod state;
pub mod status;
pub mod verify;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use castwork_cluster::{http, redact_url, supervise, Backoff, Broker, Storage};
use castwork_protocol::{
    decode, IngestMessage, WorkerReport, DEAD_LETTER_QUEUE, INGEST_QUEUE, RESULTS_QUEUE,
};
use castwork_worker::{WorkerArgs, WorkerPool};
use futures_util::StreamExt;
use lapin::message::Delivery;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use service::{HandleError, Orchestrator};
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

/// What each broker session's [`Orchestrator`] is made of, besides its broker.
struct Parts {
    state: State,
    storage: Storage,
    payments: Option<Arc<payments::Payments>>,
    /// What the quality sample is keyed with: the replicas' shared secret (each use of it
    /// is kept apart by its own prefix in the MAC).
    sample_secret: Vec<u8>,
    job_ids: workers::JobIds,
    work: workers::tokens::WorkUrls,
    /// Where the HTTP API finds this session's broker (for ingest over HTTP).
    broker_slot: api::BrokerSlot,
}

async fn session(
    cfg: &Config,
    parts: &Parts,
    consuming: &AtomicBool,
    queues: &Queues,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let broker = Arc::new(
        Broker::connect(
            &cfg.amqp_url,
            "castwork-orchestrator",
            castwork_cluster::broker::Role::Orchestrator,
        )
        .await
        .context("connecting to RabbitMQ")?,
    );
    if let Ok(mut slot) = parts.broker_slot.write() {
        *slot = Some(broker.clone());
    }
    let orch = Arc::new(Orchestrator {
        state: parts.state.clone(),
        storage: parts.storage.clone(),
        broker: broker.clone(),
        max_attempts: cfg.max_attempts,
        live_window: cfg.live_window,
        live_deadline: cfg.live_deadline,
        live_locks: Default::default(),
        trust_worker_output: cfg.trust_worker_output,
        price: cfg.price,
        quality: cfg.quality,
        payments: parts.payments.clone(),
        max_seq_ahead: cfg.max_seq_ahead,
        max_sessions: cfg.max_sessions,
        retain: cfg.retain,
        playback_base: cfg.playback_url.clone().unwrap_or_default(),
        job_ids: parts.job_ids.clone(),
        work: parts.work.clone(),
        lost_after: cfg.lost_after,
        lost: Default::default(),
        sample_secret: parts.sample_secret.clone(),
        routing: ingest::routing::Routing::new(cfg.route_live.clone(), cfg.route_vod.clone()),
        stranded: Default::default(),
    });
    // Checked at start (main), so only a bad configuration fails here.
    let management = queues::Management::new(&cfg.amqp_url, cfg.rabbitmq_management_url.as_deref())
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
    let (_ingest_ch, ingest) = broker
        .consume(INGEST_QUEUE, "orchestrator-ingest", 32)
        .await?;
    let (_results_ch, results) = broker
        .consume(RESULTS_QUEUE, "orchestrator-results", 16)
        .await?;
    // What an older Castwork's queues still hold is read here too, by the same handlers.
    let (mut ingest, mut results) = (ingest.boxed(), results.boxed());
    let mut _legacy_chs = Vec::new();
    // The management API says which queues exist without a refused passive declare, which
    // the AMQP client logs as an error; without it, those are tried.
    let present = match &management {
        Some(m) => m.queue_names().await,
        None => None,
    };
    for (legacy, current) in broker
        .retire_legacy_queues(present.as_deref())
        .await
        .context("retiring an older Castwork's queues")?
    {
        let (ch, consumer) = broker.consume(legacy, "orchestrator-legacy", 16).await?;
        _legacy_chs.push(ch);
        if current == INGEST_QUEUE {
            ingest = futures_util::stream::select(ingest, consumer).boxed();
        } else {
            results = futures_util::stream::select(results, consumer).boxed();
        }
    }
    let (_dead_ch, mut dead) = broker
        .consume(DEAD_LETTER_QUEUE, "orchestrator-dead-letters", 8)
        .await?;
    let (_beats_ch, mut beats) = broker
        .consume(castwork_protocol::BEATS_QUEUE, "orchestrator-beats", 64)
        .await?;
    consuming.store(true, Ordering::Relaxed);
    info!("consuming ingest and results");
    let tracker = TaskTracker::new();
    // Live deadlines are checked here too, so it runs often.
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let sweeping = Arc::new(AtomicBool::new(false));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut depths = tokio::time::interval(QUEUE_DEPTHS_EVERY);
    depths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reading = Arc::new(AtomicBool::new(false));
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = depths.tick() => {
                if !reading.swap(true, Ordering::AcqRel) {
                    let (b, q, flag) = (broker.clone(), queues.clone(), reading.clone());
                    let m = management.clone();
                    tracker.spawn(async move {
                        queues::read(&b, m.as_deref(), &q).await;
                        flag.store(false, Ordering::Release);
                    });
                }
            }
            _ = sweep.tick() => {
                // In the background, one at a time, so a slow sweep never holds up messages.
                if !sweeping.swap(true, Ordering::AcqRel) {
                    let (o, flag) = (orch.clone(), sweeping.clone());
                    tracker.spawn(async move {
                        if let Err(e) = o.sweep_overdue().await {
                            warn!(error = %e, "overdue-job sweep failed");
                        }
                        flag.store(false, Ordering::Release);
                    });
                }
            }
            d = ingest.next() => match d {
                // A stream's start is handled before anything after it; its segments and its
                // end are handled concurrently (up to the prefetch), each idempotent.
                Some(Ok(d)) => {
                    let (o, b) = (orch.clone(), broker.clone());
                    let starts = matches!(decode::<IngestMessage>(&d.data), Ok(IngestMessage::StreamStarted(_)));
                    let task = process::<IngestMessage, _, _>(b, INGEST_QUEUE, d, move |m, h| async move { o.handle_ingest(m, h.as_ref()).await });
                    if starts {
                        task.await;
                    } else {
                        tracker.spawn(task);
                    }
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("ingest consumer failed")),
                None => break Err(anyhow::anyhow!("the broker closed the ingest consumer")),
            },
            d = results.next() => match d {
                Some(Ok(d)) => {
                    let (o, b) = (orch.clone(), broker.clone());
                    let sender = castwork_cluster::broker::sender(&d.properties);
                    tracker.spawn(process::<WorkerReport, _, _>(b, RESULTS_QUEUE, d, move |m, h| async move { o.handle_report(m, h.as_ref(), sender.as_deref()).await }));
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("results consumer failed")),
                None => break Err(anyhow::anyhow!("the broker closed the results consumer")),
            },
            d = beats.next() => match d {
                Some(Ok(d)) => {
                    tracker.spawn(workers::answer_beat(orch.clone(), broker.clone(), d));
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("heartbeat consumer failed")),
                None => break Err(anyhow::anyhow!("the broker closed the heartbeat consumer")),
            },
            d = dead.next() => match d {
                Some(Ok(d)) => {
                    let (o, b) = (orch.clone(), broker.clone());
                    tracker.spawn(async move {
                        let r = o.dead_letter(&recovery::DeadLetter::of(&d)).await;
                        settle(&b, DEAD_LETTER_QUEUE, d, r).await;
                    });
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("dead-letter consumer failed")),
                None => break Err(anyhow::anyhow!("the broker closed the dead-letter consumer")),
            },
        }
    };
    consuming.store(false, Ordering::Relaxed);
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    if outcome.is_ok() {
        broker.close().await;
    }
    outcome
}

/// The latest queue depths, shared with the HTTP API.
type Queues = Arc<std::sync::RwLock<Option<api::QueueSnapshot>>>;

/// How often the orchestrator reads the queue depths from the broker.
const QUEUE_DEPTHS_EVERY: Duration = Duration::from_secs(2);

/// Decodes a delivery, handles it (with its headers, which may carry a trace context), and
/// settles it: acked once handled, dead-lettered with its reason when it is unreadable or
/// refused, retried with backoff when a service was unavailable (see
/// [`castwork_cluster::consume`]).
async fn process<T, F, Fut>(broker: Arc<Broker>, queue: &'static str, delivery: Delivery, handle: F)
where
    T: DeserializeOwned,
    F: FnOnce(T, Option<lapin::types::FieldTable>) -> Fut,
    Fut: Future<Output = Result<(), HandleError>>,
{
    let msg = match decode::<T>(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            metrics::REJECTED_MESSAGES
                .with_label_values(&[queue, e.reason()])
                .inc();
            let reason = format!("unreadable message: {e}");
            castwork_cluster::consume::dead_letter(&broker, queue, delivery, &reason).await;
            return;
        }
    };
    if delivery.redelivered {
        metrics::REDELIVERIES.with_label_values(&[queue]).inc();
    }
    let outcome = handle(msg, delivery.properties.headers().clone()).await;
    settle(&broker, queue, delivery, outcome).await;
}

/// Settles a handled delivery by how handling it went.
async fn settle(
    broker: &Broker,
    queue: &str,
    delivery: Delivery,
    outcome: Result<(), HandleError>,
) {
    let outcome = match outcome {
        Ok(()) => castwork_cluster::consume::Outcome::Done,
        Err(e) => e.outcome(),
    };
    castwork_cluster::consume::settle(broker, queue, delivery, outcome).await;
}
