//! `orchestrator`: the Castwork orchestrator process.

use std::net::SocketAddr;
use std::time::Duration;

use castwork_cluster::{redact_url, shutdown_token, telemetry, ServiceArgs};
use castwork_orchestrator::chain_cli::{ledger_amount, positive_ledger_amount};
use castwork_orchestrator::{run, Config};
use castwork_worker::WorkerArgs;
use clap::{Parser, Subcommand};

/// Castwork orchestrator: admits streams from broadcasters, publishes one transcode job per
/// segment to RabbitMQ, checks every worker result, tracks state in Redis and writes the HLS
/// playlists. With --transcode-slots it also transcodes in-process (single-node mode).
#[derive(Parser, Debug)]
#[command(version, about, after_help = castwork_cluster::telemetry::ENV_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    service: ServiceArgs,

    /// Redis URL for stream, segment and job state (also after a command: `ledger show
    /// --redis-url URL`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    redis_url: String,

    /// Address of the HTTP API (/healthz, /metrics, /status, /streams/NAME, /workers,
    /// /queues).
    #[arg(long, env = "ORCHESTRATOR_HTTP_ADDR", default_value = "127.0.0.1:7935")]
    http_addr: SocketAddr,

    /// Base URL where viewers play the stream outputs: a stream's master playlist is at
    /// BASE/streams/NAME/index.m3u8, and `broadcaster push` prints that URL. E.g. a
    /// `broadcaster serve`'s http://HOST:8935. Unset: this orchestrator's own /hls on the
    /// address it is bound to (127.0.0.1 in place of 0.0.0.0).
    #[arg(long, env = "PLAYBACK_URL")]
    playback_url: Option<String>,

    /// Base URL at which workers reach this orchestrator's /work/ routes, where each job's
    /// signed URLs read its source segment and write its renditions (workers hold no
    /// object-store credentials). Unset: http:// and the --work-addr listener's address, or
    /// --http-addr's (127.0.0.1 in place of 0.0.0.0). Set it when workers run elsewhere.
    #[arg(long, env = "WORK_URL")]
    work_url: Option<String>,

    /// A listener that serves only the /work/ routes (signed job objects), so workers on
    /// other machines can reach them while --http-addr (status, dashboard) stays private.
    /// Unset: /work/ is on --http-addr only.
    #[arg(long, env = "WORK_ADDR")]
    work_addr: Option<SocketAddr>,

    /// PEM certificate chain for the --work-addr listener: with --work-tls-key it serves
    /// HTTPS, and the default --work-url is https://. Workers trust a private CA that
    /// signed it with their --work-ca-file (scripts/dev-tls.sh makes one for tests).
    #[arg(long, env = "WORK_TLS_CERT", requires_all = ["work_tls_key", "work_addr"])]
    work_tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --work-tls-cert.
    #[arg(long, env = "WORK_TLS_KEY", requires = "work_tls_cert")]
    work_tls_key: Option<std::path::PathBuf>,

    /// RabbitMQ's management API, http://[USER:PASSWORD@]HOST:PORT, where /queues reads
    /// each queue's unacknowledged messages (AMQP only tells the ready ones); `off` turns
    /// that off. Unset: port 15672 of the --amqp-url host (of each node's, for a list), with
    /// its credentials (the user needs the `monitoring` or `management` tag). Several URLs,
    /// comma-separated, are asked in turn until one answers.
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    rabbitmq_management_url: Option<String>,

    /// Attempts before a segment that keeps failing transiently is marked failed (a
    /// permanent failure, such as corrupt input, fails it at once).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,

    /// In-process transcode slots (combined mode); 0 leaves transcoding to `worker`s.
    #[arg(long, env = "TRANSCODE_SLOTS", default_value_t = 0, help_heading = COMBINED_MODE)]
    transcode_slots: usize,

    /// Seconds in-flight work gets to finish after SIGTERM.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 120)]
    drain_secs: u64,

    /// Segments listed in a live media playlist (its sliding window), at least 3; it grows
    /// past this when needed to hold three target durations, as RFC 8216 asks.
    #[arg(long, env = "LIVE_WINDOW", default_value_t = 6)]
    live_window: usize,

    /// Seconds a live segment has from reaching the broadcaster to being listed; a segment
    /// past it is skipped (with a discontinuity) instead of holding back newer ones, and a
    /// segment that never arrives holds back later ones this long.
    #[arg(long, env = "LIVE_DEADLINE_SECS", default_value_t = 10)]
    live_deadline_secs: u64,

    /// Seconds an on-demand job may go unstarted while its queue holds no ready job before
    /// it counts as lost (purged from the queue, or taken by a consumer that never
    /// reported) and is retried as a new attempt. Longer than workers' --start-notice-ms.
    #[arg(long, env = "LOST_JOB_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    lost_job_secs: u64,

    /// Capability classes for live jobs, in order of preference (cpu, nvdec, nvenc): a job
    /// goes to the first with a free slot among its workers (from their heartbeats), else to
    /// the first with any worker, else to any class with workers; never to a queue nobody
    /// reads while another class could take it.
    #[arg(long, env = "ROUTE_LIVE", default_value = "nvenc,nvdec,cpu", value_parser = castwork_orchestrator::ingest::routing::parse_class_order)]
    route_live: castwork_orchestrator::ingest::routing::ClassOrder,

    /// As --route-live, for on-demand jobs (the CPU first, keeping GPUs for live work).
    #[arg(long, env = "ROUTE_VOD", default_value = "cpu,nvdec,nvenc", value_parser = castwork_orchestrator::ingest::routing::parse_class_order)]
    route_vod: castwork_orchestrator::ingest::routing::ClassOrder,

    /// How far ahead of a stream's highest received segment number a new segment (or the
    /// segment count of its end) may be; further ones are refused with a message, so no
    /// number a client sends makes the cluster loop.
    #[arg(long, env = "MAX_SEQ_AHEAD", default_value_t = castwork_protocol::DEFAULT_MAX_SEQ_AHEAD)]
    max_seq_ahead: u64,

    /// Live streams admitted at once (as go-livepeer's -maxSessions): a new one past that is
    /// refused "at capacity", and the broadcaster says so. `auto`: the transcode slots the
    /// live workers advertise in their heartbeats (no limit while none has beaten); 0: no
    /// limit. On-demand streams are never refused for capacity: their jobs wait.
    #[arg(long, env = "MAX_SESSIONS", default_value = "auto", value_parser = castwork_orchestrator::ingest::parse_max_sessions)]
    max_sessions: castwork_orchestrator::ingest::MaxSessions,

    /// Token that HTTP requests changing state (DELETE /streams/NAME) must carry as
    /// `Authorization: Bearer TOKEN`; unset, they are refused. The read-only API stays
    /// open to whoever reaches --http-addr (127.0.0.1 by default).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,

    /// Days an ended stream's state (segments, failures, listing) stays in Redis; its
    /// playlists and renditions stay in the object store. Fractions are allowed.
    #[arg(long, env = "RETAIN_DAYS", default_value_t = 7.0)]
    retain_days: f64,

    /// Price in wei for every --pixels-per-unit output pixels (width x height x frames of
    /// every rendition); 0 is free. A priced orchestrator admits only streams that name an
    /// account (`broadcaster push --broadcaster-id`) whose balance covers a segment.
    #[arg(long, env = "PRICE_PER_UNIT", default_value_t = 0)]
    price_per_unit: u64,

    /// Output pixels per priced unit (see --price-per-unit).
    #[arg(long, env = "PIXELS_PER_UNIT", default_value_t = 1)]
    pixels_per_unit: u64,

    /// Fraction (0-1) of worker results whose pictures are decoded and compared with the
    /// source segment (luma PSNR), on top of the checks every result gets.
    #[arg(long, env = "QUALITY_SAMPLE_RATE", default_value_t = 0.1)]
    quality_sample_rate: f64,

    /// Luma PSNR (dB) under which a sampled rendition is refused and redone elsewhere.
    #[arg(long, env = "MIN_PSNR_DB", default_value_t = 20.0)]
    min_psnr_db: f64,

    /// Results failing the checks after which a worker is banned (it stops taking jobs).
    #[arg(long, env = "MAX_BAD_RESULTS", default_value_t = 3)]
    max_bad_results: u32,

    /// BENCHMARK ONLY (never in production): accept worker results without checking the
    /// renditions, to measure the control plane with workers in --noop-transcode mode.
    #[arg(long, env = "CASTWORK_BENCH_TRUST_WORKER_OUTPUT")]
    trust_worker_output: bool,

    /// TESTS ONLY: a cheating orchestrator that skips every check of its workers' results
    /// (so the broadcaster's own verification has something to catch).
    #[arg(long, hide = true)]
    test_only_skip_checks: bool,

    #[command(flatten)]
    eth: castwork_chain::cli::EthArgs,

    /// Off-chain mode: this orchestrator's name, advertised at /price; broadcasters' failed
    /// checks reduce its stake in the ledger under this name (`ledger stake`).
    #[arg(long, env = "ORCHESTRATOR_ID", default_value = "orchestrator")]
    orchestrator_id: String,

    /// On-chain mode: wei a winning ticket pays (go-livepeer's -ticketFaceValue idea).
    #[arg(long, env = "TICKET_FACE_VALUE", default_value = "1000000000000000", value_parser = castwork_chain::cli::parse_amount)]
    ticket_face_value: castwork_chain::U256,

    /// On-chain mode: expected value of one ticket in wei; the win probability is
    /// TICKET_EV / TICKET_FACE_VALUE. Broadcasters send enough tickets per segment to cover
    /// its fee.
    #[arg(long, env = "TICKET_EV", default_value = "1000000000000", value_parser = castwork_chain::cli::parse_amount)]
    ticket_ev: castwork_chain::U256,

    /// On-chain mode: seconds advertised ticket parameters (and tickets signed under them)
    /// stay valid; winners must be redeemed within it. With --chain-refresh-secs and 11
    /// minutes (clock skew, time to redeem) it must fit in the ticket broker's unlock period,
    /// so a sender cannot withdraw before its winning tickets are redeemed.
    #[arg(long, env = "TICKET_VALIDITY_SECS", default_value_t = 3600)]
    ticket_validity_secs: u64,

    /// On-chain mode: seconds the stake, the active set and senders' deposits are cached in
    /// Redis before being read from the chain again.
    #[arg(long, env = "CHAIN_REFRESH_SECS", default_value_t = 30)]
    chain_refresh_secs: u64,

    #[command(flatten, next_help_heading = COMBINED_MODE)]
    worker: WorkerArgs,
}

