//! `broadcaster`: push video into a Castwork cluster and serve its HLS playback.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use castwork_broadcaster::api::cli::manage_keys;
use castwork_broadcaster::live::{IngestAuth, KeyStore, Live, LiveConfig, RtmpIngest};
use castwork_broadcaster::rtmp::{self, RtmpOptions};
use castwork_broadcaster::serve;
use castwork_cluster::{http, shutdown_token, telemetry, Storage};
use castwork_protocol::profile::parse_profiles;
use clap::Parser;

mod cli;
mod push_cmd;

use cli::{Cli, Command, LiveArgs};

/// Starts the RTMP server; returns the HTTP push settings.
async fn start_live(
    args: &LiveArgs,
    eth: &castwork_chain::cli::EthArgs,
    redis_url: &str,
    amqp_url: &str,
    storage: &Storage,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<serve::HttpPush> {
    let ladder = parse_profiles(&args.live_profiles)?;
    if !(1..=30).contains(&args.live_segment_secs)
        || args.live_max_segment_secs < args.live_segment_secs
        || args.live_max_segment_secs > 60
    {
        anyhow::bail!(
            "--live-segment-secs must be 1-30 and --live-max-segment-secs between it and 60"
        );
    }
    let max = castwork_protocol::Price {
        price_per_unit: args.live_max_price_per_unit.unwrap_or(u64::MAX),
        pixels_per_unit: args.live_max_price_pixels_per_unit,
    };
    let payer = priced(
        eth,
        args.live_orchestrator_url.as_deref(),
        &max,
        "--live-orchestrator-url",
    )
    .await?
    .1
    .map(Arc::new);
    if let Some(p) = &payer {
        tracing::info!(account = %p.address(), orchestrator = p.recipient(), "live streams are paid with tickets");
    }
    let auth = match (&args.auth_webhook_url, args.open_ingest) {
        (Some(url), _) => IngestAuth::Webhook(url.clone()),
        (None, true) => IngestAuth::Open,
        (None, false) => IngestAuth::Keys(KeyStore::new(
            castwork_cluster::redis_connect(redis_url)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                    "live ingest checks stream keys in Redis at {}, which is unreachable ({e}); \
                     give --redis-url, --auth-webhook-url or --open-ingest, or --no-live",
                    castwork_cluster::redact_url(redis_url)
                )
                })?,
        )),
    };
    tracing::info!(ingest = ?auth, "live ingest: who may publish");
    let live = Live::new(LiveConfig {
        amqp_url: amqp_url.to_string(),
        storage: storage.clone(),
        ladder,
        target_duration_secs: args.live_max_segment_secs,
        auth,
        admit_timeout: Duration::from_secs(args.live_admit_timeout_secs),
        reconnect_window: Duration::from_secs(args.live_reconnect_secs),
        http_idle: Duration::from_secs(args.http_push_idle_secs.max(1)),
        broadcaster: args.live_broadcaster_id.clone(),
        max_seq_ahead: args.max_seq_ahead.max(1),
        payer,
    });
    let listener = tokio::net::TcpListener::bind(args.rtmp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for RTMP on {}: {e}", args.rtmp_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "RTMP ingest at rtmp://HOST/live/STREAM_KEY");
    let opts = RtmpOptions {
        target_ms: i64::from(args.live_segment_secs) * 1000,
        // A segment may not round above the target duration.
        max_ms: i64::from(args.live_max_segment_secs) * 1000 + 499,
        idle_timeout: Duration::from_secs(args.rtmp_idle_secs.max(1)),
        max_connections: args.rtmp_max_connections.max(1),
        publish_timeout: Duration::from_secs(args.rtmp_publish_secs.max(1)),
    };
    tokio::spawn(rtmp::serve(
        listener,
        Arc::new(RtmpIngest(live.clone())),
        opts,
        shutdown.clone(),
    ));
    Ok(serve::HttpPush {
        live,
        max_bytes: args.http_push_max_mb.max(1) * 1024 * 1024,
        wait: Duration::from_secs(args.http_push_wait_secs.max(1)),
        body_timeout: Duration::from_secs(args.http_push_body_secs.max(1)),
    })
}

