//! `orchestrator`: the Castwork orchestrator process.

use std::time::Duration;

use castwork_cluster::{redact_url, shutdown_token, telemetry};
use castwork_orchestrator::{run, Config};
use clap::Parser;

mod cli;

use cli::{BroadcastersAction, Cli, Command, LedgerAction, StreamsAction, WorkersAction};

/// The cluster's state in the Redis at `redis_url`, for the commands that change it.
async fn state_at(redis_url: &str) -> anyhow::Result<castwork_orchestrator::state::State> {
    use anyhow::Context as _;
    let redis = castwork_cluster::redis_connect(redis_url)
        .await
        .with_context(|| format!("cannot reach Redis at {}", redact_url(redis_url)))?;
    Ok(castwork_orchestrator::state::State::new(redis))
}

async fn workers(redis_url: &str, amqp_url: &str, action: WorkersAction) -> anyhow::Result<()> {
    use castwork_orchestrator::workers::users::BrokerAdmin;
    match action {
        WorkersAction::Add {
            name,
            rabbitmq_admin_url,
        } => {
            let admin = BrokerAdmin::new(amqp_url, rabbitmq_admin_url.as_deref())?;
            let url = admin.add_worker(&name).await?;
            eprintln!("broker user {name} made: start the worker with this URL (keep it secret)");
            println!("{url}");
        }
        WorkersAction::Remove {
            name,
            rabbitmq_admin_url,
        } => {
            let admin = BrokerAdmin::new(amqp_url, rabbitmq_admin_url.as_deref())?;
            if admin.remove_worker(&name).await? {
                println!("broker user {name} removed: its connections are closed");
            } else {
                println!("there is no broker user {name}");
            }
        }
        WorkersAction::Ban { identity, reason } => {
            state_at(redis_url).await?.ban(&identity, &reason).await?;
            println!("worker {identity} banned: {reason}");
        }
        WorkersAction::Unban { identity } => {
            if state_at(redis_url).await?.unban(&identity).await? {
                println!("worker {identity} may take jobs again");
            } else {
                println!("worker {identity} was not banned");
            }
        }
    }
    Ok(())
}