/// The `--help` heading of the in-process worker's flags.
const COMBINED_MODE: &str = "Combined mode (an in-process worker, with --transcode-slots N)";

/// Without a command, the orchestrator runs; a command talks to a running one.
#[derive(Subcommand, Debug)]
enum Command {
    /// Prints the streams (with progress), workers (with busy slots) and queue depths of a
    /// running cluster as tables, from its orchestrator's /status.
    Status {
        /// HTTP address of a running orchestrator (its --http-addr).
        #[arg(
            long,
            env = "ORCHESTRATOR_URL",
            default_value = "http://127.0.0.1:7935"
        )]
        url: String,
    },
    /// On-chain mode: deploy contracts, register, bond and unbond stake, show status (with
    /// --eth-url, --eth-keystore-path, --eth-password, --eth-deployment).
    Chain {
        #[command(subcommand)]
        action: castwork_orchestrator::chain_cli::ChainCommand,
    },
    /// Streams in Redis (--redis-url) and the object store (--storage-url).
    Streams {
        #[command(subcommand)]
        action: StreamsAction,
    },
    /// Workers' broker users (`add`, `remove`: RabbitMQ's management API) and bans (in
    /// Redis, --redis-url). A worker is known by its identity: its own broker user, or its
    /// --worker-id where it shares the orchestrator's user.
    Workers {
        #[command(subcommand)]
        action: WorkersAction,
    },
    /// The off-chain ledger of broadcaster accounts in Redis (--redis-url), in wei.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
}

