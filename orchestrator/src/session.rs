//! One broker session of the orchestrator: it connects, builds the [`Orchestrator`] that
//! handles messages, consumes ingest, results and dead letters, reads queue depths and
//! sweeps for lost and stranded work, until the connection fails or the process stops
//! (then [`crate::run`] starts the next session).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use castwork_cluster::{Broker, Storage};
use castwork_protocol::{
    decode, IngestMessage, WorkerReport, DEAD_LETTER_QUEUE, INGEST_QUEUE, RESULTS_QUEUE,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::service::{HandleError, Orchestrator};
use crate::state::State;
use crate::{api, ingest, metrics, payments, queues, recovery, workers, Config};

/// What each broker session's [`Orchestrator`] is made of, besides its broker.
pub(crate) struct Parts {
    pub(crate) state: State,
    pub(crate) storage: Storage,
    pub(crate) payments: Option<Arc<payments::Payments>>,
    /// What the quality sample is keyed with: the replicas' shared secret (each use of it
    /// is kept apart by its own prefix in the MAC).
    pub(crate) sample_secret: Vec<u8>,
    pub(crate) job_ids: workers::JobIds,
    pub(crate) work: workers::tokens::WorkUrls,
    /// Where the HTTP API finds this session's broker (for ingest over HTTP).
    pub(crate) broker_slot: api::BrokerSlot,
}

pub(crate) async fn session(
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
pub(crate) type Queues = Arc<std::sync::RwLock<Option<api::QueueSnapshot>>>;

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
