//! The broadcaster's command line: every flag with its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use castwork_broadcaster::api::cli::KeyOp;
use castwork_cluster::ServiceArgs;
use castwork_protocol::profile::DEFAULT_PRESETS;
use clap::{Parser, Subcommand};

/// Castwork broadcaster: pushes video files into a Castwork cluster, takes live streams
/// over RTMP and HTTP push, and serves the transcoded adaptive-bitrate HLS playback.
#[derive(Parser, Debug)]
#[command(version, about, after_help = castwork_cluster::telemetry::ENV_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) service: ServiceArgs,

    #[command(flatten)]
    pub(crate) eth: castwork_chain::cli::EthArgs,

    /// Redis where stream keys are kept (hashed): `keys` manages them, and `serve` checks
    /// publishers against them unless --open-ingest or --auth-webhook-url is given.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub(crate) redis_url: String,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        /// advertises more (GET /price), and an orchestrator of --orch-addr that does is
        /// never chosen. Unset: no limit.
        #[arg(long, env = "MAX_PRICE_PER_UNIT")]
        max_price_per_unit: Option<u64>,

        /// Output pixels per unit of --max-price-per-unit.
        #[arg(long, env = "MAX_PRICE_PIXELS_PER_UNIT", default_value_t = 1)]
        max_price_pixels_per_unit: u64,

        /// HTTP address of the orchestrator whose price --max-price-per-unit checks.
        #[arg(long, env = "ORCHESTRATOR_URL", conflicts_with = "orch_addr")]
        orchestrator_url: Option<String>,

        /// Push over HTTP to one of these orchestrators (comma-separated HTTP addresses, as
        /// go-livepeer's -orchAddr) instead of through RabbitMQ and the object store: each
        /// one's GET /offer is read, those above --max-price-per-unit, at capacity or not
        /// answering are left out, and one of the rest is drawn, weighted by round trip and
        /// price. Needs --orch-key; --amqp-url and --storage-url are then not used.
        #[arg(long, env = "ORCH_ADDR", value_delimiter = ',', requires = "orch_key")]
        orch_addr: Vec<String>,

        /// On-chain mode: choose among the active set's orchestrators, at the service URIs
        /// they registered (`orchestrator chain register --service-uri`), as --orch-addr
        /// does, with their bonded stake as a further weight; an orchestrator whose offer
        /// names another account than the one that registered its URI is left out.
        #[arg(long, env = "ORCH_FROM_CHAIN", conflicts_with_all = ["orch_addr", "orchestrator_url"], requires = "orch_key")]
        orch_from_chain: bool,

        /// This broadcaster's key at the --orch-addr orchestrators (NAME:SECRET, from
        /// `orchestrator broadcasters add NAME`): one for all, or one per address in the
        /// same order, comma-separated.
        #[arg(long, env = "ORCH_KEY", hide_env_values = true)]
        orch_key: Option<String>,

        /// With --wait, over HTTP: keep a copy of the stream in this directory
        /// (DIR/streams/NAME/: every rendition, copied from the orchestrator as soon as its
        /// segment is transcoded and checked, and the HLS playlists, written at the end).
        /// It also lets the push move mid-stream: when the orchestrator stops answering,
        /// stalls, fails the stream or fails a segment, the segments not yet copied and the
        /// rest go to the next orchestrator of --orch-addr (or the active set) that was not
        /// left out.
        #[arg(long, env = "OUTPUT_DIR", requires = "orch_key", requires = "wait")]
        output_dir: Option<PathBuf>,

        /// With --output-dir: seconds an orchestrator may stay unreachable before the push
        /// moves to the next one (with none left, it keeps trying for 300 s).
        #[arg(
            long = "failover-after",
            env = "FAILOVER_AFTER_SECS",
            default_value_t = 20
        )]
        failover_after_secs: u64,

        /// With --output-dir: move to the next orchestrator when none of the push's
        /// segments there is transcoded (or failed) for this many seconds while some wait,
        /// as when its workers are gone; 0: never.
        #[arg(long = "stall-after", env = "STALL_AFTER_SECS", default_value_t = 300)]
        stall_after_secs: u64,

        /// With --orch-addr or --orch-from-chain: a JSON file counting, per orchestrator,
        /// the pushes completed there and the times a push left it (created if missing).
        /// Selection then weighs each by its success rate, (completed + 1) / (completed +
        /// failed + 2). Unset: every orchestrator counts as even.
        #[arg(long, env = "ORCH_HISTORY")]
        orch_history: Option<PathBuf>,

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
pub(crate) enum KeysAction {
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
pub(crate) struct LiveArgs {
    /// The account that pays a priced orchestrator for every live stream taken here.
    #[arg(long = "live-broadcaster-id", env = "LIVE_BROADCASTER_ID")]
    pub(crate) live_broadcaster_id: Option<String>,

    /// Address of the RTMP server for live publishers (OBS, ffmpeg -f flv); loopback
    /// unless you set it (e.g. 0.0.0.0:1935 to take publishers from other machines).
    #[arg(long, env = "RTMP_ADDR", default_value = "127.0.0.1:1935")]
    pub(crate) rtmp_addr: SocketAddr,

    /// Let anyone publish any stream, unchecked (no stream key, no webhook). Only for a
    /// broadcaster nobody else can reach.
    #[arg(long, env = "OPEN_INGEST", conflicts_with = "auth_webhook_url")]
    pub(crate) open_ingest: bool,

