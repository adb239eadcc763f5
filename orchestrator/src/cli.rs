//! The orchestrator's command line: every flag with its environment variable, and the
//! commands that talk to a running cluster.

use std::net::SocketAddr;

use castwork_cluster::ServiceArgs;
use castwork_orchestrator::chain_cli::{ledger_amount, positive_ledger_amount};
use castwork_worker::WorkerArgs;
use clap::{Parser, Subcommand};

/// Castwork orchestrator: admits streams from broadcasters, publishes one transcode job per
/// segment to RabbitMQ, checks every worker result, tracks state in Redis and writes the HLS
/// playlists. With --transcode-slots it also transcodes in-process (single-node mode).
#[derive(Parser, Debug)]
#[command(version, about, after_help = castwork_cluster::telemetry::ENV_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    #[command(flatten)]
    pub(crate) service: ServiceArgs,

    /// Redis URL for stream, segment and job state (also after a command: `ledger show
    /// --redis-url URL`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub(crate) redis_url: String,

    /// Address of the HTTP API (/healthz, /metrics, /status, /streams/NAME, /workers,
    /// /queues).
    #[arg(long, env = "ORCHESTRATOR_HTTP_ADDR", default_value = "127.0.0.1:7935")]
    pub(crate) http_addr: SocketAddr,

    /// Base URL where viewers play the stream outputs: a stream's master playlist is at
    /// BASE/streams/NAME/index.m3u8, and `broadcaster push` prints that URL. E.g. a
    /// `broadcaster serve`'s http://HOST:8935. Unset: this orchestrator's own /hls on the
    /// address it is bound to (127.0.0.1 in place of 0.0.0.0).
    #[arg(long, env = "PLAYBACK_URL")]
    pub(crate) playback_url: Option<String>,

    /// Base URL at which workers reach this orchestrator's /work/ routes, where each job's
    /// signed URLs read its source segment and write its renditions (workers hold no
    /// object-store credentials). Unset: http:// and the --work-addr listener's address, or
    /// --http-addr's (127.0.0.1 in place of 0.0.0.0). Set it when workers run elsewhere.
    #[arg(long, env = "WORK_URL")]
    pub(crate) work_url: Option<String>,

    /// A listener that serves only the /work/ routes (signed job objects), so workers on
    /// other machines can reach them while --http-addr (status, dashboard) stays private.
    /// Unset: /work/ is on --http-addr only.
    #[arg(long, env = "WORK_ADDR")]
    pub(crate) work_addr: Option<SocketAddr>,

    /// PEM certificate chain for the --work-addr listener: with --work-tls-key it serves
    /// HTTPS, and the default --work-url is https://. Workers trust a private CA that
    /// signed it with their --work-ca-file (scripts/dev-tls.sh makes one for tests).
    #[arg(long, env = "WORK_TLS_CERT", requires_all = ["work_tls_key", "work_addr"])]
    pub(crate) work_tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --work-tls-cert.
    #[arg(long, env = "WORK_TLS_KEY", requires = "work_tls_cert")]
    pub(crate) work_tls_key: Option<std::path::PathBuf>,

    /// RabbitMQ's management API, http://[USER:PASSWORD@]HOST:PORT, where /queues reads
    /// each queue's unacknowledged messages (AMQP only tells the ready ones); `off` turns
    /// that off. Unset: port 15672 of the --amqp-url host (of each node's, for a list), with
    /// its credentials (the user needs the `monitoring` or `management` tag). Several URLs,
    /// comma-separated, are asked in turn until one answers.
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    pub(crate) rabbitmq_management_url: Option<String>,

    /// Attempts before a segment that keeps failing transiently is marked failed (a
    /// permanent failure, such as corrupt input, fails it at once).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    pub(crate) max_attempts: u32,

    /// In-process transcode slots (combined mode); 0 leaves transcoding to `worker`s.
    #[arg(long, env = "TRANSCODE_SLOTS", default_value_t = 0, help_heading = COMBINED_MODE)]
    pub(crate) transcode_slots: usize,

    /// Seconds in-flight work gets to finish after SIGTERM.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 120)]
    pub(crate) drain_secs: u64,

    /// Segments listed in a live media playlist (its sliding window), at least 3; it grows
    /// past this when needed to hold three target durations, as RFC 8216 asks.
    #[arg(long, env = "LIVE_WINDOW", default_value_t = 6)]
    pub(crate) live_window: usize,

    /// Seconds a live segment has from reaching the broadcaster to being listed; a segment
    /// past it is skipped (with a discontinuity) instead of holding back newer ones, and a
    /// segment that never arrives holds back later ones this long.
    #[arg(long, env = "LIVE_DEADLINE_SECS", default_value_t = 10)]
    pub(crate) live_deadline_secs: u64,

    /// Seconds an on-demand job may go unstarted while its queue holds no ready job before
    /// it counts as lost (purged from the queue, or taken by a consumer that never
    /// reported) and is retried as a new attempt. Longer than workers' --start-notice-ms.
    #[arg(long, env = "LOST_JOB_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lost_job_secs: u64,

    /// Capability classes for live jobs, in order of preference (cpu, nvdec, nvenc): a job
    /// goes to the first with a free slot among its workers (from their heartbeats), else to
    /// the first with any worker, else to any class with workers; never to a queue nobody
    /// reads while another class could take it.
    #[arg(long, env = "ROUTE_LIVE", default_value = "nvenc,nvdec,cpu", value_parser = castwork_orchestrator::ingest::routing::parse_class_order)]
    pub(crate) route_live: castwork_orchestrator::ingest::routing::ClassOrder,

    /// As --route-live, for on-demand jobs (the CPU first, keeping GPUs for live work).
    #[arg(long, env = "ROUTE_VOD", default_value = "cpu,nvdec,nvenc", value_parser = castwork_orchestrator::ingest::routing::parse_class_order)]
    pub(crate) route_vod: castwork_orchestrator::ingest::routing::ClassOrder,

    /// How far ahead of a stream's highest received segment number a new segment (or the
    /// segment count of its end) may be; further ones are refused with a message, so no
    /// number a client sends makes the cluster loop.
    #[arg(long, env = "MAX_SEQ_AHEAD", default_value_t = castwork_protocol::DEFAULT_MAX_SEQ_AHEAD)]
    pub(crate) max_seq_ahead: u64,

    /// The largest source segment a broadcaster may upload over HTTP
    /// (`PUT /ingest/source/...`), in MiB.
    #[arg(long, env = "MAX_SOURCE_SEGMENT_MB", default_value_t = 64)]
    pub(crate) max_source_segment_mb: u64,

    /// The most pushes one broadcaster key may start over HTTP in an hour (each keeps an
    /// event queue on the broker); more are refused with 429 until the next hour.
    #[arg(long, env = "INGEST_STARTS_PER_HOUR", default_value_t = 120)]
    pub(crate) ingest_starts_per_hour: u64,

    /// Live streams admitted at once (as go-livepeer's -maxSessions): a new one past that is
    /// refused "at capacity", and the broadcaster says so. `auto`: the transcode slots the
    /// live workers advertise in their heartbeats (no limit while none has beaten); 0: no
    /// limit. On-demand streams are never refused for capacity: their jobs wait.
    #[arg(long, env = "MAX_SESSIONS", default_value = "auto", value_parser = castwork_orchestrator::ingest::parse_max_sessions)]
    pub(crate) max_sessions: castwork_orchestrator::ingest::MaxSessions,

    /// Token that HTTP requests changing state (DELETE /streams/NAME) must carry as
    /// `Authorization: Bearer TOKEN`; unset, they are refused. The read-only API stays
    /// open to whoever reaches --http-addr (127.0.0.1 by default).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,

    /// Days an ended stream's state (segments, failures, listing) stays in Redis; its
    /// playlists and renditions stay in the object store. Fractions are allowed.
    #[arg(long, env = "RETAIN_DAYS", default_value_t = 7.0)]
    pub(crate) retain_days: f64,

    /// Price in wei for every --pixels-per-unit output pixels (width x height x frames of
    /// every rendition); 0 is free. A priced orchestrator admits only streams that name an
    /// account (`broadcaster push --broadcaster-id`) whose balance covers a segment.
    #[arg(long, env = "PRICE_PER_UNIT", default_value_t = 0)]
    pub(crate) price_per_unit: u64,

    /// Output pixels per priced unit (see --price-per-unit).
    #[arg(long, env = "PIXELS_PER_UNIT", default_value_t = 1)]
    pub(crate) pixels_per_unit: u64,

    /// Fraction (0-1) of worker results whose pictures are decoded and compared with the
    /// source segment (luma PSNR), on top of the checks every result gets.
    #[arg(long, env = "QUALITY_SAMPLE_RATE", default_value_t = 0.1)]
    pub(crate) quality_sample_rate: f64,

    /// Luma PSNR (dB) under which a sampled rendition is refused and redone elsewhere.
    #[arg(long, env = "MIN_PSNR_DB", default_value_t = 20.0)]
    pub(crate) min_psnr_db: f64,

    /// Results failing the checks after which a worker is banned (it stops taking jobs).
    #[arg(long, env = "MAX_BAD_RESULTS", default_value_t = 3)]
    pub(crate) max_bad_results: u32,

    /// BENCHMARK ONLY (never in production): accept worker results without checking the
    /// renditions, to measure the control plane with workers in --noop-transcode mode.
    #[arg(long, env = "CASTWORK_BENCH_TRUST_WORKER_OUTPUT")]
    pub(crate) trust_worker_output: bool,

    /// TESTS ONLY: a cheating orchestrator that skips every check of its workers' results
    /// (so the broadcaster's own verification has something to catch).
    #[arg(long, hide = true)]
    pub(crate) test_only_skip_checks: bool,

    #[command(flatten)]
    pub(crate) eth: castwork_chain::cli::EthArgs,

    /// Off-chain mode: this orchestrator's name, advertised at /price; broadcasters' failed
    /// checks reduce its stake in the ledger under this name (`ledger stake`).
    #[arg(long, env = "ORCHESTRATOR_ID", default_value = "orchestrator")]
    pub(crate) orchestrator_id: String,

    /// On-chain mode: wei a winning ticket pays (go-livepeer's -ticketFaceValue idea).
    #[arg(long, env = "TICKET_FACE_VALUE", default_value = "1000000000000000", value_parser = castwork_chain::cli::parse_amount)]
    pub(crate) ticket_face_value: castwork_chain::U256,

    /// On-chain mode: expected value of one ticket in wei; the win probability is
    /// TICKET_EV / TICKET_FACE_VALUE. Broadcasters send enough tickets per segment to cover
    /// its fee.
    #[arg(long, env = "TICKET_EV", default_value = "1000000000000", value_parser = castwork_chain::cli::parse_amount)]
    pub(crate) ticket_ev: castwork_chain::U256,

    /// On-chain mode: seconds advertised ticket parameters (and tickets signed under them)
    /// stay valid; winners must be redeemed within it. With --chain-refresh-secs and 11
    /// minutes (clock skew, time to redeem) it must fit in the ticket broker's unlock period,
    /// so a sender cannot withdraw before its winning tickets are redeemed.
    #[arg(long, env = "TICKET_VALIDITY_SECS", default_value_t = 3600)]
    pub(crate) ticket_validity_secs: u64,

    /// On-chain mode: seconds the stake, the active set and senders' deposits are cached in
    /// Redis before being read from the chain again.
    #[arg(long, env = "CHAIN_REFRESH_SECS", default_value_t = 30)]
    pub(crate) chain_refresh_secs: u64,

    #[command(flatten, next_help_heading = COMBINED_MODE)]
    pub(crate) worker: WorkerArgs,
}

/// The `--help` heading of the in-process worker's flags.
pub(crate) const COMBINED_MODE: &str =
    "Combined mode (an in-process worker, with --transcode-slots N)";

/// Without a command, the orchestrator runs; a command talks to a running one.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// Keys of broadcasters that push over HTTP (`broadcaster push --orch-addr URL
    /// --orch-key KEY`), in Redis (--redis-url): such a broadcaster needs no broker or
    /// object-store credentials.
    Broadcasters {
        #[command(subcommand)]
        action: BroadcastersAction,
    },
    /// The off-chain ledger of broadcaster accounts in Redis (--redis-url), in wei.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum StreamsAction {
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
pub(crate) enum WorkersAction {
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

#[derive(Subcommand, Debug)]
pub(crate) enum BroadcastersAction {
    /// Makes a key for broadcaster NAME (replacing any it had) and prints it: NAME:SECRET.
    /// Off-chain, its streams are charged to ledger account NAME.
    Add { name: String },
    /// Deletes broadcaster NAME's key: its requests are refused from now on.
    Remove { name: String },
    /// Prints the names of the broadcasters with keys.
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum LedgerAction {
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