/// The offer of the orchestrator at `url` (refused above `max`) and, in on-chain mode,
/// the payer of its tickets; `flag` names `url`'s flag in messages.
async fn priced(
    eth: &castwork_chain::cli::EthArgs,
    url: Option<&str>,
    max: &castwork_protocol::Price,
    flag: &str,
) -> anyhow::Result<(
    Option<castwork_protocol::payment::PriceOffer>,
    Option<castwork_broadcaster::payer::Payer>,
)> {
    let Some(url) = url else {
        if eth.enabled() {
            anyhow::bail!(
                "on-chain mode needs {flag}, where the orchestrator's ticket parameters are"
            );
        }
        return Ok((None, None));
    };
    let signer = if eth.enabled() {
        Some(eth.signer()?)
    } else {
        None
    };
    let sender = signer.as_ref().map(|s| s.address());
    let offer = castwork_broadcaster::push::check_price(url, max, sender).await?;
    let payer = match signer {
        Some(signer) => Some(castwork_broadcaster::payer::Payer::new(
            signer,
            url,
            offer.clone(),
            *max,
        )?),
        None => None,
    };
    Ok((Some(offer), payer))
}

fn main() -> ExitCode {
    // Before the runtime's threads start: the config file sets environment variables.
    if let Err(e) = castwork_cluster::config_file::apply(&<Cli as clap::CommandFactory>::command())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    start()
}

#[tokio::main]
async fn start() -> ExitCode {
    let cli = Cli::parse();
    let trusted = castwork_cluster::broker::trust_ca_file(cli.service.link.amqp_ca_file.as_deref())
        .and_then(|()| castwork_cluster::trust_redis_ca_file(cli.service.redis_ca_file.as_deref()));
    if let Err(e) = trusted {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let _telemetry = telemetry::init(&cli.service.link, "castwork-broadcaster");
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Chain { action } = cli.command {
        castwork_broadcaster::chain_cli::run(&cli.eth, action).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Keys { action } = cli.command {
        manage_keys(&cli.redis_url, false, action.into()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::ApiKeys { action } = cli.command {
        manage_keys(&cli.redis_url, true, action.into()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // A push over HTTP (--orch-addr) has no store of its own: the orchestrator keeps the
    // sources, and no directory is made here.
    if let Command::Push {
        orch_addr,
        orch_from_chain,
        ..
    } = &cli.command
    {
        if !orch_addr.is_empty() || *orch_from_chain {
            return push_cmd::run(cli, None).await;
        }
    }
    let storage = Storage::from_url(&cli.service.storage_url)?;
    // The store as resolved (a relative file:// path made absolute), so a push from
    // another directory shows where its segments go.
    tracing::info!(storage = %storage, "object store");
    if matches!(&cli.command, Command::Push { .. }) {
        eprintln!("object store: {storage}");
        return push_cmd::run(cli, Some(storage)).await;
    }
    match cli.command {
        Command::Chain { .. } | Command::Keys { .. } | Command::ApiKeys { .. } => {
            unreachable!("handled above")
        }
        Command::Serve {
            http_addr,
            push_addr,
            playback_token,
            live,
            api,
        } => {
            let shutdown = shutdown_token();
            let api = api.build(
                http_addr,
                &cli.redis_url,
                &cli.service.link.amqp_url,
                &storage,
                &shutdown,
            )?;
            let push = if live.no_live {
                None
            } else {
                Some(
                    start_live(
                        &live,
                        &cli.eth,
                        &cli.redis_url,
                        &cli.service.link.amqp_url,
                        &storage,
                        &shutdown,
                    )
                    .await?,
                )
            };
            let limits = http::Limits {
                max_connections: live.http_max_connections.max(1),
                header_timeout: Duration::from_secs(live.http_header_secs.max(1)),
            };
            // Live ingest needs RabbitMQ: /readyz follows the link to it.
            let link = push
                .is_some()
                .then(|| serve::AmqpLink::watch(&cli.service.link.amqp_url, shutdown.clone()));
            // With --push-addr, HTTP push gets a listener of its own.
            let push = match (push_addr, push) {
                (Some(addr), Some(push)) => {
                    let bound = http::serve_with(
                        addr,
                        serve::push_router(storage.clone(), push, link.clone()),
                        limits,
                        shutdown.clone(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for HTTP push on {addr}: {e}"))?;
                    tracing::info!(%bound, "HTTP push at http://{bound}/live/STREAM/SEQ.ts");
                    None
                }
                (_, push) => push,
            };
            let addr = http::serve_with(
                http_addr,
                serve::router(storage.clone(), push, playback_token, link, api),
                limits,
                shutdown.clone(),
            )
            .await?;
            tracing::info!(%addr, storage = %storage, "serving HLS playback at http://{addr}/streams/NAME/index.m3u8");
            shutdown.cancelled().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { .. } => unreachable!("handled above"),
    }
}