async fn ledger(redis_url: &str, action: LedgerAction) -> anyhow::Result<()> {
    let state = state_at(redis_url).await?;
    match action {
        LedgerAction::Credit { account, amount } => {
            castwork_orchestrator::service::validate_account(&account)
                .map_err(anyhow::Error::msg)?;
            let balance = state.credit(&account, amount).await?;
            println!("{account}: {balance} wei");
        }
        LedgerAction::Debit { account, amount } => {
            castwork_orchestrator::service::validate_account(&account)
                .map_err(anyhow::Error::msg)?;
            match state.debit(&account, amount).await? {
                Ok(balance) => println!("{account}: {balance} wei"),
                Err((balance, reserved)) => anyhow::bail!(
                    "cannot take {amount} wei from {account}: it has {} wei available \
                     ({balance} wei, {reserved} reserved by segments in progress); nothing \
                     was taken",
                    balance - reserved
                ),
            }
        }
        LedgerAction::Show { account: Some(a) } => {
            let (balance, reserved) = state.account(&a).await?;
            println!("{a}: {balance} wei, {reserved} reserved");
        }
        LedgerAction::Show { account: None } => {
            let all = state.balances().await?;
            if all.is_empty() {
                println!("no accounts");
            }
            for (a, balance, reserved) in all {
                println!("{a}: {balance} wei, {reserved} reserved");
            }
            for (o, stake, evidence) in state.stakes().await? {
                println!("stake of orchestrator {o}: {stake} ({evidence} pieces of evidence)");
            }
        }
        LedgerAction::Stake {
            orchestrator,
            amount,
        } => {
            castwork_orchestrator::service::validate_account(&orchestrator)
                .map_err(anyhow::Error::msg)?;
            state.set_stake(&orchestrator, amount).await?;
            println!("stake of orchestrator {orchestrator}: {amount}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads start: the config file sets environment variables.
    if let Err(e) = castwork_cluster::config_file::apply(&<Cli as clap::CommandFactory>::command())
    {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    start()
}

#[tokio::main]
async fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    castwork_cluster::broker::trust_ca_file(cli.service.link.amqp_ca_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    castwork_cluster::trust_redis_ca_file(cli.service.redis_ca_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    match cli.command {
        Some(Command::Status { url }) => return castwork_orchestrator::status::print(&url).await,
        Some(Command::Ledger { action }) => return ledger(&cli.redis_url, action).await,
        Some(Command::Workers { action }) => {
            return workers(&cli.redis_url, &cli.service.link.amqp_url, action).await
        }
        Some(Command::Streams {
            action: StreamsAction::Delete { name, force },
        }) => {
            let state = state_at(&cli.redis_url).await?;
            let storage = castwork_cluster::Storage::from_url(&cli.service.storage_url)?;
            let done =
                castwork_orchestrator::cleanup::delete_stream(&state, &storage, &name, force)
                    .await?;
            println!("{done}");
            return Ok(());
        }
        Some(Command::Broadcasters { action }) => {
            let state = state_at(&cli.redis_url).await?;
            match action {
                BroadcastersAction::Add { name } => {
                    println!("{}", state.add_broadcaster(&name).await?)
                }
                BroadcastersAction::Remove { name } => {
                    if !state.remove_broadcaster(&name).await? {
                        anyhow::bail!("broadcaster {name} has no key");
                    }
                    println!("removed broadcaster {name}'s key");
                }
                BroadcastersAction::List => {
                    for name in state.broadcasters().await? {
                        println!("{name}");
                    }
                }
            }
            return Ok(());
        }
        Some(Command::Chain { action }) => {
            let price = castwork_protocol::Price {
                price_per_unit: cli.price_per_unit,
                pixels_per_unit: cli.pixels_per_unit,
            };
            return castwork_orchestrator::chain_cli::run(&cli.eth, action, price, &cli.redis_url)
                .await;
        }
        None => {}
    }
    let _telemetry = telemetry::init(&cli.service.link, "castwork-orchestrator");
    let mut problems = Vec::new();
    if cli.max_attempts == 0 {
        problems.push("--max-attempts must be at least 1".to_string());
    }
    if !(0.0..=1.0).contains(&cli.quality_sample_rate) {
        problems.push("--quality-sample-rate must be between 0 and 1".to_string());
    }
    if cli.max_bad_results == 0 {
        problems.push("--max-bad-results must be at least 1".to_string());
    }
    if (cli.live_window as u64) < castwork_orchestrator::live::WINDOW_TARGETS {
        problems.push(format!(
            "--live-window {} is too small: a live playlist must hold at least {} segments \
             (RFC 8216 6.2.2: three target durations, which players hold back from the live \
             edge)",
            cli.live_window,
            castwork_orchestrator::live::WINDOW_TARGETS
        ));
    }
    if !(1..=1_000_000).contains(&cli.max_seq_ahead) {
        problems.push("--max-seq-ahead must be 1-1000000".to_string());
    }
    if !(cli.retain_days > 0.0 && cli.retain_days <= 36_500.0) {
        problems.push("--retain-days must be above 0 and at most 36500".to_string());
    }
    if cli.api_token.as_ref().is_some_and(|t| t.len() < 16) {
        problems.push("--api-token must be at least 16 characters".to_string());
    }
    if cli.live_deadline_secs == 0 {
        problems.push("--live-deadline-secs must be at least 1".to_string());
    }
    if let Err(e) = cli.worker.validate() {
        problems.push(e);
    }
    if cli.ticket_validity_secs < 120 {
        problems.push("--ticket-validity-secs must be at least 120".to_string());
    }
    if cli.chain_refresh_secs == 0 {
        problems.push("--chain-refresh-secs must be at least 1".to_string());
    }
    if let Err(e) = castwork_orchestrator::queues::Management::new(
        &cli.service.link.amqp_url,
        cli.rabbitmq_management_url.as_deref(),
    ) {
        problems.push(e);
    }
    for (flag, url) in [
        ("--playback-url", &cli.playback_url),
        ("--work-url", &cli.work_url),
    ] {
        if let Some(u) = url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(format!("{flag} {u:?} must be an http(s) URL"));
            }
        }
    }
    // The object store as resolved (a relative file:// path made absolute).
    let storage = match castwork_cluster::Storage::from_url(&cli.service.storage_url) {
        Ok(s) => s.to_string(),
        Err(e) => {
            problems.push(e.to_string());
            cli.service.storage_url.clone()
        }
    };
    if !problems.is_empty() {
        anyhow::bail!("invalid configuration: {}", problems.join("; "));
    }
    tracing::info!(
        amqp = redact_url(&cli.service.link.amqp_url),
        redis = redact_url(&cli.redis_url),
        storage,
        http = %cli.http_addr,
        playback = cli.playback_url.as_deref().unwrap_or("this orchestrator's /hls"),
        rabbitmq_management = cli
            .rabbitmq_management_url
            .as_deref()
            .map_or("from --amqp-url".to_string(), redact_url),
        transcode_slots = cli.transcode_slots,
        max_attempts = cli.max_attempts,
        "effective config"
    );
    let chain = if cli.eth.enabled() {
        let (chain, deployment) = cli.eth.connect().await?;
        Some(castwork_orchestrator::ChainConfig {
            chain,
            deployment,
            policy: castwork_orchestrator::payments::TicketPolicy {
                face_value: cli.ticket_face_value,
                ticket_ev: cli.ticket_ev,
                validity: Duration::from_secs(cli.ticket_validity_secs),
                refresh: Duration::from_secs(cli.chain_refresh_secs),
                redeem_attempts: 10,
            },
        })
    } else {
        None
    };
    let work_tls = match (&cli.work_tls_cert, &cli.work_tls_key) {
        (Some(cert), Some(key)) => Some(
            castwork_cluster::http::tls_server_config(cert, key)
                .map_err(|e| anyhow::anyhow!("--work-tls-cert/--work-tls-key: {e}"))?,
        ),
        _ => None,
    };
    let cfg = Config {
        chain,
        orchestrator_id: cli.orchestrator_id,
        max_seq_ahead: cli.max_seq_ahead,
        max_source_bytes: cli.max_source_segment_mb.saturating_mul(1024 * 1024),
        ingest_starts_per_hour: cli.ingest_starts_per_hour,
        max_sessions: cli.max_sessions,
        api_token: cli.api_token.clone(),
        retain: Duration::from_secs_f64(cli.retain_days.clamp(0.0, 36_500.0) * 86_400.0),
        playback_url: cli.playback_url,
        work_url: cli.work_url,
        work_addr: cli.work_addr,
        work_tls,
        rabbitmq_management_url: cli.rabbitmq_management_url,
        amqp_url: cli.service.link.amqp_url,
        redis_url: cli.redis_url,
        storage_url: cli.service.storage_url,
        http_addr: cli.http_addr,
        max_attempts: cli.max_attempts,
        transcode_slots: cli.transcode_slots,
        worker: cli.worker,
        drain_timeout: Duration::from_secs(cli.drain_secs),
        live_window: cli.live_window,
        live_deadline: Duration::from_secs(cli.live_deadline_secs),
        lost_after: Duration::from_secs(cli.lost_job_secs),
        route_live: cli.route_live.0,
        route_vod: cli.route_vod.0,
        trust_worker_output: cli.trust_worker_output || cli.test_only_skip_checks,
        quality: castwork_orchestrator::service::QualityPolicy {
            sample_rate: cli.quality_sample_rate,
            min_psnr_db: cli.min_psnr_db,
            max_bad_results: cli.max_bad_results,
        },
        price: castwork_protocol::Price {
            price_per_unit: cli.price_per_unit,
            pixels_per_unit: cli.pixels_per_unit,
        },
    };
    if cli.test_only_skip_checks {
        tracing::warn!("--test-only-skip-checks: a CHEATING orchestrator, for tests only");
    } else if cfg.trust_worker_output {
        tracing::warn!("--trust-worker-output: BENCHMARK ONLY, results are not checked");
    }
    run(cfg, shutdown_token(), None).await
}
