//! `broadcaster`: push video into a Castwork cluster and serve its HLS playback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use castwork_broadcaster::api::cli::{manage_keys, KeyOp};
use castwork_broadcaster::live::{IngestAuth, KeyStore, Live, LiveConfig, RtmpIngest};
use castwork_broadcaster::rtmp::{self, RtmpOptions};
use castwork_broadcaster::{push, serve, PushRequest};
use castwork_cluster::{http, shutdown_token, telemetry, ServiceArgs, Storage};
use castwork_protocol::profile::{parse_profiles, parse_transcoding_options, DEFAULT_PRESETS};
use clap::{Parser, Subcommand};

/// Castwork broadcaster: pushes video files into a Castwork cluster, takes live streams
/// over RTMP and HTTP push, and serves the transcoded adaptive-bitrate HLS playback.
#[derive(Parser, Debug)]
#[command(version, about, after_help = castwork_cluster::telemetry::ENV_HELP)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,

    #[command(flatten)]
    eth: castwork_chain::cli::EthArgs,

    /// Redis where stream keys are kept (hashed): `keys` manages them, and `serve` checks
    /// publishers against them unless --open-ingest or --auth-webhook-url is given.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    redis_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cut a video file into segments and send it for transcoding.
    Push {
        /// The video file (anything FFmpeg can decode).
        file: PathBuf,

        /// Stream name: letters, digits, '_', '-' and '.'; it names the playback URL.
        #[arg(long, env = "STREAM_NAME")]
        stream: String,

        /// Comma-separated Livepeer presets for the rendition ladder.
        #[arg(long, env = "PROFILES", default_value = DEFAULT_PRESETS, conflicts_with = "transcoding_options")]
        profiles: String,

        /// A Livepeer `transcodingOptions` JSON file describing the ladder instead of presets.
        #[arg(long, env = "TRANSCODING_OPTIONS")]
        transcoding_options: Option<PathBuf>,

        /// Wait until the stream ends. Exit 0 when every rendition of every segment is
        /// done; 3 when it ended incomplete (segments failed: each is named with why, and
        /// the playlists list the others); 1 on any other failure.
        #[arg(long, env = "PUSH_WAIT")]
        wait: bool,

        /// With --wait: give up waiting after this many seconds and exit non-zero (the
        /// cluster goes on transcoding). Unset: wait as long as it takes.
        #[arg(long = "timeout", env = "PUSH_TIMEOUT_SECS", requires = "wait")]
        timeout_secs: Option<u64>,

        /// Target segment duration in seconds; segments start at the first keyframe after it.
        #[arg(long, env = "SEGMENT_SECS", default_value_t = 2.0)]
        segment_secs: f64,

        /// Base URL of the playback server (e.g. a `broadcaster serve`'s
        /// http://HOST:8935), for the playback URL printed at the end. Unset: the one the
        /// orchestrator names (its --playback-url, by default its own /hls).
        #[arg(long, env = "PLAYBACK_URL")]
        playback_url: Option<String>,

        /// Seconds to wait for an orchestrator to admit the stream.
        #[arg(long, env = "ADMIT_TIMEOUT_SECS", default_value_t = 30)]
        admit_timeout_secs: u64,

        /// The account that pays a priced orchestrator (its off-chain ledger).
        #[arg(long, env = "BROADCASTER_ID")]
        broadcaster_id: Option<String>,

        /// The most to pay, in wei per --max-price-pixels-per-unit output pixels; the push
        /// is refused before anything is sent when the orchestrator at --orchestrator-url
        /// advertises more (GET /price). Unset: no limit.
        #[arg(long, env = "MAX_PRICE_PER_UNIT", requires = "orchestrator_url")]
        max_price_per_unit: Option<u64>,

        /// Output pixels per unit of --max-price-per-unit.
        #[arg(long, env = "MAX_PRICE_PIXELS_PER_UNIT", default_value_t = 1)]
        max_price_pixels_per_unit: u64,

        /// HTTP address of the orchestrator whose price --max-price-per-unit checks.
        #[arg(long, env = "ORCHESTRATOR_URL")]
        orchestrator_url: Option<String>,

        /// With --wait: fraction (0-1) of segments whose renditions this broadcaster decodes
        /// and compares with the source it sent (luma PSNR); a failure is stored as evidence
        /// under evidence/STREAM/ and penalises the orchestrator. Default: 0.1 when paying
        /// with tickets, else 0.
        #[arg(long, env = "VERIFY_SAMPLE_RATE")]
        verify_sample_rate: Option<f64>,

        /// Luma PSNR (dB) under which a checked rendition is evidence of a bad transcode.
        #[arg(long, env = "VERIFY_MIN_PSNR_DB", default_value_t = 20.0)]
        verify_min_psnr_db: f64,

        /// What one failed check slashes from the orchestrator's stake: on-chain in stake
        /// token units (e.g. `10eth` = 10 tokens; the --eth account needs the verifier role),
        /// off-chain from its stake in the ledger (with --ledger-redis-url).
        #[arg(long, env = "SLASH_AMOUNT", default_value = "1000000000000000000", value_parser = castwork_chain::cli::parse_amount)]
        slash_amount: castwork_chain::U256,

        /// Off-chain mode: the Redis of the orchestrator's ledger, where a failed check
        /// reduces the orchestrator's stake (`orchestrator ledger stake`).
        #[arg(long, env = "LEDGER_REDIS_URL")]
        ledger_redis_url: Option<String>,

        /// TESTS ONLY: send bad tickets (reuse: every segment pays with the first one's, and
        /// the first is submitted twice; expired: tickets past their expiry).
        #[arg(long, hide = true)]
        test_only_tickets: Option<castwork_broadcaster::payer::TestTickets>,
    },
    /// Stream keys for live ingest (kept hashed in --redis-url): a publisher needs one
    /// unless `serve` runs with --open-ingest or --auth-webhook-url.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// API keys of the job API (`serve --api`), kept hashed in --redis-url: each names an
    /// account, which sees only its own jobs.
    ApiKeys {
        #[command(subcommand)]
        action: castwork_broadcaster::api::cli::ApiKeysAction,
    },
    /// On-chain mode: fund and show this account's deposit at the ticket broker (with
    /// --eth-url, --eth-keystore-path, --eth-password, --eth-deployment).
    Chain {
        #[command(subcommand)]
        action: castwork_broadcaster::chain_cli::ChainCommand,
    },
    /// Serve HLS playback (GET /streams/NAME/index.m3u8) and take live streams: RTMP
    /// publishes to rtmp://HOST:1935/live/STREAM_KEY and segments pushed over HTTP to
    /// PUT /live/STREAM/SEQ.ts.
    Serve {
        /// Address of the HTTP server: playback, and HTTP push unless --push-addr is set.
        #[arg(long, env = "BROADCASTER_HTTP_ADDR", default_value = "127.0.0.1:8935")]
        http_addr: SocketAddr,

        /// Take HTTP push on this address instead of --http-addr, so playback can be
        /// public while ingest stays on a private network.
        #[arg(long, env = "PUSH_ADDR")]
        push_addr: Option<SocketAddr>,

        /// Viewers must show this token (?token=T, which also sets a cookie for the
        /// player's next requests, or Authorization: Bearer T). Unset: playback is public.
        #[arg(long, env = "PLAYBACK_TOKEN", hide_env_values = true)]
        playback_token: Option<String>,

        #[command(flatten)]
        live: LiveArgs,

        #[command(flatten)]
        api: castwork_broadcaster::api::cli::ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Makes a new stream key that publishes stream NAME (replacing NAME's old key) and
    /// prints it; it is shown only this once. Publish to rtmp://HOST/live/KEY, or push
    /// segments to /live/KEY/SEQ.ts; playback is under /streams/NAME/.
    Add { name: String },
    /// Removes stream NAME's key: nobody can start publishing NAME with it any more.
    Remove { name: String },
    /// Lists the streams that have a key (keys themselves are stored hashed only).
    List,
}

impl From<KeysAction> for KeyOp {
    fn from(a: KeysAction) -> KeyOp {
        match a {
            KeysAction::Add { name } => KeyOp::Add(name),
            KeysAction::Remove { name } => KeyOp::Remove(name),
            KeysAction::List => KeyOp::List,
        }
    }
}

/// Live ingest settings of `broadcaster serve`.
#[derive(clap::Args, Debug)]
struct LiveArgs {
    /// The account that pays a priced orchestrator for every live stream taken here.
    #[arg(long = "live-broadcaster-id", env = "LIVE_BROADCASTER_ID")]
    live_broadcaster_id: Option<String>,

    /// Address of the RTMP server for live publishers (OBS, ffmpeg -f flv); loopback
    /// unless you set it (e.g. 0.0.0.0:1935 to take publishers from other machines).
    #[arg(long, env = "RTMP_ADDR", default_value = "127.0.0.1:1935")]
    rtmp_addr: SocketAddr,

    /// Let anyone publish any stream, unchecked (no stream key, no webhook). Only for a
    /// broadcaster nobody else can reach.
    #[arg(long, env = "OPEN_INGEST", conflicts_with = "auth_webhook_url")]
    open_ingest: bool,

    /// Take no live streams: no RTMP server and no HTTP push.
    #[arg(long, env = "NO_LIVE")]
    no_live: bool,

    /// Comma-separated Livepeer presets of live streams whose auth webhook names no ladder.
    #[arg(long, env = "LIVE_PROFILES", default_value = DEFAULT_PRESETS)]
    live_profiles: String,

    /// Target live segment duration in seconds: a segment is cut at the first keyframe
    /// after it (publishers should send a keyframe every this many seconds).
    #[arg(long, env = "LIVE_SEGMENT_SECS", default_value_t = 2)]
    live_segment_secs: u32,

    /// Longest live segment in seconds: a publisher whose keyframes are further apart is
    /// cut off with a message saying which encoder setting to change. (The live playlists'
    /// EXT-X-TARGETDURATION is the longest segment listed, rounded: 2 for a 2 s GOP.)
    #[arg(long, env = "LIVE_MAX_SEGMENT_SECS", default_value_t = 6)]
    live_max_segment_secs: u32,

    /// URL POSTed a JSON description of every new RTMP publish and HTTP-pushed stream
    /// ({"url", "app", "stream_key", "via", "peer"}); a 2xx answer allows it and may name
    /// the stream ("manifestID"), the ladder ("presets", "profiles") and the HTTP push
    /// token ("streamKey"); anything else refuses it. Unset: publishers need a stream key
    /// from `broadcaster keys add` (or --open-ingest).
    #[arg(long, env = "AUTH_WEBHOOK_URL")]
    auth_webhook_url: Option<String>,

    /// Seconds without data after which an RTMP connection is dropped (a half-open
    /// socket), so its publisher can reconnect.
    #[arg(long, env = "RTMP_IDLE_SECS", default_value_t = 10)]
    rtmp_idle_secs: u64,

    /// Most RTMP connections at once; more are closed at once.
    #[arg(long, env = "RTMP_MAX_CONNECTIONS", default_value_t = 1000)]
    rtmp_max_connections: usize,

    /// Seconds an RTMP client has from connecting to having its publish accepted
    /// (handshake, connect, publish, in all); a slower one is dropped.
    #[arg(long, env = "RTMP_PUBLISH_SECS", default_value_t = 10)]
    rtmp_publish_secs: u64,

    /// Most HTTP connections at once (playback and push); more are closed at once.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    http_max_connections: usize,

    /// Seconds an HTTP client has to send a request's head (an idle keep-alive
    /// connection included); a slower one is dropped.
    #[arg(long, env = "HTTP_HEADER_SECS", default_value_t = 10)]
    http_header_secs: u64,

    /// Seconds a disconnected publisher has to reconnect with the same key and continue
    /// the same stream (with a discontinuity); after that the stream ends.
    #[arg(long, env = "LIVE_RECONNECT_SECS", default_value_t = 10)]
    live_reconnect_secs: u64,

    /// Seconds without a pushed segment after which an HTTP-pushed stream ends.
    #[arg(long, env = "HTTP_PUSH_IDLE_SECS", default_value_t = 30)]
    http_push_idle_secs: u64,

    /// Largest segment accepted over HTTP push, in MiB (larger: 413).
    #[arg(long, env = "HTTP_PUSH_MAX_MB", default_value_t = 64)]
    http_push_max_mb: usize,

    /// Seconds a pushed segment's body may take to arrive (and 10 s at most between its
    /// pieces); a slower client gets 400 and its connection back.
    #[arg(long, env = "HTTP_PUSH_BODY_SECS", default_value_t = 60)]
    http_push_body_secs: u64,

    /// Seconds an HTTP push waits for its renditions before answering 504.
    #[arg(long, env = "HTTP_PUSH_WAIT_SECS", default_value_t = 30)]
    http_push_wait_secs: u64,

    /// How far ahead of a stream's highest pushed segment number a new one may be; further
    /// ones are refused (HTTP 422) before anything is stored.
    #[arg(long, env = "MAX_SEQ_AHEAD", default_value_t = castwork_protocol::DEFAULT_MAX_SEQ_AHEAD)]
    max_seq_ahead: u64,

    /// Seconds to wait for an orchestrator to admit a live stream.
    #[arg(long, env = "LIVE_ADMIT_TIMEOUT_SECS", default_value_t = 30)]
    live_admit_timeout_secs: u64,

    /// HTTP address of the orchestrator that live streams go to: its price (GET /price) is
    /// checked against --live-max-price-per-unit at start, and in on-chain mode (--eth-*)
    /// every live segment is paid with tickets under its parameters.
    #[arg(long, env = "LIVE_ORCHESTRATOR_URL")]
    live_orchestrator_url: Option<String>,

    /// The most live streams pay, in wei per --live-max-price-pixels-per-unit output
    /// pixels; `serve` refuses to start when the orchestrator at --live-orchestrator-url
    /// asks more. Unset: no limit.
    #[arg(
        long,
        env = "LIVE_MAX_PRICE_PER_UNIT",
        requires = "live_orchestrator_url"
    )]
    live_max_price_per_unit: Option<u64>,

    /// Output pixels per unit of --live-max-price-per-unit.
    #[arg(long, env = "LIVE_MAX_PRICE_PIXELS_PER_UNIT", default_value_t = 1)]
    live_max_price_pixels_per_unit: u64,
}

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
    let storage = Storage::from_url(&cli.service.storage_url)?;
    // The store as resolved (a relative file:// path made absolute), so a push from
    // another directory shows where its segments go.
    tracing::info!(storage = %storage, "object store");
    if matches!(cli.command, Command::Push { .. }) {
        eprintln!("object store: {storage}");
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
        Command::Push {
            file,
            stream,
            profiles,
            transcoding_options,
            wait,
            timeout_secs,
            segment_secs,
            playback_url,
            admit_timeout_secs,
            broadcaster_id,
            max_price_per_unit,
            max_price_pixels_per_unit,
            orchestrator_url,
            verify_sample_rate,
            verify_min_psnr_db,
            slash_amount,
            ledger_redis_url,
            test_only_tickets,
        } => {
            let max = castwork_protocol::Price {
                price_per_unit: max_price_per_unit.unwrap_or(u64::MAX),
                pixels_per_unit: max_price_pixels_per_unit,
            };
            let (offer, payer) = priced(
                &cli.eth,
                orchestrator_url.as_deref(),
                &max,
                "--orchestrator-url",
            )
            .await?;
            let payer = payer.map(|mut p| {
                p.test_tickets = test_only_tickets;
                Arc::new(p)
            });
            let rate = verify_sample_rate.unwrap_or(if payer.is_some() { 0.1 } else { 0.0 });
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("--verify-sample-rate must be between 0 and 1");
            }
            let verify = if wait && rate > 0.0 {
                let who = offer.as_ref().and_then(|o| o.orchestrator.clone());
                let penalty = match (&payer, &ledger_redis_url, &who) {
                    (Some(p), _, _) => {
                        let (chain, deployment) = cli.eth.connect().await?;
                        castwork_broadcaster::verify::Penalty::Chain {
                            chain,
                            deployment,
                            orchestrator: p.recipient().parse()?,
                            amount: slash_amount,
                        }
                    }
                    (None, Some(redis_url), Some(who)) => {
                        castwork_broadcaster::verify::Penalty::Ledger {
                            redis_url: redis_url.clone(),
                            orchestrator: who.clone(),
                            amount: i64::try_from(slash_amount).map_err(|_| {
                                anyhow::anyhow!("--slash-amount does not fit the ledger")
                            })?,
                        }
                    }
                    _ => castwork_broadcaster::verify::Penalty::None,
                };
                Some((
                    castwork_broadcaster::verify::VerifyPolicy {
                        sample_rate: rate,
                        min_psnr_db: verify_min_psnr_db,
                    },
                    penalty,
                    who.unwrap_or_else(|| "orchestrator".to_string()),
                ))
            } else {
                None
            };
            let ladder = match &transcoding_options {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    parse_transcoding_options(&text)?
                }
                None => parse_profiles(&profiles)?,
            };
            if !(0.5..=60.0).contains(&segment_secs) {
                anyhow::bail!("--segment-secs must be between 0.5 and 60");
            }
            // Absolute, as resolved.
            let local_dir = storage
                .to_string()
                .strip_prefix("file://")
                .map(PathBuf::from);
            let outcome = push(
                PushRequest {
                    input: file,
                    stream: stream.clone(),
                    ladder,
                    segment_secs,
                    wait,
                    amqp_url: cli.service.link.amqp_url,
                    storage,
                    playback_url,
                    local_dir: local_dir.clone(),
                    admit_timeout: Duration::from_secs(admit_timeout_secs),
                    broadcaster: broadcaster_id,
                    payer,
                    verify,
                    wait_timeout: timeout_secs.map(Duration::from_secs),
                    orchestrator_url: orchestrator_url.clone(),
                    formats: None,
                    cancel: None,
                    progress: None,
                },
                shutdown_token(),
            )
            .await?;
            if !wait {
                println!("queued {} segments of stream {stream}", outcome.segments);
                if let Some(url) = &outcome.playback_url {
                    println!("playback once transcoded: {url}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(master) = &outcome.master_playlist {
                if let Some(url) = &outcome.playback_url {
                    println!("playback: {url}");
                }
                if let Some(dir) = &local_dir {
                    println!("output: {}", dir.join(master).display());
                }
            }
            if outcome.verified > 0 {
                println!(
                    "verified {} sampled segments: {} bad renditions",
                    outcome.verified,
                    outcome.evidence.len()
                );
            }
            if !outcome.evidence.is_empty() {
                eprintln!(
                    "the orchestrator's output failed this broadcaster's check (evidence above)"
                );
                return Ok(ExitCode::FAILURE);
            }
            if outcome.is_incomplete() {
                eprintln!("{}", outcome.incomplete_report(&stream));
                return Ok(ExitCode::from(castwork_broadcaster::push::EXIT_INCOMPLETE));
            }
            println!(
                "done: {} segments, every rendition transcoded",
                outcome.segments
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