#[derive(Subcommand, Debug)]
enum StreamsAction {
    /// Deletes stream NAME: its state in Redis and every object under streams/NAME/
    /// (source segments, renditions, playlists).
    Delete {
        name: String,
        /// Delete it even while it is active (its publisher is cut off).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WorkersAction {
    /// Bans IDENTITY: its results are refused and it stops taking jobs at its next
    /// heartbeat (and each time it starts again).
    Ban {
        identity: String,
        /// Why, as the worker's log will say it.
        #[arg(long, default_value = "banned by the operator")]
        reason: String,
    },
    /// Lifts IDENTITY's ban and forgets its bad results.
    Unban { identity: String },
    /// Makes a RabbitMQ user NAME for a new worker, with the worker role's permissions on
    /// this orchestrator's vhost (--amqp-url), and prints the one URL that worker needs:
    /// `worker --amqp-url URL`. Through RabbitMQ's management API, as an administrator.
    Add {
        name: String,
        /// RabbitMQ's management API as a user with the administrator tag:
        /// http://ADMIN:PASSWORD@HOST:15672 (several, comma-separated, asked in turn). Unset:
        /// port 15672 of each --amqp-url host, as the --amqp-url user.
        #[arg(long, env = "RABBITMQ_ADMIN_URL")]
        rabbitmq_admin_url: Option<String>,
    },
    /// Deletes worker NAME's RabbitMQ user and closes its connections: it can take no more
    /// jobs (its jobs in hand go back to the queue).
    Remove {
        name: String,
        /// As for `add`.
        #[arg(long, env = "RABBITMQ_ADMIN_URL")]
        rabbitmq_admin_url: Option<String>,
    },
}

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

#[derive(Subcommand, Debug)]
enum LedgerAction {
    /// Adds AMOUNT to ACCOUNT and prints the new balance. AMOUNT is positive, in wei or
    /// with a unit as the chain commands take it (1eth, 2.5gwei, 700wei).
    Credit {
        account: String,
        #[arg(allow_hyphen_values = true, value_parser = positive_ledger_amount)]
        amount: i64,
    },
    /// Takes AMOUNT back from ACCOUNT (positive, units as for credit) and prints the new
    /// balance; refused when the balance less what segments in progress reserved is lower.
    Debit {
        account: String,
        #[arg(allow_hyphen_values = true, value_parser = positive_ledger_amount)]
        amount: i64,
    },
    /// Prints ACCOUNT's balance, or every account's, and every orchestrator's stake.
    Show { account: Option<String> },
    /// Sets ORCHESTRATOR's off-chain stake to AMOUNT (0 or more, units as for credit; what
    /// broadcasters' failed checks slash), and prints it.
    Stake {
        orchestrator: String,
        #[arg(allow_hyphen_values = true, value_parser = ledger_amount)]
        amount: i64,
    },
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