    /// Take no live streams: no RTMP server and no HTTP push.
    #[arg(long, env = "NO_LIVE")]
    pub(crate) no_live: bool,

    /// Comma-separated Livepeer presets of live streams whose auth webhook names no ladder.
    #[arg(long, env = "LIVE_PROFILES", default_value = DEFAULT_PRESETS)]
    pub(crate) live_profiles: String,

    /// Target live segment duration in seconds: a segment is cut at the first keyframe
    /// after it (publishers should send a keyframe every this many seconds).
    #[arg(long, env = "LIVE_SEGMENT_SECS", default_value_t = 2)]
    pub(crate) live_segment_secs: u32,

    /// Longest live segment in seconds: a publisher whose keyframes are further apart is
    /// cut off with a message saying which encoder setting to change. (The live playlists'
    /// EXT-X-TARGETDURATION is the longest segment listed, rounded: 2 for a 2 s GOP.)
    #[arg(long, env = "LIVE_MAX_SEGMENT_SECS", default_value_t = 6)]
    pub(crate) live_max_segment_secs: u32,

    /// URL POSTed a JSON description of every new RTMP publish and HTTP-pushed stream
    /// ({"url", "app", "stream_key", "via", "peer"}); a 2xx answer allows it and may name
    /// the stream ("manifestID"), the ladder ("presets", "profiles") and the HTTP push
    /// token ("streamKey"); anything else refuses it. Unset: publishers need a stream key
    /// from `broadcaster keys add` (or --open-ingest).
    #[arg(long, env = "AUTH_WEBHOOK_URL")]
    pub(crate) auth_webhook_url: Option<String>,

    /// Seconds without data after which an RTMP connection is dropped (a half-open
    /// socket), so its publisher can reconnect.
    #[arg(long, env = "RTMP_IDLE_SECS", default_value_t = 10)]
    pub(crate) rtmp_idle_secs: u64,

    /// Most RTMP connections at once; more are closed at once.
    #[arg(long, env = "RTMP_MAX_CONNECTIONS", default_value_t = 1000)]
    pub(crate) rtmp_max_connections: usize,

    /// Seconds an RTMP client has from connecting to having its publish accepted
    /// (handshake, connect, publish, in all); a slower one is dropped.
    #[arg(long, env = "RTMP_PUBLISH_SECS", default_value_t = 10)]
    pub(crate) rtmp_publish_secs: u64,

    /// Most HTTP connections at once (playback and push); more are closed at once.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub(crate) http_max_connections: usize,

    /// Seconds an HTTP client has to send a request's head (an idle keep-alive
    /// connection included); a slower one is dropped.
    #[arg(long, env = "HTTP_HEADER_SECS", default_value_t = 10)]
    pub(crate) http_header_secs: u64,

    /// Seconds a disconnected publisher has to reconnect with the same key and continue
    /// the same stream (with a discontinuity); after that the stream ends.
    #[arg(long, env = "LIVE_RECONNECT_SECS", default_value_t = 10)]
    pub(crate) live_reconnect_secs: u64,

    /// Seconds without a pushed segment after which an HTTP-pushed stream ends.
    #[arg(long, env = "HTTP_PUSH_IDLE_SECS", default_value_t = 30)]
    pub(crate) http_push_idle_secs: u64,

    /// Largest segment accepted over HTTP push, in MiB (larger: 413).
    #[arg(long, env = "HTTP_PUSH_MAX_MB", default_value_t = 64)]
    pub(crate) http_push_max_mb: usize,

    /// Seconds a pushed segment's body may take to arrive (and 10 s at most between its
    /// pieces); a slower client gets 400 and its connection back.
    #[arg(long, env = "HTTP_PUSH_BODY_SECS", default_value_t = 60)]
    pub(crate) http_push_body_secs: u64,

    /// Seconds an HTTP push waits for its renditions before answering 504.
    #[arg(long, env = "HTTP_PUSH_WAIT_SECS", default_value_t = 30)]
    pub(crate) http_push_wait_secs: u64,

    /// How far ahead of a stream's highest pushed segment number a new one may be; further
    /// ones are refused (HTTP 422) before anything is stored.
    #[arg(long, env = "MAX_SEQ_AHEAD", default_value_t = castwork_protocol::DEFAULT_MAX_SEQ_AHEAD)]
    pub(crate) max_seq_ahead: u64,

    /// Seconds to wait for an orchestrator to admit a live stream.
    #[arg(long, env = "LIVE_ADMIT_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) live_admit_timeout_secs: u64,

    /// HTTP address of the orchestrator that live streams go to: its price (GET /price) is
    /// checked against --live-max-price-per-unit at start, and in on-chain mode (--eth-*)
    /// every live segment is paid with tickets under its parameters.
    #[arg(long, env = "LIVE_ORCHESTRATOR_URL")]
    pub(crate) live_orchestrator_url: Option<String>,

    /// The most live streams pay, in wei per --live-max-price-pixels-per-unit output
    /// pixels; `serve` refuses to start when the orchestrator at --live-orchestrator-url
    /// asks more. Unset: no limit.
    #[arg(
        long,
        env = "LIVE_MAX_PRICE_PER_UNIT",
        requires = "live_orchestrator_url"
    )]
    pub(crate) live_max_price_per_unit: Option<u64>,

    /// Output pixels per unit of --live-max-price-per-unit.
    #[arg(long, env = "LIVE_MAX_PRICE_PIXELS_PER_UNIT", default_value_t = 1)]
    pub(crate) live_max_price_pixels_per_unit: u64,
}
